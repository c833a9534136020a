//! The virtio-mmio transport, version 2 ("modern" register layout, virtio 1.2 section 4.2.2).
//!
//! The driver discovers each device from the kernel command line
//! (`virtio_mmio.device=<size>@<addr>:<irq>`), negotiates features through the status state
//! machine, describes its queues, and notifies through `QueueNotify` — which KVM turns into an
//! eventfd (ioeventfd) so the VMM thread serves the queue without a vCPU exit to user space.
//! Used buffers are signalled through an irqfd.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{
    status, Interrupt, Round, VirtioDevice, CHAINS_PER_ROUND, INTERRUPT_USED_BUFFER,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::bus::BusDevice;

/// Features of the transport, offered for every device. A device opts in to
/// `VIRTIO_RING_F_EVENT_IDX` by listing it in its own features; none does yet: with it on for
/// vsock, real guests in the nested test host triple-faulted now and then under heavy host->guest
/// streaming (4 of ~16 runs, 0 of 16 without). Guests, and the nested host's own kernel, have
/// since crashed under heavy TCP load without it too, so QEMU's emulated SVM may be the cause;
/// without EVENT_IDX the driver is still told not to notify while a queue is served
/// (`VRING_USED_F_NO_NOTIFY`), and its `VRING_AVAIL_F_NO_INTERRUPT` is honoured.
const TRANSPORT_FEATURES: u64 = VIRTIO_F_VERSION_1;
// Devices refuse chains with indirect descriptors (see `super::pop_chain`): never offered.
const _: () = assert!(TRANSPORT_FEATURES & VIRTIO_RING_F_INDIRECT_DESC == 0);
/// Rounds of serving a queue again for buffers the driver added while we published where to be
/// notified next (bounded: a guest adding buffers as fast as we serve them cannot keep us here).
const MAX_REARM_ROUNDS: usize = 8;

/// `avail.flags`: the driver asks not to be interrupted for this queue (it polls).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Bytes of MMIO space each device takes.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5346_4b53; // "SKFS"

// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of `QueueNotify`, where the VMM registers the queues' ioeventfds.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("invalid queue size {0} offered by a device")]
    QueueSize(u16),
}

