//! The container's init process, when the task asks for one (ECS `initProcessEnabled`,
//! `docker run --init`): guest-init's own binary, executed in the container as
//! `skiff-init --container-init -- PROGRAM ARGS...`, becomes PID 1 of the container's PID
//! namespace with the container's user and privileges. It runs the program as its child, passes
//! on every signal a stop or a user sends (a program that is not PID 1 gets SIGTERM's default
//! action), reaps every orphan, and exits as the program did: its exit code, or 128 + the signal
//! number for a signal death (as tini and docker-init report it). When it exits, the kernel ends
//! whatever else runs in the namespace.

use std::ffi::OsString;
use std::process::Command;

use crate::process::with_empty_signal_mask;

/// The argument that selects this mode of the binary.
pub const FLAG: &str = "--container-init";

/// The signals passed on to the program: those a stop, a user or a terminal sends. The ones the
/// kernel raises for a fault of the process itself are not.
const FORWARDED: [libc::c_int; 11] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGWINCH,
    libc::SIGPWR,
];

/// Exit code when the program cannot be started (as Docker's 126/127).
const NOT_EXECUTABLE: i32 = 126;
const NOT_FOUND: i32 = 127;

/// The arguments that follow `FLAG` and `--`: the program and its arguments.
pub fn requested(args: &[OsString]) -> Option<&[OsString]> {
    match args {
        [_, flag, dashes, rest @ ..] if flag == FLAG && dashes == "--" && !rest.is_empty() => {
            Some(rest)
        }
        _ => None,
    }
}

/// Runs `argv` as the child of this process until it ends; returns the exit code to end with.
pub fn run(argv: &[OsString]) -> i32 {
    // Executed by descriptor, the process is named after the descriptor's number: name it.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"skiff-init".as_ptr()) };
    match supervise(argv) {
        Ok(code) => code,
        Err(Failure { message, code }) => {
            eprintln!("skiff-init: {message}");
            code
        }
    }
}

struct Failure {
    message: String,
    code: i32,
}

fn supervise(argv: &[OsString]) -> Result<i32, Failure> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Failure {
            message: "no program to run".into(),
            code: NOT_FOUND,
        });
    };
    let signals = blocked_signals().map_err(|e| Failure {
        message: format!("blocking signals: {e}"),
        code: NOT_EXECUTABLE,
    })?;
    let mut command = Command::new(program);
    // Not with the set this process blocks to wait on.
    with_empty_signal_mask(&mut command).args(args);
    let child = command.spawn().map_err(|e| Failure {
        code: match e.raw_os_error() {
            Some(libc::ENOENT) => NOT_FOUND,
            _ => NOT_EXECUTABLE,
        },
        message: format!("cannot execute {program:?}: {e}"),
    })?;
    let pid = child.id() as libc::pid_t;
    loop {
        // SAFETY: `info` is written by sigwaitinfo; `signals` is an initialised set.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call.
        let signal = unsafe { libc::sigwaitinfo(&signals, &mut info) };
        if signal < 0 {
            continue; // EINTR: nothing else can fail with a valid set
        }
        if signal != libc::SIGCHLD {
            // SAFETY: kill has no pointer arguments; `pid` is our unreaped child.
            unsafe { libc::kill(pid, signal) };
            continue;
        }
        while let Some((reaped, status)) = reap_one() {
            if reaped == pid {
                return Ok(exit_code(status));
            }
        }
    }
}

/// Blocks the forwarded signals and SIGCHLD (they are taken with sigwaitinfo; a blocked signal
/// is queued even for a namespace's PID 1, which would otherwise drop what it has no handler
/// for) and returns that set.
fn blocked_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: `set` is initialised by sigemptyset before use; the calls take valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *signal);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Reaps one ended child, if any: its pid and wait status.
fn reap_one() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// The exit code that reports wait status `status` (128 + signal for a signal death).
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_mode_is_the_flag_then_dashes_then_a_program() {
        let with = args(&["/init", FLAG, "--", "sh", "-c", "true"]);
        assert_eq!(requested(&with), Some(&with[3..]));
        for without in [
            args(&["/init"]),
            args(&["/init", FLAG, "--"]),
            args(&["/init", FLAG, "sh"]),
            args(&["/init", "--", FLAG, "sh"]),
        ] {
            assert_eq!(requested(&without), None, "{without:?}");
        }
    }

    #[test]
    fn signal_deaths_are_reported_as_128_plus_the_signal() {
        // Wait statuses as the kernel encodes them: code << 8, or the signal number.
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(exit_code(libc::SIGKILL), 137);
    }
}
