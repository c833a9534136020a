//! The executor of this host: images from the host's store (pulled when missing), one
//! `skiff-monitor` process per task in `<data>/tasks/<id>/`, talked to over its socket.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use images::store::registry::{pull, Credentials, PullOptions, Reference};
use images::store::Store;

use super::contract::{
    read_json, write_json_atomic, LaunchSpec, MonitorRequest, MonitorStatus, Phase, TaskFiles,
    MAX_LINE,
};
use super::runner::{JailSettings, TaskConfig};
use super::{ExecError, Executor, ImageInfo, LogFiles, Probe, StartRequest, Supervision};

/// How long removing a dead monitor's jail may take.
const JAIL_CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a monitor may take to say it is ready.
const MONITOR_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to keep trying to reach a live monitor's socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A monitor silent this long is checked on (it reports every change; a live but quiet task
/// is normal, so this only bounds how long a vanished one goes unnoticed).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Jailing settings of the executor.
#[derive(Debug, Clone)]
pub struct JailerSettings {
    pub jailer: PathBuf,
    pub chroot_base: PathBuf,
    /// MiB the jail's cgroup allows beyond the task's memory (the VMM's own needs).
    pub vmm_overhead_mib: u64,
    pub pids: u64,
    pub nofile: u64,
}

/// A registry skiffd may pull from with settings other than HTTPS with the built-in roots.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub plain_http: bool,
    pub ca_file: Option<PathBuf>,
    /// Other hosts whose token service may receive this registry's credentials.
    pub token_hosts: Vec<String>,
}

/// Everything the local executor is configured with.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub images_dir: PathBuf,
    pub tasks_dir: PathBuf,
    pub monitor: PathBuf,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub jail: Option<JailerSettings>,
    pub boot_timeout: Duration,
    pub log_max_bytes: u64,
    /// Per registry host (`host[:port]`).
    pub registries: HashMap<String, RegistrySettings>,
    /// Named registry credentials (`repositoryCredentials.credentialsParameter`) and the one
    /// registry (`host[:port]`) they may be sent to.
    pub credentials: HashMap<String, (String, Credentials)>,
}

/// The local executor.
pub struct LocalExecutor {
    settings: LocalSettings,
    /// One pull at a time per image name.
    pulls: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn task_dir_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExecError + '_ {
    move |source| ExecError::TaskDir {
        path: path.to_owned(),
        source,
    }
}

/// Whether a monitor holds the lock of `files` (trying the lock, released at once).
fn monitor_alive(files: &TaskFiles) -> bool {
    let Ok(file) = std::fs::File::open(files.lock()) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own.
    let got = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if got {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    }
    !got
}

impl LocalExecutor {
    pub fn new(settings: LocalSettings) -> Self {
        Self {
            settings,
            pulls: Mutex::new(HashMap::new()),
        }
    }

    fn files(&self, task_id: &str) -> TaskFiles {
        TaskFiles::new(self.settings.tasks_dir.join(task_id))
    }

    fn store(&self) -> Result<Store, ExecError> {
        Store::open(&self.settings.images_dir).map_err(|e| ExecError::Store(e.to_string()))
    }

    fn launch_spec(&self, r: &StartRequest, files: &TaskFiles) -> LaunchSpec {
        let vcpus = r.cpu.div_ceil(1024).clamp(1, 32) as u8;
        let task = TaskConfig {
            store: self.settings.images_dir.clone(),
            image: r.image.clone(),
            entrypoint: r.entrypoint.clone(),
            command: r.command.clone(),
            env: r.env.clone(),
            workdir: r.workdir.clone(),
            user: r.user.clone(),
            hostname: r.hostname.clone(),
            network: None,
            vcpus,
            memory_mib: u64::from(r.memory),
            ephemeral_storage: u64::from(r.ephemeral_gib) << 30,
            stop_timeout: Duration::from_secs(u64::from(r.stop_timeout_s)),
            privileges: r.privileges.clone(),
            init_process: r.init_process,
            boot_timeout: self.settings.boot_timeout,
            vmm: self.settings.vmm.clone(),
            kernel: self.settings.kernel.clone(),
            initramfs: self.settings.initramfs.clone(),
            run_dir: files.run_dir(),
            jail: self.settings.jail.as_ref().map(|j| JailSettings {
                jailer: j.jailer.clone(),
                id: r.task_id.clone(),
                uid: r.jail_uid,
                gid: r.jail_uid,
                chroot_base: j.chroot_base.clone(),
                memory_limit_mib: u64::from(r.memory) + j.vmm_overhead_mib,
                cpus: f64::from(r.cpu) / 1024.0,
                pids: j.pids,
                nofile: j.nofile,
            }),
            keep_logs_in: Some(files.dir.clone()),
        };
        LaunchSpec {
            task_id: r.task_id.clone(),
            task,
            log_max_bytes: self.settings.log_max_bytes,
        }
    }

