//! The host end of the control channel to guest-init.
//!
//! guest-init connects at boot to host port [`GUEST_CONTROL_PORT`] over vsock, which the VMM
//! forwards to the Unix socket `<vsock uds>_1024` (see `skiff-vmm --vsock`). [`ControlListener`]
//! listens there; once guest-init has said `Hello`, [`GuestControl`] runs commands in the guest
//! and collects their output and exit status.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::os::fd::BorrowedFd;

use skiff_protocol::poll;
use skiff_protocol::{
    read_message, write_message, ContainerSpec, ExitStatus, FrameReader, Message, ProtocolError,
    Stream, GUEST_CONTROL_PORT,
};

/// Errors on the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen for guest-init on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest-init did not connect within {0:?}")]
    Timeout(Duration),
    #[error("control channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("control channel: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("guest-init closed the control channel")]
    Closed,
    #[error("guest-init sent {0} where Hello was expected")]
    NoHello(&'static str),
    #[error("guest-init: {0}")]
    Guest(String),
    #[error("the container was still running {0:?} after the stop request")]
    StopUnanswered(Duration),
    #[error("stopped again while stopping: giving up on the container")]
    Aborted,
    #[error("the command did not end within {0:?}")]
    ExecTimeout(Duration),
    #[error("the command's {0} went past {MAX_EXEC_OUTPUT} bytes")]
    OutputTooLarge(&'static str),
}

/// How long guest-init may take to say hello once connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long past its stop timeout a container may take to be reported gone.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long guest-init may take to close the channel after `Shutdown` (in all, however it
/// trickles bytes meanwhile).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a command run with [`GuestControl::exec`] may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(600);
/// The most output of each stream [`GuestControl::exec`] collects.
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// Where guest-init's connection arrives for a VMM whose vsock socket is `vsock_uds`.
pub fn control_socket_path(vsock_uds: &Path) -> PathBuf {
    let mut path = vsock_uds.as_os_str().to_owned();
    path.push(format!("_{GUEST_CONTROL_PORT}"));
    PathBuf::from(path)
}

/// Listens for guest-init's connection.
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlListener {
    /// Listens on `<vsock_uds>_1024` (replacing a stale socket file there).
    pub fn bind(vsock_uds: &Path) -> Result<Self, ControlError> {
        let path = control_socket_path(vsock_uds);
        let listen_err = |source| ControlError::Listen {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(listen_err)?;
        Ok(Self { listener, path })
    }

    /// Waits up to `timeout` for guest-init to connect and say hello.
    pub fn accept(&self, timeout: Duration) -> Result<GuestControl, ControlError> {
        let mut pfd = libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return Err(ControlError::Timeout(timeout));
        }
        let (mut stream, _) = self.listener.accept()?;
        stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
        let hello = read_message(&mut stream)?.ok_or(ControlError::Closed)?;
        stream.set_read_timeout(None)?;
        match hello {
            Message::Hello {
                version,
                boot_ms,
                kernel,
            } => Ok(GuestControl {
                stream,
                version,
                boot_ms,
                kernel,
                next_id: 1,
            }),
            other => Err(ControlError::NoHello(other.name())),
        }
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
    /// Set when guest-init could not start the command.
    pub error: Option<String>,
}

/// What happens while a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEvent<'a> {
    /// Its process started, this many ms after the guest kernel did.
    Started { boot_ms: u64 },
    /// A piece of its output.
    Output(Stream, &'a [u8]),
    /// A stop was requested.
    StopRequested,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerOutcome {
    pub status: ExitStatus,
    /// Why, when guest-init gave a reason (a task that could not start, a kill after the stop
    /// timeout).
    pub reason: Option<String>,
    /// Whether a stop was requested.
    pub stop_requested: bool,
}

/// A connected guest-init.
pub struct GuestControl {
    stream: UnixStream,
    /// The protocol version guest-init speaks.
    pub version: u8,
    /// Milliseconds from the guest kernel's start to guest-init's hello.
    pub boot_ms: u64,
    /// The guest kernel's release.
    pub kernel: String,
    next_id: u32,
}

impl GuestControl {
    /// Runs `argv` in the guest, passing each piece of output to `on_output` as it arrives
    /// (an `Err` from it ends the wait); returns how the command ended and the error
    /// guest-init reported, if any. Fails once `timeout` has passed.
    pub fn exec_streaming(
        &mut self,
        argv: &[String],
        env: &[String],
        cwd: &str,
        timeout: Duration,
        mut on_output: impl FnMut(Stream, &[u8]) -> Result<(), ControlError>,
    ) -> Result<(ExitStatus, Option<String>), ControlError> {
        let deadline = std::time::Instant::now() + timeout;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        write_message(
            &mut self.stream,
            &Message::Exec {
                id,
                argv: argv.to_vec(),
                env: env.to_vec(),
                cwd: cwd.to_owned(),
            },
        )?;
        let mut error = None;
        let mut frames = FrameReader::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            while let Some(msg) = frames.next_message()? {
                match msg {
                    Message::Output {
                        id: oid,
                        stream,
                        data,
                    } if oid == id => on_output(stream, &data)?,
                    Message::Exited { id: eid, status } if eid == id => return Ok((status, error)),
                    Message::Error { id: eid, message } if eid == id => error = Some(message),
                    Message::Error { id: 0, message } => return Err(ControlError::Guest(message)),
                    _ => {}
                }
            }
            let mut fds = [poll::readable(self.stream.as_raw_fd())];
            poll::wait(&mut fds, Some(deadline))?;
            if std::time::Instant::now() >= deadline {
                return Err(ControlError::ExecTimeout(timeout));
            }
            if fds[0].revents != 0 {
                self.receive(&mut frames, &mut buf)?;
            }
        }
    }

    /// Runs `argv` in the guest and collects its output (at most [`MAX_EXEC_OUTPUT`] bytes of
    /// each stream, within [`EXEC_TIMEOUT`]).
    pub fn exec(&mut self, argv: &[String]) -> Result<CommandOutput, ControlError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let (status, error) = self.exec_streaming(argv, &[], "/", EXEC_TIMEOUT, |s, d| {
            let (out, name) = match s {
                Stream::Stdout => (&mut stdout, "stdout"),
                Stream::Stderr => (&mut stderr, "stderr"),
            };
            if out.len() + d.len() > MAX_EXEC_OUTPUT {
                return Err(ControlError::OutputTooLarge(name));
            }
            out.extend_from_slice(d);
            Ok(())
        })?;
        Ok(CommandOutput {
            stdout,
            stderr,
            status,
            error,
        })
    }

    /// Runs a container task in the guest: passes each piece of output to `on_output` as it
    /// arrives and, when `stop` becomes readable (it is drained here: a signalfd, eventfd or
    /// pipe), asks guest-init to stop the container (SIGTERM, then SIGKILL after the spec's stop
    /// timeout). A second stop, or a container still reported running well after its stop
    /// timeout, gives up with an error (the caller then kills the VM).
    pub fn run_container(
        &mut self,
        spec: &ContainerSpec,
        stop: Option<BorrowedFd<'_>>,
        mut on_event: impl FnMut(ContainerEvent<'_>),
    ) -> Result<ContainerOutcome, ControlError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        write_message(
            &mut self.stream,
            &Message::RunContainer {
                id,
                spec: spec.clone(),
            },
        )?;
        let mut reason = None;
        let mut started = false;
        let mut stop_sent = false;
        let mut stop_deadline: Option<std::time::Instant> = None;
        let stop_wait = Duration::from_millis(u64::from(spec.stop_timeout_ms)) + STOP_GRACE;
        let mut frames = FrameReader::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            while let Some(msg) = frames.next_message()? {
                match msg {
                    Message::Output {
                        id: oid,
                        stream,
                        data,
                    } if oid == id => on_event(ContainerEvent::Output(stream, &data)),
                    // Once: a guest repeating it does not make the host measure again.
                    Message::Started { id: sid, boot_ms } if sid == id && !started => {
                        started = true;
                        on_event(ContainerEvent::Started { boot_ms })
                    }
                    Message::Error { id: eid, message } if eid == id => reason = Some(message),
                    Message::Error { id: 0, message } => return Err(ControlError::Guest(message)),
                    Message::Exited { id: eid, status } if eid == id => {
                        return Ok(ContainerOutcome {
                            status,
                            reason,
                            stop_requested: stop_sent,
                        })
                    }
                    _ => {}
                }
            }
            let mut fds = vec![poll::readable(self.stream.as_raw_fd())];
            if let Some(fd) = stop {
                fds.push(poll::readable(fd.as_raw_fd()));
            }
            poll::wait(&mut fds, stop_deadline)?;
            if stop_deadline.is_some_and(|at| std::time::Instant::now() >= at) {
                return Err(ControlError::StopUnanswered(stop_wait));
            }
            if fds.get(1).is_some_and(|p| p.revents != 0) {
                let mut drain = [0u8; 256];
                // SAFETY: `drain` is valid for writes of its length; the fd is non-blocking or
                // readable.
                unsafe { libc::read(fds[1].fd, drain.as_mut_ptr().cast(), drain.len()) };
                if stop_sent {
                    return Err(ControlError::Aborted);
                }
                write_message(&mut self.stream, &Message::Stop { id })?;
                stop_sent = true;
                stop_deadline = Some(std::time::Instant::now() + stop_wait);
                on_event(ContainerEvent::StopRequested);
            }
            if fds[0].revents != 0 {
                self.receive(&mut frames, &mut buf)?;
            }
        }
    }

    /// Reads what guest-init sent into `frames`; its closing the channel is an error.
    fn receive(&mut self, frames: &mut FrameReader, buf: &mut [u8]) -> Result<(), ControlError> {
        let got = self.stream.read(buf)?;
        if got == 0 {
            return Err(ControlError::Closed);
        }
        frames.push(&buf[..got]);
        Ok(())
    }

    /// Sends `signal` to command `id` (the one running).
    pub fn signal(&mut self, id: u32, signal: i32) -> Result<(), ControlError> {
        write_message(&mut self.stream, &Message::Signal { id, signal })?;
        Ok(())
    }

    /// Asks guest-init to power the guest off and waits — [`SHUTDOWN_TIMEOUT`] at most in all,
    /// and no longer once `stop` becomes readable — for it to close its end.
    pub fn shutdown(self, stop: Option<BorrowedFd<'_>>) -> Result<(), ControlError> {
        self.shutdown_within(stop, SHUTDOWN_TIMEOUT)
    }

    fn shutdown_within(
        mut self,
        stop: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        write_message(&mut self.stream, &Message::Shutdown)?;
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            let mut fds = vec![poll::readable(self.stream.as_raw_fd())];
            if let Some(fd) = stop {
                fds.push(poll::readable(fd.as_raw_fd()));
            }
            poll::wait(&mut fds, Some(deadline))?;
            if fds.get(1).is_some_and(|p| p.revents != 0) {
                break;
            }
            if fds[0].revents != 0 && matches!(self.stream.read(&mut buf), Ok(0) | Err(_)) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("skiff-ctl-{name}-{}", std::process::id()))
    }

    #[test]
    fn the_control_socket_sits_beside_the_vsock_socket() {
        assert_eq!(
            control_socket_path(Path::new("/run/t/v.sock")),
            PathBuf::from("/run/t/v.sock_1024")
        );
    }

    #[test]
    fn a_guest_that_says_hello_can_run_commands() {
        let uds = temp("hello");
        let listener = ControlListener::bind(&uds).unwrap();
        let path = control_socket_path(&uds);
        let guest = std::thread::spawn(move || {
            let mut s = UnixStream::connect(path).unwrap();
            write_message(
                &mut s,
                &Message::Hello {
                    version: 1,
                    boot_ms: 42,
                    kernel: "6.1.0".into(),
                },
            )
            .unwrap();
            let Some(Message::Exec { id, argv, .. }) = read_message(&mut s).unwrap() else {
                panic!("expected Exec");
            };
            assert_eq!(argv, ["echo", "hi"]);
            for (stream, data) in [(Stream::Stdout, "hi\n"), (Stream::Stderr, "warn\n")] {
                let data = data.as_bytes().to_vec();
                write_message(&mut s, &Message::Output { id, stream, data }).unwrap();
            }
            let status = ExitStatus::Code(3);
            write_message(&mut s, &Message::Exited { id, status }).unwrap();
            assert_eq!(read_message(&mut s).unwrap(), Some(Message::Shutdown));
        });
        let mut ctl = listener.accept(Duration::from_secs(5)).unwrap();
        assert_eq!((ctl.boot_ms, ctl.kernel.as_str()), (42, "6.1.0"));
        let out = ctl.exec(&["echo".into(), "hi".into()]).unwrap();
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"warn\n");
        assert_eq!(out.status, ExitStatus::Code(3));
        ctl.shutdown(None).unwrap();
        guest.join().unwrap();
    }

    /// A connected pair: the host's `GuestControl` and the guest's end.
    fn connected(name: &str) -> (GuestControl, UnixStream) {
        let uds = temp(name);
        let listener = ControlListener::bind(&uds).unwrap();
        let mut guest = UnixStream::connect(control_socket_path(&uds)).unwrap();
        let hello = Message::Hello {
            version: 1,
            boot_ms: 1,
            kernel: "6.1.0".into(),
        };
        write_message(&mut guest, &hello).unwrap();
        (listener.accept(Duration::from_secs(5)).unwrap(), guest)
    }

    #[test]
    fn a_guest_trickling_bytes_cannot_hold_the_shutdown_past_its_deadline() {
        let (ctl, mut guest) = connected("trickle");
        let trickler = std::thread::spawn(move || {
            // A byte every 50 ms for far longer than the deadline, never closing.
            for _ in 0..100 {
                if guest.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = std::time::Instant::now();
        ctl.shutdown_within(None, Duration::from_millis(300))
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        trickler.join().unwrap();
    }

    #[test]
    fn a_stop_request_ends_the_shutdown_wait_at_once() {
        let (ctl, _guest) = connected("stopwait");
        let (stop_read, mut stop_write) = UnixStream::pair().unwrap();
        stop_write.write_all(b"!").unwrap();
        let started = std::time::Instant::now();
        ctl.shutdown_within(Some(stop_read.as_fd()), Duration::from_secs(60))
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn exec_output_is_bounded_and_exec_has_a_deadline() {
        let (mut ctl, mut guest) = connected("flood");
        let flood = std::thread::spawn(move || {
            let Ok(Some(Message::Exec { id, .. })) = read_message(&mut guest) else {
                panic!("expected Exec");
            };
            let data = vec![b'y'; 1 << 20];
            for _ in 0..(MAX_EXEC_OUTPUT >> 20) + 2 {
                let m = Message::Output {
                    id,
                    stream: Stream::Stdout,
                    data: data.clone(),
                };
                if write_message(&mut guest, &m).is_err() {
                    break;
                }
            }
            guest
        });
        assert!(matches!(
            ctl.exec(&["yes".into()]),
            Err(ControlError::OutputTooLarge("stdout"))
        ));
        drop(ctl);
        let _guest = flood.join().unwrap();

        let (mut ctl, _silent) = connected("slow");
        let r = ctl.exec_streaming(
            &["sleep".into()],
            &[],
            "/",
            Duration::from_millis(200),
            |_, _| Ok(()),
        );
        assert!(matches!(r, Err(ControlError::ExecTimeout(_))), "{r:?}");
    }

    #[test]
    fn once_guest_init_is_connected_nothing_else_in_the_guest_reaches_the_host_end() {
        let uds = temp("only-init");
        let listener = ControlListener::bind(&uds).unwrap();
        let path = control_socket_path(&uds);
        let mut guest = UnixStream::connect(&path).unwrap();
        let hello = Message::Hello {
            version: 1,
            boot_ms: 1,
            kernel: "6.1.0".into(),
        };
        write_message(&mut guest, &hello).unwrap();
        let _control = listener.accept(Duration::from_secs(5)).unwrap();
        // What the runner does after hello: a container's connection to port 1024 (which
        // the VMM turns into a connection to this socket) is refused from then on.
        drop(listener);
        let err = UnixStream::connect(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn a_silent_or_rude_guest_is_a_clear_error() {
        let uds = temp("rude");
        let listener = ControlListener::bind(&uds).unwrap();
        assert!(matches!(
            listener.accept(Duration::from_millis(50)),
            Err(ControlError::Timeout(_))
        ));
        let path = control_socket_path(&uds);
        let mut s = UnixStream::connect(&path).unwrap();
        write_message(&mut s, &Message::Shutdown).unwrap();
        assert!(matches!(
            listener.accept(Duration::from_secs(5)),
            Err(ControlError::NoHello("Shutdown"))
        ));
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&[0xff; 16]).unwrap();
        assert!(listener.accept(Duration::from_secs(5)).is_err());
    }
}
