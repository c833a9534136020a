//! The per-task monitor as skiffd's executor drives it, on this machine (no guest boots: the
//! "VMM" is a script that never lets guest-init connect): it says ready, holds its lock, reports
//! over its socket and in `status.json`, honours a stop during boot with an exit record, and a
//! monitor killed with SIGKILL is seen as dead — its VMM gone with it — and never mistaken for
//! a live one.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use api::executor::contract::{read_json, MonitorStatus, Phase};
use api::executor::local::{LocalExecutor, LocalSettings};
use api::executor::{Executor, Probe, StartRequest, Supervision};
use skiff_tests::artefacts::{require, workspace_root, Artefact, Need};
use skiff_tests::containers::import_test_images;

fn request(id: &str) -> StartRequest {
    StartRequest {
        task_id: id.into(),
        image: "busybox:latest".into(),
        entrypoint: None,
        command: vec!["true".into()],
        env: vec![],
        workdir: None,
        user: None,
        hostname: "t".into(),
        cpu: 256,
        memory: 256,
        ephemeral_gib: 1,
        stop_timeout_s: 2,
        jail_uid: 100_000,
        privileges: Default::default(),
        init_process: false,
    }
}

fn executor(root: &Path) -> LocalExecutor {
    let vmm = root.join("fake-vmm");
    // Stands for a VMM whose guest never connects; `exec` so that it is the process the
    // monitor's PR_SET_PDEATHSIG names.
    std::fs::write(&vmm, "#!/bin/sh\nexec sleep 120\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&vmm)
        .status()
        .unwrap();
    LocalExecutor::new(LocalSettings {
        images_dir: root.join("images"),
        tasks_dir: root.join("tasks"),
        monitor: Artefact::SkiffMonitor.path(),
        vmm: vmm.clone(),
        kernel: vmm.clone(),
        initramfs: vmm,
        jail: None,
        boot_timeout: Duration::from_secs(60),
        log_max_bytes: 1 << 20,
        registries: HashMap::new(),
        credentials: HashMap::new(),
    })
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn the_monitor_reports_stops_and_dies_visibly() {
    let needs = [
        Need::Artefact(Artefact::SkiffMonitor),
        Need::Artefact(Artefact::TestImage("busybox")),
        Need::Program("mkfs.ext4"),
    ];
    if !require("monitor", &needs) {
        return;
    }
    let root = workspace_root().join(format!("target/monitor-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    import_test_images(&root.join("images"), &["busybox"]).unwrap();
    let exec = executor(&root);
    let tasks = root.join("tasks");

    // A stop while the VM boots: the monitor ends the boot and records why.
    assert_eq!(exec.probe("t1"), Probe::NeverStarted);
    exec.start(&request("t1")).unwrap();
    assert_eq!(
        exec.probe("t1"),
        Probe::Alive,
        "the lock is held once it is ready"
    );
    let status: MonitorStatus = read_json(&tasks.join("t1/status.json")).unwrap().unwrap();
    assert_eq!(status.phase, Phase::Starting);
    let exec = std::sync::Arc::new(exec);
    let follower = {
        let exec = exec.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let end = exec.supervise("t1", &mut |s| seen.push(s.phase));
            (end, seen)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    exec.stop("t1").unwrap();
    let (end, seen) = follower.join().unwrap();
    assert_eq!(seen.first(), Some(&Phase::Starting), "{seen:?}");
    let Supervision::Ended(status) = end else {
        panic!("{end:?}")
    };
    let exit = status.exit.unwrap();
    assert!(exit.failed_to_start && exit.stop_requested, "{exit:?}");
    assert_eq!(
        exit.reason.as_deref(),
        Some("stopped before the container started")
    );
    assert!(matches!(exec.probe("t1"), Probe::Exited(_)));
    assert!(
        !tasks.join("t1/run").read_dir().unwrap().any(|_| true),
        "the runner cleaned up"
    );

    // SIGKILL of a monitor: seen as dead (not alive, no exit record), and its VMM died with it.
    exec.start(&request("t2")).unwrap();
    let status: MonitorStatus = read_json(&tasks.join("t2/status.json")).unwrap().unwrap();
    let vmm_pid = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid: u32 = stat
                    .rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                (ppid == status.pid).then_some(pid)
            });
            if let Some(pid) = found {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the monitor started no VMM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // SAFETY: kill(2) with a pid and a signal number.
    unsafe { libc::kill(status.pid as i32, libc::SIGKILL) };
    let end = exec.supervise("t2", &mut |_| {});
    assert!(
        matches!(&end, Supervision::Lost(why) if why.contains("monitor died")),
        "{end:?}"
    );
    assert!(matches!(exec.probe("t2"), Probe::Died(Some(_))));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pid_alive(vmm_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pid_alive(vmm_pid), "the VMM dies with its monitor");
    exec.release("t2");
    exec.remove("t1");
    exec.remove("t2");
    assert!(!tasks.join("t1").exists() && !tasks.join("t2").exists());
    let _ = std::fs::remove_dir_all(&root);
}
