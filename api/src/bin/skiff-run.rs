//! `skiff-run`: runs one container image in its own microVM and exits with the container's exit
//! status (128 + N when signal N killed it; 125 when the task could not start).
//!
//! ```text
//! skiff-run --store /var/lib/skiff/images --image busybox:latest -- echo hello
//! ```
//!
//! The container's stdout and stderr are this command's stdout and stderr. SIGTERM or SIGINT asks
//! the container to stop (SIGTERM inside, SIGKILL after `--stop-timeout`).

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use api::executor::guest_control::ContainerEvent;
use api::executor::privileges::{self, PrivilegeSettings, UlimitSetting};
use api::executor::runner::{run_task, JailSettings, TaskConfig, TaskNetwork};
use clap::Parser;
use skiff_protocol::Stream;

/// Exit status when the task cannot be run at all.
const RUN_FAILED: i32 = 125;

#[derive(Debug, Parser)]
#[command(name = "skiff-run", version)]
struct Args {
    /// The image store directory.
    #[arg(long, default_value = "/var/lib/skiff/images")]
    store: PathBuf,
    /// The image's name in the store (`skiff-image list`).
    #[arg(long)]
    image: String,
    /// Replace the image's entrypoint (a single program; arguments go after `--`).
    #[arg(long)]
    entrypoint: Option<String>,
    /// An environment variable for the container, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The working directory inside the container.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// The user: uid, uid:gid, name or name:group.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// The container's hostname.
    #[arg(long, default_value = "skiff-task")]
    hostname: String,
    /// A host tap for the task's network interface (eth0 in the guest; needs --ip).
    #[arg(long, requires = "ip")]
    tap: Option<String>,
    /// The task's IPv4 address and prefix length, e.g. 172.16.0.2/30.
    #[arg(long, value_name = "ADDR/PREFIX", requires = "tap")]
    ip: Option<String>,
    /// The task's default gateway.
    #[arg(long, value_name = "ADDR", requires = "ip")]
    gateway: Option<std::net::Ipv4Addr>,
    /// A name server for the container's /etc/resolv.conf (repeatable).
    #[arg(long, value_name = "ADDR", requires = "ip")]
    dns: Vec<std::net::IpAddr>,
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Size of the task's scratch disk (its writable root filesystem) in MiB.
    #[arg(long, default_value_t = 20 * 1024)]
    ephemeral_storage_mib: u64,
    /// Seconds between SIGTERM and SIGKILL when the task is stopped.
    #[arg(long, default_value_t = 10.0)]
    stop_timeout: f64,
    /// Seconds guest-init may take to come up.
    #[arg(long, default_value_t = 120.0)]
    boot_timeout: f64,
    /// The skiff-vmm binary [default: next to this one, else in PATH].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The guest kernel (vmlinux).
    #[arg(long, default_value = "/var/lib/skiff/vmlinux")]
    kernel: PathBuf,
    /// The guest initramfs with guest-init.
    #[arg(long, default_value = "/var/lib/skiff/initramfs.cpio")]
    initramfs: PathBuf,
    /// Where task directories (scratch disk, sockets, console log) are made: on disk, not a
    /// tmpfs, whose pages a guest filling its scratch disk would take from the host's RAM.
    #[arg(long, default_value = "/var/lib/skiff/tasks")]
    run_dir: PathBuf,
    /// Run the VMM in a jail made by this skiff-jailer (then --vmm must be a static skiff-vmm,
    /// and --uid and --gid are required).
    #[arg(long, requires_all = ["uid", "gid"])]
    jailer: Option<PathBuf>,
    /// The jailed VMM's uid (not 0).
    #[arg(long, requires = "jailer")]
    uid: Option<u32>,
    /// The jailed VMM's gid (not 0).
    #[arg(long, requires = "jailer")]
    gid: Option<u32>,
    /// Where the jailer makes jails.
    #[arg(long, default_value = "/srv/jailer", requires = "jailer")]
    chroot_base: PathBuf,
    /// A capability for the container beyond Docker's defaults, e.g. NET_ADMIN, or ALL
    /// (repeatable).
    #[arg(long, value_name = "CAP")]
    cap_add: Vec<String>,
    /// A capability taken from the container, or ALL (repeatable).
    #[arg(long, value_name = "CAP")]
    cap_drop: Vec<String>,
    /// A resource limit, NAME=SOFT[:HARD], e.g. nofile=1024:4096 (repeatable; nofile is 65535
    /// unless given).
    #[arg(long, value_name = "NAME=SOFT[:HARD]", value_parser = privileges::parse_ulimit)]
    ulimit: Vec<UlimitSetting>,
    /// no-new-privileges=false lets setuid programs and file capabilities work (on by default).
    #[arg(long, value_name = "no-new-privileges[=BOOL]", value_parser = privileges::parse_security_opt)]
    security_opt: Vec<bool>,
    /// Run the program under an init process that forwards signals and reaps orphans (as
    /// `docker run --init`); otherwise the program is PID 1 of the container.
    #[arg(long)]
    init: bool,
    /// Print the task's timings and the VMM's peak memory to stderr at the end.
    #[arg(long)]
    timings: bool,
    /// The command (replaces the image's Cmd).
    #[arg(last = true)]
    command: Vec<String>,
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("skiff-vmm")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("skiff-vmm"))
}

