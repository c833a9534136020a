//! virtio-net backed by a host tap.
//!
//! Transmit: each chain (virtio-net header + frame) is checked against the negotiated offloads
//! and written to the tap with one `writev` straight from guest memory; malformed or oversized
//! frames are dropped and counted. Receive: a frame is read from the tap into one buffer of ours
//! and copied into the guest's receive chains: one chain per frame, or with mergeable receive
//! buffers (`VIRTIO_NET_F_MRG_RXBUF`, what Linux uses when offered) as many small chains as the
//! frame needs. When the guest has no buffers left, the frame waits (and the next ones in the
//! tap's queue) until the driver adds buffers.
//!
//! The tap is registered edge-triggered in an epoll instance of the device's own, which the VMM's
//! event loop watches (see [`VirtioDevice::host_event_fd`]).

pub mod header;
pub mod tap;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use self::header::{check_tx, NetHeader, TxOffloads, MIN_FRAME, NET_HDR_LEN};
use self::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use super::{read_config_bytes, Desc, Round, VirtioDevice, TYPE_NET};
use crate::config::MacAddr;

/// Queue sizes (receive, transmit).
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

// Feature bits (virtio 1.2, 5.1.3).
pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_MRG_RXBUF: u64 = 1 << 15;

/// Where `num_buffers` sits in the 12-byte virtio-net header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame a tap hands us: a 64 KiB GSO frame plus Ethernet, VLAN and virtio headers.
const MAX_RX_FRAME: usize = NET_HDR_LEN + 65_550;

/// Failed tap reads in a row after which receiving waits for the next event.
const MAX_RX_ERRORS_PER_PASS: u32 = 64;
/// Most descriptors in one chain we turn into iovecs (a 64 KiB frame in 4 KiB pages, plus some).
const MAX_CHAIN_DESCS: usize = 64;

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("virtio-net on tap {tap}: cannot create its epoll instance: {source}")]
    Epoll {
        tap: String,
        #[source]
        source: std::io::Error,
    },
}

/// Frame counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_dropped: u64,
    pub rx_frames: u64,
    pub rx_dropped: u64,
}

/// Where frames go: a tap we opened, or a descriptor handed to us already open (a tap opened by
/// a more privileged parent, or one end of a packet socket pair in tests).
enum Backend {
    Tap(Tap),
    Fd(OwnedFd),
}

impl Backend {
    fn fd(&self) -> RawFd {
        match self {
            Backend::Tap(t) => t.as_raw_fd(),
            Backend::Fd(fd) => fd.as_raw_fd(),
        }
    }
}

/// The network device.
pub struct Net {
    backend: Backend,
    epoll: Epoll,
    config: [u8; 6],
    acked: u64,
    /// Offload flags to apply to the tap (from the VMM thread: set_acked_features runs on a
    /// vCPU thread, whose seccomp filter allows no tap ioctl).
    pending_offload: Option<u32>,
    /// The tap may have frames to read (edge-triggered).
    tap_readable: bool,
    /// The frame read from the tap and not yet given to the guest: `rx_frame[..rx_pending]`.
    rx_frame: Vec<u8>,
    rx_pending: usize,
    /// Receive chains taken from the ring for a frame that needed more than the ring held: they
    /// wait here (not given back), so with EVENT_IDX the driver's next buffer crosses
    /// `avail_event` and notifies us.
    rx_held: VecDeque<(u16, Vec<Desc>)>,
    pub stats: NetStats,
}

impl Net {
    /// Attaches to the host tap `name`; the guest sees `mac`.
    pub fn open(name: &str, mac: MacAddr) -> Result<Self, NetError> {
        let tap = Tap::open(name)?;
        Self::with_backend(Backend::Tap(tap), name, mac)
    }

    /// Uses `fd`, an open tap with a 12-byte virtio-net header (or any descriptor that keeps
    /// frame boundaries); its offloads are left as they are.
    pub fn from_fd(fd: OwnedFd, name: &str, mac: MacAddr) -> Result<Self, NetError> {
        Self::with_backend(Backend::Fd(fd), name, mac)
    }

