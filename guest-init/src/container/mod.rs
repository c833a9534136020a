//! Running a container task: guest-init builds the root filesystem from the image disk onto the
//! scratch disk, writes the files the runtime owns, starts the process (or an init process of ours that runs it, when the task asks) as PID 1 of a PID
//! namespace of its own (guest-init is out of its sight and reach, as Kata keeps its agent) and
//! in its own mount namespace after `pivot_root`, with the task's capabilities and limits, and
//! supervises it — its stdout and stderr go to the host as they
//! come, signals init receives (SIGTERM, SIGINT) are forwarded, every orphan is reaped, a stop
//! request is SIGTERM then SIGKILL after the stop timeout — and reports how it ended. When the
//! process ends, whatever it left running is killed (the task is the VM).

mod child;
pub mod init_process;
mod rootfs;
mod user;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_protocol::poll;
use skiff_protocol::vsock::VsockStream;
use skiff_protocol::{write_message, ContainerSpec, ExitStatus, FrameReader, Message, Stream};

use crate::control::{self, boot_ms, ControlError};
use crate::network;
use crate::settings::NetworkSettings;

/// Exit code of a task whose container could not be set up (as Docker's 125).
const SETUP_FAILED: i32 = 125;
/// Exit code of a task whose program exists but cannot be executed.
const NOT_EXECUTABLE: i32 = 126;
/// Exit code of a task whose program was not found.
const NOT_FOUND: i32 = 127;

/// Why a container did not start: the reason and the exit code reported for it.
struct StartFailure {
    reason: String,
    code: i32,
}

fn setup_failure(reason: impl std::fmt::Display) -> StartFailure {
    StartFailure {
        reason: reason.to_string(),
        code: SETUP_FAILED,
    }
}

/// Runs the container `spec` as task `id`, talking to the host on `stream`. Returns true if the
/// host asked to shut down (or went away) meanwhile.
pub fn run(
    stream: &mut VsockStream,
    id: u32,
    spec: &ContainerSpec,
    network: &NetworkSettings,
) -> Result<bool, ControlError> {
    println!(
        "skiff-init: container {id}: building its root from {}",
        spec.image_device
    );
    // Blocked before the fork, so that the process's SIGCHLD cannot be discarded (its default
    // action) before the signalfd exists, however soon it ends.
    let signals = signal_fd()?;
    let started = Instant::now();
    let result = match prepare(spec, network) {
        Ok((setup, env)) => {
            println!(
                "skiff-init: container {id}: root ready in {} ms",
                started.elapsed().as_millis()
            );
            start(spec, setup, env)
        }
        Err(failure) => Err(failure),
    };
    let outcome = report(stream, id, result, &signals, spec.stop_timeout_ms);
    // Whatever happened, nothing of the container survives it, its disk is released, and init's
    // signals are back to normal.
    kill_everything();
    rootfs::release();
    unblock_signals();
    outcome
}

/// Longest failure reason sent (a tar entry name in it can be long).
const MAX_REASON: usize = 4096;

/// Tells the host how the start went and, if the process runs, supervises it.
fn report(
    stream: &mut VsockStream,
    id: u32,
    result: Result<Process, StartFailure>,
    signals: &OwnedFd,
    stop_timeout_ms: u32,
) -> Result<bool, ControlError> {
    match result {
        Ok(process) => {
            write_message(
                stream,
                &Message::Started {
                    id,
                    boot_ms: boot_ms(),
                },
            )?;
            supervise(stream, id, process, signals, stop_timeout_ms)
        }
        Err(failure) => {
            eprintln!("skiff-init: container {id}: {}", failure.reason);
            let mut message = failure.reason;
            if message.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push_str("...");
            }
            write_message(stream, &Message::Error { id, message })?;
            write_message(
                stream,
                &Message::Exited {
                    id,
                    status: ExitStatus::Code(failure.code),
                },
            )?;
            Ok(false)
        }
    }
}

