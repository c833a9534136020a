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
}

/// One VMM configuration under test.
struct Subject {
    name: &'static str,
    program: String,
    args: Vec<String>,
}

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
    }
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
    }
}

/// Resident KiB of `pid` outside mappings at least as large as guest memory (the guest's RAM).
fn overhead_kib(pid: u32, guest_bytes: u64) -> anyhow::Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let mut total = 0;
    let mut in_guest_ram = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (start, end) = (
                u64::from_str_radix(start, 16).unwrap_or(0),
                u64::from_str_radix(end, 16).unwrap_or(0),
            );
            in_guest_ram = end.saturating_sub(start) >= guest_bytes;
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if !in_guest_ram {
                total += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    Ok(total)
}

fn boot_once(subject: &Subject, args: &Args) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let mut child = Command::new(&subject.program)
        .args(&subject.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", subject.program))?;
    let stdout = child.stdout.take().context("no stdout")?;
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
        Err(_) => Err(anyhow::anyhow!(
            "{}: no '{MARKER}' within {timeout:?}",
            subject.name
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
    result
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