    fn connect(&self, files: &TaskFiles) -> Option<UnixStream> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            if let Ok(stream) = UnixStream::connect(files.socket()) {
                return Some(stream);
            }
            if Instant::now() >= deadline || !monitor_alive(files) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Executor for LocalExecutor {
    fn check_image(&self, image: &str) -> Result<(), ExecError> {
        let store = self.store()?;
        if store.get(image).is_ok() {
            return Ok(());
        }
        match image.parse::<Reference>() {
            Ok(_)
                if image.contains('/')
                    && image
                        .split('/')
                        .next()
                        .is_some_and(|h| h.contains(['.', ':']) || h == "localhost") =>
            {
                Ok(())
            }
            _ => Err(ExecError::UnknownImage {
                image: image.to_owned(),
            }),
        }
    }

    fn has_image(&self, image: &str) -> bool {
        self.store().is_ok_and(|s| s.get(image).is_ok())
    }

    fn prepare_image(&self, image: &str, credentials: Option<&str>) -> Result<(), ExecError> {
        let gate = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            pulls.entry(image.to_owned()).or_default().clone()
        };
        let _one_at_a_time = gate.lock().unwrap_or_else(|p| p.into_inner());
        let store = self.store()?;
        if store.get(image).is_ok() {
            return Ok(());
        }
        let reference: Reference = image.parse().map_err(|_| ExecError::UnknownImage {
            image: image.to_owned(),
        })?;
        let registry = self.settings.registries.get(&reference.registry);
        let credentials = credentials
            .map(|name| match self.settings.credentials.get(name) {
                // Never to another registry (nor to a token realm the registry names
                // elsewhere: the registry client keeps Basic credentials to its host).
                Some((registry, c)) if *registry == reference.registry => Ok(c.clone()),
                _ => Err(ExecError::UnknownCredentials(name.to_owned())),
            })
            .transpose()?;
        let options = PullOptions {
            plain_http: registry.is_some_and(|r| r.plain_http),
            ca_file: registry.and_then(|r| r.ca_file.clone()),
            credentials,
            token_hosts: registry.map(|r| r.token_hosts.clone()).unwrap_or_default(),
        };
        pull(&store, &reference, image, &options).map_err(|e| ExecError::Pull(e.to_string()))?;
        Ok(())
    }

