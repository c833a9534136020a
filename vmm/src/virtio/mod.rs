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

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The device speaks virtio 1.x (the "modern" interface): the only version we offer.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Notification suppression by ring index (`used_event`/`avail_event`): the driver interrupts
/// and the device notifications are asked for only where needed (virtio 1.2, 2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Descriptors may name a table of further descriptors (virtio 1.2, 2.7.5.3). No device offers
/// it, and the transport refuses a driver that accepts a feature not offered, so it is never
/// negotiated: [`pop_chain`] refuses every chain that uses one.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

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
    /// queues work together, whatever that unblocks on the others), taking chains only through
    /// `round` (which says when it stopped with chains left). Returns true if any buffer of any
    /// queue was used.
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        round: &mut Round,
    ) -> bool;
    /// A file descriptor the event loop watches on the device's behalf (a tap, or an epoll fd of
    /// the device's own sockets); when it is readable, [`Self::process_host_events`] runs.
    fn host_event_fd(&self) -> Option<RawFd> {
        None
    }
    /// Host-side readiness on [`Self::host_event_fd`]. `active` is false until the driver has set
    /// the device up: the device must then only take note of the events, not touch `queues`.
    /// Chains are taken through `round`, as in [`Self::process_queue`]; what it leaves is served
    /// when one of the device's queues is notified. Returns true if any buffer was used.
    fn process_host_events(
        &mut self,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
        _active: bool,
        _round: &mut Round,
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

/// Why a descriptor chain is refused before a device looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain is longer than {0} descriptors")]
    TooLong(usize),
    #[error("descriptor chain uses an indirect descriptor table, a feature not negotiated")]
    Indirect,
    #[error("descriptor chain loops, or names a descriptor outside the table or guest memory")]
    Broken,
    #[error("descriptor chain's buffers add up to 4 GiB or more")]
    TooLarge,
}

/// Takes the next available chain of `queue`: its head index, and its descriptors unless the
/// chain is refused (more than `limit` descriptors, an indirect table, a loop or a bad index, 4
/// GiB or more). A refused chain is still taken from the ring: the caller returns it as used.
pub fn pop_chain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    limit: usize,
) -> Option<(u16, Result<Vec<Desc>, ChainError>)> {
    let table = GuestAddress(queue.desc_table());
    let size = queue.size();
    let head = queue.pop_descriptor_chain(mem)?.head_index();
    Some((head, read_chain(mem, table, size, head, limit)))
}

/// Walks the chain starting at descriptor `head` of the `size`-entry table at `table`, reading
/// each descriptor from guest memory once and holding at most `limit` of them. The walk is ours
/// rather than virtio-queue's iterator, which would follow an indirect table by itself (of up to
/// 65,535 entries) before the caller could see it.
pub fn read_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    limit: usize,
) -> Result<Vec<Desc>, ChainError> {
    let mut descs = Vec::new();
    let mut index = head;
    let mut bytes = 0u32;
    // A chain has at most `size` descriptors; one that goes on loops.
    for _ in 0..size {
        if index >= size {
            return Err(ChainError::Broken);
        }
        let desc: SplitDescriptor = table
            .checked_add(u64::from(index) * std::mem::size_of::<SplitDescriptor>() as u64)
            .and_then(|addr| mem.read_obj(addr).ok())
            .ok_or(ChainError::Broken)?;
        if desc.refers_to_indirect_table() {
            return Err(ChainError::Indirect);
        }
        if descs.len() >= limit {
            return Err(ChainError::TooLong(limit));
        }
        bytes = bytes.checked_add(desc.len()).ok_or(ChainError::TooLarge)?;
        descs.push(Desc::from(desc));
        if !desc.has_next() {
            return Ok(descs);
        }
        index = desc.next();
    }
    Err(ChainError::Broken)
}

/// The most chains one round — one notification, or one batch of host events — takes from a
/// device's queues before the event loop turns to its other events: a ring's worth. A guest that
/// refills its ring as fast as the device serves it would otherwise keep the VMM thread from stop
/// and exit events and from every other device; what is left waits for the next round.
pub const CHAINS_PER_ROUND: u32 = 256;

/// One round of serving a device: the chains it may still take, and whether it stopped with
/// chains left (the event loop then serves the device again after its other events).
#[derive(Debug)]
pub struct Round {
    left: u32,
    cut_short: bool,
}

impl Round {
    /// A round of [`CHAINS_PER_ROUND`] chains.
    pub fn new() -> Self {
        Self::with_budget(CHAINS_PER_ROUND)
    }

    /// A round of `chains` chains.
    pub fn with_budget(chains: u32) -> Self {
        Self {
            left: chains,
            cut_short: false,
        }
    }

    /// [`pop_chain`] while the budget lasts. Once it is spent: None, as for an empty queue, and
    /// the round is cut short if `queue` still holds chains.
    pub fn pop_chain(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        limit: usize,
    ) -> Option<(u16, Result<Vec<Desc>, ChainError>)> {
        if self.left == 0 {
            let waiting = queue
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != queue.next_avail());
            if waiting {
                self.cut_short = true;
            }
            return None;
        }
        let chain = pop_chain(queue, mem, limit)?;
        self.left -= 1;
        Some(chain)
    }

    /// Whether the budget ran out with chains still waiting.
    pub fn cut_short(&self) -> bool {
        self.cut_short
    }
}