/// Builds the root and works out the process's environment and credentials.
fn prepare(
    spec: &ContainerSpec,
    network: &NetworkSettings,
) -> Result<(child::ChildSetup, Vec<(String, String)>), StartFailure> {
    let (root, stats) =
        rootfs::build(&spec.image_device, &spec.scratch_device).map_err(setup_failure)?;
    println!(
        "skiff-init: unpacked {} layers ({} entries, {} whiteouts, {} extended attributes, {} skipped)",
        stats.layers, stats.entries, stats.whiteouts, stats.xattrs, stats.xattrs_skipped
    );
    let passwd = rootfs::read_image_file(&root, "etc/passwd");
    let group = rootfs::read_image_file(&root, "etc/group");
    let credentials = user::resolve(&spec.user, &passwd, &group).map_err(setup_failure)?;

    let hostname = if !spec.hostname.is_empty() {
        spec.hostname.clone()
    } else {
        network
            .hostname
            .clone()
            .unwrap_or_else(|| "localhost".into())
    };
    set_hostname(&hostname).map_err(|e| setup_failure(format!("hostname {hostname:?}: {e}")))?;
    let address = network.address.map(|a| a.address);
    for (path, contents) in [
        ("etc/hostname", format!("{hostname}\n")),
        ("etc/hosts", network::hosts_file(&hostname, address)),
        ("etc/resolv.conf", network::resolv_conf(&network.dns)),
    ] {
        rootfs::write_runtime_file(&root, path, &contents).map_err(setup_failure)?;
    }
    std::fs::create_dir_all(child::HOST_VIEW)
        .map_err(|e| setup_failure(format!("{}: {e}", child::HOST_VIEW)))?;

    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|var| {
            let (k, v) = var.split_once('=').unwrap_or((var, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    // The environment is the host's Docker merge of the image's and the task's (PATH included);
    // only what the guest alone knows is added.
    for (key, value) in [("HOSTNAME", hostname), ("HOME", credentials.home.clone())] {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.to_owned(), value));
        }
    }
    let cwd = if spec.cwd.is_empty() {
        PathBuf::from("/")
    } else {
        Path::new("/").join(&spec.cwd)
    };
    Ok((
        child::ChildSetup {
            root,
            cwd,
            credentials,
            privileges: spec.privileges.clone(),
        },
        env,
    ))
}