/// A descriptor that becomes readable on SIGTERM or SIGINT (which are blocked, so they arrive
/// only there).
fn stop_signals() -> anyhow::Result<OwnedFd> {
    // SAFETY: `set` is initialised by sigemptyset; the calls take valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            anyhow::bail!("cannot block SIGTERM/SIGINT");
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("signalfd");
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// A duration given in seconds: finite, not negative, not absurdly long.
fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| d.as_secs() <= 24 * 3600)
        .with_context(|| format!("{flag} {value}: expected 0 to 86400 seconds"))
}

/// `ADDR/PREFIX`, e.g. `172.16.0.2/30`.
fn parse_cidr(value: &str) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
    let (address, prefix) = value
        .split_once('/')
        .with_context(|| format!("--ip {value:?}: expected ADDR/PREFIX, e.g. 172.16.0.2/30"))?;
    let address = address
        .parse()
        .with_context(|| format!("--ip {value:?}: {address:?} is not an IPv4 address"))?;
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .with_context(|| format!("--ip {value:?}: the prefix length must be 1-32"))?;
    Ok((address, prefix))
}

fn run(args: Args) -> anyhow::Result<i32> {
    let network = match (args.tap, args.ip) {
        (Some(tap), Some(ip)) => {
            let (address, prefix_len) = parse_cidr(&ip)?;
            Some(TaskNetwork {
                tap,
                address,
                prefix_len,
                gateway: args.gateway,
                dns: args.dns,
            })
        }
        _ => None,
    };
    let jail = match (args.jailer, args.uid, args.gid) {
        (Some(jailer), Some(uid), Some(gid)) => Some(JailSettings::for_task(
            jailer,
            format!("skiff-run-{}", std::process::id()),
            (uid, gid),
            args.chroot_base,
            args.cpus,
            args.memory_mib,
        )),
        _ => None,
    };
    let task = TaskConfig {
        store: args.store,
        image: args.image,
        entrypoint: args.entrypoint.map(|e| vec![e]),
        command: args.command,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        hostname: args.hostname,
        network,
        vcpus: args.cpus,
        memory_mib: args.memory_mib,
        ephemeral_storage: args.ephemeral_storage_mib << 20,
        stop_timeout: seconds("--stop-timeout", args.stop_timeout)?,
        privileges: PrivilegeSettings {
            cap_add: args.cap_add,
            cap_drop: args.cap_drop,
            no_new_privileges: args.security_opt.last().copied().unwrap_or(true),
            ulimits: args.ulimit,
        },
        init_process: args.init,
        boot_timeout: seconds("--boot-timeout", args.boot_timeout)?,
        vmm: args.vmm.unwrap_or_else(default_vmm),
        kernel: args.kernel,
        initramfs: args.initramfs,
        run_dir: args.run_dir,
        keep_logs_in: None,
        jail,
    };
    let stop = stop_signals()?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let outcome = run_task(&task, Some(stop.as_fd()), |event| match event {
        ContainerEvent::Output(Stream::Stdout, data) => {
            let mut out = stdout.lock();
            let _ = out.write_all(data).and_then(|()| out.flush());
        }
        ContainerEvent::Output(Stream::Stderr, data) => {
            let _ = stderr.lock().write_all(data);
        }
        ContainerEvent::StopRequested => {
            eprintln!("skiff-run: stopping the task (SIGTERM, then SIGKILL after the timeout)")
        }
        ContainerEvent::Started { .. } => {}
    })
    .context("cannot run the task")?;
    if let Some(reason) = &outcome.container.reason {
        eprintln!("skiff-run: {reason}");
    }
    if args.timings {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        eprintln!(
            "skiff-run: timings: vmm spawn {:.1} ms, hello {:.1} ms, started {} ms, exited {:.1} ms, vmm exit {:.1} ms; \
             vmm peak rss {} KiB, overhead {} KiB; status {:?}",
            ms(outcome.to_vmm_spawn),
            ms(outcome.to_hello),
            outcome
                .to_started
                .map_or("-".into(), |d| format!("{:.1}", ms(d))),
            ms(outcome.to_exited),
            ms(outcome.to_vmm_exit),
            outcome
                .vmm_max_rss_kib
                .map_or("-".into(), |k| k.to_string()),
            outcome
                .vmm_overhead_kib
                .map_or("-".into(), |k| k.to_string()),
            outcome.container.status,
        );
    }
    Ok(outcome.exit_code())
}

fn main() {
    let args = Args::parse();
    let code = run(args).unwrap_or_else(|e| {
        eprintln!("skiff-run: {e:#}");
        RUN_FAILED
    });
    std::process::exit(code)
}
