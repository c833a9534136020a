//! Verification level 3: our guest kernel and guest-init under QEMU's microvm machine with TCG —
//! the guest side alone, without KVM.

use std::time::Duration;

use skiff_tests::artefacts::{require, Artefact, Need};
use skiff_tests::guest_console::{banner_memory_kib, banner_value};
use skiff_tests::qemu::boot_microvm_tcg;

/// Boots our kernel and initramfs with `cmdline`; returns the console, or `None` when the test
/// is skipped.
fn boot(test: &str, cmdline: &str, cpus: u32, memory_mib: u32) -> Option<String> {
    let needs = [
        Need::Program("qemu-system-x86_64"),
        Need::Artefact(Artefact::GuestKernel),
        Need::Artefact(Artefact::GuestInitramfs),
    ];
    if !require(test, &needs) {
        return None;
    }
    let run = boot_microvm_tcg(
        &Artefact::GuestKernel.path(),
        &Artefact::GuestInitramfs.path(),
        cmdline,
        cpus,
        memory_mib,
        Duration::from_secs(300),
    )
    .expect("QEMU runs");
    let console = run.stdout.replace("\r\n", "\n");
    assert!(!run.timed_out, "the guest hung: {console}");
    assert_eq!(
        run.code,
        Some(0),
        "QEMU exits on the guest's reset: {console}"
    );
    Some(console)
}

#[test]
fn guest_kernel_boots_guest_init_which_reports_and_resets() {
    let Some(console) = boot(
        "qemu_guest_boot",
        "console=ttyS0 quiet skiff.exit=7",
        2,
        256,
    ) else {
        return;
    };
    assert!(console.contains("skiff-init: started\n"), "{console}");
    assert_eq!(banner_value(&console, "cpus"), Some("2"), "{console}");
    let mem =
        banner_memory_kib(&console).unwrap_or_else(|| panic!("no memory in banner: {console}"));
    assert!(
        (224 * 1024..=256 * 1024).contains(&mem),
        "MemTotal {mem} KiB of 256 MiB"
    );
    assert!(console.contains("skiff-init: exit status 7\n"), "{console}");
}

#[test]
fn bad_settings_fail_init_with_a_reason_not_a_hang() {
    let Some(console) = boot(
        "qemu_guest_bad_settings",
        "console=ttyS0 quiet skiff.bogus=1",
        1,
        128,
    ) else {
        return;
    };
    assert!(
        console.contains("skiff-init: error: unknown setting skiff.bogus"),
        "{console}"
    );
    assert!(console.contains("skiff-init: exit status 1\n"), "{console}");
}

#[test]
fn a_panicking_init_says_why_and_resets_instead_of_hanging() {
    let Some(console) = boot(
        "qemu_guest_init_panic",
        "console=ttyS0 quiet skiff.panic",
        1,
        128,
    ) else {
        return;
    };
    assert!(console.contains("skiff-init: panic:"), "{console}");
    assert!(console.contains("skiff.panic was given"), "{console}");
    assert!(
        !console.contains("Attempted to kill init"),
        "init must reset, not exit: {console}"
    );
}
