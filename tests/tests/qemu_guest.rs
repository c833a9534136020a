//! Verification level 3: our guest kernel and guest-init under QEMU's microvm machine with TCG —
//! the guest side alone, without KVM.

use std::time::Duration;

use skiff_tests::artefacts::{require, Artefact, Need};
use skiff_tests::qemu::boot_microvm_tcg;

fn ready(test: &str) -> bool {
    require(
        test,
        &[
            Need::Program("qemu-system-x86_64"),
            Need::Artefact(Artefact::GuestKernel),
            Need::Artefact(Artefact::GuestInitramfs),
        ],
    )
}

fn banner_value<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    let line = console
        .lines()
        .find(|l| l.starts_with("skiff-init: Linux "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn guest_kernel_boots_guest_init_which_reports_and_resets() {
    if !ready("qemu_guest_boot") {
        return;
    }
    let run = boot_microvm_tcg(
        &Artefact::GuestKernel.path(),
        &Artefact::GuestInitramfs.path(),
        "console=ttyS0 quiet skiff.exit=7",
        2,
        256,
        Duration::from_secs(300),
    )
    .unwrap();
    let console = run.stdout.replace("\r\n", "\n");
    assert!(!run.timed_out, "{console}");
    assert!(console.contains("skiff-init: started\n"), "{console}");
    assert_eq!(banner_value(&console, "cpus"), Some("2"), "{console}");
    let mem: u64 = banner_value(&console, "memory")
        .and_then(|m| m.strip_suffix("KiB"))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no memory in banner: {console}"));
    assert!(
        (224 * 1024..=256 * 1024).contains(&mem),
        "MemTotal {mem} KiB of 256 MiB"
    );
    assert!(console.contains("skiff-init: exit status 7\n"), "{console}");
    assert_eq!(run.code, Some(0), "QEMU exits on the guest's reset");
}

#[test]
fn bad_settings_fail_init_with_a_reason_not_a_hang() {
    if !ready("qemu_guest_bad_settings") {
        return;
    }
    let run = boot_microvm_tcg(
        &Artefact::GuestKernel.path(),
        &Artefact::GuestInitramfs.path(),
        "console=ttyS0 quiet skiff.bogus=1",
        1,
        128,
        Duration::from_secs(300),
    )
    .unwrap();
    let console = run.stdout.replace("\r\n", "\n");
    assert!(!run.timed_out, "{console}");
    assert!(
        console.contains("skiff-init: error: unknown setting skiff.bogus"),
        "{console}"
    );
    assert!(console.contains("skiff-init: exit status 1\n"), "{console}");
}

#[test]
fn a_panicking_init_says_why_and_resets_instead_of_hanging() {
    if !ready("qemu_guest_init_panic") {
        return;
    }
    let run = boot_microvm_tcg(
        &Artefact::GuestKernel.path(),
        &Artefact::GuestInitramfs.path(),
        "console=ttyS0 quiet skiff.panic",
        1,
        128,
        Duration::from_secs(300),
    )
    .unwrap();
    let console = run.stdout.replace("\r\n", "\n");
    assert!(!run.timed_out, "init hung: {console}");
    assert!(console.contains("skiff-init: panic:"), "{console}");
    assert!(console.contains("skiff.panic was given"), "{console}");
    assert!(
        !console.contains("Attempted to kill init"),
        "init must reset, not exit: {console}"
    );
}
