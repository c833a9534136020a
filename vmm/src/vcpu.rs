//! One vCPU: its boot state, and the thread that runs it and turns its exits into device accesses
//! or a guest exit.

use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::arch::{cpuid, regs};
use crate::bus::Bus;
use crate::exit::{ExitSignal, GuestExit};
use crate::seccomp::{self, ThreadKind};

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {index}: {source}")]
    Create {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set CPUID of vCPU {index}: {source}")]
    Cpuid {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up registers of vCPU {index}: {source}")]
    Regs {
        index: u8,
        #[source]
        source: regs::RegsError,
    },
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Spawn {
        index: u8,
        #[source]
        source: std::io::Error,
    },
}

/// What the run loop does after one exit.
enum Next {
    Continue,
    Stop(GuestExit),
}

/// A vCPU and what its exits reach.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
}

impl Vcpu {
    pub fn new(
        vm: &VmFd,
        index: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Self {
            index,
            fd,
            pio,
            mmio,
            exit,
        })
    }

    /// Sets CPUID (normalised for this vCPU of `count`), MSRs, registers for 64-bit entry at
    /// `entry`, FPU and local APIC. Application processors keep waiting for the boot CPU's
    /// INIT/SIPI, which resets them; the boot CPU starts at `entry`.
    pub fn configure(&self, supported: &CpuId, count: u8, entry: u64) -> Result<(), VcpuError> {
        let index = self.index;
        let mut cpuid = supported.clone();
        cpuid::normalize(cpuid.as_mut_slice(), index, count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        let regs_err = |source| VcpuError::Regs { index, source };
        regs::setup_msrs(&self.fd).map_err(regs_err)?;
        regs::setup_regs(&self.fd, entry).map_err(regs_err)?;
        regs::setup_sregs(&self.fd).map_err(regs_err)?;
        regs::setup_fpu(&self.fd).map_err(regs_err)?;
        regs::setup_lapic(&self.fd).map_err(regs_err)
    }

    /// Runs the vCPU on its own thread until the guest stops; the reason goes to the exit signal.
    /// The thread installs its seccomp filter, then waits at `go` until every other thread has
    /// installed its own, so no guest instruction runs before all filters are in place.
    pub fn start(self, go: Arc<Barrier>) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let filtered = seccomp::enter(ThreadKind::Vcpu);
                go.wait();
                match filtered {
                    Ok(()) => self.run(),
                    Err(e) => self.exit.signal(GuestExit::VcpuFailed {
                        vcpu: index,
                        error: e.to_string(),
                    }),
                }
            })
            .map_err(|source| VcpuError::Spawn { index, source })
    }

    fn run(mut self) {
        loop {
            if let Next::Stop(exit) = self.run_once() {
                self.exit.signal(exit);
                return;
            }
        }
    }

    /// Enters the guest once and handles the exit.
    fn run_once(&mut self) -> Next {
        let vcpu = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                Next::Continue
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                // Nothing at this port: the ISA bus floats high.
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(GuestExit::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Next::Stop(GuestExit::Reset),
                KVM_SYSTEM_EVENT_CRASH => Next::Stop(GuestExit::TripleFault),
                other => Next::Stop(GuestExit::VcpuFailed {
                    vcpu,
                    error: format!("unknown KVM system event {other}"),
                }),
            },
            Ok(VcpuExit::Shutdown) => Next::Stop(GuestExit::TripleFault),
            Ok(VcpuExit::Hlt) => Next::Stop(GuestExit::Halted { vcpu }),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                Next::Stop(GuestExit::FailEntry { reason, cpu })
            }
            Ok(VcpuExit::InternalError) => Next::Stop(GuestExit::KvmInternalError {
                suberror: self.internal_suberror(),
            }),
            Ok(VcpuExit::Intr) => Next::Continue,
            Ok(other) => Next::Stop(GuestExit::VcpuFailed {
                vcpu,
                error: format!("unexpected KVM exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Stop(GuestExit::VcpuFailed {
                vcpu,
                error: format!("KVM_RUN failed: {e}"),
            }),
        }
    }

    /// The suberror of the `KVM_EXIT_INTERNAL_ERROR` just returned.
    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which KVM fills the `internal`
        // member of the exit union; reading a u32 from it reads initialised memory.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }
}
