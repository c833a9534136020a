//! Why the guest stopped, how that becomes `skiff-vmm`'s exit status, and the one-shot signal
//! the vCPU threads and devices use to tell the VMM thread.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::lock;

/// `skiff-vmm`'s exit status when the VMM itself fails (bad configuration, host error).
pub const EXIT_VMM_ERROR: i32 = 1;
/// `skiff-vmm`'s exit status when the guest crashed: kernel panic, triple fault, KVM emulation
/// failure, or guest-init itself panicked.
pub const EXIT_GUEST_CRASHED: i32 = 125;

/// How a guest stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// guest-init reported this exit status.
    Status(u8),
    /// guest-init reported that it panicked.
    InitPanicked,
    /// The guest reset the machine (i8042 reset or a KVM reset event): a reboot or power-off.
    Reset,
    /// The guest powered off (KVM shutdown event).
    PowerOff,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault,
    /// KVM failed to emulate an instruction or hit another internal error.
    KvmInternalError { suberror: u32 },
    /// KVM could not enter the guest.
    FailEntry { reason: u64, cpu: u32 },
    /// A vCPU halted with no way to wake it.
    Halted { vcpu: u8 },
    /// A vCPU thread failed.
    VcpuFailed { vcpu: u8, error: String },
}

/// What `skiff-vmm` reports at the end: its exit status and a one-line explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub message: String,
}

const PANIC_MARKER: &str = "Kernel panic";

/// The last line of `console` that reports a kernel panic.
fn panic_line(console: &str) -> Option<&str> {
    console
        .lines()
        .rev()
        .find(|line| line.contains(PANIC_MARKER))
        .map(str::trim)
}

impl GuestExit {
    /// The exit status and message for this exit; `console` is the tail of the guest's console,
    /// which tells a kernel panic (the kernel resets after `panic=-1`) from a plain reboot.
    pub fn outcome(&self, console: &str) -> Outcome {
        let crashed = |message: String| Outcome {
            code: EXIT_GUEST_CRASHED,
            message,
        };
        match self {
            GuestExit::Status(status) => Outcome {
                code: i32::from(*status),
                message: format!("guest exited with status {status}"),
            },
            GuestExit::InitPanicked => crashed("guest crashed: guest-init panicked".into()),
            GuestExit::Reset | GuestExit::PowerOff => match panic_line(console) {
                Some(line) => crashed(format!("guest crashed: {line}")),
                None => Outcome {
                    code: 0,
                    message: "guest powered off".into(),
                },
            },
            GuestExit::TripleFault => crashed("guest crashed: triple fault".into()),
            GuestExit::KvmInternalError { suberror } => crashed(format!(
                "guest crashed: KVM internal error (suberror {suberror}; 1 is an emulation failure)"
            )),
            GuestExit::FailEntry { reason, cpu } => crashed(format!(
                "guest crashed: KVM could not enter the guest on CPU {cpu} (hardware reason {reason:#x})"
            )),
            GuestExit::Halted { vcpu } => {
                crashed(format!("guest crashed: vCPU {vcpu} halted with interrupts off"))
            }
            GuestExit::VcpuFailed { vcpu, error } => Outcome {
                code: EXIT_VMM_ERROR,
                message: format!("vCPU {vcpu} failed: {error}"),
            },
        }
    }
}

/// The first exit reported wins; the VMM thread waits on [`ExitSignal::event`].
pub struct ExitSignal {
    exit: Mutex<Option<GuestExit>>,
    event: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            exit: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `exit` unless an earlier one was recorded, and wakes the VMM thread.
    pub fn signal(&self, exit: GuestExit) {
        let mut slot = lock(&self.exit);
        if slot.is_none() {
            *slot = Some(exit);
            // A full counter (impossible after one write) would still leave the fd readable.
            let _ = self.event.write(1);
        }
    }

    /// The recorded exit, if any.
    pub fn get(&self) -> Option<GuestExit> {
        lock(&self.exit).clone()
    }

    /// Readable once an exit was recorded.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_status_becomes_the_exit_code() {
        assert_eq!(GuestExit::Status(7).outcome("").code, 7);
        assert_eq!(GuestExit::Status(0).outcome("").code, 0);
    }

    #[test]
    fn reset_after_a_kernel_panic_is_a_crash() {
        let console =
            "[    1.0] boot\n[    2.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        let out = GuestExit::Reset.outcome(console);
        assert_eq!(out.code, EXIT_GUEST_CRASHED);
        assert!(
            out.message.contains("Unable to mount root fs"),
            "{}",
            out.message
        );
        assert_eq!(
            GuestExit::Reset.outcome("reboot: Restarting system\n").code,
            0
        );
    }

    #[test]
    fn crashes_are_non_zero_with_a_reason() {
        for exit in [
            GuestExit::TripleFault,
            GuestExit::InitPanicked,
            GuestExit::KvmInternalError { suberror: 1 },
            GuestExit::FailEntry {
                reason: 0x21,
                cpu: 0,
            },
        ] {
            let out = exit.outcome("");
            assert_eq!(out.code, EXIT_GUEST_CRASHED);
            assert!(out.message.starts_with("guest crashed"), "{}", out.message);
        }
    }

    #[test]
    fn first_signal_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.get(), None);
        s.signal(GuestExit::Status(3));
        s.signal(GuestExit::TripleFault);
        assert_eq!(s.get(), Some(GuestExit::Status(3)));
        assert_eq!(s.event().read().unwrap(), 1);
    }
}
