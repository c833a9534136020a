//! Reports to the VMM through skiff-vmm's guest report port (see
//! `vmm/src/devices/guest_report.rs`, whose port numbers these must match). Under a VMM without
//! the port (QEMU) the writes go nowhere, which is harmless.

use std::sync::atomic::{AtomicBool, Ordering};

const REPORT_PORT_BASE: u16 = 0x440;
const REPORT_PORT_LEN: u64 = 3;
const BOOT_MARKER: u16 = REPORT_PORT_BASE;
const EXIT_STATUS: u16 = REPORT_PORT_BASE + 1;
const INIT_PANIC: u16 = REPORT_PORT_BASE + 2;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Asks the kernel for access to the report ports; without it, reports are skipped.
pub fn enable() -> bool {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    let ok = unsafe { libc::ioperm(u64::from(REPORT_PORT_BASE), REPORT_PORT_LEN, 1) } == 0;
    ENABLED.store(ok, Ordering::Relaxed);
    ok
}

/// Gives up access to the report ports (in a container's process before exec: `ioperm` rights
/// survive fork and exec, and the container must not report for init).
pub fn revoke() {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    unsafe { libc::ioperm(u64::from(REPORT_PORT_BASE), REPORT_PORT_LEN, 0) };
}

fn outb(port: u16, value: u8) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: ioperm granted this process access to `port`, one of the VMM's report ports; an
    // `out` there touches no memory and has no effect on this process.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

/// guest-init has started: the VMM's boot timer stops here.
pub fn report_boot() {
    outb(BOOT_MARKER, 1);
}

/// The guest is done with this exit status: the VMM exits with it.
pub fn report_exit(status: u8) {
    outb(EXIT_STATUS, status);
}

/// guest-init panicked: the VMM reports a guest crash.
pub fn report_panic() {
    outb(INIT_PANIC, 1);
}
