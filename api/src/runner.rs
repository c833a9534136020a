//! Running one container task in its own microVM, end to end: the image from the store, its
//! image disk (built once per image), a fresh scratch disk, `skiff-vmm` with both disks and a
//! vsock device, then guest-init's control channel to run the container and collect its output
//! and exit status. `skiff-run` is this as a command; skiffd's tasks build on it.

use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use images::image_disk::{self, ImageDiskError};
use images::scratch_disk::{self, ScratchError};
use images::store::oci::{image_config, ImportError, RunConfig};
use images::store::{Store, StoreError};
use skiff_protocol::{ContainerSpec, ExitStatus};

use crate::guest_control::{ContainerEvent, ContainerOutcome, ControlError, ControlListener};

/// The guest's vsock CID (any value above 2 works: each VM has its own device).
const GUEST_CID: u32 = 3;
/// The image disk and the scratch disk, as the guest sees them (in `--disk` order).
const IMAGE_DEVICE: &str = "/dev/vda";
const SCRATCH_DEVICE: &str = "/dev/vdb";
/// How long the VMM may take to exit once the guest was told to shut down.
const VMM_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors running a task (not the container's own failures: those are its outcome).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("image store: {0}")]
    Store(#[from] StoreError),
    #[error("image config: {0}")]
    Config(#[from] ImportError),
    #[error("image disk: {0}")]
    ImageDisk(#[from] ImageDiskError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error("the image defines no command and the task gives none")]
    NoCommand,
    #[error("hostname {name:?}: {reason}")]
    Hostname { name: String, reason: &'static str },
    #[error("task directory {path}: {source}")]
    TaskDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {vmm}: {source}")]
    SpawnVmm {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM exited ({status}) before guest-init connected; its log and console:\n{log}")]
    VmmDied { status: String, log: String },
    #[error("guest-init did not connect within {0:?}")]
    BootTimeout(Duration),
    #[error("control channel: {0}")]
    Control(#[from] ControlError),
}

/// A task to run.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// The image store's directory.
    pub store: PathBuf,
    /// The image's name in the store.
    pub image: String,
    /// Replaces the image's Entrypoint (and then its Cmd too, as in Docker).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub command: Vec<String>,
    /// `KEY=VALUE`, added to (or replacing) the image's Env.
    pub env: Vec<String>,
    /// Replaces the image's WorkingDir.
    pub workdir: Option<String>,
    /// Replaces the image's User.
    pub user: Option<String>,
    pub hostname: String,
    /// The task's network interface, if it has one.
    pub network: Option<TaskNetwork>,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Size of the scratch disk in bytes.
    pub ephemeral_storage: u64,
    pub stop_timeout: Duration,
    /// How long guest-init may take to connect.
    pub boot_timeout: Duration,
    /// The VMM binary, guest kernel and initramfs (with guest-init).
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Where the task's directory is made (its scratch disk, sockets and console log); removed
    /// when the task ends.
    pub run_dir: PathBuf,
}

/// A task's network interface: `eth0` in the guest, backed by a host tap that exists already.
#[derive(Debug, Clone)]
pub struct TaskNetwork {
    /// The host tap's name.
    pub tap: String,
    /// The guest's address and prefix length.
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    /// The default gateway, if any.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Name servers for the container's /etc/resolv.conf.
    pub dns: Vec<std::net::IpAddr>,
}

/// The guest kernel command line of a task: guest-init's control channel, and the hostname and
/// network settings (values the host checked, so none can add a parameter of its own).
fn kernel_cmdline(task: &TaskConfig) -> Result<String, RunError> {
    let mut cmdline = String::from("console=ttyS0 reboot=k panic=-1 quiet skiff.control");
    if !task.hostname.is_empty() {
        if let Some(reason) = skiff_protocol::names::hostname_problem(&task.hostname) {
            return Err(RunError::Hostname {
                name: task.hostname.clone(),
                reason,
            });
        }
        cmdline.push_str(&format!(" skiff.hostname={}", task.hostname));
    }
    if let Some(net) = &task.network {
        cmdline.push_str(&format!(" skiff.ip={}/{}", net.address, net.prefix_len));
        if let Some(gateway) = net.gateway {
            cmdline.push_str(&format!(" skiff.gw={gateway}"));
        }
        for server in &net.dns {
            cmdline.push_str(&format!(" skiff.dns={server}"));
        }
    }
    Ok(cmdline)
}

/// How a task went.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    pub container: ContainerOutcome,
    /// Time from the runner's start to the VMM's start (the disks are ready), to guest-init's
    /// hello, to the container's start, to its exit, and to the VMM's exit.
    pub to_vmm_spawn: Duration,
    pub to_hello: Duration,
    pub to_started: Option<Duration>,
    pub to_exited: Duration,
    pub to_vmm_exit: Duration,
    /// Peak resident memory of the VMM process in KiB (guest memory the guest touched included),
    /// when known.
    pub vmm_max_rss_kib: Option<u64>,
    /// Resident memory of the VMM beyond its guest's RAM when the container started, in KiB.
    pub vmm_overhead_kib: Option<u64>,
}

impl TaskOutcome {
    /// The shell convention: the exit code, or 128 + the signal.
    pub fn exit_code(&self) -> i32 {
        match self.container.status {
            ExitStatus::Code(code) => code & 0xff,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// The container's process: the image config with the task's overrides applied.
pub fn container_spec(task: &TaskConfig, image: &RunConfig) -> Result<ContainerSpec, RunError> {
    let (entrypoint, cmd) = match &task.entrypoint {
        Some(entrypoint) => (entrypoint.clone(), task.command.clone()),
        None => (
            image.entrypoint.clone().unwrap_or_default(),
            if task.command.is_empty() {
                image.cmd.clone().unwrap_or_default()
            } else {
                task.command.clone()
            },
        ),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(RunError::NoCommand);
    }
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    for var in &task.env {
        let key = var.split_once('=').map_or(var.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(var.clone());
    }
    Ok(ContainerSpec {
        image_device: IMAGE_DEVICE.into(),
        scratch_device: SCRATCH_DEVICE.into(),
        argv,
        env,
        cwd: task
            .workdir
            .clone()
            .or_else(|| image.working_dir.clone())
            .unwrap_or_default(),
        user: task
            .user
            .clone()
            .or_else(|| image.user.clone())
            .unwrap_or_default(),
        hostname: task.hostname.clone(),
        stop_timeout_ms: u32::try_from(task.stop_timeout.as_millis()).unwrap_or(u32::MAX),
    })
}

/// Numbers the tasks of this process (their directories are named by pid and number).
static NEXT_TASK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The task's own directory, removed when dropped.
struct TaskDir(PathBuf);

impl Drop for TaskDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A started VMM, killed if dropped while running.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs the task; `stop` (when readable) requests a stop; `on_output` gets the container's
/// output as it comes.
pub fn run_task(
    task: &TaskConfig,
    stop: Option<BorrowedFd<'_>>,
    mut on_event: impl FnMut(ContainerEvent<'_>),
) -> Result<TaskOutcome, RunError> {
    let start = Instant::now();
    kernel_cmdline(task)?;
    let store = Store::open(&task.store)?;
    let record = store.get(&task.image)?;
    let config = image_config(&store, &record)?;
    let spec = container_spec(task, &config.config.unwrap_or_default())?;
    let image_disk = image_disk::ensure(&store, &task.store, &record)?;

    let dir = task.run_dir.join(format!(
        "task-{}-{}",
        std::process::id(),
        NEXT_TASK.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    // Left over by a process of the same pid that was killed: nobody owns it any more.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| RunError::TaskDir {
        path: dir.clone(),
        source,
    })?;
    let dir = TaskDir(dir);
    let scratch = dir.0.join("scratch.img");
    scratch_disk::create(&scratch, task.ephemeral_storage)?;
    let uds = dir.0.join("v.sock");
    let listener = ControlListener::bind(&uds)?;
    let console = dir.0.join("console.log");
    let vmm_log_path = dir.0.join("vmm.log");
    let vmm_log = std::fs::File::create(&vmm_log_path).map_err(|source| RunError::TaskDir {
        path: vmm_log_path.clone(),
        source,
    })?;

    let cmdline = kernel_cmdline(task)?;
    let to_vmm_spawn = start.elapsed();
    let mut vmm_command = Command::new(&task.vmm);
    // SAFETY: prctl in the forked child before exec; no allocation, no locks.
    unsafe {
        vmm_command.pre_exec(|| {
            // The VM does not outlive its runner.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(net) = &task.network {
        vmm_command.arg("--net").arg(format!("tap={}", net.tap));
    }
    let mut vmm = Vmm(vmm_command
        .arg("--kernel")
        .arg(&task.kernel)
        .arg("--initrd")
        .arg(&task.initramfs)
        .args(["--vcpus", &task.vcpus.to_string()])
        .args(["--memory-mib", &task.memory_mib.to_string()])
        .arg("--disk")
        .arg(format!("path={},ro=true", image_disk.display()))
        .arg("--disk")
        .arg(format!("path={}", scratch.display()))
        .arg("--vsock")
        .arg(format!("cid={GUEST_CID},uds={}", uds.display()))
        .arg("--serial-out")
        .arg(&console)
        .args(["--cmdline", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vmm_log)
        .spawn()
        .map_err(|source| RunError::SpawnVmm {
            vmm: task.vmm.clone(),
            source,
        })?);

    // Wait for guest-init, watching the VMM meanwhile.
    let mut control = loop {
        match listener.accept(Duration::from_millis(100)) {
            Ok(control) => break control,
            Err(ControlError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Ok(Some(status)) = vmm.0.try_wait() {
            return Err(RunError::VmmDied {
                status: status.to_string(),
                log: format!("{}\n{}", tail(&vmm_log_path), tail(&console)),
            });
        }
        if start.elapsed() > task.boot_timeout {
            return Err(RunError::BootTimeout(task.boot_timeout));
        }
    };
    let to_hello = start.elapsed();
    let mut to_started = None;
    let mut vmm_overhead = None;
    let vmm_pid = vmm.0.id();
    let guest_bytes = task.memory_mib << 20;
    let container = control.run_container(&spec, stop, |event| {
        if let ContainerEvent::Started { .. } = event {
            to_started = Some(start.elapsed());
            vmm_overhead = vmm_overhead_kib(vmm_pid, guest_bytes).ok();
        }
        on_event(event);
    })?;
    let to_exited = start.elapsed();
    control.shutdown()?;
    let vmm_max_rss_kib = wait_vmm(&mut vmm, VMM_EXIT_TIMEOUT);
    let to_vmm_exit = start.elapsed();
    Ok(TaskOutcome {
        container,
        to_vmm_spawn,
        to_hello,
        to_started,
        to_exited,
        to_vmm_exit,
        vmm_max_rss_kib,
        vmm_overhead_kib: vmm_overhead,
    })
}

/// Resident KiB of process `pid` outside mappings at least as large as guest memory (the
/// guest's RAM): what a VMM costs beyond the memory it gives its guest.
pub fn vmm_overhead_kib(pid: u32, guest_bytes: u64) -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
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

/// Waits for the VMM to exit (killing it after `timeout`); returns its peak RSS in KiB.
fn wait_vmm(vmm: &mut Vmm, timeout: Duration) -> Option<u64> {
    let pid = vmm.0.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: rusage is plain data; all-zero is a valid value.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        let mut status = 0;
        // SAFETY: `status` and `rusage` are valid and writable; `pid` is our unreaped child.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
        if reaped == pid {
            return u64::try_from(rusage.ru_maxrss).ok();
        }
        if reaped < 0 {
            return None;
        }
        if Instant::now() >= deadline {
            let _ = vmm.0.kill();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskConfig {
        TaskConfig {
            store: PathBuf::new(),
            image: "img".into(),
            entrypoint: None,
            command: vec![],
            env: vec![],
            workdir: None,
            user: None,
            hostname: "t1".into(),
            network: None,
            vcpus: 1,
            memory_mib: 256,
            ephemeral_storage: scratch_disk::DEFAULT_SIZE,
            stop_timeout: Duration::from_secs(10),
            boot_timeout: Duration::from_secs(60),
            vmm: PathBuf::new(),
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            run_dir: PathBuf::new(),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn task_overrides_apply_to_the_image_config_as_in_docker() {
        let image = RunConfig {
            entrypoint: Some(strings(&["/entry"])),
            cmd: Some(strings(&["default"])),
            env: Some(strings(&["PATH=/bin", "FOO=image", "KEEP=1"])),
            working_dir: Some("/data".into()),
            user: Some("app".into()),
        };
        let spec = container_spec(&task(), &image).unwrap();
        assert_eq!(spec.argv, ["/entry", "default"]);
        assert_eq!(spec.env, ["PATH=/bin", "FOO=image", "KEEP=1"]);
        assert_eq!((spec.cwd.as_str(), spec.user.as_str()), ("/data", "app"));
        assert_eq!(spec.stop_timeout_ms, 10_000);

        let mut t = task();
        t.command = strings(&["other", "arg"]);
        t.env = strings(&["FOO=task", "NEW=2"]);
        t.workdir = Some("/w".into());
        t.user = Some("1000:1000".into());
        let spec = container_spec(&t, &image).unwrap();
        assert_eq!(spec.argv, ["/entry", "other", "arg"]);
        assert_eq!(spec.env, ["PATH=/bin", "KEEP=1", "FOO=task", "NEW=2"]);
        assert_eq!((spec.cwd.as_str(), spec.user.as_str()), ("/w", "1000:1000"));

        // A new entrypoint drops the image's Cmd.
        t.entrypoint = Some(strings(&["sh", "-c"]));
        t.command = strings(&["echo hi"]);
        assert_eq!(
            container_spec(&t, &image).unwrap().argv,
            ["sh", "-c", "echo hi"]
        );
        t.command.clear();
        assert_eq!(container_spec(&t, &image).unwrap().argv, ["sh", "-c"]);
    }

    #[test]
    fn the_kernel_command_line_carries_only_checked_values() {
        let mut t = task();
        t.network = Some(TaskNetwork {
            tap: "tap0".into(),
            address: "172.16.0.2".parse().unwrap(),
            prefix_len: 30,
            gateway: Some("172.16.0.1".parse().unwrap()),
            dns: vec!["172.16.0.1".parse().unwrap()],
        });
        assert_eq!(
            kernel_cmdline(&t).unwrap(),
            "console=ttyS0 reboot=k panic=-1 quiet skiff.control skiff.hostname=t1 \
             skiff.ip=172.16.0.2/30 skiff.gw=172.16.0.1 skiff.dns=172.16.0.1"
        );
        t.hostname = "x skiff.panic".into();
        assert!(matches!(kernel_cmdline(&t), Err(RunError::Hostname { .. })));
    }

    #[test]
    fn an_image_without_a_command_needs_one_from_the_task() {
        let spec = container_spec(&task(), &RunConfig::default());
        assert!(matches!(spec, Err(RunError::NoCommand)));
        let mut t = task();
        t.command = strings(&["true"]);
        let spec = container_spec(&t, &RunConfig::default()).unwrap();
        assert_eq!(spec.argv, ["true"]);
        assert_eq!(spec.env[0], DEFAULT_PATH, "a PATH is always set");
        assert_eq!(spec.cwd, "");
    }
}
