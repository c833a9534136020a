//! The executor: what makes a task real on this host. skiffd's service layer asks it to prepare
//! an image, start a task's monitor, follow it, stop it and clean up after it; the monitor
//! ([`monitor`]) runs the task through the runner ([`crate::executor::runner`]), the jailer and the VMM.
//! [`Executor`] is the seam: [`local::LocalExecutor`] is the real one; the service's tests use a
//! fake.

pub mod contract;
pub mod guest_control;
pub mod local;
pub mod logs;
pub mod monitor;
pub mod privileges;
pub mod runner;

use std::path::PathBuf;

use contract::MonitorStatus;

/// Errors of the executor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("image {image} is not in the image store and names no registry (HOST[:PORT]/REPOSITORY[:TAG])")]
    UnknownImage { image: String },
    #[error("CannotPullContainerError: {0}")]
    Pull(String),
    #[error("registry credentials {0:?} are not in skiffd's configuration")]
    UnknownCredentials(String),
    #[error("task directory {path}: {source}")]
    TaskDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the task's monitor {monitor}: {message}")]
    Monitor { monitor: PathBuf, message: String },
    #[error("image {0} is not in the image store")]
    NoSuchImage(String),
    #[error("image store: {0}")]
    Store(String),
    #[error("the task's monitor is not running")]
    NotRunning,
    #[error("the task's monitor: {0}")]
    Io(#[from] std::io::Error),
}

/// What the service asks to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub task_id: String,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub command: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: String,
    /// CPU units (1024 = one vCPU) and MiB.
    pub cpu: u32,
    pub memory: u32,
    pub ephemeral_gib: u32,
    pub stop_timeout_s: u32,
    /// The jail's uid and gid.
    pub jail_uid: u32,
    /// What the container's process may do.
    pub privileges: privileges::PrivilegeSettings,
    /// Whether an init process runs the program (`--init`, `initProcessEnabled`).
    pub init_process: bool,
}

/// What is known of a task's monitor without talking to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The monitor runs.
    Alive,
    /// The monitor ended and left its exit record.
    Exited(MonitorStatus),
    /// No monitor was ever started for the task.
    NeverStarted,
    /// A monitor was started and is gone without an exit record (the last status it left, if
    /// any).
    Died(Option<MonitorStatus>),
}

/// How following a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supervision {
    /// The task ended: the final status, with its exit record.
    Ended(MonitorStatus),
    /// The monitor is gone without saying how the task ended.
    Lost(String),
}

/// The container log's files, newest first.
#[derive(Debug, Clone)]
pub struct LogFiles {
    pub current: PathBuf,
    pub rotated: PathBuf,
}

/// An image in the host's store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub name: String,
    pub digest: String,
    /// Compressed size of its layers, bytes.
    pub size: u64,
}

/// What makes tasks real. Calls block (the service calls them from its own threads).
pub trait Executor: Send + Sync + 'static {
    /// Fails at once, without network, for an image that is neither stored nor pullable.
    fn check_image(&self, image: &str) -> Result<(), ExecError>;
    /// Whether `image` is in the store.
    fn has_image(&self, image: &str) -> bool;
    /// Makes sure `image` is in the store, pulling it (with the named credentials) if missing.
    fn prepare_image(&self, image: &str, credentials: Option<&str>) -> Result<(), ExecError>;
    /// Starts the task's monitor; returns once it runs on its own.
    fn start(&self, request: &StartRequest) -> Result<(), ExecError>;
    /// Follows the task's monitor, passing each status, until the task ended or the monitor is
    /// gone.
    fn supervise(&self, task_id: &str, on_status: &mut dyn FnMut(&MonitorStatus)) -> Supervision;
    /// Asks the task's monitor to stop the task.
    fn stop(&self, task_id: &str) -> Result<(), ExecError>;
    fn probe(&self, task_id: &str) -> Probe;
    /// Frees what a stopped task held on the host (its scratch disk, its jail); its logs stay.
    fn release(&self, task_id: &str);
    /// Forgets a task entirely (its retention ended).
    fn remove(&self, task_id: &str);
    fn log_files(&self, task_id: &str) -> LogFiles;
    fn images(&self) -> Result<Vec<ImageInfo>, ExecError>;
    /// Forgets an image's name (its blobs go at the store's next gc).
    fn remove_image(&self, name: &str) -> Result<(), ExecError>;
}
