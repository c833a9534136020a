//! Verification level 3: our guest kernel and initramfs under QEMU's `microvm` machine with TCG,
//! testing the guest side without KVM.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::{run_with_timeout, Finished, ProcessError};

/// Boots `kernel` + `initrd` on `qemu-system-x86_64 -M microvm -accel tcg` and returns when the
/// guest resets (`reboot=t` is added to `cmdline`: the microvm machine has no i8042).
pub fn boot_microvm_tcg(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    cpus: u32,
    memory_mib: u32,
    timeout: Duration,
) -> Result<Finished, ProcessError> {
    run_with_timeout(
        Command::new("qemu-system-x86_64")
            .args(["-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on"])
            .args(["-accel", "tcg", "-cpu", "max"])
            .args(["-m", &memory_mib.to_string(), "-smp", &cpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!("{cmdline} reboot=t panic=-1")),
        timeout,
    )
}
