//! Running a child process with a deadline while collecting its output.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A finished (or killed) process.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Exit code, or `None` if it was killed by a signal (including at the deadline).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Killed because its stdout stayed silent longer than allowed (see [`run_with_deadlines`]).
    pub went_silent: bool,
    pub elapsed: Duration,
}

/// Errors running a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for {program} failed: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `cmd` (stdin closed) until it exits or `timeout` passes, then kills it.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Finished, ProcessError> {
    run_with_deadlines(cmd, timeout, None)
}

/// Like [`run_with_timeout`], and also kills `cmd` once its stdout has been silent for
/// `max_silence` (for a program that prints a heartbeat: silence means it froze).
pub fn run_with_deadlines(
    cmd: &mut Command,
    timeout: Duration,
    max_silence: Option<Duration>,
) -> Result<Finished, ProcessError> {
    let program = format!("{:?}", cmd.get_program());
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;
    // Milliseconds after `started` when stdout last produced something.
    let last_output = Arc::new(AtomicU64::new(0));
    let drain = |pipe: Option<Box<dyn Read + Send>>, seen: Option<Arc<AtomicU64>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    bytes.extend_from_slice(&chunk[..n]);
                    if let Some(seen) = &seen {
                        seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        Some(last_output.clone()),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        None,
    );
    let wait_err = |source| ProcessError::Wait {
        program: program.clone(),
        source,
    };
    let mut timed_out = false;
    let mut went_silent = false;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(wait_err)? {
            break status;
        }
        let now = started.elapsed();
        let silent_for =
            now.saturating_sub(Duration::from_millis(last_output.load(Ordering::Relaxed)));
        went_silent = max_silence.is_some_and(|max| silent_for > max);
        if now > timeout || went_silent {
            timed_out = true;
            let _ = child.kill();
            break child.wait().map_err(wait_err)?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Finished {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
        went_silent,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_process_is_killed_early_and_a_chatty_one_is_not() {
        let started = Instant::now();
        let silent = run_with_deadlines(
            Command::new("sh").args(["-c", "echo one; exec sleep 30"]),
            Duration::from_secs(60),
            Some(Duration::from_millis(500)),
        )
        .unwrap();
        assert!(silent.went_silent && silent.timed_out);
        assert_eq!(silent.stdout, "one\n");
        assert!(started.elapsed() < Duration::from_secs(20));
        let chatty = run_with_deadlines(
            Command::new("sh").args(["-c", "for i in 1 2 3 4; do echo $i; sleep 0.3; done"]),
            Duration::from_secs(60),
            Some(Duration::from_millis(1500)),
        )
        .unwrap();
        assert!(!chatty.went_silent && !chatty.timed_out);
        assert_eq!(chatty.code, Some(0));
    }
}