/// A virtio device behind the MMIO register interface.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    /// Each queue's used index when the driver was last interrupted for it.
    signalled_used: Vec<u16>,
    /// Chains one round may take ([`CHAINS_PER_ROUND`]).
    chains_per_round: u32,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let signalled_used = vec![0; device.queue_max_sizes().len()];
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&size| Queue::new(size).map_err(|_| MmioError::QueueSize(size)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            signalled_used,
            chains_per_round: CHAINS_PER_ROUND,
        })
    }

    /// Chains each round may take (tests make rounds small).
    #[cfg(test)]
    pub(crate) fn set_chains_per_round(&mut self, chains: u32) {
        self.chains_per_round = chains;
    }

    /// Number of queues (each needs a notification eventfd).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The device's virtio type.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Whether the driver finished setting the device up.
    pub fn is_activated(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::FAILED == 0
    }

    /// The driver notified queue `index`: serve it for one round, and interrupt if buffers were
    /// used. Returns true if the round was cut short: the queue is to be served again (by
    /// notifying it once more) after the event loop's other events.
    #[must_use]
    pub fn notify_queue(&mut self, index: usize) -> bool {
        if !self.is_activated() {
            return false;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return false;
        };
        if !queue.ready() {
            return false;
        }
        // While we serve the queue the driver need not notify (`VRING_USED_F_NO_NOTIFY`; with
        // EVENT_IDX, `avail_event` does this): each notification is a VM exit.
        let _ = queue.disable_notification(&self.mem);
        let mut round = Round::with_budget(self.chains_per_round);
        let mut used = self
            .device
            .process_queue(index, &mut self.queues, &self.mem, &mut round);
        used |= self.rearm_notifications(&mut round);
        if used {
            self.signal_used();
        }
        round.cut_short()
    }

    /// Tells the driver of each queue to notify again at the next buffer it adds (clears
    /// `VRING_USED_F_NO_NOTIFY`, or with EVENT_IDX sets `avail_event`), and serves again any queue
    /// that got buffers in the meantime: a driver that saw notifications off may not have
    /// notified for them. Returns whether buffers were used.
    fn rearm_notifications(&mut self, round: &mut Round) -> bool {
        let mut used = false;
        for index in 0..self.queues.len() {
            for _ in 0..MAX_REARM_ROUNDS {
                let Some(queue) = self.queues.get_mut(index) else {
                    break;
                };
                if !queue.ready() || !matches!(queue.enable_notification(&self.mem), Ok(true)) {
                    break;
                }
                // Buffers are there: serve them; stop when the device takes none (it waits for
                // host data, and has published where it wants the next notification).
                if !self
                    .device
                    .process_queue(index, &mut self.queues, &self.mem, round)
                {
                    break;
                }
                used = true;
            }
        }
        used
    }

    /// The device's host-side file descriptor, if it has one (see
    /// [`VirtioDevice::host_event_fd`]).
    pub fn host_event_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.host_event_fd()
    }

    /// The device's host-side file descriptor is ready: let the device serve it for one round.
    /// Returns true if the round was cut short: the device's queues are to be notified again
    /// after the event loop's other events.
    #[must_use]
    pub fn process_host_events(&mut self) -> bool {
        let active = self.is_activated() && self.queues.iter().all(|q| q.ready());
        let mut round = Round::with_budget(self.chains_per_round);
        let mut used =
            self.device
                .process_host_events(&mut self.queues, &self.mem, active, &mut round);
        if active {
            used |= self.rearm_notifications(&mut round);
        }
        if used {
            self.signal_used();
        }
        round.cut_short()
    }

    /// Interrupts the driver unless every queue with newly used buffers asked not to be: with
    /// EVENT_IDX through `used_event`, otherwise through `VRING_AVAIL_F_NO_INTERRUPT` (which Linux
    /// sets while it polls a queue, e.g. in NAPI).
    fn signal_used(&mut self) {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut needed = false;
        for (queue, signalled) in self.queues.iter_mut().zip(self.signalled_used.iter_mut()) {
            if !queue.ready() {
                continue;
            }
            // Called for every queue: with EVENT_IDX it also restarts the count of buffers
            // used since the last interrupt.
            let wanted = queue.needs_notification(&self.mem).unwrap_or(true);
            let next_used = queue.next_used();
            if next_used == *signalled {
                continue;
            }
            let wanted = if event_idx {
                wanted
            } else {
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                let flags: u16 = self
                    .mem
                    .read_obj(vm_memory::GuestAddress(queue.avail_ring()))
                    .unwrap_or(0);
                flags & VRING_AVAIL_F_NO_INTERRUPT == 0
            };
            if wanted {
                *signalled = next_used;
                needed = true;
            }
        }
        if needed {
            self.interrupt.trigger(INTERRUPT_USED_BUFFER);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue not yet
    /// enabled.
    fn queue_writable(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn reset(&mut self) {
        self.device.reset();
        self.signalled_used.iter_mut().for_each(|s| *s = 0);
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.clear();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
    }

    /// Applies a driver write to `Status`, enforcing the initialisation order.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (save FAILED, which may come at any time).
        if value & self.status != self.status {
            return;
        }
        let added = value & !self.status;
        if added & status::FAILED != 0 {
            self.status = value;
            return;
        }
        let has = |bits: u32| value & bits == bits;
        let ok = match added {
            status::ACKNOWLEDGE => true,
            status::DRIVER => has(status::ACKNOWLEDGE),
            status::FEATURES_OK => {
                has(status::ACKNOWLEDGE | status::DRIVER) && self.features_acceptable()
            }
            status::DRIVER_OK => {
                has(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)
                    && self.queues_valid()
            }
            0 => true,
            _ => false, // several steps at once
        };
        if ok {
            if added == status::FEATURES_OK {
                self.device.set_acked_features(self.driver_features);
            }
            if added == status::DRIVER_OK {
                let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
                for queue in &mut self.queues {
                    queue.set_event_idx(event_idx);
                }
            }
            self.status = value;
        } else if added == status::DRIVER_OK {
            // The driver asked to start with a broken setup: tell it the device needs a reset.
            self.status |= status::DEVICE_NEEDS_RESET;
            self.interrupt.trigger(super::INTERRUPT_CONFIG_CHANGE);
        }
    }

    /// The driver accepted only features we offered, including VERSION_1.
    fn features_acceptable(&self) -> bool {
        let offered = self.device.features() | TRANSPORT_FEATURES;
        self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// Every enabled queue lies in guest memory; at least one is enabled.
    fn queues_valid(&self) -> bool {
        self.queues.iter().any(|q| q.ready())
            && self
                .queues
                .iter()
                .filter(|q| q.ready())
                .all(|q| q.is_valid(&self.mem))
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = self.device.features() | TRANSPORT_FEATURES;
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let writable = self.queue_writable();
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_DRIVER_FEATURES => {
                let negotiating =
                    self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0;
                if negotiating {
                    match self.driver_features_select {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(value)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                        }
                        _ => {}
                    }
                }
            }
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NOTIFY => {
                // Caught by the queue's ioeventfd (KVM matches the index); only an index no queue
                // has reaches us, and it names nothing to serve.
                let _ = self.notify_queue(value as usize);
            }
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.write_status(value),
            _ if !writable => {}
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue().filter(|q| !q.ready()) {
                    // virtio-queue keeps the old size if this one is invalid (not a power of two,
                    // zero, or above the maximum); the queue is then refused at DRIVER_OK.
                    q.set_size(value.try_into().unwrap_or(0));
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                let Some(q) = self.selected_queue().filter(|q| !q.ready()) else {
                    return;
                };
                let low = offset & 0x4 == 0;
                let (lo, hi) = if low {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                match offset & !0x4 {
                    REG_QUEUE_DESC_LOW => q.set_desc_table_address(lo, hi),
                    REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(lo, hi),
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        // Registers are 32 bits wide and read whole.
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            self.device.write_config(offset - REG_CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 == 0 {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{read_config_bytes, INTERRUPT_CONFIG_CHANGE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A device that counts the buffers it is given.
    struct Counter {
        used: Arc<std::sync::atomic::AtomicUsize>,
        acked: Arc<std::sync::atomic::AtomicU64>,
    }

    impl VirtioDevice for Counter {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 3 | VIRTIO_RING_F_EVENT_IDX
        }
        fn set_acked_features(&mut self, features: u64) {
            self.acked
                .store(features, std::sync::atomic::Ordering::SeqCst);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&[0xaa, 0xbb], offset, data);
        }
        fn process_queue(
            &mut self,
            i: usize,
            queues: &mut [Queue],
            mem: &GuestMemoryMmap,
            round: &mut Round,
        ) -> bool {
            let queue = &mut queues[i];
            let mut any = false;
            while let Some((head, _)) = round.pop_chain(queue, mem, 16) {
                queue.add_used(mem, head, 0).unwrap();
                self.used.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                any = true;
            }
            any
        }
    }

    struct Fixture {
        transport: MmioTransport,
        mem: GuestMemoryMmap,
        used: Arc<std::sync::atomic::AtomicUsize>,
        acked: Arc<std::sync::atomic::AtomicU64>,
        interrupt: Arc<Interrupt>,
    }

    fn fixture() -> Fixture {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let used = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let transport = MmioTransport::new(
            Box::new(Counter {
                used: used.clone(),
                acked: acked.clone(),
            }),
            mem.clone(),
            interrupt.clone(),
        )
        .unwrap();
        Fixture {
            transport,
            mem,
            used,
            acked,
            interrupt,
        }
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// The Linux driver's sequence, up to FEATURES_OK, accepting `features`.
    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        write(t, REG_STATUS, status::ACKNOWLEDGE);
        write(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write(t, REG_DRIVER_FEATURES_SEL, 0);
        write(t, REG_DRIVER_FEATURES, features as u32);
        write(t, REG_DRIVER_FEATURES_SEL, 1);
        write(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        write(
            t,
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        read(t, REG_STATUS)
    }

    fn setup_queue(t: &mut MmioTransport, q: &MockSplitQueue<GuestMemoryMmap>) {
        write(t, REG_QUEUE_SEL, 0);
        write(t, REG_QUEUE_NUM, 16);
        write(t, REG_QUEUE_DESC_LOW, q.desc_table_addr().0 as u32);
        write(t, REG_QUEUE_DESC_HIGH, 0);
        write(t, REG_QUEUE_DRIVER_LOW, q.avail_addr().0 as u32);
        write(t, REG_QUEUE_DRIVER_HIGH, 0);
        write(t, REG_QUEUE_DEVICE_LOW, q.used_addr().0 as u32);
        write(t, REG_QUEUE_DEVICE_HIGH, 0);
        write(t, REG_QUEUE_READY, 1);
    }

    #[test]
    fn identifies_itself() {
        let mut f = fixture();
        let t = &mut f.transport;
        assert_eq!(read(t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!(read(t, REG_VERSION), 2);
        assert_eq!(read(t, REG_DEVICE_ID), 42);
        write(t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            read(t, REG_DEVICE_FEATURES),
            1,
            "VERSION_1 in the high word"
        );
        write(t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            read(t, REG_DEVICE_FEATURES),
            1 << 3 | 1 << 29,
            "the device's own and EVENT_IDX"
        );
        assert_eq!(read(t, REG_QUEUE_NUM_MAX), 16);
        let mut cfg = [0u8; 2];
        t.read(REG_CONFIG, &mut cfg);
        assert_eq!(cfg, [0xaa, 0xbb]);
        // Odd-sized or misaligned register reads are not served.
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn a_notification_serves_one_round_and_says_when_chains_are_left() {
        let mut f = fixture();
        let q = MockSplitQueue::new(&f.mem, 16);
        negotiate(&mut f.transport, VIRTIO_F_VERSION_1);
        setup_queue(&mut f.transport, &q);
        write(&mut f.transport, REG_STATUS, 0xf);
        f.transport.set_chains_per_round(5);
        let descs: Vec<RawDescriptor> = (0..12)
            .map(|_| RawDescriptor::from(SplitDescriptor::new(0x8_0000, 16, 0, 0)))
            .collect();
        q.add_desc_chains(&descs, 0).unwrap();
        let used = |f: &Fixture| f.used.load(std::sync::atomic::Ordering::SeqCst);
        // 12 chains in rounds of 5: cut short twice, and the used ones are signalled each time.
        assert!(f.transport.notify_queue(0));
        assert_eq!(used(&f), 5);
        assert_eq!(
            read(&mut f.transport, REG_INTERRUPT_STATUS),
            INTERRUPT_USED_BUFFER
        );
        assert!(f.transport.notify_queue(0));
        assert_eq!(used(&f), 10);
        assert!(!f.transport.notify_queue(0), "the last two fit in a round");
        assert_eq!(used(&f), 12);
        // A round that spends its budget exactly on what was there is not cut short.
        let five: Vec<RawDescriptor> = descs[..5].to_vec();
        q.add_desc_chains(&five, 0).unwrap();
        assert!(!f.transport.notify_queue(0));
        assert_eq!(used(&f), 17);
    }

    #[test]
    fn a_driver_refilling_its_ring_while_served_gets_one_round_per_notification() {
        let mut f = fixture();
        let q = MockSplitQueue::new(&f.mem, 16);
        negotiate(&mut f.transport, VIRTIO_F_VERSION_1);
        setup_queue(&mut f.transport, &q);
        // The mock lays its used ring over the end of its available ring (16 entries counted
        // as bytes), which shows once the ring wraps: the used ring goes elsewhere.
        let used_ring = GuestAddress(0x1000);
        write(&mut f.transport, REG_QUEUE_READY, 0);
        write(&mut f.transport, REG_QUEUE_DEVICE_LOW, used_ring.0 as u32);
        write(&mut f.transport, REG_QUEUE_READY, 1);
        write(&mut f.transport, REG_STATUS, 0xf);
        f.transport.set_chains_per_round(64);
        // Every ring entry names descriptor 0; a second thread makes each used entry available
        // again at once, 200,000 times in all (the finding: one notification served for as long as the
        // guest kept refilling).
        let desc = RawDescriptor::from(SplitDescriptor::new(0x8_0000, 16, 0, 0));
        q.add_desc_chains(&[desc], 0).unwrap();
        let (avail_idx, used_idx) = (q.avail_addr().unchecked_add(2), used_ring.unchecked_add(2));
        const SUBMISSIONS: u32 = 200_000;
        let mem = f.mem.clone();
        let flooder = std::thread::spawn(move || {
            let mut next: u16 = mem.read_obj(avail_idx).unwrap();
            let mut submitted = 0;
            while submitted < SUBMISSIONS {
                let used: u16 = mem.read_obj(used_idx).unwrap();
                if next.wrapping_sub(used) < 16 {
                    next = next.wrapping_add(1);
                    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                    mem.write_obj(next, avail_idx).unwrap();
                    submitted += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let used = |f: &Fixture| f.used.load(std::sync::atomic::Ordering::SeqCst);
        let mut before = used(&f);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !flooder.is_finished() && std::time::Instant::now() < deadline {
            let _ = f.transport.notify_queue(0);
            let now = used(&f);
            assert!(
                now - before <= 64,
                "one notification served {} chains",
                now - before
            );
            before = now;
        }
        assert!(flooder.is_finished(), "the flood was served");
        flooder.join().unwrap();
    }

    #[test]
    fn full_setup_activates_and_serves_notifications() {
        let mut f = fixture();
        let q = MockSplitQueue::new(&f.mem, 16);
        let status = negotiate(&mut f.transport, VIRTIO_F_VERSION_1 | 1 << 3);
        assert_ne!(status & status::FEATURES_OK, 0);
        assert_eq!(
            f.acked.load(std::sync::atomic::Ordering::SeqCst),
            VIRTIO_F_VERSION_1 | 1 << 3
        );
        setup_queue(&mut f.transport, &q);
        write(&mut f.transport, REG_STATUS, 0xf);
        assert!(f.transport.is_activated());

        let desc = RawDescriptor::from(SplitDescriptor::new(0x8_0000, 16, 0, 0));
        q.add_desc_chains(&[desc], 0).unwrap();
        assert!(!f.transport.notify_queue(0), "not cut short");
        assert_eq!(f.used.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            read(&mut f.transport, REG_INTERRUPT_STATUS),
            INTERRUPT_USED_BUFFER
        );
        write(&mut f.transport, REG_INTERRUPT_ACK, INTERRUPT_USED_BUFFER);
        assert_eq!(read(&mut f.transport, REG_INTERRUPT_STATUS), 0);

        // Reset puts everything back.
        write(&mut f.transport, REG_STATUS, 0);
        assert!(!f.transport.is_activated());
        assert_eq!(read(&mut f.transport, REG_QUEUE_READY), 0);
    }

    #[test]
    fn with_event_idx_the_driver_is_told_where_to_notify_and_interrupts_follow_used_event() {
        let mut f = fixture();
        let q = MockSplitQueue::new(&f.mem, 16);
        negotiate(
            &mut f.transport,
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        );
        setup_queue(&mut f.transport, &q);
        write(&mut f.transport, REG_STATUS, 0xf);
        // avail_event sits after the used ring's 16 entries; used_event after the avail ring's.
        let avail_event = q.used_addr().unchecked_add(4 + 16 * 8);
        let used_event = q.avail_addr().unchecked_add(4 + 16 * 2);
        let descs: Vec<RawDescriptor> = (0..3)
            .map(|i| RawDescriptor::from(SplitDescriptor::new(0x8_0000 + i * 0x100, 16, 0, 0)))
            .collect();
        q.add_desc_chains(&descs[..2], 0).unwrap();
        assert!(!f.transport.notify_queue(0), "not cut short");
        assert_eq!(f.used.load(std::sync::atomic::Ordering::SeqCst), 2);
        let event: u16 = f.mem.read_obj(avail_event).unwrap();
        assert_eq!(event, 2, "notify us when buffer 2 is added");
        assert_eq!(
            read(&mut f.transport, REG_INTERRUPT_STATUS),
            INTERRUPT_USED_BUFFER
        );
        write(&mut f.transport, REG_INTERRUPT_ACK, INTERRUPT_USED_BUFFER);

        // The driver wants an interrupt only once used index 5 is passed: one more buffer
        // used (index 3) does not interrupt.
        f.mem.write_obj(5u16, used_event).unwrap();
        q.add_desc_chains(&descs[2..], 2).unwrap();
        assert!(!f.transport.notify_queue(0), "not cut short");
        assert_eq!(f.used.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(read(&mut f.transport, REG_INTERRUPT_STATUS), 0);
        let event: u16 = f.mem.read_obj(avail_event).unwrap();
        assert_eq!(event, 3);
    }

    #[test]
    fn without_event_idx_notifications_are_off_while_serving_and_no_interrupt_is_honoured() {
        let mut f = fixture();
        let q = MockSplitQueue::new(&f.mem, 16);
        negotiate(&mut f.transport, VIRTIO_F_VERSION_1);
        setup_queue(&mut f.transport, &q);
        write(&mut f.transport, REG_STATUS, 0xf);
        let used_flags = q.used_addr();
        let avail_flags = q.avail_addr();
        let descs: Vec<RawDescriptor> = (0..3)
            .map(|i| RawDescriptor::from(SplitDescriptor::new(0x8_0000 + i * 0x100, 16, 0, 0)))
            .collect();
        q.add_desc_chains(&descs[..1], 0).unwrap();
        assert!(!f.transport.notify_queue(0), "not cut short");
        assert_eq!(f.used.load(std::sync::atomic::Ordering::SeqCst), 1);
        let flags: u16 = f.mem.read_obj(used_flags).unwrap();
        assert_eq!(flags, 0, "notifications are back on after serving");
        assert_eq!(
            read(&mut f.transport, REG_INTERRUPT_STATUS),
            INTERRUPT_USED_BUFFER
        );
        write(&mut f.transport, REG_INTERRUPT_ACK, INTERRUPT_USED_BUFFER);

        // The driver polls (VRING_AVAIL_F_NO_INTERRUPT): a used buffer does not interrupt.
        f.mem.write_obj(1u16, avail_flags).unwrap();
        q.add_desc_chains(&descs[1..2], 1).unwrap();
        assert!(!f.transport.notify_queue(0), "not cut short");
        assert_eq!(f.used.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(read(&mut f.transport, REG_INTERRUPT_STATUS), 0);
        // It stops polling: the next used buffer interrupts again.
        f.mem.write_obj(0u16, avail_flags).unwrap();
        q.add_desc_chains(&descs[2..], 2).unwrap();
        assert!(!f.transport.notify_queue(0), "not cut short");
        assert_eq!(
            read(&mut f.transport, REG_INTERRUPT_STATUS),
            INTERRUPT_USED_BUFFER
        );
    }

    #[test]
    fn features_we_did_not_offer_or_without_version_1_are_refused() {
        let mut f = fixture();
        let status = negotiate(&mut f.transport, VIRTIO_F_VERSION_1 | 1 << 7);
        assert_eq!(status & status::FEATURES_OK, 0);
        let mut f = fixture();
        let status = negotiate(&mut f.transport, 1 << 3);
        assert_eq!(
            status & status::FEATURES_OK,
            0,
            "legacy drivers are not served"
        );
    }

    #[test]
    fn out_of_order_status_and_early_notifications_are_ignored() {
        let mut f = fixture();
        write(
            &mut f.transport,
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert_eq!(read(&mut f.transport, REG_STATUS), 0);
        write(&mut f.transport, REG_STATUS, status::DRIVER);
        assert_eq!(
            read(&mut f.transport, REG_STATUS),
            0,
            "DRIVER before ACKNOWLEDGE"
        );
        // Queue registers before FEATURES_OK are ignored.
        write(&mut f.transport, REG_QUEUE_READY, 1);
        assert_eq!(read(&mut f.transport, REG_QUEUE_READY), 0);
        // Notifying before activation does nothing; an unknown queue index neither.
        write(&mut f.transport, REG_QUEUE_NOTIFY, 0);
        write(&mut f.transport, REG_QUEUE_NOTIFY, 7);
        assert_eq!(f.used.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn driver_ok_with_a_queue_outside_memory_needs_reset() {
        let mut f = fixture();
        negotiate(&mut f.transport, VIRTIO_F_VERSION_1);
        write(&mut f.transport, REG_QUEUE_NUM, 16);
        write(&mut f.transport, REG_QUEUE_DESC_LOW, 0xfff0_0000);
        write(&mut f.transport, REG_QUEUE_READY, 1);
        write(&mut f.transport, REG_STATUS, 0xf);
        assert!(!f.transport.is_activated());
        assert_ne!(
            read(&mut f.transport, REG_STATUS) & status::DEVICE_NEEDS_RESET,
            0
        );
        assert_ne!(f.interrupt.status() & INTERRUPT_CONFIG_CHANGE, 0);
    }
}
