//! The per-task monitor process (`skiff-monitor`): between skiffd and one VMM, the role
//! containerd's shims and Podman's conmon play. It owns the VMM (through the runner), the control
//! channel, the container's log and the exit record, and it outlives skiffd: it runs in its own
//! session, and everything skiffd needs to find it again is in the task directory
//! ([`super::contract`]). It knows nothing of tenants, capacity or HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::contract::{
    read_json, write_json_atomic, ExitRecord, LaunchSpec, MonitorRequest, MonitorStatus, Phase,
    TaskFiles, MAX_LINE,
};
use super::logs::LogWriter;
use crate::executor::guest_control::ContainerEvent;
use crate::executor::runner::run_task;
use crate::service::model::now_ms;

/// Errors setting the monitor up (the task's own failures go into its exit record).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("launch spec {0}: missing")]
    NoSpec(std::path::PathBuf),
    #[error("another monitor holds {0}")]
    Locked(std::path::PathBuf),
    #[error("{0}")]
    Os(#[from] std::io::Error),
}

/// How long a client may keep a status line waiting before it is dropped.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Clients at once (skiffd needs one; a few more for tools).
const MAX_CLIENTS: usize = 8;

/// The status, its file and the clients told of every change.
struct Reporter {
    files: TaskFiles,
    status: Mutex<MonitorStatus>,
    clients: Mutex<Vec<UnixStream>>,
}

fn line(status: &MonitorStatus) -> Vec<u8> {
    let mut line = serde_json::to_vec(status).unwrap_or_default();
    line.push(b'\n');
    line
}

impl Reporter {
    fn update(&self, change: impl FnOnce(&mut MonitorStatus)) {
        let snapshot = {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut status);
            status.clone()
        };
        if let Err(e) = write_json_atomic(&self.files.status(), &snapshot) {
            eprintln!(
                "skiff-monitor: cannot write {}: {e}",
                self.files.status().display()
            );
        }
        let bytes = line(&snapshot);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain_mut(|c| c.write_all(&bytes).is_ok());
    }

    fn add_client(&self, mut client: UnixStream) {
        let _ = client.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        // Under the clients lock, so no change can slip between this line and the next.
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let current = line(&self.status.lock().unwrap_or_else(|p| p.into_inner()));
        if clients.len() >= MAX_CLIENTS {
            // Clients that went away are found by writing to them (the status line again).
            clients.retain_mut(|c| c.write_all(&current).is_ok());
        }
        if clients.len() < MAX_CLIENTS && client.write_all(&current).is_ok() {
            clients.push(client);
        }
    }
}

/// Takes the task directory's lock for the life of this process.
fn lock(files: &TaskFiles) -> Result<std::fs::File, MonitorError> {
    let path = files.lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| MonitorError::File {
            what: "lock",
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(MonitorError::Locked(path));
    }
    Ok(file)
}

/// A pipe whose read end becomes readable when a stop is requested (once).
struct StopPipe {
    read: OwnedFd,
    write: OwnedFd,
    requested: AtomicBool,
}

impl StopPipe {
    fn new() -> std::io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two new descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self {
            read,
            write,
            requested: AtomicBool::new(false),
        })
    }

    /// Requests the stop; later requests do nothing (a second byte would make the runner give
    /// up on the container).
    fn request(&self) {
        if !self.requested.swap(true, Ordering::SeqCst) {
            // SAFETY: writes one byte from a valid buffer to a descriptor we own.
            unsafe { libc::write(self.write.as_raw_fd(), b"s".as_ptr().cast(), 1) };
        }
    }
}

/// Serves one client: its requests, until it hangs up.
fn serve_client(client: UnixStream, stop: &StopPipe) {
    let mut reader = BufReader::new(client);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !buf.ends_with(b"\n") {
            return; // longer than any request: a confused client
        }
        if let Ok(MonitorRequest::Stop) = serde_json::from_slice(&buf) {
            stop.request();
        }
    }
}

fn accept_loop(listener: UnixListener, reporter: Arc<Reporter>, stop: Arc<StopPipe>) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(reader) = client.try_clone() else {
            continue;
        };
        reporter.add_client(client);
        let stop = stop.clone();
        let _ = std::thread::Builder::new()
            .name("client".into())
            .stack_size(64 << 10)
            .spawn(move || serve_client(reader, &stop));
    }
}

