//! Verification level 2: tiny 64-bit test guests of ours (tests/guests/test-guest.S) booted by the
//! real `skiff-vmm` binary on this machine's /dev/kvm. Proves memory regions, boot parameters,
//! long-mode vCPU state, port I/O and MMIO exits, the serial console, the guest report port and
//! every way a guest can stop.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skiff_tests::artefacts::{require, Artefact, Need};
use skiff_tests::process::{run_with_timeout, Finished};

const TEST_GUEST: &str = env!("SKIFF_TEST_GUEST");

fn ready(test: &str) -> bool {
    require(test, &[Need::Kvm, Need::Artefact(Artefact::SkiffVmm)])
}

fn vmm(args: &[&str]) -> Finished {
    let finished = run_with_timeout(
        Command::new(Artefact::SkiffVmm.path()).args(args),
        Duration::from_secs(120),
    )
    .expect("skiff-vmm runs");
    assert!(!finished.timed_out, "skiff-vmm hung: {finished:?}");
    assert!(!finished.stderr.contains("panicked"), "{}", finished.stderr);
    finished
}

fn boot_test_guest(mode: &str, extra: &[&str]) -> Finished {
    let cmdline = format!("{mode} console=ttyS0");
    let mut args = vec!["--kernel", TEST_GUEST, "--cmdline", &cmdline];
    args.extend_from_slice(extra);
    vmm(&args)
}

/// RAM the e820 map describes for a guest of `mib` MiB: all of it but the EBDA-to-1-MiB hole.
fn e820_ram(mib: u64) -> u64 {
    (mib << 20) - 0x10_0000 + 0x9_fc00
}

#[test]
fn hello_guest_runs_in_long_mode_with_boot_params_and_reports_its_status() {
    if !ready("hello_guest") {
        return;
    }
    let run = boot_test_guest("hello", &["--memory-mib", "64"]);
    assert_eq!(run.code, Some(42), "{run:?}");
    assert!(
        run.stdout.contains("skiff test guest: long mode ok\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("cmdline: hello console=ttyS0\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("ram: 0x{:016x}\n", e820_ram(64))),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("memory: ok\n"), "{}", run.stdout);
    assert!(
        run.stderr.contains("boot: guest init after "),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(" ms (VMM CPU "), "{}", run.stderr);
    assert!(
        run.stderr.contains("guest exited with status 42"),
        "{}",
        run.stderr
    );
}

#[test]
fn memory_size_and_vcpu_count_are_honoured() {
    if !ready("memory_and_vcpus") {
        return;
    }
    for (mib, vcpus) in [("32", "1"), ("200", "4"), ("1024", "2")] {
        let run = boot_test_guest("hello", &["--memory-mib", mib, "--vcpus", vcpus]);
        assert_eq!(run.code, Some(42), "{mib} MiB / {vcpus} vCPUs: {run:?}");
        let expected = format!("ram: 0x{:016x}\n", e820_ram(mib.parse().unwrap()));
        assert!(run.stdout.contains(&expected), "{mib} MiB: {}", run.stdout);
        assert!(run.stdout.contains("memory: ok\n"));
    }
}

#[test]
fn reset_without_a_status_is_a_clean_power_off() {
    if !ready("reset_guest") {
        return;
    }
    let run = boot_test_guest("reset", &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("test guest: resetting"));
    assert!(run.stderr.contains("guest powered off"), "{}", run.stderr);
}

#[test]
fn kernel_panic_before_reset_is_reported_as_a_crash() {
    if !ready("panic_guest") {
        return;
    }
    let run = boot_test_guest("panic", &[]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(
        run.stderr
            .contains("guest crashed: Kernel panic - not syncing: test guest panics on purpose"),
        "{}",
        run.stderr
    );
}

#[test]
fn triple_fault_is_reported_as_a_crash() {
    if !ready("triple_fault_guest") {
        return;
    }
    let run = boot_test_guest("triple", &[]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(
        run.stderr.contains("guest crashed: triple fault"),
        "{}",
        run.stderr
    );
}

#[test]
fn mmio_access_to_nothing_reads_all_ones() {
    if !ready("mmio_guest") {
        return;
    }
    let run = boot_test_guest("mmio", &["--memory-mib", "64"]);
    assert_eq!(run.code, Some(0xff), "{run:?}");
}

#[test]
fn serial_output_can_go_to_a_file_and_config_can_come_from_json() {
    if !ready("serial_file_and_json") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("skiff-l2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serial = dir.join("console.log");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"kernel": "{TEST_GUEST}", "cmdline": "hello from-json", "memory_mib": 48, "vcpus": 2, "serial_out": "{}"}}"#,
            serial.display()
        ),
    )
    .unwrap();
    let run = vmm(&["--config", config.to_str().unwrap()]);
    assert_eq!(run.code, Some(42), "{run:?}");
    assert!(
        run.stdout.is_empty(),
        "console went to the file: {}",
        run.stdout
    );
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(console.contains("cmdline: hello from-json\n"), "{console}");
    assert!(
        console.contains(&format!("ram: 0x{:016x}\n", e820_ram(48))),
        "{console}"
    );

    // A flag overrides the file.
    let run = vmm(&["--config", config.to_str().unwrap(), "--memory-mib", "40"]);
    assert_eq!(run.code, Some(42), "{run:?}");
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(
        console.contains(&format!("ram: 0x{:016x}\n", e820_ram(40))),
        "{console}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn test_guest_is_an_elf_image() {
    let bytes = std::fs::read(Path::new(TEST_GUEST)).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
}

#[test]
fn a_guest_flooding_a_queue_cannot_keep_the_vmm_from_stopping() {
    if !ready("flood_guest") {
        return;
    }
    // The flood guest makes every used buffer of the entropy queue available again at once, for
    // ever; skiff-vmm must still see its stop signal (the event loop serves a ring's worth of
    // chains per round, then its other events).
    let dir = std::env::temp_dir().join(format!("skiff-l2-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serial = dir.join("console.log");
    let mut child = Command::new(Artefact::SkiffVmm.path())
        .args(["--kernel", TEST_GUEST, "--cmdline", "flood console=ttyS0"])
        .args(["--memory-mib", "64", "--rng", "--serial-out"])
        .arg(&serial)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("skiff-vmm starts");
    let console = || std::fs::read_to_string(&serial).unwrap_or_default();
    let flooding = wait_until(Duration::from_secs(120), || {
        console().contains("test guest: flooding") || child.try_wait().ok().flatten().is_some()
    });
    if !flooding || !console().contains("test guest: flooding") {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the flood guest never saw a used buffer; console:\n{}\nstderr:\n{}",
            console(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Flood for a while, then ask skiff-vmm to stop.
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill() with our child's pid and a signal number has no memory arguments.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let stopped = wait_until(Duration::from_secs(30), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !stopped {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stopped,
        "skiff-vmm ignored SIGTERM under the flood: {stderr}"
    );
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Polls `done` every 50 ms until it holds or `timeout` passes; returns whether it held.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}