    fn with_backend(backend: Backend, name: &str, mac: MacAddr) -> Result<Self, NetError> {
        let epoll_err = |source| NetError::Epoll {
            tap: name.to_owned(),
            source,
        };
        let epoll = Epoll::new().map_err(epoll_err)?;
        epoll
            .ctl(
                ControlOperation::Add,
                backend.fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0),
            )
            .map_err(epoll_err)?;
        Ok(Self {
            backend,
            epoll,
            config: mac.0,
            acked: 0,
            pending_offload: None,
            tap_readable: true,
            rx_frame: vec![0; MAX_RX_FRAME],
            rx_pending: 0,
            rx_held: VecDeque::new(),
            stats: NetStats::default(),
        })
    }

    fn tx_offloads(&self) -> TxOffloads {
        TxOffloads {
            csum: self.acked & F_CSUM != 0,
            tso4: self.acked & F_HOST_TSO4 != 0,
            tso6: self.acked & F_HOST_TSO6 != 0,
        }
    }

    fn apply_offload(&mut self) {
        if let Some(flags) = self.pending_offload.take() {
            if let Backend::Tap(tap) = &self.backend {
                if let Err(e) = tap.set_offload(flags) {
                    // The guest then receives only plain frames the tap completes itself.
                    eprintln!("skiff-vmm: {e}");
                }
            }
        }
    }

    /// Sends every frame the guest queued.
    fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, round: &mut Round) -> bool {
        let mut used_any = false;
        let offloads = self.tx_offloads();
        while let Some((head, descs)) = round.pop_chain(queue, mem, MAX_CHAIN_DESCS) {
            let sent = descs.is_ok_and(|descs| self.send_frame(&descs, mem, offloads).is_ok());
            if sent {
                self.stats.tx_frames += 1;
            } else {
                self.stats.tx_dropped += 1;
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used_any = true;
        }
        used_any
    }

    fn send_frame(
        &self,
        descs: &[Desc],
        mem: &GuestMemoryMmap,
        offloads: TxOffloads,
    ) -> Result<(), ()> {
        if descs.len() > MAX_CHAIN_DESCS || descs.iter().any(|d| d.write_only) {
            return Err(());
        }
        let total: usize = descs.iter().map(|d| d.len as usize).sum();
        let hdr = read_header(descs, mem).ok_or(())?;
        check_tx(&hdr, total - NET_HDR_LEN, offloads).map_err(|_| ())?;
        let iov = GuestIovecs::new(descs, mem, Permissions::Read).ok_or(())?;
        // SAFETY: the iovecs describe guest memory kept mapped by `iov`'s guards.
        let n = unsafe { libc::writev(self.backend.fd(), iov.as_ptr(), iov.len()) };
        // A tap takes a frame whole or not at all.
        if usize::try_from(n) == Ok(total) {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Moves frames from the tap into the guest's receive buffers until either runs out.
    fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, round: &mut Round) -> bool {
        let mut used_any = false;
        let mut errors = 0;
        loop {
            if self.rx_pending == 0 {
                if !self.tap_readable {
                    break;
                }
                match self.read_frame() {
                    Ok(len) if len >= NET_HDR_LEN + MIN_FRAME => self.rx_pending = len,
                    // End of file (a closed socket pair): nothing more to read.
                    Ok(0) => self.tap_readable = false,
                    Ok(_) => self.stats.rx_dropped += 1,
                    Err(e) => match e.kind() {
                        std::io::ErrorKind::Interrupted => {}
                        // Drained until the next edge.
                        std::io::ErrorKind::WouldBlock => self.tap_readable = false,
                        // The tap dropped a frame it could not deliver (e.g. larger than our
                        // buffer): more may be queued behind it, and no new edge would announce
                        // them, so keep reading — unless the tap keeps failing (deleted).
                        _ => {
                            self.stats.rx_dropped += 1;
                            errors += 1;
                            if errors >= MAX_RX_ERRORS_PER_PASS {
                                self.tap_readable = false;
                            }
                        }
                    },
                }
                continue;
            }
            match self.deliver_frame(queue, mem, round) {
                Delivery::Delivered => self.stats.rx_frames += 1,
                // Back-pressure: the frame waits here (and the next ones in the tap) until the
                // driver adds buffers.
                Delivery::NoBuffers => break,
                Delivery::Dropped => self.stats.rx_dropped += 1,
            }
            self.rx_pending = 0;
            used_any = true;
        }
        used_any
    }

    /// Reads the next frame (virtio-net header included) from the tap into `rx_frame`.
    fn read_frame(&mut self) -> std::io::Result<usize> {
        let buf = &mut self.rx_frame;
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.backend.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// Copies the pending frame into the guest's receive chains — one chain, or with mergeable
    /// buffers as many as it takes, their count written to the header's `num_buffers` — and marks
    /// them used. Without enough buffers, keeps the frame and the chains it took (see
    /// `rx_held`) for the next attempt.
    fn deliver_frame(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        round: &mut Round,
    ) -> Delivery {
        let mergeable = self.acked & F_MRG_RXBUF != 0;
        let frame = &self.rx_frame[..self.rx_pending];
        // (head, descriptors, bytes written) of each chain this frame went into.
        let mut taken: Vec<(u16, Vec<Desc>, usize)> = Vec::new();
        let mut offset = 0;
        let mut fits = true;
        while offset < frame.len() {
            if !mergeable && !taken.is_empty() {
                fits = false; // the one chain a frame may use is too small
                break;
            }
            let (head, descs) = match self.rx_held.pop_front() {
                Some(held) => held,
                None => match round.pop_chain(queue, mem, MAX_CHAIN_DESCS) {
                    Some((head, Ok(descs))) => (head, descs),
                    // A refused chain holds nothing: like any chain we cannot fill, it goes back
                    // empty and the frame is dropped.
                    Some((head, Err(_))) => (head, Vec::new()),
                    None => {
                        for (head, descs, _) in taken.into_iter().rev() {
                            self.rx_held.push_front((head, descs));
                        }
                        return Delivery::NoBuffers;
                    }
                },
            };
            let written = copy_to_chain(&descs, mem, &frame[offset..]);
            // The first chain must hold the whole header (num_buffers is patched into it).
            let min = if taken.is_empty() { NET_HDR_LEN } else { 1 };
            taken.push((head, descs, written.unwrap_or(0)));
            match written {
                Some(n) if n >= min => offset += n,
                _ => {
                    fits = false; // a chain we cannot fill: the guest's own doing
                    break;
                }
            }
        }
        let delivery = if fits {
            let count = u16::try_from(taken.len()).unwrap_or(u16::MAX);
            if let Some((_, first, _)) = taken.first() {
                let _ = write_at(first, mem, NUM_BUFFERS_OFFSET, &count.to_le_bytes());
            }
            Delivery::Delivered
        } else {
            // Every chain taken goes back empty, and the frame is dropped.
            for entry in taken.iter_mut() {
                entry.2 = 0;
            }
            Delivery::Dropped
        };
        for (head, _, len) in &taken {
            if queue.add_used(mem, *head, *len as u32).is_err() {
                break;
            }
        }
        delivery
    }

    /// Notes the tap's readiness from the device's epoll instance.
    fn drain_events(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        while let Ok(n) = self.epoll.wait(0, &mut events) {
            if n == 0 {
                break;
            }
            self.tap_readable = true;
        }
    }
}

/// Reads the virtio-net header at the start of a chain (it may span descriptors).
fn read_header(descs: &[Desc], mem: &GuestMemoryMmap) -> Option<NetHeader> {
    let mut buf = [0u8; NET_HDR_LEN];
    let mut filled = 0;
    for d in descs {
        if filled == NET_HDR_LEN {
            break;
        }
        let n = (d.len as usize).min(NET_HDR_LEN - filled);
        mem.read_slice(&mut buf[filled..filled + n], GuestAddress(d.addr))
            .ok()?;
        filled += n;
    }
    (filled == NET_HDR_LEN).then(|| NetHeader::from_bytes(&buf))
}

/// What became of a received frame.
enum Delivery {
    Delivered,
    NoBuffers,
    Dropped,
}

/// Copies as much of `data` as fits into the chain's buffers; None if the chain is not all
/// device-writable, too long, or points outside guest memory.
fn copy_to_chain(descs: &[Desc], mem: &GuestMemoryMmap, data: &[u8]) -> Option<usize> {
    if descs.len() > MAX_CHAIN_DESCS || descs.iter().any(|d| !d.write_only) {
        return None;
    }
    let mut done = 0;
    for d in descs {
        if done == data.len() {
            break;
        }
        let n = (d.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], GuestAddress(d.addr))
            .ok()?;
        done += n;
    }
    Some(done)
}

/// Writes `bytes` at byte `offset` of the chain's buffers (which the caller filled before).
fn write_at(descs: &[Desc], mem: &GuestMemoryMmap, offset: usize, bytes: &[u8]) -> Option<()> {
    let mut skip = offset;
    let mut done = 0;
    for d in descs {
        let len = d.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(bytes.len() - done);
        mem.write_slice(
            &bytes[done..done + n],
            GuestAddress(d.addr.checked_add(skip as u64)?),
        )
        .ok()?;
        done += n;
        skip = 0;
        if done == bytes.len() {
            return Some(());
        }
    }
    None
}

/// A chain's buffers as iovecs, with the guards that keep them mapped.
struct GuestIovecs<'a> {
    iovecs: Vec<libc::iovec>,
    _guards: Vec<vm_memory::volatile_memory::PtrGuardMut>,
    _mem: std::marker::PhantomData<&'a GuestMemoryMmap>,
}