fn set_hostname(name: &str) -> std::io::Result<()> {
    // SAFETY: `name` is valid for `name.len()` bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The running container process and its output pipes.
struct Process {
    pid: libc::pid_t,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks and executes the container's program.
fn start(
    spec: &ContainerSpec,
    setup: child::ChildSetup,
    env: Vec<(String, String)>,
) -> Result<Process, StartFailure> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| setup_failure("no program to run"))?;
    let (reason_read, reason_write) = pipe().map_err(setup_failure)?;
    let reason_fd = reason_write.as_raw_fd();
    // With an init process, this binary runs in the container (by descriptor: it is not in the
    // container's root) and starts the program as its child.
    let init_binary =
        match spec.init_process {
            true => Some(std::fs::File::open("/proc/self/exe").map_err(|e| {
                setup_failure(format!("opening skiff-init for the init process: {e}"))
            })?),
            false => None,
        };
    let namespace = PidNamespaceForChildren::enter().map_err(setup_failure)?;
    let mut cmd = match &init_binary {
        Some(binary) => {
            let mut cmd = Command::new(format!("/proc/self/fd/{}", binary.as_raw_fd()));
            cmd.arg0("skiff-init")
                .args([init_process::FLAG, "--"])
                .arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child of this single-threaded process, before exec.
    unsafe {
        cmd.pre_exec(move || child::enter(&setup, reason_fd));
    }
    let spawned = cmd.spawn();
    drop(namespace);
    drop(reason_write);
    let mut reason = String::new();
    let _ = std::fs::File::from(reason_read).read_to_string(&mut reason);
    match spawned {
        Ok(mut child) => {
            let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
                return Err(setup_failure("the process's output pipes are missing"));
            };
            Ok(Process {
                pid: child.id() as libc::pid_t,
                stdout: stdout.into(),
                stderr: stderr.into(),
            })
        }
        Err(_) if !reason.is_empty() => Err(setup_failure(format!(
            "cannot set up the container: {reason}"
        ))),
        Err(e) => {
            let code = match e.raw_os_error() {
                Some(libc::ENOENT) => NOT_FOUND,
                _ => NOT_EXECUTABLE,
            };
            let hint = if code == NOT_FOUND && !program.contains('/') {
                " (not found in the container's PATH)"
            } else {
                ""
            };
            Err(StartFailure {
                reason: format!("cannot execute {program:?}: {e}{hint}"),
                code,
            })
        }
    }
}

/// While it lives, init's children start in a new PID namespace (as its PID 1); dropped, they
/// start in init's own again (`setns` to the namespace init was started in). The container is
/// the only child made meanwhile.
struct PidNamespaceForChildren {
    own: OwnedFd,
}

impl PidNamespaceForChildren {
    fn enter() -> Result<Self, String> {
        let own = std::fs::File::open("/proc/self/ns/pid")
            .map_err(|e| format!("/proc/self/ns/pid: {e}"))?;
        // SAFETY: unshare has no pointer arguments.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWPID): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self { own: own.into() })
    }
}

impl Drop for PidNamespaceForChildren {
    fn drop(&mut self) {
        // SAFETY: `own` is an open namespace descriptor; setns has no pointer arguments.
        if unsafe { libc::setns(self.own.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            // Later children (exec requests) would land in the container's namespace, and fail
            // to fork once it has ended; say so on the console.
            eprintln!(
                "skiff-init: cannot return to init's PID namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// A signalfd for SIGCHLD, SIGTERM and SIGINT, which are blocked so that they arrive only there
/// (and stay blocked in init afterwards; the container's process empties its mask itself before
/// exec, in `child::enter`, as Rust's `Command` keeps the parent's).
fn signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: `set` is initialised by sigemptyset before use; the calls take valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unblocks what [`signal_fd`] blocked.
fn unblock_signals() {
    // SAFETY: `set` is initialised by sigemptyset; the calls take valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The signals waiting on a signalfd.
fn read_signals(fd: RawFd) -> Vec<i32> {
    let mut signals = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain data; zeroed is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is valid for writes of `size` bytes.
        let got =
            unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if got != size as isize {
            return signals;
        }
        signals.push(info.ssi_signo as i32);
    }
}

fn send_signal(pid: libc::pid_t, signal: i32) {
    // SAFETY: kill has no memory arguments; `pid` is our unreaped child.
    unsafe { libc::kill(pid, signal) };
}

/// SIGKILL to every process but init, and reap them all.
fn kill_everything() {
    // SAFETY: kill(-1) from PID 1 signals every other process; no memory arguments.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid <= 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Reaps whatever ended: the container's process (its status goes to `status`, and what it left
/// behind is killed, so its pipes reach their end), or orphans reparented to init.
fn reap(pid: libc::pid_t, status: &mut Option<ExitStatus>) {
    loop {
        let mut wait_status = 0;
        // SAFETY: `wait_status` is a valid, writable int.
        let reaped = unsafe { libc::waitpid(-1, &mut wait_status, libc::WNOHANG) };
        if reaped <= 0 {
            return;
        }
        if reaped == pid {
            *status = Some(if libc::WIFSIGNALED(wait_status) {
                ExitStatus::Signal(libc::WTERMSIG(wait_status))
            } else {
                ExitStatus::Code(libc::WEXITSTATUS(wait_status))
            });
            // SAFETY: kill(-1) from PID 1 signals every other process.
            unsafe { libc::kill(-1, libc::SIGKILL) };
        }
    }
}

/// Streams the process's output to the host and waits for it to end, serving stop and signal
/// requests meanwhile; then reports how it ended.
fn supervise(
    stream: &mut VsockStream,
    id: u32,
    process: Process,
    signals: &OwnedFd,
    stop_timeout_ms: u32,
) -> Result<bool, ControlError> {
    let mut pipes: Vec<(Stream, OwnedFd)> = vec![
        (Stream::Stdout, process.stdout),
        (Stream::Stderr, process.stderr),
    ];
    let mut status: Option<ExitStatus> = None;
    let mut kill_at: Option<Instant> = None;
    let mut reason: Option<String> = None;
    let mut host_open = true;
    let mut shutdown = false;
    let mut frames = FrameReader::new();
    let mut buf = vec![0u8; 64 << 10];
    // It may have ended before its SIGCHLD could be queued for the signalfd.
    reap(process.pid, &mut status);
    while status.is_none() || !pipes.is_empty() {
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .map(|(_, fd)| poll::readable(fd.as_raw_fd()))
            .collect();
        fds.push(poll::readable(signals.as_raw_fd()));
        if host_open {
            fds.push(poll::readable(stream.as_raw_fd()));
        }
        poll::wait(&mut fds, kill_at)?;
        if kill_at.is_some_and(|at| Instant::now() >= at) && status.is_none() {
            eprintln!(
                "skiff-init: container {id}: still running {} ms after SIGTERM, killing it",
                stop_timeout_ms
            );
            send_signal(process.pid, libc::SIGKILL);
            kill_at = None;
            reason = Some(format!(
                "still running {stop_timeout_ms} ms after SIGTERM: killed with SIGKILL"
            ));
        }
        let pipe_count = pipes.len();
        // Host requests first: a stop must not wait behind output.
        if host_open && fds.get(pipe_count + 1).is_some_and(|p| p.revents != 0) {
            let got = stream.read(&mut buf)?;
            if got == 0 {
                host_open = false;
                shutdown = true;
                send_signal(process.pid, libc::SIGKILL);
            }
            frames.push(&buf[..got]);
            while let Some(msg) = frames.next_message()? {
                match msg {
                    Message::Stop { id: sid } if sid == id && status.is_none() => {
                        send_signal(process.pid, libc::SIGTERM);
                        let timeout = Duration::from_millis(u64::from(stop_timeout_ms));
                        kill_at.get_or_insert(Instant::now() + timeout);
                    }
                    Message::Signal { id: sid, signal } if sid == id && status.is_none() => {
                        send_signal(process.pid, signal)
                    }
                    Message::Shutdown => {
                        shutdown = true;
                        send_signal(process.pid, libc::SIGKILL);
                    }
                    _ => {}
                }
            }
        }
        if fds.get(pipe_count).is_some_and(|p| p.revents != 0) {
            for signal in read_signals(signals.as_raw_fd()) {
                if signal != libc::SIGCHLD && status.is_none() {
                    send_signal(process.pid, signal);
                }
            }
            reap(process.pid, &mut status);
        }
        control::forward_output(stream, id, &mut pipes, &fds, &mut buf, host_open)?;
    }
    let status = status.unwrap_or(ExitStatus::Code(255));
    println!("skiff-init: container {id} ended: {status:?}");
    if host_open {
        if let Some(message) = reason {
            write_message(stream, &Message::Error { id, message })?;
        }
        write_message(stream, &Message::Exited { id, status })?;
    }
    Ok(shutdown)
}