/// Blocks SIGTERM and SIGINT and turns them into stop requests (a monitor told to stop stops its
/// task gracefully). SIGHUP is ignored: the monitor has no terminal.
fn watch_signals(stop: Arc<StopPipe>) -> std::io::Result<()> {
    // SAFETY: the set is initialised by sigemptyset; the calls take valid pointers; SIG_IGN is a
    // valid disposition.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 << 10)
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: `set` is a valid signal set and `signal` is writable.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                stop.request();
            }
        })?;
    Ok(())
}

/// Sets the monitor up in `task_dir`; calls `ready` once skiffd can rely on it (lock held,
/// socket bound, status written), then runs the task to its end. Returns the process's exit
/// status.
pub fn run(task_dir: &Path, ready: impl FnOnce()) -> Result<i32, MonitorError> {
    let files = TaskFiles::new(task_dir);
    let _lock = lock(&files)?;
    let spec: LaunchSpec = read_json(&files.launch())
        .map_err(|source| MonitorError::File {
            what: "launch spec",
            path: files.launch(),
            source,
        })?
        .ok_or_else(|| MonitorError::NoSpec(files.launch()))?;
    let stop = Arc::new(StopPipe::new()?);
    watch_signals(stop.clone())?;
    let socket = files.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| MonitorError::File {
        what: "socket",
        path: socket.clone(),
        source,
    })?;
    let reporter = Arc::new(Reporter {
        files: files.clone(),
        status: Mutex::new(MonitorStatus {
            phase: Phase::Starting,
            pid: std::process::id(),
            started_at: None,
            stopping_at: None,
            vmm_overhead_kib: None,
            exit: None,
        }),
        clients: Mutex::new(Vec::new()),
    });
    reporter.update(|_| {});
    {
        let (reporter, stop) = (reporter.clone(), stop.clone());
        std::thread::Builder::new()
            .name("accept".into())
            .stack_size(64 << 10)
            .spawn(move || accept_loop(listener, reporter, stop))?;
    }
    let mut log = LogWriter::open(&files.log(), &files.rotated_log(), spec.log_max_bytes).map_err(
        |source| MonitorError::File {
            what: "log",
            path: files.log(),
            source,
        },
    )?;
    ready();

    let config = spec.task;
    let mut log_error = None;
    let result = run_task(&config, Some(stop.read.as_fd()), |event| match event {
        ContainerEvent::Started { .. } => {
            reporter.update(|s| {
                s.phase = Phase::Running;
                s.started_at = Some(now_ms());
            });
        }
        ContainerEvent::Output(stream, data) => {
            if let Err(e) = log.write(stream, data, now_ms()) {
                log_error.get_or_insert(e);
            }
        }
        ContainerEvent::StopRequested => reporter.update(|s| {
            s.phase = Phase::Stopping;
            s.stopping_at = Some(now_ms());
        }),
    });
    let _ = log.finish(now_ms());
    if let Some(e) = log_error {
        eprintln!("skiff-monitor: the container log is incomplete: {e}");
    }
    let started = reporter
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .started_at
        .is_some();
    let exit = match &result {
        Ok(outcome) => ExitRecord {
            exit_code: Some(outcome.exit_code()),
            reason: outcome.container.reason.clone().map(bounded),
            failed_to_start: outcome.to_started.is_none(),
            stop_requested: outcome.container.stop_requested,
            at: now_ms(),
        },
        Err(e) => ExitRecord {
            exit_code: None,
            reason: Some(bounded(e.to_string())),
            failed_to_start: !started,
            stop_requested: stop.requested.load(Ordering::SeqCst),
            at: now_ms(),
        },
    };
    let overhead = result.as_ref().ok().and_then(|o| o.vmm_overhead_kib);
    reporter.update(|s| {
        s.phase = Phase::Exited;
        s.vmm_overhead_kib = overhead;
        s.exit = Some(exit);
    });
    // The clients have their last line; closing the socket tells them this was the end.
    let _ = std::fs::remove_file(&socket);
    Ok(0)
}

/// Longest reason kept in an exit record (the full story is in the task's logs).
const MAX_REASON: usize = 2048;

/// `text` cut to [`MAX_REASON`] bytes at a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
