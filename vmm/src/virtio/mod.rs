//! virtio: the device model (independent of the transport), the MMIO transport, and the devices.
//!
//! A device offers features and queue sizes, exposes a config space, and processes a queue when
//! the driver notifies it; the transport owns the queues and the register interface. Another
//! transport (PCI) could drive the same [`VirtioDevice`]s.

pub mod block;
pub mod block_request;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// The device speaks virtio 1.x (the "modern" interface): the only version we offer.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Notification suppression by ring index (`used_event`/`avail_event`): the driver interrupts
/// and the device notifications are asked for only where needed (virtio 1.2, 2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device types (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// A virtio device, independent of how the driver reaches it.
pub trait VirtioDevice: Send {
    /// The virtio device type.
    fn device_type(&self) -> u32;
    /// Largest size of each of the device's queues (their count is the number of queues).
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of [`Self::features`]).
    fn set_acked_features(&mut self, _features: u64) {}
    /// Reads the device-specific config space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space (read-only for our devices: ignored).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver notified queue `index`: serves its available buffers (and, for devices whose
    /// queues work together, whatever that unblocks on the others). Returns true if any buffer
    /// of any queue was used.
    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool;
    /// A file descriptor the event loop watches on the device's behalf (a tap, or an epoll fd of
    /// the device's own sockets); when it is readable, [`Self::process_host_events`] runs.
    fn host_event_fd(&self) -> Option<RawFd> {
        None
    }
    /// Host-side readiness on [`Self::host_event_fd`]. `active` is false until the driver has set
    /// the device up: the device must then only take note of the events, not touch `queues`.
    /// Returns true if any buffer was used.
    fn process_host_events(
        &mut self,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
        _active: bool,
    ) -> bool {
        false
    }
    /// Back to the state before the driver's first access. Runs on the vCPU thread that wrote the
    /// status register: it may drop state and close descriptors, but make no other system call
    /// (that thread's seccomp filter would kill the VMM).
    fn reset(&mut self) {}
}

/// One descriptor of a chain, as devices see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write_only: bool,
    pub has_next: bool,
}

impl From<virtio_queue::desc::split::Descriptor> for Desc {
    fn from(d: virtio_queue::desc::split::Descriptor) -> Self {
        Self {
            addr: d.addr().0,
            len: d.len(),
            write_only: d.is_write_only(),
            has_next: d.has_next(),
        }
    }
}

/// Serves every available chain of `queue` with `handle`, which returns the used length to
/// report; returns true if any chain was used.
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: impl FnMut(&[Desc]) -> u32,
) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let descs: Vec<Desc> = chain.map(Desc::from).collect();
        let len = handle(&descs);
        if queue.add_used(mem, head, len).is_err() {
            // The used ring is not in guest memory: nothing more can be returned.
            break;
        }
        used_any = true;
    }
    used_any
}

/// Copies the part of `config` at `offset` into `data`; whatever lies past `config` reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(offset..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Interrupt status bits (the MMIO `InterruptStatus` register).
pub const INTERRUPT_USED_BUFFER: u32 = 1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// A device's interrupt: the status the driver reads and acknowledges, and the irqfd that raises
/// the guest interrupt line.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Sets `bits` in the status and raises the interrupt.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // An eventfd write only fails when its counter would overflow, and then it is already
        // signalled.
        let _ = self.irqfd.write(1);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged `bits`.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The irqfd, for registration with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let config = [1u8, 2, 3, 4];
        let mut buf = [9u8; 4];
        read_config_bytes(&config, 2, &mut buf);
        assert_eq!(buf, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut buf);
        assert_eq!(buf, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut buf);
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_set_and_acknowledged() {
        let irq = Interrupt::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        irq.trigger(INTERRUPT_USED_BUFFER);
        irq.trigger(INTERRUPT_CONFIG_CHANGE);
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.irqfd().read().unwrap(), 2);
        irq.acknowledge(INTERRUPT_USED_BUFFER);
        assert_eq!(irq.status(), INTERRUPT_CONFIG_CHANGE);
    }
}
