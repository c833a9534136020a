//! `skiff-bootbench`: runs inside the nested test host. Boots the same guest on several VMMs,
//! alternating, and measures for each boot the time from spawning the VMM to the guest's init
//! printing `skiff-init: started` on the serial console (the same event for every VMM), and the
//! VMM's resident memory at that moment minus the guest memory it has touched.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

const MARKER: &str = "skiff-init: started";

#[derive(Debug, Parser)]
#[command(name = "skiff-bootbench")]
struct Args {
    /// Boots per VMM configuration.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    #[arg(long, default_value = "/skiff/skiff-vmm")]
    skiff_vmm: PathBuf,
    #[arg(long, default_value = "/skiff/vmlinux")]
    kernel: PathBuf,
    #[arg(long, default_value = "/skiff/initramfs.cpio")]
    initrd: PathBuf,
    /// Debian's stock kernel (bzImage) for the product-against-product comparison.
    #[arg(long)]
    stock_kernel: Option<PathBuf>,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Seconds one boot may take before it counts as failed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Compare skiff-vmm run directly with skiff-vmm started by this skiff-jailer (instead of
    /// comparing with QEMU).
    #[arg(long)]
    jailer: Option<PathBuf>,
    /// With --jailer: also boot this many VMs at once, directly and jailed.
    #[arg(long, default_value_t = 0)]
    parallel: usize,
    /// With --jailer and --parallel: rounds of parallel boots, alternating direct and jailed.
    #[arg(long, default_value_t = 3)]
    parallel_rounds: usize,
    /// With --jailer: the jail's memory limit in MiB above guest memory (0: no cgroup).
    #[arg(long, default_value_t = 64)]
    jail_memory_overhead_mib: u64,
}

/// One VMM configuration under test.
struct Subject {
    name: &'static str,
    program: String,
    /// `{id}` in an argument is replaced by a unique id per boot.
    args: Vec<String>,
    /// Run after each boot (with `{id}` replaced), e.g. to remove a jail.
    cleanup: Option<Vec<String>>,
}

static BOOT_COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One boot's measurements.
struct Sample {
    to_init: Duration,
    overhead_kib: u64,
}

const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

fn skiff(args: &Args) -> Subject {
    Subject {
        name: "skiff-vmm, Skiff kernel",
        program: args.skiff_vmm.display().to_string(),
        args: vec![
            "--kernel".into(),
            args.kernel.display().to_string(),
            "--initrd".into(),
            args.initrd.display().to_string(),
            "--vcpus".into(),
            args.vcpus.to_string(),
            "--memory-mib".into(),
            args.memory_mib.to_string(),
            "--cmdline".into(),
            format!("{CMDLINE} reboot=k"),
        ],
        cleanup: None,
    }
}

/// skiff-vmm started by skiff-jailer (unique jail per boot, removed afterwards), with the same VM
/// as [`skiff`] given as a configuration file.
fn jailed(args: &Args, jailer: &Path) -> anyhow::Result<Subject> {
    let direct = skiff(args);
    let jailer = jailer.display().to_string();
    let mut vm = vmm::config::VmConfig::with_kernel(args.kernel.clone());
    vm.initrd = Some(args.initrd.clone());
    vm.vcpus = args.vcpus;
    vm.memory_mib = args.memory_mib;
    vm.cmdline = format!("{CMDLINE} reboot=k");
    let vm_config =
        std::env::temp_dir().join(format!("skiff-bootbench-{}.json", std::process::id()));
    std::fs::write(&vm_config, vm.to_json()?)
        .with_context(|| format!("writing {}", vm_config.display()))?;
    let mut a: Vec<String> = ["--id", "bench-{id}", "--uid", "10001", "--gid", "10001"]
        .map(String::from)
        .to_vec();
    a.extend(["--exec-file".into(), direct.program.clone()]);
    if args.jail_memory_overhead_mib > 0 {
        a.push("--cgroup".into());
        a.push(format!(
            "memory={}M",
            args.memory_mib + args.jail_memory_overhead_mib
        ));
    }
    a.push("--vm-config".into());
    a.push(vm_config.display().to_string());
    Ok(Subject {
        name: "skiff-jailer + skiff-vmm",
        program: jailer,
        args: a,
        cleanup: Some(vec!["--cleanup".into(), "--id".into(), "bench-{id}".into()]),
    })
}

fn qemu(args: &Args, name: &'static str, kernel: &Path) -> Subject {
    let mut a: Vec<String> = [
        "-M",
        "microvm,x-option-roms=off,rtc=off,isa-serial=on",
        "-enable-kvm",
        "-cpu",
        "host",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
    ]
    .map(String::from)
    .to_vec();
    a.extend([
        "-m".into(),
        args.memory_mib.to_string(),
        "-smp".into(),
        args.vcpus.to_string(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        args.initrd.display().to_string(),
        "-append".into(),
        format!("{CMDLINE} reboot=t"),
    ]);
    Subject {
        name,
        program: args.qemu.clone(),
        args: a,
        cleanup: None,
    }
}

/// Resident KiB of `pid` outside its guest RAM.
fn overhead_kib(pid: u32, guest_bytes: u64) -> anyhow::Result<u64> {
    api::executor::runner::vmm_overhead_kib(pid, guest_bytes)
        .with_context(|| format!("reading /proc/{pid}/smaps"))
}

fn boot_once(subject: &Subject, args: &Args) -> anyhow::Result<Sample> {
    let id = BOOT_COUNTER
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string();
    let with_id =
        |v: &[String]| -> Vec<String> { v.iter().map(|a| a.replace("{id}", &id)).collect() };
    let started = Instant::now();
    let mut child = Command::new(&subject.program)
        .args(with_id(&subject.args))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", subject.program))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stderr_pipe = child.stderr.take().context("no stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut text);
        text
    });
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !seen && line.contains(MARKER) {
                seen = true;
                let _ = tx.send(Instant::now());
            }
        }
    });
    let timeout = Duration::from_secs(args.timeout);
    let result = match rx.recv_timeout(timeout) {
        Ok(at) => {
            let to_init = at - started;
            let overhead = overhead_kib(child.id(), args.memory_mib << 20);
            overhead.map(|overhead_kib| Sample {
                to_init,
                overhead_kib,
            })
        }
        // Disconnected: the console closed without the marker (the VMM or jailer ended).
        Err(e) => Err(anyhow::anyhow!(
            "{}: no '{MARKER}' ({})",
            subject.name,
            match e {
                mpsc::RecvTimeoutError::Timeout => format!("not within {timeout:?}"),
                mpsc::RecvTimeoutError::Disconnected => "the console closed first".into(),
            }
        )),
    };
    // Let the guest finish on its own; kill it if it does not.
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = reader.join();
    let stderr = stderr.join().unwrap_or_default();
    let result = result.map_err(|e| {
        let tail: String = stderr
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        e.context(format!("stderr: {tail}"))
    });
    if let Some(cleanup) = &subject.cleanup {
        Command::new(&subject.program)
            .args(with_id(cleanup))
            .status()
            .with_context(|| format!("cleaning up after {}", subject.name))?;
    }
    result
}

