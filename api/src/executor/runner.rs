//! Running one container task in its own microVM, end to end: the image from the store, its
//! image disk (built once per image), a fresh scratch disk, `skiff-vmm` with both disks and a
//! vsock device, then guest-init's control channel to run the container and collect its output
//! and exit status. `skiff-run` is this as a command; skiffd's tasks build on it.
//!
//! The VMM is launched with one typed contract: the runner writes the task's [`VmConfig`] as JSON
//! into the task's directory and starts `skiff-vmm --config FILE`, or, for a jailed task,
//! `skiff-jailer ... --vm-config FILE`, which relocates the same configuration into the jail.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use images::image_disk::{self, ImageDiskError};
use images::scratch_disk::{self, ScratchError};
use images::store::oci::{image_config, ImportError, RunConfig};
use images::store::{Store, StoreError};
use skiff_protocol::{ContainerSpec, ExitStatus};
use skiff_vm_config::{ConfigError, DiskConfig, NetConfig, SerialOutput, VmConfig, VsockConfig};

use crate::executor::guest_control::{
    control_socket_path, ContainerEvent, ContainerOutcome, ControlError, ControlListener,
};
use crate::executor::privileges::PrivilegeSettings;

/// The guest's vsock CID (any value above 2 works: each VM has its own device).
const GUEST_CID: u32 = 3;
/// The image disk and the scratch disk, as the guest sees them (in `--disk` order).
const IMAGE_DEVICE: &str = "/dev/vda";
const SCRATCH_DEVICE: &str = "/dev/vdb";
/// How long the VMM may take to exit once the guest was told to shut down.
const VMM_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long removing a finished jail may take (`skiff-jailer --cleanup`, retried while the
/// killed VMM is still leaving its cgroup).
const JAIL_CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The files of a task's directory.
const VM_CONFIG_FILE: &str = "vm.json";
const SCRATCH_FILE: &str = "scratch.img";
const VSOCK_FILE: &str = "v.sock";
const CONSOLE_FILE: &str = "console.log";
const VMM_LOG_FILE: &str = "vmm.log";
/// Memory a jail allows beyond guest memory: the VMM's own (~2.5 MiB) and headroom for the page
/// cache of disk I/O (README, "Jailing a VMM").
pub const JAIL_MEMORY_OVERHEAD_MIB: u64 = 32;
/// Processes and threads a jail allows by default (the jailer, the VMM's thread, one per vCPU and
/// one per disk fit easily).
pub const DEFAULT_JAIL_PIDS: u64 = 32;
/// Open files a jailed VMM may have by default.
pub const DEFAULT_JAIL_NOFILE: u64 = 128;
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
    #[error("the task's privileges: {0}")]
    Privileges(#[from] skiff_protocol::privileges::PrivilegeError),
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
    #[error("VM configuration: {0}")]
    VmConfig(#[from] ConfigError),
    #[error("cannot start {vmm}: {source}")]
    SpawnVmm {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM exited ({status}) before guest-init connected; its log and console:\n{log}")]
    VmmDied { status: String, log: String },
    #[error("the microVM ended while the task ran (VMM {status}); its log and console:\n{log}")]
    VmmLost { status: String, log: String },
    #[error("guest-init did not connect within {0:?}")]
    BootTimeout(Duration),
    #[error("stopped before the container started")]
    StoppedBeforeStart,
    #[error("control channel: {0}")]
    Control(#[from] ControlError),
}

/// A task to run (serialisable: skiffd hands it to the task's monitor in a file).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// What the container's process may do (Docker's defaults when absent).
    #[serde(default)]
    pub privileges: PrivilegeSettings,
    /// Whether an init process runs the program, which is PID 1 of the container otherwise.
    #[serde(default)]
    pub init_process: bool,
    /// How long guest-init may take to connect.
    pub boot_timeout: Duration,
    /// The VMM binary, guest kernel and initramfs (with guest-init).
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Where the task's directory is made (its scratch disk, sockets and console log); removed
    /// when the task ends.
    pub run_dir: PathBuf,
    /// Run the VMM in a jail (`skiff-jailer`); `vmm` is then the static `skiff-vmm` it copies in.
    pub jail: Option<JailSettings>,
    /// When set, the console and VMM logs are moved here when the task's directory is removed
    /// (skiffd keeps them with the task until its retention ends).
    pub keep_logs_in: Option<PathBuf>,
}

/// How a task's VMM is jailed: `skiff-jailer --id ID --exec-file VMM --uid --gid --chroot-base
/// BASE --cgroup memory=..M --cgroup cpus=.. --cgroup pids=.. --resource-limit no-file=..
/// --vm-config FILE`, and `skiff-jailer --cleanup` when it is over. The task's directory and
/// scratch disk are handed to `uid`/`gid`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSettings {
    /// The `skiff-jailer` binary.
    pub jailer: PathBuf,
    /// The jail's id: 1 to 64 letters, digits and '-', unique among running jails.
    pub id: String,
    /// The VMM's uid and gid (not 0).
    pub uid: u32,
    pub gid: u32,
    /// Where jails are made (`<base>/skiff-vmm/<id>`).
    pub chroot_base: PathBuf,
    /// The cgroup's memory limit: guest memory plus the VMM's overhead.
    pub memory_limit_mib: u64,
    /// The cgroup's CPU quota, in CPUs.
    pub cpus: f64,
    /// The cgroup's process/thread limit.
    pub pids: u64,
    /// The VMM's open-file limit.
    pub nofile: u64,
}

impl JailSettings {
    /// Settings for a task of `vcpus` and `memory_mib`: memory + [`JAIL_MEMORY_OVERHEAD_MIB`],
    /// a quota of `vcpus` CPUs, [`DEFAULT_JAIL_PIDS`] and [`DEFAULT_JAIL_NOFILE`].
    pub fn for_task(
        jailer: PathBuf,
        id: String,
        (uid, gid): (u32, u32),
        chroot_base: PathBuf,
        vcpus: u8,
        memory_mib: u64,
    ) -> Self {
        Self {
            jailer,
            id,
            uid,
            gid,
            chroot_base,
            memory_limit_mib: memory_mib.saturating_add(JAIL_MEMORY_OVERHEAD_MIB),
            cpus: f64::from(vcpus),
            pids: DEFAULT_JAIL_PIDS,
            nofile: DEFAULT_JAIL_NOFILE,
        }
    }
}

/// A task's network interface: `eth0` in the guest, backed by a host tap that exists already.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
    // The hostname is the container's: it travels in RunContainer only (one channel per
    // setting); checked here all the same, before anything is made.
    if !task.hostname.is_empty() {
        if let Some(reason) = skiff_protocol::names::hostname_problem(&task.hostname) {
            return Err(RunError::Hostname {
                name: task.hostname.clone(),
                reason,
            });
        }
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
        privileges: task.privileges.resolve()?,
        init_process: task.init_process,
    })
}