impl<'a> GuestIovecs<'a> {
    fn new(descs: &[Desc], mem: &'a GuestMemoryMmap, access: Permissions) -> Option<Self> {
        let mut iovecs = Vec::with_capacity(descs.len());
        let mut guards = Vec::with_capacity(descs.len());
        for d in descs.iter().filter(|d| d.len > 0) {
            let slices =
                GuestMemory::get_slices(mem, GuestAddress(d.addr), d.len as usize, access).ok()?;
            for slice in slices {
                let slice = slice.ok()?;
                let guard = slice.ptr_guard_mut();
                iovecs.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: slice.len(),
                });
                guards.push(guard);
            }
        }
        Some(Self {
            iovecs,
            _guards: guards,
            _mem: std::marker::PhantomData,
        })
    }

    fn as_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn len(&self) -> libc::c_int {
        self.iovecs.len() as libc::c_int
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_CSUM
            | F_GUEST_CSUM
            | F_MAC
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_MRG_RXBUF
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
        let mut flags = 0;
        if features & F_GUEST_CSUM != 0 {
            flags |= TUN_F_CSUM;
            if features & F_GUEST_TSO4 != 0 {
                flags |= TUN_F_TSO4;
            }
            if features & F_GUEST_TSO6 != 0 {
                flags |= TUN_F_TSO6;
            }
        }
        self.pending_offload = Some(flags);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        round: &mut Round,
    ) -> bool {
        self.apply_offload();
        match (index, queues.get_mut(index)) {
            (TX, Some(q)) => self.process_tx(q, mem, round),
            (RX, Some(q)) => self.process_rx(q, mem, round),
            _ => false,
        }
    }

    fn host_event_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_host_events(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        active: bool,
        round: &mut Round,
    ) -> bool {
        self.drain_events();
        if !active {
            return false;
        }
        self.apply_offload();
        match queues.get_mut(RX) {
            Some(q) => self.process_rx(q, mem, round),
            None => false,
        }
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.rx_pending = 0;
        self.rx_held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Address;

    const WRITE: u16 = 2;

    fn socket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: socketpair returned two new descriptors that nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn send(fd: &OwnedFd, data: &[u8]) {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        assert_eq!(n, data.len() as isize);
    }

    fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    struct Fixture<'a> {
        mem: &'a GuestMemoryMmap,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        queues: Vec<Queue>,
        net: Net,
        peer: OwnedFd,
        rx_posted: u16,
        tx_sent: u16,
    }

    impl<'a> Fixture<'a> {
        fn new(mem: &'a GuestMemoryMmap, acked: u64) -> Self {
            let (ours, peer) = socket_pair();
            let mut net = Net::from_fd(ours, "test", MacAddr([6, 0, 0, 0, 0, 1])).unwrap();
            net.set_acked_features(acked);
            let rxq = MockSplitQueue::create(mem, GuestAddress(0), 256);
            let txq = MockSplitQueue::create(mem, GuestAddress(0x10000), 256);
            let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
            Self {
                mem,
                rxq,
                txq,
                queues,
                net,
                peer,
                rx_posted: 0,
                tx_sent: 0,
            }
        }

        fn post_rx(&mut self, n: u16) {
            for _ in 0..n {
                // Split header and data, as Linux does in "big packets" mode.
                let i = self.rx_posted;
                let base = 0x100000 + u64::from(i) * 0x20000;
                let descs = [
                    RawDescriptor::from(SplitDescriptor::new(base, 12, WRITE | 1, i * 2 + 1)),
                    RawDescriptor::from(SplitDescriptor::new(base + 0x1000, 0x10000, WRITE, 0)),
                ];
                self.rxq.add_desc_chains(&descs, i * 2).unwrap();
                self.rx_posted += 1;
            }
        }

        /// Posts `n` one-descriptor receive chains of `size` bytes (mergeable mode).
        fn post_rx_single(&mut self, n: u16, size: u32) {
            for _ in 0..n {
                let i = self.rx_posted;
                let base = 0x100000 + u64::from(i) * 0x20000;
                let d = RawDescriptor::from(SplitDescriptor::new(base, size, WRITE, 0));
                self.rxq.add_desc_chains(&[d], i).unwrap();
                self.rx_posted += 1;
            }
        }

        fn transmit(&mut self, hdr: NetHeader, frame: &[u8]) {
            let addr = 0x800000 + u64::from(self.tx_sent) * 0x20000;
            self.mem
                .write_slice(&hdr.to_bytes(), GuestAddress(addr))
                .unwrap();
            self.mem
                .write_slice(frame, GuestAddress(addr + 0x1000))
                .unwrap();
            let i = self.tx_sent * 2;
            let descs = [
                RawDescriptor::from(SplitDescriptor::new(addr, 12, 1, i + 1)),
                RawDescriptor::from(SplitDescriptor::new(
                    addr + 0x1000,
                    frame.len() as u32,
                    0,
                    0,
                )),
            ];
            self.txq.add_desc_chains(&descs, i).unwrap();
            self.tx_sent += 1;
            self.net
                .process_queue(TX, &mut self.queues, self.mem, &mut Round::new());
        }

        fn used_rx(&self) -> Vec<(u16, u32)> {
            let used = self.rxq.used_addr();
            let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
            (0..idx)
                .map(|i| {
                    let e = used.unchecked_add(4 + u64::from(i) * 8);
                    let id: u32 = self.mem.read_obj(e).unwrap();
                    let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
                    (id as u16, len)
                })
                .collect()
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn transmitted_frames_reach_the_tap_whole_and_bad_ones_are_dropped() {
        let m = mem();
        let mut f = Fixture::new(&m, F_CSUM | F_HOST_TSO4);
        let data = frame(1500, 1);
        f.transmit(NetHeader::default(), &data);
        let got = f_recv(&f);
        assert_eq!(&got[..12], &NetHeader::default().to_bytes());
        assert_eq!(&got[12..], &data[..]);
        // A runt, an unnegotiated TSO6 frame, a bad checksum range: dropped, nothing sent.
        f.transmit(NetHeader::default(), &frame(8, 2));
        let tso6 = NetHeader {
            flags: header::F_NEEDS_CSUM,
            gso_type: header::GSO_TCPV6,
            gso_size: 1400,
            hdr_len: 74,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 0,
        };
        f.transmit(tso6, &frame(3000, 3));
        let bad_csum = NetHeader {
            flags: header::F_NEEDS_CSUM,
            csum_start: 1490,
            csum_offset: 16,
            ..NetHeader::default()
        };
        f.transmit(bad_csum, &data);
        assert!(recv(&f.peer).is_none());
        assert_eq!((f.net.stats.tx_frames, f.net.stats.tx_dropped), (1, 3));
        // Still serving.
        f.transmit(NetHeader::default(), &data);
        assert_eq!(f_recv(&f)[12..], data[..]);
    }

    #[test]
    fn an_indirect_transmit_chain_is_dropped_and_the_next_frame_is_sent() {
        let m = mem();
        let mut f = Fixture::new(&m, 0);
        let data = frame(1500, 4);
        // Header and frame behind a two-entry indirect table (INDIRECT_DESC is not offered).
        let (addr, table) = (0x1800000u64, 0x1900000u64);
        m.write_slice(&NetHeader::default().to_bytes(), GuestAddress(addr))
            .unwrap();
        m.write_slice(&data, GuestAddress(addr + 0x1000)).unwrap();
        let inner = [
            RawDescriptor::from(SplitDescriptor::new(addr, 12, 1, 1)),
            RawDescriptor::from(SplitDescriptor::new(addr + 0x1000, 1500, 0, 0)),
        ];
        for (i, d) in inner.into_iter().enumerate() {
            m.write_obj(d, GuestAddress(table + 16 * i as u64)).unwrap();
        }
        let d = RawDescriptor::from(SplitDescriptor::new(table, 32, 4, 0));
        f.txq.add_desc_chains(&[d], 200).unwrap();
        f.net
            .process_queue(TX, &mut f.queues, f.mem, &mut Round::new());
        assert!(recv(&f.peer).is_none());
        assert_eq!((f.net.stats.tx_frames, f.net.stats.tx_dropped), (0, 1));
        f.transmit(NetHeader::default(), &data);
        assert_eq!(f_recv(&f)[12..], data[..]);
        assert_eq!((f.net.stats.tx_frames, f.net.stats.tx_dropped), (1, 1));
    }

    fn f_recv(f: &Fixture) -> Vec<u8> {
        recv(&f.peer).expect("a frame on the tap")
    }

    #[test]
    fn received_frames_wait_for_buffers_then_arrive_in_order() {
        let m = mem();
        let mut f = Fixture::new(&m, 0);
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(60 + i * 500, i as u8)).collect();
        for fr in &frames {
            let mut pkt = NetHeader::default().to_bytes().to_vec();
            pkt.extend_from_slice(fr);
            send(&f.peer, &pkt);
        }
        // No buffers yet: nothing is read, nothing lost.
        assert!(!f
            .net
            .process_host_events(&mut f.queues, f.mem, true, &mut Round::new()));
        assert!(f.used_rx().is_empty());
        f.post_rx(2);
        assert!(f
            .net
            .process_queue(RX, &mut f.queues, f.mem, &mut Round::new()));
        assert_eq!(f.used_rx().len(), 2);
        f.post_rx(2);
        f.net
            .process_queue(RX, &mut f.queues, f.mem, &mut Round::new());
        let used = f.used_rx();
        assert_eq!(used.len(), 3);
        for (i, (id, len)) in used.iter().enumerate() {
            let fr = &frames[i];
            assert_eq!(*len as usize, 12 + fr.len());
            let base = 0x100000 + u64::from(*id / 2) * 0x20000;
            let num_buffers: u16 = m.read_obj(GuestAddress(base + 10)).unwrap();
            assert_eq!(num_buffers, 1);
            let mut got = vec![0u8; fr.len()];
            m.read_slice(&mut got, GuestAddress(base + 0x1000)).unwrap();
            assert_eq!(&got, fr);
        }
        assert_eq!(f.net.stats.rx_frames, 3);
    }

    #[test]
    fn with_mergeable_buffers_a_frame_spans_chains_once_there_are_enough() {
        let m = mem();
        let mut f = Fixture::new(&m, F_MRG_RXBUF);
        let mut pkt = NetHeader::default().to_bytes().to_vec();
        pkt.extend_from_slice(&frame(3000, 5));
        send(&f.peer, &pkt);
        // 2 KiB of buffers cannot hold 3012 bytes: the frame waits, the chains are given back.
        f.post_rx_single(2, 1024);
        assert!(!f
            .net
            .process_host_events(&mut f.queues, f.mem, true, &mut Round::new()));
        assert!(f.used_rx().is_empty());
        f.post_rx_single(2, 1024);
        assert!(f
            .net
            .process_queue(RX, &mut f.queues, f.mem, &mut Round::new()));
        assert_eq!(f.used_rx(), vec![(0, 1024), (1, 1024), (2, 964)]);
        let mut got = Vec::new();
        for (id, len) in f.used_rx() {
            let mut part = vec![0u8; len as usize];
            m.read_slice(&mut part, GuestAddress(0x100000 + u64::from(id) * 0x20000))
                .unwrap();
            got.extend_from_slice(&part);
        }
        pkt[10..12].copy_from_slice(&3u16.to_le_bytes()); // num_buffers
        assert_eq!(got, pkt);
        assert_eq!((f.net.stats.rx_frames, f.net.stats.rx_dropped), (1, 0));
        // The fourth chain is still the guest's, for the next frame.
        send(&f.peer, &pkt[..112]);
        f.net
            .process_host_events(&mut f.queues, f.mem, true, &mut Round::new());
        assert_eq!(f.used_rx().last(), Some(&(3, 112)));
    }

    #[test]
    fn without_mergeable_buffers_a_frame_larger_than_its_chain_is_dropped() {
        let m = mem();
        let mut f = Fixture::new(&m, 0);
        f.post_rx_single(2, 1024);
        let mut pkt = NetHeader::default().to_bytes().to_vec();
        pkt.extend_from_slice(&frame(3000, 5));
        send(&f.peer, &pkt);
        send(&f.peer, &pkt[..200]);
        f.net
            .process_host_events(&mut f.queues, f.mem, true, &mut Round::new());
        assert_eq!(f.used_rx(), vec![(0, 0), (1, 200)]);
        assert_eq!((f.net.stats.rx_frames, f.net.stats.rx_dropped), (1, 1));
    }

    #[test]
    fn receive_chains_that_cannot_hold_a_frame_are_returned_empty() {
        let m = mem();
        let mut f = Fixture::new(&m, 0);
        // A device-readable receive buffer.
        let d = RawDescriptor::from(SplitDescriptor::new(0x100000, 4096, 0, 0));
        f.rxq.add_desc_chains(&[d], 0).unwrap();
        let mut pkt = NetHeader::default().to_bytes().to_vec();
        pkt.extend_from_slice(&frame(100, 9));
        send(&f.peer, &pkt);
        f.net
            .process_host_events(&mut f.queues, f.mem, true, &mut Round::new());
        assert_eq!(f.used_rx(), vec![(0, 0)]);
        assert_eq!(f.net.stats.rx_dropped, 1);
    }

    #[test]
    fn offloads_follow_the_features_the_driver_accepted() {
        let m = mem();
        let mut f = Fixture::new(&m, 0);
        f.net.set_acked_features(F_GUEST_CSUM | F_GUEST_TSO4);
        assert_eq!(f.net.pending_offload, Some(TUN_F_CSUM | TUN_F_TSO4));
        f.net.set_acked_features(F_GUEST_TSO4);
        assert_eq!(f.net.pending_offload, Some(0), "TSO needs checksum offload");
        let mut cfg = [0u8; 8];
        f.net.read_config(0, &mut cfg);
        assert_eq!(cfg, [6, 0, 0, 0, 0, 1, 0, 0]);
    }
}
