//! What `skiffd` and a task's monitor know of each other: the files in the task's directory and
//! the messages on the monitor's socket. One place for both sides.
//!
//! The task directory (`<data>/tasks/<id>/`) holds:
//! - `launch.json` ([`LaunchSpec`]): written by skiffd before it starts the monitor;
//! - `monitor.lock`: locked (`flock`) by the monitor for as long as it lives — skiffd tells a
//!   live monitor from a dead one by trying the lock, with no pid to be reused;
//! - `monitor.sock`: the monitor's socket. A client gets the current [`MonitorStatus`] as one
//!   JSON line at once and one more at every change; it may send [`MonitorRequest`] lines;
//! - `status.json`: the last [`MonitorStatus`], replaced atomically at every change (the exit
//!   record is there before the monitor exits);
//! - `container.log` (and `container.log.1` once rotated): the container's output in the CRI log
//!   format (`<RFC 3339 time> <stdout|stderr> <F|P> <line>`);
//! - `console.log`, `vmm.log`: the guest console and the VMM's own messages.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::runner::TaskConfig;
use crate::service::model::Millis;

pub const LAUNCH_FILE: &str = "launch.json";
pub const LOCK_FILE: &str = "monitor.lock";
pub const SOCKET_FILE: &str = "monitor.sock";
pub const STATUS_FILE: &str = "status.json";
pub const LOG_FILE: &str = "container.log";
pub const ROTATED_LOG_FILE: &str = "container.log.1";
/// The monitor's own messages (stderr).
pub const MONITOR_LOG_FILE: &str = "monitor.log";
/// Where the runner makes its working files (scratch disk, vsock sockets).
pub const RUN_DIR: &str = "run";

/// Longest line a client or the monitor reads on the socket.
pub const MAX_LINE: usize = 64 << 10;

/// Everything a monitor needs to run its task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    pub task_id: String,
    /// The runner's task, with its run directory inside the task directory.
    pub task: TaskConfig,
    /// The container log's size before it is rotated (one rotated file is kept).
    pub log_max_bytes: u64,
}

/// Where a task is, as its monitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Disks being made, the VM booting.
    Starting,
    /// The container's process runs.
    Running,
    /// A stop was requested.
    Stopping,
    /// The container ended (or never started) and the VM is gone: see the exit record.
    Exited,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The container's exit code (128 + N for signal N); None when it never ran.
    pub exit_code: Option<i32>,
    /// Why, in words: guest-init's reason, the VMM's end, a start failure.
    pub reason: Option<String>,
    /// The task never reached its container (image, disks, VM or guest-init failed).
    pub failed_to_start: bool,
    /// A stop was requested before it ended.
    pub stop_requested: bool,
    pub at: Millis,
}

/// The monitor's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatus {
    pub phase: Phase,
    /// The monitor's pid.
    pub pid: u32,
    /// When the container's process started.
    pub started_at: Option<Millis>,
    /// When a stop was requested.
    pub stopping_at: Option<Millis>,
    /// Resident memory of the VMM beyond guest RAM when the container started.
    pub vmm_overhead_kib: Option<u64>,
    pub exit: Option<ExitRecord>,
}

/// What a client may ask of the monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MonitorRequest {
    /// Stop the container (SIGTERM, SIGKILL after the stop timeout), then the VM.
    Stop,
}

/// The files of the task directory `dir`.
#[derive(Debug, Clone)]
pub struct TaskFiles {
    pub dir: PathBuf,
}

impl TaskFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn launch(&self) -> PathBuf {
        self.dir.join(LAUNCH_FILE)
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET_FILE)
    }
    pub fn status(&self) -> PathBuf {
        self.dir.join(STATUS_FILE)
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
    pub fn rotated_log(&self) -> PathBuf {
        self.dir.join(ROTATED_LOG_FILE)
    }
    pub fn monitor_log(&self) -> PathBuf {
        self.dir.join(MONITOR_LOG_FILE)
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join(RUN_DIR)
    }
}

/// Writes `value` as JSON to `path` atomically (temporary file, fsync, rename, fsync of the
/// directory): a reader sees the old file or the new one, never a part.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let data = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a JSON file written by [`write_json_atomic`]; None when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