/// Numbers the tasks of this process (their directories are named by pid and number).
static NEXT_TASK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The task's own directory, removed when dropped.
struct TaskDir {
    path: PathBuf,
    /// Where the console and VMM logs are kept when the directory goes.
    keep_logs_in: Option<PathBuf>,
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        if let Some(keep) = &self.keep_logs_in {
            for name in [CONSOLE_FILE, VMM_LOG_FILE] {
                // Only regular files: the VMM's uid could have put a symlink there.
                let from = self.path.join(name);
                if std::fs::symlink_metadata(&from).is_ok_and(|m| m.file_type().is_file()) {
                    let _ = std::fs::rename(&from, keep.join(name));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// How long a VMM whose control channel broke may take to be seen gone.
const VMM_LOST_WAIT: Duration = Duration::from_secs(5);

/// A control channel error after guest-init's hello: if the VMM is gone (killed, crashed), that
/// is the task's story, with the VMM's status and the tails of its log and the console.
fn after_hello_failure(
    vmm: &mut Vmm,
    error: ControlError,
    vmm_log: &Path,
    console: &Path,
) -> RunError {
    let deadline = Instant::now() + VMM_LOST_WAIT;
    loop {
        match vmm.0.try_wait() {
            Ok(Some(status)) => {
                return RunError::VmmLost {
                    status: status.to_string(),
                    log: format!("{}\n{}", tail(vmm_log), tail(console)),
                }
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return error.into(),
        }
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

/// Bytes of a log read for its tail.
const TAIL_BYTES: u64 = 8 << 10;

/// The last lines of a log the VMM writes. The file lies in a directory the (jailed) VMM's uid
/// owns, so it is opened without following a symlink, only as a regular file, and only its end
/// is read: whatever the VMM put there, no other host file and no unbounded read.
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return String::new();
    };
    let Ok(meta) = file.metadata() else {
        return String::new();
    };
    if !meta.is_file()
        || file
            .seek(SeekFrom::Start(meta.len().saturating_sub(TAIL_BYTES)))
            .is_err()
    {
        return String::new();
    }
    let mut data = Vec::new();
    let _ = file.take(TAIL_BYTES).read_to_end(&mut data);
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The VM of a task whose directory is `dir`: guest-init with the control channel, the image
/// disk (read-only, `/dev/vda`), the scratch disk (`/dev/vdb`), the vsock socket and the console
/// log in the task's directory, and the task's network interface.
pub fn vm_config(task: &TaskConfig, image_disk: &Path, dir: &Path) -> Result<VmConfig, RunError> {
    let mut vm = VmConfig::with_kernel(task.kernel.clone());
    vm.initrd = Some(task.initramfs.clone());
    vm.cmdline = kernel_cmdline(task)?;
    vm.vcpus = task.vcpus;
    vm.memory_mib = task.memory_mib;
    vm.serial_out = SerialOutput::File(dir.join(CONSOLE_FILE));
    vm.disks = vec![
        DiskConfig {
            path: image_disk.to_owned(),
            read_only: true,
            id: None,
        },
        DiskConfig {
            path: dir.join(SCRATCH_FILE),
            read_only: false,
            id: None,
        },
    ];
    vm.nets = task
        .network
        .iter()
        .map(|net| NetConfig {
            tap: net.tap.clone(),
            mac: None,
        })
        .collect();
    vm.vsock = Some(VsockConfig {
        cid: GUEST_CID,
        uds: dir.join(VSOCK_FILE),
    });
    Ok(vm)
}

/// The command that starts the task's VMM with the configuration in `config_file`: `skiff-vmm
/// --config FILE`, or `skiff-jailer ... --vm-config FILE` for a jailed task.
pub fn vmm_command(task: &TaskConfig, config_file: &Path) -> Command {
    match &task.jail {
        None => {
            let mut command = Command::new(&task.vmm);
            command.arg("--config").arg(config_file);
            command
        }
        Some(jail) => {
            let mut command = Command::new(&jail.jailer);
            command
                .args(["--id", &jail.id])
                .arg("--exec-file")
                .arg(&task.vmm)
                .args(["--uid", &jail.uid.to_string()])
                .args(["--gid", &jail.gid.to_string()])
                .arg("--chroot-base")
                .arg(&jail.chroot_base)
                .args(["--cgroup", &format!("memory={}M", jail.memory_limit_mib)])
                .args(["--cgroup", &format!("cpus={}", jail.cpus)])
                .args(["--cgroup", &format!("pids={}", jail.pids)])
                .args(["--resource-limit", &format!("no-file={}", jail.nofile)])
                .arg("--vm-config")
                .arg(config_file);
            command
        }
    }
}

/// Removes a jail when dropped (after the VMM it holds: declare it before the [`Vmm`]).
struct JailCleanup<'a>(&'a JailSettings);

impl Drop for JailCleanup<'_> {
    fn drop(&mut self) {
        if let Err(e) = cleanup_jail(self.0, JAIL_CLEANUP_TIMEOUT) {
            eprintln!("skiff: jail {} was not removed: {e}", self.0.id);
        }
    }
}

/// Runs `skiff-jailer --cleanup` for the jail, again while it fails (a killed VMM may still be
/// leaving its cgroup), for at most `timeout`.
fn cleanup_jail(jail: &JailSettings, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut child = Command::new(&jail.jailer)
            .args(["--cleanup", "--id", &jail.id])
            .arg("--chroot-base")
            .arg(&jail.chroot_base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", jail.jailer.display()))?;
        let failure = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    break format!("{status}: {}", stderr.trim());
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("--cleanup did not finish within {timeout:?}"));
                }
                Err(e) => break e.to_string(),
            }
        };
        if Instant::now() >= deadline {
            return Err(failure);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Hands `path` to the jail's uid and gid.
fn hand_to(jail: &JailSettings, path: &Path) -> Result<(), RunError> {
    std::os::unix::fs::chown(path, Some(jail.uid), Some(jail.gid)).map_err(|source| {
        RunError::TaskDir {
            path: path.to_owned(),
            source,
        }
    })
}

/// The VMM's pid as the jailer reports it on stderr (`... running as pid N`).
fn jailed_vmm_pid(jailer_log: &Path) -> Option<u32> {
    let log = std::fs::read_to_string(jailer_log).ok()?;
    log.lines()
        .find_map(|l| l.split("running as pid ").nth(1))
        .and_then(|pid| pid.trim().parse().ok())
}

/// Runs the task; `stop` (when readable) requests a stop; `on_output` gets the container's
/// output as it comes.
///
/// The VMM (or the jailer, whose VMM dies with it) gets `PR_SET_PDEATHSIG` = SIGKILL, which
/// follows the *thread* that spawned it: call this from the thread that lives as long as the task
/// (the monitor process's main thread), never from a short-lived worker thread, or the VM is
/// killed when that thread ends.
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
    let dir = TaskDir {
        path: dir,
        keep_logs_in: task.keep_logs_in.clone(),
    };
    let scratch = dir.path.join(SCRATCH_FILE);
    scratch_disk::create(&scratch, task.ephemeral_storage)?;
    let vm = vm_config(task, &image_disk, &dir.path)?;
    vm.validate()?;
    let uds = dir.path.join(VSOCK_FILE);
    let listener = ControlListener::bind(&uds)?;
    if let Some(jail) = &task.jail {
        // The jailed VMM writes its scratch disk, creates its socket and console log in the
        // task's directory (mounted in the jail), and connects to the control socket.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| RunError::TaskDir {
                path: dir.path.clone(),
                source,
            },
        )?;
        for path in [&dir.path, &scratch, &control_socket_path(&uds)] {
            hand_to(jail, path)?;
        }
    }
    let config_file = dir.path.join(VM_CONFIG_FILE);
    std::fs::write(&config_file, vm.to_json()?).map_err(|source| RunError::TaskDir {
        path: config_file.clone(),
        source,
    })?;
    let console = dir.path.join(CONSOLE_FILE);
    let vmm_log_path = dir.path.join(VMM_LOG_FILE);
    let vmm_log = std::fs::File::create(&vmm_log_path).map_err(|source| RunError::TaskDir {
        path: vmm_log_path.clone(),
        source,
    })?;

