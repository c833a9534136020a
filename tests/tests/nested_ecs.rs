//! The ECS front end end to end: skiffd runs in the nested test host (jailed microVMs), the AWS
//! CLI and boto3 — real clients from PyPI, in `target/ecs-venv` — run on this machine and reach
//! it through a loopback port forward; `tests/ecs/test_awscli.py` and `tests/ecs/test_boto3.py`
//! are their sessions (register, run, waiters, describe, stop, exit codes, paginators, tags,
//! tenants apart, capacity failures, signature errors), each failing on its first wrong answer.

use std::process::Command;
use std::time::Duration;

use skiff_tests::artefacts::{require, workspace_root, Artefact, Need};
use skiff_tests::containers::{import_test_images, CONTAINER_ARTEFACTS};
use skiff_tests::nested_live::NIC_UP;
use skiff_tests::process::run_with_deadlines;
use skiff_tests::skiffd::{prelude, skiffd_host, ECS_PORT};

const READY: &str = "SKIFF-ECS-READY";
/// How long one client session may take (the waiters poll a slow emulated host).
const SESSION_TIMEOUT: Duration = Duration::from_secs(1500);

#[test]
fn the_aws_cli_and_boto3_drive_skiffd_unchanged() {
    let mut needs: Vec<Need> = CONTAINER_ARTEFACTS
        .iter()
        .map(|a| Need::Artefact(*a))
        .collect();
    needs.extend([
        Need::Artefact(Artefact::SkiffJailer),
        Need::Artefact(Artefact::SkiffMonitor),
        Need::Artefact(Artefact::TestImage("busybox")),
        Need::Artefact(Artefact::EcsClients),
        Need::Program("qemu-system-x86_64"),
        Need::Program("mkfs.ext4"),
    ]);
    if !require("nested_ecs", &needs) {
        return;
    }
    let store = workspace_root().join(format!("target/nested/ecs-{}", std::process::id()));
    import_test_images(&store, &["busybox"]).unwrap();
    let mut host = skiffd_host(&store, true, true).unwrap();
    host.memory_mib(3072);
    // skiffd's log follows on the console; the host then idles until the test stops it.
    let script = format!(
        "{}{NIC_UP}\nstart_skiffd\nskiff capacity > /dev/null && echo {READY}\n\
         tail -f /tmp/skiffd.log &\nsleep 7200\n",
        prelude()
    );
    let python = workspace_root().join("target/ecs-venv/bin/python");
    let sessions = workspace_root().join("tests/ecs");
    let mut outcome = Vec::new();
    for attempt in 1..=2 {
        let mut live = host.spawn(&script, &[ECS_PORT]).unwrap();
        live.wait_for(READY, Duration::from_secs(900))
            .unwrap_or_else(|e| panic!("skiffd did not come up in the nested host: {e}"));
        let endpoint = format!("http://127.0.0.1:{}", live.port(ECS_PORT).unwrap());
        outcome.clear();
        for session in ["test_awscli.py", "test_boto3.py"] {
            let finished = run_with_deadlines(
                Command::new(&python)
                    .arg(sessions.join(session))
                    .current_dir(&sessions)
                    .env("SKIFF_ECS_ENDPOINT", &endpoint),
                SESSION_TIMEOUT,
                None,
            )
            .unwrap();
            outcome.push((session, finished));
        }
        let console = live.stop();
        let failed = outcome.iter().any(|(_, f)| f.code != Some(0));
        let crashed = skiff_tests::nested::EMULATION_CRASHES
            .iter()
            .find(|s| console.contains(*s));
        match crashed {
            Some(sign) if failed && attempt == 1 => {
                eprintln!("RETRY nested host: the emulation crashed ({sign:?}); running the sessions again");
                continue;
            }
            _ => {}
        }
        for (session, finished) in &outcome {
            eprintln!("=== {session}\n{}{}", finished.stdout, finished.stderr);
        }
        for (session, finished) in &outcome {
            if finished.code == Some(0) && finished.stdout.contains("session passed") {
                continue;
            }
            // The console whole on stderr; the panic ends with what failed (CI shows the end).
            eprintln!("=== nested host console\n{console}");
            let failure = finished
                .stdout
                .lines()
                .rev()
                .find(|l| l.starts_with("FAILED"))
                .unwrap_or("no FAILED line (see its output above)");
            panic!(
                "{session} failed (exit {:?}); nested host console, last lines:\n{}\n=== {session}: {failure}",
                finished.code,
                last_lines(&console, 40)
            );
        }
        break;
    }
    let _ = std::fs::remove_dir_all(&store);
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
