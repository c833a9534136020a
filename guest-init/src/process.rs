//! Running a program as init's child. As PID 1, init also reaps every orphan that is reparented
//! to it while it waits.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Errors running a program.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Makes `command`'s child start with no signal blocked: Rust's `Command` keeps the parent's
/// mask, and init blocks the signals it takes from a signalfd (or, as a container's init process,
/// with sigwaitinfo). A program started with SIGTERM blocked would sit out every stop.
pub fn with_empty_signal_mask(command: &mut Command) -> &mut Command {
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe and only touch `empty`.
    unsafe {
        command.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The shell convention for a status: the exit code, or 128 + the signal that killed it.
pub fn exit_status_byte(wait_status: libc::c_int) -> u8 {
    if libc::WIFEXITED(wait_status) {
        libc::WEXITSTATUS(wait_status) as u8
    } else if libc::WIFSIGNALED(wait_status) {
        (128 + libc::WTERMSIG(wait_status)) as u8
    } else {
        255
    }
}

/// Runs `path` with the console as its stdio; returns its exit status (128 + signal if killed).
pub fn run(path: &str) -> Result<u8, RunError> {
    let child = with_empty_signal_mask(&mut Command::new(path))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/")
        .current_dir("/")
        .spawn()
        .map_err(|source| RunError::Spawn {
            path: path.to_owned(),
            source,
        })?;
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable int; waitpid writes only to it.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped == pid {
            return Ok(exit_status_byte(status));
        }
        if reaped < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // No children left: ours is gone without a status we saw.
            return Ok(255);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_shell_convention() {
        assert_eq!(exit_status_byte(3 << 8), 3);
        assert_eq!(exit_status_byte(libc::SIGKILL), 137);
        assert_eq!(exit_status_byte(libc::SIGTERM), 143);
    }

    #[test]
    fn runs_a_program_and_returns_its_status() {
        assert_eq!(run("/bin/true").unwrap(), 0);
        assert_eq!(run("/bin/false").unwrap(), 1);
        assert!(matches!(
            run("/nonexistent/prog"),
            Err(RunError::Spawn { .. })
        ));
    }
}