    let to_vmm_spawn = start.elapsed();
    let mut vmm_command = vmm_command(task, &config_file);
    // SAFETY: prctl in the forked child before exec; no allocation, no locks.
    unsafe {
        vmm_command.pre_exec(|| {
            // The VM does not outlive the thread that runs the task (see above).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Declared before the VMM: dropped after it, once the VMM is gone.
    let _jail_cleanup = task.jail.as_ref().map(JailCleanup);
    let mut vmm = Vmm(vmm_command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vmm_log)
        .spawn()
        .map_err(|source| RunError::SpawnVmm {
            vmm: vmm_command.get_program().into(),
            source,
        })?);

    // Wait for guest-init, watching the VMM meanwhile.
    let mut control = loop {
        match listener.accept(Duration::from_millis(100)) {
            Ok(control) => break control,
            Err(ControlError::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(fd) = stop {
            let mut fds = [skiff_protocol::poll::readable(fd.as_raw_fd())];
            if skiff_protocol::poll::wait(&mut fds, Some(Instant::now())).is_ok()
                && fds[0].revents != 0
            {
                return Err(RunError::StoppedBeforeStart);
            }
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
    // One guest-init per task: nothing else in the guest (a container opening a vsock
    // connection to port 1024) may reach the host's end of the control channel.
    drop(listener);
    let to_hello = start.elapsed();
    let mut to_started = None;
    let mut vmm_overhead = None;
    let vmm_pid = match &task.jail {
        None => Some(vmm.0.id()),
        Some(_) => jailed_vmm_pid(&vmm_log_path),
    };
    let guest_bytes = task.memory_mib << 20;
    let container = control
        .run_container(&spec, stop, |event| {
            if let ContainerEvent::Started { .. } = event {
                to_started = Some(start.elapsed());
                vmm_overhead = vmm_pid.and_then(|pid| vmm_overhead_kib(pid, guest_bytes).ok());
            }
            on_event(event);
        })
        .map_err(|e| after_hello_failure(&mut vmm, e, &vmm_log_path, &console))?;
    let to_exited = start.elapsed();
    control.shutdown(stop)?;
    // A jailer's peak RSS includes its reaped VMM's.
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
            privileges: PrivilegeSettings::default(),
            init_process: false,
            boot_timeout: Duration::from_secs(60),
            vmm: PathBuf::new(),
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            run_dir: PathBuf::new(),
            keep_logs_in: None,
            jail: None,
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
            "console=ttyS0 reboot=k panic=-1 quiet skiff.control \
             skiff.ip=172.16.0.2/30 skiff.gw=172.16.0.1 skiff.dns=172.16.0.1"
        );
        t.hostname = "x skiff.panic".into();
        assert!(matches!(kernel_cmdline(&t), Err(RunError::Hostname { .. })));
    }

    #[test]
    fn the_vm_configuration_has_the_task_disks_socket_console_and_network() {
        let mut t = task();
        t.kernel = "/k/vmlinux".into();
        t.initramfs = "/k/initramfs.cpio".into();
        t.vcpus = 2;
        t.network = Some(TaskNetwork {
            tap: "tap7".into(),
            address: "172.16.0.2".parse().unwrap(),
            prefix_len: 30,
            gateway: None,
            dns: vec![],
        });
        let dir = Path::new("/run/skiff/task-1-1");
        let vm = vm_config(&t, Path::new("/store/disks/ab.img"), dir).unwrap();
        assert_eq!(vm.kernel, Path::new("/k/vmlinux"));
        assert_eq!(vm.initrd.as_deref(), Some(Path::new("/k/initramfs.cpio")));
        assert_eq!(vm.cmdline, kernel_cmdline(&t).unwrap());
        assert_eq!((vm.vcpus, vm.memory_mib), (2, 256));
        assert_eq!(
            vm.serial_out,
            SerialOutput::File(dir.join("console.log")),
            "the console log is in the task's directory"
        );
        assert_eq!(
            vm.disks,
            [
                DiskConfig {
                    path: "/store/disks/ab.img".into(),
                    read_only: true,
                    id: None
                },
                DiskConfig {
                    path: dir.join("scratch.img"),
                    read_only: false,
                    id: None
                },
            ]
        );
        assert_eq!(
            vm.nets,
            [NetConfig {
                tap: "tap7".into(),
                mac: None
            }]
        );
        assert_eq!(
            vm.vsock,
            Some(VsockConfig {
                cid: GUEST_CID,
                uds: dir.join("v.sock")
            })
        );
        assert!(!vm.rng && !vm.serial_in);
        vm.validate_values().unwrap();
        // What the VMM reads back is what was meant.
        let back: VmConfig = serde_json::from_str(&vm.to_json().unwrap()).unwrap();
        assert_eq!(back, vm);
        assert!(matches!(
            vm_config(
                &TaskConfig {
                    hostname: "bad host".into(),
                    ..t
                },
                Path::new("/d"),
                dir
            ),
            Err(RunError::Hostname { .. })
        ));
    }

    #[test]
    fn the_vmm_is_started_with_its_configuration_directly_or_through_the_jailer() {
        let args = |c: &Command| -> Vec<String> {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let mut t = task();
        t.vmm = "/static/skiff-vmm".into();
        t.vcpus = 2;
        let file = Path::new("/run/skiff/task-1-1/vm.json");
        let direct = vmm_command(&t, file);
        assert_eq!(direct.get_program(), "/static/skiff-vmm");
        assert_eq!(args(&direct), ["--config", "/run/skiff/task-1-1/vm.json"]);

        t.jail = Some(JailSettings::for_task(
            "/static/skiff-jailer".into(),
            "task-7".into(),
            (10_001, 10_002),
            "/srv/jailer".into(),
            t.vcpus,
            t.memory_mib,
        ));
        let jailed = vmm_command(&t, file);
        assert_eq!(jailed.get_program(), "/static/skiff-jailer");
        assert_eq!(
            args(&jailed),
            [
                "--id",
                "task-7",
                "--exec-file",
                "/static/skiff-vmm",
                "--uid",
                "10001",
                "--gid",
                "10002",
                "--chroot-base",
                "/srv/jailer",
                "--cgroup",
                "memory=288M",
                "--cgroup",
                "cpus=2",
                "--cgroup",
                "pids=32",
                "--resource-limit",
                "no-file=128",
                "--vm-config",
                "/run/skiff/task-1-1/vm.json",
            ]
        );
    }

    /// A store holding `img:1` (a command, one layer) under `root`.
    fn store_with_an_image(root: &Path) -> PathBuf {
        use images::store::{ImageRecord, Layer};
        let dir = root.join("store");
        let store = Store::open(&dir).unwrap();
        let config = store
            .put_bytes(br#"{"os":"linux","architecture":"amd64","config":{"Cmd":["true"]}}"#)
            .unwrap();
        let layer = store.put_bytes(b"not really a tar").unwrap();
        let record = ImageRecord {
            manifest: store.put_bytes(b"manifest").unwrap(),
            config,
            layers: vec![Layer {
                digest: layer,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                size: 16,
            }],
        };
        store.tag("img:1", record).unwrap();
        dir
    }

    fn script(path: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_owned()
    }

    #[test]
    fn a_task_starts_its_vmm_with_the_configuration_it_wrote_jailed_or_not() {
        let root = std::env::temp_dir().join(format!("skiff-launch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let r = root.display();
        // Stand-ins that record what they were given and exit before guest-init could connect.
        let vmm = script(
            &root.join("vmm"),
            &format!(
                "echo \"$@\" > {r}/args; cp \"$2\" {r}/seen.json; echo vmm-failed >&2; exit 3\n"
            ),
        );
        let jailer = script(
            &root.join("jailer"),
            &format!(
                "if [ \"$1\" = --cleanup ]; then echo \"$@\" >> {r}/cleanups; exit 0; fi\n\
                 echo \"$@\" > {r}/args; for a; do last=$a; done; cp \"$last\" {r}/seen.json\n\
                 d=$(dirname \"$last\"); stat -c '%u:%g %a' $d $d/scratch.img $d/v.sock_1024 > {r}/owners\n\
                 exit 1\n"
            ),
        );
        let mut t = task();
        t.store = store_with_an_image(&root);
        t.image = "img:1".into();
        t.vmm = vmm.clone();
        t.kernel = vmm.clone();
        t.initramfs = vmm.clone();
        t.run_dir = root.join("run");
        t.ephemeral_storage = 32 << 20;
        t.boot_timeout = Duration::from_secs(20);

        let err = run_task(&t, None, |_| {}).unwrap_err();
        match &err {
            RunError::VmmDied { status, log } => {
                assert!(status.contains('3'), "{err}");
                assert!(log.contains("vmm-failed"), "{err}");
            }
            other => panic!("{other}"),
        }
        let args = std::fs::read_to_string(root.join("args")).unwrap();
        let (flag, file) = args.trim().split_once(' ').unwrap();
        assert_eq!(flag, "--config");
        let task_dir = Path::new(file).parent().unwrap().to_owned();
        assert!(task_dir.starts_with(&t.run_dir) && file.ends_with("/vm.json"));
        let seen = VmConfig::from_file(&root.join("seen.json")).unwrap();
        assert_eq!(seen.disks[1].path, task_dir.join("scratch.img"));
        assert_eq!(seen.vsock.unwrap().uds, task_dir.join("v.sock"));
        assert!(seen.disks[0].path.starts_with(&t.store) && seen.disks[0].read_only);
        assert!(!task_dir.exists(), "the task's directory is removed");

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("the jailed half needs root (chown): skipped");
            std::fs::remove_dir_all(&root).unwrap();
            return;
        }
        t.jail = Some(JailSettings::for_task(
            jailer,
            "launch-1".into(),
            (10_001, 10_002),
            root.join("jails"),
            t.vcpus,
            t.memory_mib,
        ));
        assert!(matches!(
            run_task(&t, None, |_| {}),
            Err(RunError::VmmDied { .. })
        ));
        let args = std::fs::read_to_string(root.join("args")).unwrap();
        assert!(args.starts_with("--id launch-1 --exec-file "), "{args}");
        assert!(args.contains(" --vm-config "), "{args}");
        // The task's directory (mode 0700), scratch disk and control socket were the jail's.
        let owners = std::fs::read_to_string(root.join("owners")).unwrap();
        let owners: Vec<&str> = owners.lines().collect();
        assert_eq!(owners[0], "10001:10002 700", "{owners:?}");
        assert!(owners[1].starts_with("10001:10002 "), "{owners:?}");
        assert!(owners[2].starts_with("10001:10002 "), "{owners:?}");
        // And the jail was cleaned up once the jailer had exited.
        assert_eq!(
            std::fs::read_to_string(root.join("cleanups")).unwrap(),
            format!("--cleanup --id launch-1 --chroot-base {r}/jails\n")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_jailed_vmm_pid_comes_from_the_jailer_log() {
        let path = std::env::temp_dir().join(format!("skiff-jlog-{}", std::process::id()));
        std::fs::write(
            &path,
            "skiff-jailer: VMM for t running as pid 4242\nboot: ...\n",
        )
        .unwrap();
        assert_eq!(jailed_vmm_pid(&path), Some(4242));
        std::fs::write(&path, "skiff-jailer: error: x\n").unwrap();
        assert_eq!(jailed_vmm_pid(&path), None);
        std::fs::remove_file(&path).unwrap();
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