    fn start(&self, request: &StartRequest) -> Result<(), ExecError> {
        let files = self.files(&request.task_id);
        std::fs::create_dir_all(&files.dir).map_err(task_dir_err(&files.dir))?;
        // The launch spec holds the task's environment: root's eyes only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&files.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(task_dir_err(&files.dir))?;
        }
        write_json_atomic(&files.launch(), &self.launch_spec(request, &files))
            .map_err(task_dir_err(&files.launch()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(files.monitor_log())
            .map_err(task_dir_err(&files.monitor_log()))?;
        let monitor_err = |message: String| ExecError::Monitor {
            monitor: self.settings.monitor.clone(),
            message,
        };
        let mut command = Command::new(&self.settings.monitor);
        command
            .arg("--task-dir")
            .arg(&files.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: setsid in the forked child before exec: async-signal-safe, no allocation.
        unsafe {
            command.pre_exec(|| {
                // Its own session: no terminal, no signals meant for skiffd's process group.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| monitor_err(e.to_string()))?;
        let stdout = child.stdout.take();
        // The monitor prints "ready" once its lock, socket and status exist.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("monitor-ready".into())
            .spawn(move || {
                let mut line = String::new();
                if let Some(stdout) = stdout {
                    let _ = BufReader::new(stdout).take(256).read_line(&mut line);
                }
                let _ = tx.send(line);
            });
        let answer = match reader {
            Ok(_) => rx.recv_timeout(MONITOR_READY_TIMEOUT).ok(),
            Err(_) => None,
        };
        let ready = answer.as_deref().is_some_and(|l| l.trim() == "ready");
        if answer.is_none() {
            // Never half-started: a monitor that was not ready in time is killed, so that no
            // VM runs that nobody follows.
            let _ = child.kill();
        }
        // A reaper collects the monitor when it ends (after a skiffd restart, init does).
        let _ = std::thread::Builder::new()
            .name("monitor-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
        if ready {
            return Ok(());
        }
        // A monitor of this task already runs (a launch that a killed skiffd had started):
        // it is the task's, and is followed as it is.
        if answer.is_some() && monitor_alive(&files) {
            return Ok(());
        }
        match answer {
            Some(_) => {
                let log = std::fs::read_to_string(files.monitor_log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                Err(monitor_err(format!(
                    "it exited before it was ready: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("; ")
                )))
            }
            None => Err(monitor_err(format!(
                "not ready within {MONITOR_READY_TIMEOUT:?}; killed"
            ))),
        }
    }

    fn supervise(&self, task_id: &str, on_status: &mut dyn FnMut(&MonitorStatus)) -> Supervision {
        let files = self.files(task_id);
        // Until the monitor is gone: a live monitor is never given up on (its VM would run on
        // with nobody following it).
        loop {
            let Some(stream) = self.connect(&files) else {
                if monitor_alive(&files) {
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                break;
            };
            let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) => break,
                    Ok(_) => {
                        // A line that does not parse is skipped; the status file has the truth.
                        if let Ok(status) = serde_json::from_slice::<MonitorStatus>(&line) {
                            on_status(&status);
                            if status.phase == Phase::Exited {
                                return Supervision::Ended(status);
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if !monitor_alive(&files) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if !monitor_alive(&files) {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        // The monitor is gone: its status file says how the task ended, if it could.
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while monitor_alive(&files) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        match self.probe(task_id) {
            Probe::Exited(status) => {
                on_status(&status);
                Supervision::Ended(status)
            }
            Probe::Alive => Supervision::Lost("the task's monitor stopped answering".into()),
            Probe::NeverStarted | Probe::Died(_) => Supervision::Lost(format!(
                "the task's monitor died ({})",
                last_words(&files.monitor_log())
            )),
        }
    }

    fn stop(&self, task_id: &str) -> Result<(), ExecError> {
        let files = self.files(task_id);
        if !monitor_alive(&files) {
            return Err(ExecError::NotRunning);
        }
        let mut stream = UnixStream::connect(files.socket())?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut line = serde_json::to_vec(&MonitorRequest::Stop).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        Ok(())
    }

    fn probe(&self, task_id: &str) -> Probe {
        let files = self.files(task_id);
        if monitor_alive(&files) {
            return Probe::Alive;
        }
        match read_json::<MonitorStatus>(&files.status()) {
            Ok(Some(status)) if status.exit.is_some() => Probe::Exited(status),
            Ok(Some(status)) => Probe::Died(Some(status)),
            Ok(None) if files.lock().exists() => Probe::Died(None),
            Ok(None) => Probe::NeverStarted,
            Err(_) => Probe::Died(None),
        }
    }

    fn release(&self, task_id: &str) {
        let files = self.files(task_id);
        let _ = std::fs::remove_dir_all(files.run_dir());
        // The monitor's runner removes its jail itself; this is for a monitor that died first.
        if let Some(jail) = &self.settings.jail {
            let child = Command::new(&jail.jailer)
                .args(["--cleanup", "--id", task_id, "--chroot-base"])
                .arg(&jail.chroot_base)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(mut child) = child {
                let deadline = Instant::now() + JAIL_CLEANUP_TIMEOUT;
                while matches!(child.try_wait(), Ok(None)) {
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn remove(&self, task_id: &str) {
        let files = self.files(task_id);
        if !monitor_alive(&files) {
            let _ = std::fs::remove_dir_all(&files.dir);
        }
    }

    fn log_files(&self, task_id: &str) -> LogFiles {
        let files = self.files(task_id);
        LogFiles {
            current: files.log(),
            rotated: files.rotated_log(),
        }
    }

    fn images(&self) -> Result<Vec<ImageInfo>, ExecError> {
        let list = self
            .store()?
            .list()
            .map_err(|e| ExecError::Store(e.to_string()))?;
        Ok(list
            .into_iter()
            .map(|(name, record)| ImageInfo {
                name,
                digest: record.manifest.to_string(),
                size: record.layers.iter().map(|l| l.size).sum(),
            })
            .collect())
    }

    fn remove_image(&self, name: &str) -> Result<(), ExecError> {
        let store = self.store()?;
        if store.get(name).is_err() {
            return Err(ExecError::NoSuchImage(name.to_owned()));
        }
        store
            .remove(name)
            .map_err(|e| ExecError::Store(e.to_string()))?;
        Ok(())
    }
}

/// The last lines of a monitor's own log, for a reason.
fn last_words(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        "it left no message".into()
    } else {
        lines.into_iter().rev().collect::<Vec<_>>().join("; ")
    }
}