/// Boots `n` VMs of `subject` at once; returns each one's sample.
fn boot_parallel(subject: &Subject, args: &Args, n: usize) -> anyhow::Result<Vec<Sample>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| boot_once(subject, args)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a boot thread panicked")))
            })
            .collect()
    })
}

/// The jailer's start-up cost: the same boots, direct and jailed, alternating; then in parallel.
fn compare_jailer(args: &Args, jailer: &Path) -> anyhow::Result<()> {
    let subjects = [skiff(args), jailed(args, jailer)?];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
    for run in 0..args.runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let subject = &subjects[i];
            let sample = boot_once(subject, args)?;
            println!(
                "run {run:>2} {:<26} init after {:>8.1} ms",
                subject.name,
                sample.to_init.as_secs_f64() * 1e3
            );
            samples[i].push(sample);
        }
    }
    let mut rows = vec![];
    for (subject, s) in subjects.iter().zip(&samples) {
        rows.push((format!("{}, one at a time", subject.name), summarize(s)));
    }
    if args.parallel > 0 {
        // Batches alternate (direct first, then jailed first, ...): what one batch leaves
        // behind in the host (page cache, freed memory) must not favour either side.
        let mut batches: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
        for round in 0..args.parallel_rounds.max(1) {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let s = boot_parallel(&subjects[i], args, args.parallel)?;
                println!(
                    "round {round} {:<26} {} at once, p50 {:.1} ms",
                    subjects[i].name,
                    args.parallel,
                    summarize(&s).p50_ms
                );
                batches[i].extend(s);
            }
        }
        for (subject, s) in subjects.iter().zip(&batches) {
            rows.push((
                format!("{}, {} at once", subject.name, args.parallel),
                summarize(s),
            ));
        }
    }
    println!();
    println!(
        "Jailer start-up: time from exec to guest init, {} runs ({} vCPU, {} MiB), inside the nested test host",
        args.runs, args.vcpus, args.memory_mib
    );
    println!("| start | p50 to init (ms) | p90 to init (ms) |");
    println!("|---|---:|---:|");
    for (name, s) in &rows {
        println!("| {name} | {:.0} | {:.0} |", s.p50_ms, s.p90_ms);
    }
    println!();
    println!("| comparison | jailed / direct (p50) | added by the jail |");
    println!("|---|---:|---:|");
    let pairs: Vec<(&str, usize, usize)> = if args.parallel > 0 {
        vec![("one at a time", 0, 1), ("in parallel", 2, 3)]
    } else {
        vec![("one at a time", 0, 1)]
    };
    for (name, d, j) in pairs {
        let ratio = rows[j].1.p50_ms / rows[d].1.p50_ms;
        println!("| {name} | {ratio:.3} | {:+.1} % |", (ratio - 1.0) * 100.0);
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Summary {
    p50_ms: f64,
    p90_ms: f64,
    overhead_p50_kib: f64,
}

fn summarize(samples: &[Sample]) -> Summary {
    let mut times: Vec<f64> = samples
        .iter()
        .map(|s| s.to_init.as_secs_f64() * 1e3)
        .collect();
    let mut rss: Vec<f64> = samples.iter().map(|s| s.overhead_kib as f64).collect();
    times.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);
    Summary {
        p50_ms: percentile(&times, 50.0),
        p90_ms: percentile(&times, 90.0),
        overhead_p50_kib: percentile(&rss, 50.0),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if let Some(jailer) = &args.jailer {
        return compare_jailer(&args, jailer);
    }
    let mut subjects = vec![
        skiff(&args),
        qemu(&args, "QEMU microvm, Skiff kernel", &args.kernel),
    ];
    if let Some(stock) = &args.stock_kernel {
        subjects.push(qemu(&args, "QEMU microvm, Debian cloud kernel", stock));
    }
    let mut samples: Vec<Vec<Sample>> = subjects.iter().map(|_| Vec::new()).collect();
    for run in 0..args.runs {
        for (i, subject) in subjects.iter().enumerate() {
            let sample = boot_once(subject, &args)?;
            println!(
                "run {run:>2} {:<34} init after {:>8.1} ms, VMM overhead {:>6} KiB",
                subject.name,
                sample.to_init.as_secs_f64() * 1e3,
                sample.overhead_kib
            );
            samples[i].push(sample);
        }
    }
    let sums: Vec<Summary> = samples.iter().map(|s| summarize(s)).collect();
    println!();
    println!(
        "Boot to guest init: {} runs each, {} vCPU, {} MiB, inside the nested test host (emulated time: compare ratios)",
        args.runs, args.vcpus, args.memory_mib
    );
    println!("| VMM, guest kernel | p50 to init (ms) | p90 to init (ms) | VMM RSS - guest memory (MiB) |");
    println!("|---|---:|---:|---:|");
    for (subject, s) in subjects.iter().zip(&sums) {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} |",
            subject.name,
            s.p50_ms,
            s.p90_ms,
            s.overhead_p50_kib / 1024.0
        );
    }
    println!();
    println!("| comparison | time-to-init ratio (p50) | overhead ratio |");
    println!("|---|---:|---:|");
    println!(
        "| (a) same kernel: Skiff / QEMU microvm | {:.2} | {:.2} |",
        sums[0].p50_ms / sums[1].p50_ms,
        sums[0].overhead_p50_kib / sums[1].overhead_p50_kib
    );
    if let Some(stock) = sums.get(2) {
        println!(
            "| (b) product: Skiff + Skiff kernel / QEMU microvm + Debian cloud kernel | {:.2} | {:.2} |",
            sums[0].p50_ms / stock.p50_ms,
            sums[0].overhead_p50_kib / stock.overhead_p50_kib
        );
    }
    Ok(())
}