impl Default for Round {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves the available chains of `queue` with `handle`, which returns the used length to
/// report, as many as `round` allows; a chain of more than `limit` descriptors, or otherwise
/// refused by [`pop_chain`], is returned unused (length 0). Returns true if any chain was used.
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    limit: usize,
    round: &mut Round,
    mut handle: impl FnMut(&[Desc]) -> u32,
) -> bool {
    let mut used_any = false;
    while let Some((head, descs)) = round.pop_chain(queue, mem, limit) {
        let len = descs.map_or(0, |descs| handle(&descs));
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
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;

    fn put(mem: &GuestMemoryMmap, table: u64, index: u16, desc: SplitDescriptor) {
        mem.write_obj(
            RawDescriptor::from(desc),
            GuestAddress(table + 16 * u64::from(index)),
        )
        .unwrap();
    }

    #[test]
    fn chains_are_read_up_to_a_limit_and_broken_ones_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let table = 0x1000;
        // 0 -> 1 -> ... -> 9, each 0x100 bytes.
        for i in 0..10u16 {
            let flags = if i < 9 { F_NEXT } else { F_WRITE };
            put(
                &mem,
                table,
                i,
                SplitDescriptor::new(0x8000, 0x100, flags, i + 1),
            );
        }
        let read = |head, limit| read_chain(&mem, GuestAddress(table), 16, head, limit);
        let chain = read(0, 10).unwrap();
        assert_eq!(chain.len(), 10);
        assert!(chain[9].write_only && !chain[9].has_next);
        assert_eq!(read(5, 10).unwrap().len(), 5);
        assert_eq!(read(0, 9), Err(ChainError::TooLong(9)));
        assert_eq!(read(0, 1), Err(ChainError::TooLong(1)));
        // A loop: 10 -> 11 -> 10.
        put(&mem, table, 10, SplitDescriptor::new(0x8000, 1, F_NEXT, 11));
        put(&mem, table, 11, SplitDescriptor::new(0x8000, 1, F_NEXT, 10));
        assert_eq!(read(10, 1000), Err(ChainError::Broken));
        // A next index past the table.
        put(&mem, table, 12, SplitDescriptor::new(0x8000, 1, F_NEXT, 16));
        assert_eq!(read(12, 1000), Err(ChainError::Broken));
        // 4 GiB or more in all.
        put(
            &mem,
            table,
            13,
            SplitDescriptor::new(0x8000, u32::MAX, F_NEXT, 14),
        );
        put(&mem, table, 14, SplitDescriptor::new(0x8000, 1, 0, 0));
        assert_eq!(read(13, 1000), Err(ChainError::TooLarge));
        // A table outside guest memory.
        assert_eq!(
            read_chain(&mem, GuestAddress(1 << 20), 16, 0, 8),
            Err(ChainError::Broken)
        );
    }

    #[test]
    fn indirect_descriptors_are_refused_without_following_the_table() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        // The finding: every head names one indirect table of 65,535 valid entries (1 MiB here;
        // 256 such heads made the VMM hold 256 MiB of descriptors at once).
        let big = 0x20_0000u64;
        for i in 0..u16::MAX {
            let next = i.wrapping_add(1);
            let flags = if next < u16::MAX { F_NEXT } else { 0 };
            put(&mem, big, i, SplitDescriptor::new(0x8000, 1, flags, next));
        }
        let q = MockSplitQueue::new(&mem, 256);
        let heads: Vec<RawDescriptor> = (0..256)
            .map(|_| RawDescriptor::from(SplitDescriptor::new(big, 16 * 65_535, F_INDIRECT, 0)))
            .collect();
        q.add_desc_chains(&heads, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let mut refused = 0;
        while let Some((head, descs)) = pop_chain(&mut queue, &mem, 1 << 20) {
            assert_eq!((head, descs), (refused, Err(ChainError::Indirect)));
            refused += 1;
        }
        assert_eq!(refused, 256);
        // An indirect descriptor after a direct one is refused too.
        let table = q.desc_table_addr().0;
        put(&mem, table, 0, SplitDescriptor::new(0x8000, 16, F_NEXT, 1));
        put(
            &mem,
            table,
            1,
            SplitDescriptor::new(big, 16 * 4, F_INDIRECT, 0),
        );
        assert_eq!(
            read_chain(&mem, GuestAddress(table), 256, 0, 1 << 20),
            Err(ChainError::Indirect)
        );
    }

    #[test]
    fn served_queues_return_refused_chains_empty_and_go_on() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let descs = [
            // Chain 0: three descriptors, one more than the limit.
            RawDescriptor::from(SplitDescriptor::new(0x8000, 8, F_NEXT | F_WRITE, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x8000, 8, F_NEXT | F_WRITE, 2)),
            RawDescriptor::from(SplitDescriptor::new(0x8000, 8, F_WRITE, 0)),
            // Chain 3: indirect.
            RawDescriptor::from(SplitDescriptor::new(0x9000, 32, F_INDIRECT, 0)),
            // Chain 4: fine.
            RawDescriptor::from(SplitDescriptor::new(0x8000, 8, F_WRITE, 0)),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let mut handled = Vec::new();
        assert!(serve_queue(
            &mut queue,
            &mem,
            2,
            &mut Round::new(),
            |descs| {
                handled.push(descs.len());
                7
            }
        ));
        assert_eq!(handled, vec![1]);
        let used: Vec<(u32, u32)> = (0..3)
            .map(|i| {
                let elem = q.used_addr().unchecked_add(4 + 8 * i);
                (
                    mem.read_obj(elem).unwrap(),
                    mem.read_obj(elem.unchecked_add(4)).unwrap(),
                )
            })
            .collect();
        assert_eq!(used, vec![(0, 0), (3, 0), (4, 7)]);
    }

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
