//! Ending the guest: report the status, flush filesystems, reset the machine (the guest kernel is
//! booted with `reboot=k` or `reboot=t`, and a microVM's reset is its power-off).

use crate::host_port;

/// Reports `status`, syncs and resets. Never returns.
pub fn finish(status: u8) -> ! {
    println!("skiff-init: exit status {status}");
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    host_port::report_exit(status);
    reset()
}

/// Resets the machine. Never returns.
pub fn reset() -> ! {
    // SAFETY: reboot with RB_AUTOBOOT takes no pointers; as PID 1 we hold CAP_SYS_BOOT.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // reboot() only returns on failure; nothing is left to do but wait for the end.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}
