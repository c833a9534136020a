//! guest-init's container init process (`skiff-init --container-init -- PROGRAM...`, what
//! `--init` and `initProcessEnabled` run as a container's PID 1), on this machine: the program
//! starts with no signal blocked, a SIGTERM sent to the init reaches it, and the init ends as the
//! program did. (As PID 1 of a task's PID namespace, with orphans to reap, it runs in
//! `nested_containers`.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::artefacts::{require, Artefact, Need};

fn init_command(script: &str) -> Command {
    let mut command = Command::new(Artefact::GuestInit.path());
    command
        .args(["--container-init", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn wait_with_deadline(child: &mut std::process::Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "the init did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_program_gets_sigterm_has_no_signal_blocked_and_its_status_is_the_inits() {
    if !require(
        "container_init",
        &[Need::Artefact(Artefact::GuestInit), Need::Program("sh")],
    ) {
        return;
    }
    let mut child =
        init_command("grep -E '^SigBlk' /proc/self/status; echo ready; exec sleep 1000")
            .spawn()
            .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("ready\n") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(
            n > 0 && Instant::now() < deadline,
            "no ready line: {seen:?}"
        );
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        seen.starts_with("SigBlk:\t0000000000000000\n"),
        "the program starts with no signal blocked: {seen:?}"
    );
    // SAFETY: kill has no memory arguments; the child is ours and not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(
        wait_with_deadline(&mut child, Duration::from_secs(10)),
        128 + libc::SIGTERM,
        "sleep died of the forwarded SIGTERM; the init reports 128 + 15"
    );

    let status = init_command("exit 7").status().unwrap();
    assert_eq!(status.code(), Some(7));
    let status = init_command("kill -KILL $$").status().unwrap();
    assert_eq!(status.code(), Some(128 + 9), "a signal death is 128 + N");
    let out = Command::new(Artefact::GuestInit.path())
        .args(["--container-init", "--", "no-such-program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"no-such-program\""), "{stderr}");
}
