//! The guest end of the host↔guest control channel: init connects to the host over vsock
//! (cid 2, port [`GUEST_CONTROL_PORT`]), says `Hello` with its boot time, then runs the commands
//! the host asks for, streaming their stdout and stderr and reporting how they ended, until the
//! host says `Shutdown` or closes the connection.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};

use skiff_protocol::poll;
use skiff_protocol::vsock::VsockStream;

use crate::container;
use crate::settings::NetworkSettings;
use skiff_protocol::{
    read_message, write_message, ExitStatus, FrameReader, Message, ProtocolError, Stream,
    GUEST_CONTROL_PORT, HOST_CID, VERSION,
};

/// Errors on the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot connect to the host over vsock (cid {HOST_CID}, port {GUEST_CONTROL_PORT}): {0}"
    )]
    Connect(#[source] std::io::Error),
    #[error("control channel: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("control channel: {0}")]
    Io(#[from] std::io::Error),
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Connects to the host, says hello, and serves commands until the host is done.
pub fn serve(kernel: &str, network: &NetworkSettings) -> Result<(), ControlError> {
    let mut stream =
        VsockStream::connect(HOST_CID, GUEST_CONTROL_PORT).map_err(ControlError::Connect)?;
    write_message(
        &mut stream,
        &Message::Hello {
            version: VERSION,
            boot_ms: boot_ms(),
            kernel: kernel.to_owned(),
        },
    )?;
    println!("skiff-init: control channel to the host is up");
    loop {
        match read_message(&mut stream)? {
            None | Some(Message::Shutdown) => return Ok(()),
            Some(Message::Exec { id, argv, env, cwd }) => {
                if run_command(&mut stream, id, &argv, &env, &cwd)? {
                    return Ok(());
                }
            }
            Some(Message::RunContainer { id, spec }) => {
                if container::run(&mut stream, id, &spec, network)? {
                    return Ok(());
                }
            }
            // Signals, stops or input for a command that is not running: nothing to do.
            Some(
                Message::Signal { .. }
                | Message::Stop { .. }
                | Message::Stdin { .. }
                | Message::StdinClose { .. },
            ) => {}
            Some(other) => write_message(
                &mut stream,
                &Message::Error {
                    id: 0,
                    message: format!("unexpected {} message from the host", other.name()),
                },
            )?,
        }
    }
}

/// Runs one command; returns true if the host asked to shut down meanwhile.
fn run_command(
    stream: &mut VsockStream,
    id: u32,
    argv: &[String],
    env: &[String],
    cwd: &str,
) -> Result<bool, ControlError> {
    let mut child = match spawn(argv, env, cwd) {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot run {:?}: {e}", argv.first().map_or("", |s| s));
            write_message(stream, &Message::Error { id, message })?;
            write_message(
                stream,
                &Message::Exited {
                    id,
                    status: ExitStatus::Code(127),
                },
            )?;
            return Ok(false);
        }
    };
    let mut pipes: Vec<(Stream, OwnedFd)> = Vec::new();
    if let Some(out) = child.stdout.take() {
        pipes.push((Stream::Stdout, OwnedFd::from(out)));
    }
    if let Some(err) = child.stderr.take() {
        pipes.push((Stream::Stderr, OwnedFd::from(err)));
    }
    let mut stdin = child.stdin.take();
    let mut frames = FrameReader::new();
    let mut host_open = true;
    let mut shutdown = false;
    let mut buf = vec![0u8; 64 << 10];
    while !pipes.is_empty() {
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .map(|(_, fd)| poll::readable(fd.as_raw_fd()))
            .collect();
        if host_open {
            fds.push(poll::readable(stream.as_raw_fd()));
        }
        poll::wait(&mut fds, None)?;
        // Host messages first: a signal must not wait behind output.
        if host_open && fds.last().is_some_and(|p| p.revents != 0) {
            let got = stream.read(&mut buf)?;
            if got == 0 {
                host_open = false;
                shutdown = true;
                kill(&child, libc::SIGKILL);
            }
            frames.push(&buf[..got]);
            while let Some(msg) = frames.next_message()? {
                match msg {
                    Message::Signal { id: sid, signal } if sid == id => kill(&child, signal),
                    Message::Stdin { id: sid, data } if sid == id => {
                        if let Some(input) = stdin.as_mut() {
                            if input.write_all(&data).is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Message::StdinClose { id: sid } if sid == id => stdin = None,
                    Message::Shutdown => {
                        shutdown = true;
                        kill(&child, libc::SIGKILL);
                    }
                    _ => {}
                }
            }
        }
        forward_output(stream, id, &mut pipes, &fds, &mut buf, host_open)?;
    }
    drop(stdin);
    let status = wait(&mut child);
    reap_orphans();
    if host_open {
        write_message(stream, &Message::Exited { id, status })?;
    }
    Ok(shutdown)
}

fn spawn(argv: &[String], env: &[String], cwd: &str) -> std::io::Result<Child> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(program);
    crate::process::with_empty_signal_mask(&mut cmd)
        .args(args)
        .env_clear();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for var in env {
        let (k, v) = var.split_once('=').unwrap_or((var, ""));
        cmd.env(k, v);
    }
    cmd.current_dir(if cwd.is_empty() { "/" } else { cwd })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Sends what the readable pipes (those `fds` says are ready, in the same order) hold to the
/// host as `Output` of command `id` (dropped when the host is gone); removes pipes at their end.
pub fn forward_output(
    stream: &mut VsockStream,
    id: u32,
    pipes: &mut Vec<(Stream, OwnedFd)>,
    fds: &[libc::pollfd],
    buf: &mut [u8],
    host_open: bool,
) -> Result<(), ControlError> {
    let mut closed = Vec::new();
    for (i, (kind, fd)) in pipes.iter().enumerate() {
        if fds.get(i).is_none_or(|p| p.revents == 0) {
            continue;
        }
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let got = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(got) {
            Ok(0) => closed.push(i),
            Ok(got) if host_open => write_message(
                stream,
                &Message::Output {
                    id,
                    stream: *kind,
                    data: buf[..got].to_vec(),
                },
            )?,
            Ok(_) => {}
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => closed.push(i),
        }
    }
    for i in closed.into_iter().rev() {
        pipes.remove(i);
    }
    Ok(())
}

fn kill(child: &Child, signal: i32) {
    // SAFETY: kill has no memory arguments; the child is not reaped yet, so its pid is ours.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

/// Waits for the command and says how it ended.
fn wait(child: &mut Child) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(255),
        },
        Err(_) => ExitStatus::Code(255),
    }
}

/// As PID 1, collects every orphan that ended meanwhile.
fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_spawn_with_the_given_environment_and_directory() {
        let mut child = spawn(
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo $FOO; pwd; exit 3".into(),
            ],
            &["FOO=bar".into()],
            "/tmp",
        )
        .unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "bar\n/tmp\n");
        assert_eq!(wait(&mut child), ExitStatus::Code(3));
        assert!(spawn(&[], &[], "/").is_err());
        assert!(spawn(&["/nonexistent".into()], &[], "/").is_err());
    }
}
