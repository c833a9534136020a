//! SIGTERM, SIGINT and SIGHUP stop the VM cleanly: they are blocked in every thread and read from
//! a signalfd by the VMM thread's event loop. (Under the jailer the VMM is PID 1 of its PID
//! namespace, where a signal without a handler would be ignored.)

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// The signals that stop the VM.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The signalfd through which stop signals arrive.
pub struct StopSignals {
    fd: File,
}

impl StopSignals {
    /// Blocks the stop signals in the calling thread — and so in every thread it starts later —
    /// and opens a signalfd for them. Call before starting any thread.
    pub fn install() -> std::io::Result<Self> {
        // SAFETY: an all-zero sigset_t is a valid value to initialise with sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for sig in STOP_SIGNALS {
            // SAFETY: `set` is a valid, initialised sigset_t.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        // SAFETY: `set` is valid; the old mask is not requested.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new signalfd; `set` is valid.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The next pending stop signal, if any.
    pub fn read(&mut self) -> Option<libc::c_int> {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        self.fd.read_exact(&mut info).ok()?;
        // ssi_signo is the first field (u32).
        let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
        libc::c_int::try_from(signo).ok()
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A signal's name, for messages.
pub fn name(signo: libc::c_int) -> &'static str {
    match signo {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_signalfd() {
        // In a child process: the mask change must not leak into the test runner.
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match StopSignals::install() {
                Ok(mut s) => {
                    // SAFETY: signalling ourselves.
                    unsafe { libc::raise(libc::SIGTERM) };
                    if s.read() == Some(libc::SIGTERM) {
                        0
                    } else {
                        1
                    }
                }
                Err(_) => 2,
            };
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
    }
}
