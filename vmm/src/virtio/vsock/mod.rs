//! virtio-vsock with the host side on Unix sockets (the "hybrid" model of Firecracker).
//!
//! - A host program connects to the VMM's socket (`uds`) and writes `CONNECT <port>\n`; the VMM
//!   asks the guest to accept on `port` and, once it does, answers `OK <host port>\n`. From then
//!   on the Unix stream carries the connection's bytes both ways.
//! - A guest connection to the host (cid 2) port P is forwarded to the Unix socket `<uds>_P`,
//!   where a host program listens; nobody listening means the guest's connect is refused.
//!
//! The device owns an epoll instance holding the listener and every connection's stream
//! (edge-triggered); the VMM's event loop watches that epoll fd and calls
//! [`VirtioDevice::process_host_events`] when it is ready.

pub mod connection;
pub mod packet;

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use self::connection::{ConnectLine, Connection, State};
use self::packet::{op, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::{read_config_bytes, Round, VirtioDevice, TYPE_VSOCK};

/// Size of each of the three queues (receive, transmit, event).
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Most connections one device keeps; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// First port given to the host end of host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll token of the listening socket; connections use their own tokens from 1.
const LISTENER: u64 = 0;
/// Rounds of the device's epoll drained per call from the VMM loop.
const MAX_EVENT_ROUNDS: usize = 16;
/// Most descriptors in one chain (Linux uses one or two, a few more for a fragmented packet).
const MAX_CHAIN_DESCS: usize = 64;
/// Most resets waiting for the guest's receive buffers. Each answers a guest packet, so a guest
/// that sends without ever posting a receive buffer would otherwise grow the queue without end;
/// beyond this bound resets are dropped and counted (a reset is advisory: the guest's connect
/// or send to nowhere then waits for its own timeout).
pub const MAX_PENDING_RESETS: usize = 2 * QUEUE_SIZE as usize;

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock: cannot create its epoll instance: {0}")]
    Epoll(#[source] std::io::Error),
}

/// A connection's identity: (host end's port, guest end's port).
type Key = (u32, u32);

/// Counters of what went wrong, for diagnostics and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct VsockStats {
    /// Transmit chains that were not valid packets.
    pub bad_packets: u64,
    /// Host clients dropped for a malformed `CONNECT` line.
    pub bad_connect_lines: u64,
    /// Connections refused because the table was full.
    pub refused_full: u64,
    /// Resets not sent because [`MAX_PENDING_RESETS`] were already waiting for the guest.
    pub dropped_resets: u64,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    config: [u8; 8],
    /// Connections by epoll token, and the tokens of those past the handshake by key.
    conns: HashMap<u64, Connection>,
    keys: HashMap<Key, u64>,
    next_token: u64,
    next_local_port: u32,
    /// Connections with something for the receive queue, in turn.
    rx_ready: VecDeque<u64>,
    /// Resets for packets that match no connection.
    rx_resets: VecDeque<Header>,
    scratch: Vec<u8>,
    pub stats: VsockStats,
}

impl Vsock {
    /// Listens on `uds` (which must not exist) for host connections to a guest with `cid`.
    pub fn new(cid: u32, uds: &Path) -> Result<Self, VsockError> {
        let listen_err = |source| VsockError::Listen {
            path: uds.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(VsockError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(VsockError::Epoll)?;
        Ok(Self {
            cid: u64::from(cid),
            uds: uds.to_owned(),
            listener,
            epoll,
            config: u64::from(cid).to_le_bytes(),
            conns: HashMap::new(),
            keys: HashMap::new(),
            next_token: 1,
            next_local_port: FIRST_LOCAL_PORT,
            rx_ready: VecDeque::new(),
            rx_resets: VecDeque::new(),
            scratch: Vec::with_capacity(packet::MAX_PAYLOAD),
            stats: VsockStats::default(),
        })
    }

    /// Number of open connections (including host clients still handshaking).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn add_connection(&mut self, conn: Connection) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(
                ControlOperation::Add,
                conn.stream().as_raw_fd(),
                EpollEvent::new(events, token),
            )
            .ok()?;
        if conn.state != State::AwaitingConnect(Vec::new()) {
            self.keys.insert((conn.local_port, conn.peer_port), token);
        }
        self.conns.insert(token, conn);
        Some(token)
    }

    fn remove_connection(&mut self, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream().as_raw_fd(),
                EpollEvent::default(),
            );
            if self.keys.get(&(conn.local_port, conn.peer_port)) == Some(&token) {
                self.keys.remove(&(conn.local_port, conn.peer_port));
            }
        }
    }

    /// Queues a reset for the guest, unless [`MAX_PENDING_RESETS`] are already waiting.
    fn queue_reset(&mut self, h: &Header) {
        if self.rx_resets.len() < MAX_PENDING_RESETS {
            self.rx_resets.push_back(h.reply(op::RST));
        } else {
            self.stats.dropped_resets += 1;
        }
    }

    /// Queues `token` for the receive queue if it has something to send.
    fn schedule(&mut self, token: u64) {
        if let Some(conn) = self.conns.get_mut(&token) {
            if !conn.scheduled && conn.has_rx() {
                conn.scheduled = true;
                self.rx_ready.push_back(token);
            }
        }
    }

    /// Drains the device's epoll instance: accepts host clients, notes readable and writable
    /// streams, reads handshakes, and flushes buffered guest data.
    fn handle_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        // Bounded, so the guest's queues are served between rounds even if streams keep firing;
        // what is left keeps the device's epoll readable, and the VMM loop comes back.
        for _ in 0..MAX_EVENT_ROUNDS {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if n == 0 {
                return;
            }
            for event in &events[..n] {
                let token = event.data();
                if token == LISTENER {
                    self.accept_all();
                    continue;
                }
                let set = event.event_set();
                let Some(conn) = self.conns.get_mut(&token) else {
                    continue;
                };
                if set.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                ) {
                    conn.readable = true;
                }
                if set.contains(EventSet::OUT) {
                    conn.flush_to_host();
                }
                if matches!(conn.state, State::AwaitingConnect(_)) {
                    self.read_connect(token);
                }
                self.schedule(token);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            // SAFETY: accept4 with null address arguments only returns a new descriptor.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                // EAGAIN: no more pending; anything else (EMFILE...) leaves the client waiting.
                return;
            }
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
            if self.conns.len() >= MAX_CONNECTIONS {
                self.stats.refused_full += 1;
                continue; // dropped: the client sees its connection closed
            }
            let conn = Connection::from_host(stream, self.cid);
            if let Some(token) = self.add_connection(conn) {
                if let Some(c) = self.conns.get_mut(&token) {
                    c.readable = true;
                }
                self.read_connect(token);
            }
        }
    }

    /// Reads a host client's `CONNECT` line; once complete, sends the guest a REQUEST.
    fn read_connect(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if !conn.readable {
            return;
        }
        match conn.read_connect_line() {
            ConnectLine::Incomplete => {}
            ConnectLine::Invalid => {
                self.stats.bad_connect_lines += 1;
                self.remove_connection(token);
            }
            ConnectLine::Port(port) => {
                let local_port = self.allocate_local_port(port);
                if let Some(conn) = self.conns.get_mut(&token) {
                    conn.request(local_port, port);
                }
                self.keys.insert((local_port, port), token);
                self.schedule(token);
            }
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.keys.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// Serves the transmit queue: every packet the guest sent.
    fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, round: &mut Round) -> bool {
        let mut used_any = false;
        let mut payload = std::mem::take(&mut self.scratch);
        while let Some((head, descs)) = round.pop_chain(queue, mem, MAX_CHAIN_DESCS) {
            let packet = descs
                .ok()
                .and_then(|descs| packet::read_tx(&descs, mem, &mut payload).ok());
            match packet {
                Some(h) => self.handle_guest_packet(&h, &payload),
                None => self.stats.bad_packets += 1,
            }
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used_any = true;
        }
        self.scratch = payload;
        used_any
    }

    fn handle_guest_packet(&mut self, h: &Header, payload: &[u8]) {
        if h.src_cid != self.cid {
            // A guest pretending to be someone else: not answered.
            self.stats.bad_packets += 1;
            return;
        }
        if h.dst_cid != HOST_CID || h.kind != TYPE_STREAM {
            if h.op != op::RST {
                self.queue_reset(h);
            }
            return;
        }
        let key = (h.dst_port, h.src_port);
        let Some(&token) = self.keys.get(&key) else {
            match h.op {
                op::REQUEST => self.connect_to_host(h),
                op::RST => {}
                _ => self.queue_reset(h),
            }
            return;
        };
        if h.op == op::RST {
            self.remove_connection(token);
            return;
        }
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.update_peer_credit(h);
            conn.handle_guest_packet(h, payload);
        }
        self.schedule(token);
    }

    /// The guest connects to host port `h.dst_port`: connect to `<uds>_<port>`.
    fn connect_to_host(&mut self, h: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.stats.refused_full += 1;
            self.queue_reset(h);
            return;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = Connection::from_guest(stream, h);
                match self.add_connection(conn) {
                    Some(token) => self.schedule(token),
                    None => self.queue_reset(h),
                }
            }
            Err(_) => self.queue_reset(h),
        }
    }

    /// Fills the receive queue with what is owed to the guest, until either runs out.
    fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, round: &mut Round) -> bool {
        let mut used_any = false;
        let mut buf = std::mem::take(&mut self.scratch);
        while !self.rx_resets.is_empty() || !self.rx_ready.is_empty() {
            let Some((head, descs)) = round.pop_chain(queue, mem, MAX_CHAIN_DESCS) else {
                break; // resumes when the driver adds buffers
            };
            // A refused chain, or one that cannot hold a packet, goes back empty.
            let usable = descs
                .ok()
                .and_then(|descs| match packet::rx_capacity(&descs) {
                    Ok(c) if c > HDR_LEN => Some((descs, c)),
                    _ => None,
                });
            let (descs, capacity) = match usable {
                Some(usable) => usable,
                None => {
                    self.stats.bad_packets += 1;
                    if queue.add_used(mem, head, 0).is_err() {
                        break;
                    }
                    used_any = true;
                    continue;
                }
            };
            let Some((header, token)) = self.next_rx_packet(&mut buf, capacity - HDR_LEN) else {
                queue.go_to_previous_position();
                continue;
            };
            let payload = &buf[..header.len as usize];
            let len = packet::write_rx(&descs, mem, &header, payload).unwrap_or(0);
            if queue.add_used(mem, head, len).is_err() {
                break;
            }
            used_any = true;
            if let Some(token) = token {
                if self.conns.get(&token).is_some_and(Connection::is_closed) {
                    self.remove_connection(token);
                } else {
                    self.schedule(token);
                }
            }
        }
        self.scratch = buf;
        used_any
    }

    /// The next packet for the guest and the connection it came from (None for a reset of an
    /// unknown packet); None once nothing is owed. Payload bytes are in `buf`.
    fn next_rx_packet(
        &mut self,
        buf: &mut Vec<u8>,
        max_payload: usize,
    ) -> Option<(Header, Option<u64>)> {
        if let Some(h) = self.rx_resets.pop_front() {
            buf.clear();
            return Some((h, None));
        }
        while let Some(token) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            conn.scheduled = false;
            if let Some(h) = conn.next_rx(buf, max_payload) {
                return Some((h, Some(token)));
            }
        }
        None
    }
}

/// Connects to the Unix socket at `path` without blocking (a full backlog is a refusal).
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket() has no memory arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket() returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0 // stream sockets only
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
        let mut used = false;
        if index == TX {
            if let Some(tx) = queues.get_mut(TX) {
                used |= self.process_tx(tx, mem, round);
            }
        }
        if index == TX || index == RX {
            if let Some(rx) = queues.get_mut(RX) {
                used |= self.process_rx(rx, mem, round);
            }
        }
        // The event queue only holds buffers for transport-reset events, which we never send.
        used
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
        self.handle_host_events();
        match queues.get_mut(RX) {
            Some(rx) if active => self.process_rx(rx, mem, round),
            _ => false,
        }
    }

    fn reset(&mut self) {
        // On a vCPU thread, whose seccomp filter has no epoll_ctl: closing a stream (its only
        // descriptor) takes it out of the device's epoll set by itself.
        self.conns.clear();
        self.keys.clear();
        self.rx_ready.clear();
        self.rx_resets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND};
    use super::*;
    use std::io::{Read, Write};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    const GUEST: u64 = 3;
    const RX_BUF: u32 = 4096 + HDR_LEN as u32;
    const WRITE: u16 = 2; // VRING_DESC_F_WRITE

    /// A guest driver over mock queues.
    struct Driver<'a> {
        mem: &'a GuestMemoryMmap,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        queues: Vec<Queue>,
        rx_posted: u16,
        rx_seen: u16,
        tx_sent: u16,
    }

    impl<'a> Driver<'a> {
        fn new(mem: &'a GuestMemoryMmap) -> Self {
            let rxq = MockSplitQueue::create(mem, GuestAddress(0), 256);
            let txq = MockSplitQueue::create(mem, GuestAddress(0x10000), 256);
            let evq = MockSplitQueue::create(mem, GuestAddress(0x20000), 256);
            let queues = vec![
                rxq.create_queue().unwrap(),
                txq.create_queue().unwrap(),
                evq.create_queue().unwrap(),
            ];
            Self {
                mem,
                rxq,
                txq,
                queues,
                rx_posted: 0,
                rx_seen: 0,
                tx_sent: 0,
            }
        }

        fn rx_addr(i: u16) -> u64 {
            0x100000 + u64::from(i % 256) * 0x2000
        }

        fn post_rx(&mut self, n: u16) {
            for _ in 0..n {
                let i = self.rx_posted;
                let d =
                    RawDescriptor::from(SplitDescriptor::new(Self::rx_addr(i), RX_BUF, WRITE, 0));
                self.rxq.add_desc_chains(&[d], i % 256).unwrap();
                self.rx_posted += 1;
            }
        }

        fn send(&mut self, dev: &mut Vsock, h: Header, payload: &[u8]) {
            let addr = 0x400000 + u64::from(self.tx_sent % 256) * 0x11000;
            self.mem
                .write_slice(&h.to_bytes(), GuestAddress(addr))
                .unwrap();
            self.mem
                .write_slice(payload, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            let len = (HDR_LEN + payload.len()) as u32;
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0));
            self.txq.add_desc_chains(&[d], self.tx_sent % 256).unwrap();
            self.tx_sent += 1;
            dev.process_queue(TX, &mut self.queues, self.mem, &mut Round::new());
        }

        /// Packets the device put on the receive queue since the last call.
        fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
            let used = self.rxq.used_addr();
            let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
            let mut out = Vec::new();
            while self.rx_seen != idx {
                let elem = used.unchecked_add(4 + u64::from(self.rx_seen % 256) * 8);
                let id: u32 = self.mem.read_obj(elem).unwrap();
                let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
                let addr = Self::rx_addr(id as u16);
                let mut hdr = [0u8; HDR_LEN];
                self.mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
                let h = Header::from_bytes(&hdr);
                assert_eq!(len as usize, HDR_LEN + h.len as usize);
                let mut data = vec![0u8; h.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                    .unwrap();
                out.push((h, data));
                self.rx_seen = self.rx_seen.wrapping_add(1);
            }
            out
        }

        /// Makes the transmit chain at descriptor `head` available `times` more times, serving
        /// the queue after each (a guest resubmitting one buffer over and over).
        fn resubmit(&mut self, dev: &mut Vsock, head: u16, times: usize) {
            let avail = self.txq.avail_addr();
            for _ in 0..times {
                let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
                self.mem
                    .write_obj(head, avail.unchecked_add(4 + u64::from(idx % 256) * 2))
                    .unwrap();
                self.mem
                    .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
                    .unwrap();
                dev.process_queue(TX, &mut self.queues, self.mem, &mut Round::new());
            }
        }

        fn host_events(&mut self, dev: &mut Vsock) {
            dev.process_host_events(&mut self.queues, self.mem, true, &mut Round::new());
        }
    }

    fn guest_header(src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
        Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
        }
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("skiff-vsock-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap()
    }

    fn read_line(s: &mut UnixStream) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn host_initiated_stream_carries_data_both_ways_and_closes() {
        let dir = TempDir::new("host");
        let uds = dir.0.join("v.sock");
        let mut dev = Vsock::new(3, &uds).unwrap();
        let m = mem();
        let mut g = Driver::new(&m);
        g.post_rx(16);

        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(b"CONNECT 5000\n").unwrap();
        g.host_events(&mut dev);
        let pkts = g.recv();
        assert_eq!(pkts.len(), 1);
        let req = pkts[0].0;
        assert_eq!(
            (req.op, req.dst_cid, req.dst_port),
            (op::REQUEST, GUEST, 5000)
        );
        let local = req.src_port;
        assert!(local >= FIRST_LOCAL_PORT);

        g.send(&mut dev, guest_header(5000, local, op::RESPONSE, 0), b"");
        assert_eq!(read_line(&mut host), format!("OK {local}"));

        host.write_all(b"ping").unwrap();
        g.host_events(&mut dev);
        let pkts = g.recv();
        assert_eq!(pkts.len(), 1);
        assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (op::RW, &b"ping"[..]));

        g.send(&mut dev, guest_header(5000, local, op::RW, 4), b"pong");
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");

        // The host half-closes: the guest hears it will get no more.
        host.shutdown(std::net::Shutdown::Write).unwrap();
        g.host_events(&mut dev);
        let pkts = g.recv();
        assert_eq!(
            (pkts[0].0.op, pkts[0].0.flags),
            (op::SHUTDOWN, SHUTDOWN_SEND)
        );
        // The guest closes: it gets its RST and the host its EOF.
        let mut bye = guest_header(5000, local, op::SHUTDOWN, 0);
        bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        g.send(&mut dev, bye, b"");
        let pkts = g.recv();
        assert_eq!(pkts.last().unwrap().0.op, op::RST);
        assert_eq!(dev.connection_count(), 0);
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }

    /// A device in `dir` whose guest (port 777) connected to host port 6000; and the host's end.
    fn guest_connected(dir: &TempDir, g: &mut Driver) -> (Vsock, UnixStream) {
        let mut dev = Vsock::new(3, &dir.0.join("v.sock")).unwrap();
        let listener = UnixListener::bind(dir.0.join("v.sock_6000")).unwrap();
        g.post_rx(16);
        g.send(&mut dev, guest_header(777, 6000, op::REQUEST, 0), b"");
        let pkts = g.recv();
        assert_eq!(pkts[0].0.op, op::RESPONSE);
        assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (6000, 777));
        let (host, _) = listener.accept().unwrap();
        (dev, host)
    }

    #[test]
    fn guest_connections_reach_host_listeners_or_are_refused() {
        let dir = TempDir::new("guest");
        let m = mem();
        let mut g = Driver::new(&m);
        let (mut dev, mut host) = guest_connected(&dir, &mut g);
        g.send(&mut dev, guest_header(777, 6000, op::RW, 5), b"hello");
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        host.write_all(b"world").unwrap();
        g.host_events(&mut dev);
        let pkts = g.recv();
        assert_eq!(
            (pkts[0].0.op, pkts[0].1.as_slice()),
            (op::RW, &b"world"[..])
        );

        // Nobody listens on 6001: the guest's connect is reset.
        g.send(&mut dev, guest_header(778, 6001, op::REQUEST, 0), b"");
        let pkts = g.recv();
        assert_eq!((pkts[0].0.op, pkts[0].0.dst_port), (op::RST, 778));
        // Data for a connection that does not exist: reset too.
        g.send(&mut dev, guest_header(779, 6000, op::RW, 1), b"x");
        assert_eq!(g.recv()[0].0.op, op::RST);

        // The host drops its end abruptly; the guest's next data gets a reset.
        drop(host);
        g.host_events(&mut dev);
        let pkts = g.recv();
        assert_eq!(pkts[0].0.op, op::SHUTDOWN);
        g.send(&mut dev, guest_header(777, 6000, op::RW, 3), b"abc");
        let pkts = g.recv();
        assert_eq!(pkts.last().unwrap().0.op, op::RST);
        assert_eq!(dev.connection_count(), 0);
    }

    #[test]
    fn a_half_closed_stream_does_not_keep_waking_the_device() {
        let dir = TempDir::new("half");
        let m = mem();
        let mut g = Driver::new(&m);
        let (mut dev, mut host) = guest_connected(&dir, &mut g);
        g.send(&mut dev, guest_header(777, 6000, op::RW, 5), b"hello");
        // The guest is done sending, and has no room for more data yet.
        let mut shut = guest_header(777, 6000, op::SHUTDOWN, 0);
        shut.flags = SHUTDOWN_SEND;
        shut.buf_alloc = 0;
        g.send(&mut dev, shut, b"");
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello", "the host sees the data, then end of stream");
        host.write_all(b"world").unwrap();
        drop(host);
        g.host_events(&mut dev);
        // Nothing the device did to the stream (a repeated shutdown) woke it up again.
        let mut events = [EpollEvent::default(); 4];
        assert_eq!(dev.epoll.wait(0, &mut events).unwrap(), 0);
        assert_eq!(
            dev.connection_count(),
            1,
            "the guest still has data to take"
        );
    }

    #[test]
    fn host_data_waits_for_guest_credit() {
        let dir = TempDir::new("credit");
        let uds = dir.0.join("v.sock");
        let mut dev = Vsock::new(3, &uds).unwrap();
        let listener = UnixListener::bind(dir.0.join("v.sock_7000")).unwrap();
        let m = mem();
        let mut g = Driver::new(&m);
        g.post_rx(32);
        let mut req = guest_header(1, 7000, op::REQUEST, 0);
        req.buf_alloc = 8;
        g.send(&mut dev, req, b"");
        assert_eq!(g.recv()[0].0.op, op::RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        host.write_all(&[7u8; 20]).unwrap();
        g.host_events(&mut dev);
        let pkts = g.recv();
        assert_eq!(pkts[0].1.len(), 8, "only as much as the guest has room for");
        assert_eq!(pkts[1].0.op, op::CREDIT_REQUEST);
        assert_eq!(pkts.len(), 2);
        // The guest consumed the 8 bytes.
        let mut upd = guest_header(1, 7000, op::CREDIT_UPDATE, 0);
        upd.buf_alloc = 8;
        upd.fwd_cnt = 8;
        g.send(&mut dev, upd, b"");
        let pkts = g.recv();
        assert_eq!(pkts[0].1.len(), 8);
    }

    #[test]
    fn host_garbage_and_hostile_packets_are_dropped_and_the_device_keeps_serving() {
        let dir = TempDir::new("garbage");
        let uds = dir.0.join("v.sock");
        let mut dev = Vsock::new(3, &uds).unwrap();
        let m = mem();
        let mut g = Driver::new(&m);
        g.post_rx(16);
        let mut bad = UnixStream::connect(&uds).unwrap();
        bad.write_all(b"HELLO there\n").unwrap();
        let mut long = UnixStream::connect(&uds).unwrap();
        long.write_all(&[b'A'; 100]).unwrap();
        g.host_events(&mut dev);
        assert_eq!(dev.stats.bad_connect_lines, 2);
        let mut buf = [0u8; 1];
        assert_eq!(bad.read(&mut buf).unwrap(), 0);
        assert!(g.recv().is_empty());

        // A packet claiming more payload than its buffer, one from a spoofed cid, one of another
        // socket type.
        let mut h = guest_header(1, 2, op::RW, 4000);
        g.send(&mut dev, h, b"short");
        h.len = 0;
        h.src_cid = 99;
        g.send(&mut dev, h, b"");
        assert_eq!(dev.stats.bad_packets, 2);
        let mut h = guest_header(1, 2, op::REQUEST, 0);
        h.kind = 2;
        g.send(&mut dev, h, b"");
        assert_eq!(g.recv()[0].0.op, op::RST);

        // Still serving.
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(b"CONNECT 1\n").unwrap();
        g.host_events(&mut dev);
        assert_eq!(g.recv()[0].0.op, op::REQUEST);
        // The guest refuses: the host sees its connection closed without "OK".
        let req_port = FIRST_LOCAL_PORT;
        g.send(&mut dev, guest_header(1, req_port, op::RST, 0), b"");
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn resets_owed_to_a_guest_that_posts_no_receive_buffers_are_bounded_and_counted() {
        let dir = TempDir::new("resets");
        let mut dev = Vsock::new(3, &dir.0.join("v.sock")).unwrap();
        let m = mem();
        let mut g = Driver::new(&m);
        // One packet for a connection that does not exist, sent again and again; the guest never
        // posts a receive buffer for the resets it is owed.
        let pkt = 0x400000;
        m.write_slice(&guest_header(5, 9, op::RW, 0).to_bytes(), GuestAddress(pkt))
            .unwrap();
        let d = RawDescriptor::from(SplitDescriptor::new(pkt, HDR_LEN as u32, 0, 0));
        g.txq.desc_table().store(0, d).unwrap();
        let sent = 8 * MAX_PENDING_RESETS;
        g.resubmit(&mut dev, 0, sent);
        assert_eq!(dev.rx_resets.len(), MAX_PENDING_RESETS);
        assert_eq!(dev.stats.dropped_resets, (sent - MAX_PENDING_RESETS) as u64);
        // So are resets for connects nobody listens for.
        m.write_slice(
            &guest_header(6, 9, op::REQUEST, 0).to_bytes(),
            GuestAddress(pkt),
        )
        .unwrap();
        g.resubmit(&mut dev, 0, 10);
        assert_eq!(dev.rx_resets.len(), MAX_PENDING_RESETS);
        assert_eq!(
            dev.stats.dropped_resets,
            (sent + 10 - MAX_PENDING_RESETS) as u64
        );
        // The resets kept reach the guest once it posts buffers.
        g.post_rx(256);
        dev.process_queue(RX, &mut g.queues, &m, &mut Round::new());
        let pkts = g.recv();
        assert_eq!(pkts.len(), 256);
        assert!(pkts
            .iter()
            .all(|(h, _)| (h.op, h.dst_port, h.src_port) == (op::RST, 5, 9)));
        assert_eq!(dev.rx_resets.len(), MAX_PENDING_RESETS - 256);
    }

    #[test]
    fn an_indirect_transmit_chain_is_refused_and_the_next_packet_is_served() {
        let dir = TempDir::new("indirect");
        let mut dev = Vsock::new(3, &dir.0.join("v.sock")).unwrap();
        let listener = UnixListener::bind(dir.0.join("v.sock_6000")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let m = mem();
        let mut g = Driver::new(&m);
        g.post_rx(16);
        // A valid connect to the listening port, behind a one-entry indirect table.
        let (pkt, table) = (0x700000, 0x710000);
        m.write_slice(
            &guest_header(1, 6000, op::REQUEST, 0).to_bytes(),
            GuestAddress(pkt),
        )
        .unwrap();
        let inner = RawDescriptor::from(SplitDescriptor::new(pkt, HDR_LEN as u32, 0, 0));
        m.write_obj(inner, GuestAddress(table)).unwrap();
        const INDIRECT: u16 = 4; // VRING_DESC_F_INDIRECT
        let d = RawDescriptor::from(SplitDescriptor::new(table, 16, INDIRECT, 0));
        g.txq.add_desc_chains(&[d], 0).unwrap();
        g.tx_sent += 1;
        dev.process_queue(TX, &mut g.queues, &m, &mut Round::new());
        assert_eq!(dev.stats.bad_packets, 1);
        assert_eq!(dev.connection_count(), 0);
        assert!(g.recv().is_empty());
        assert!(listener.accept().is_err(), "nobody connected");
        // The same connect, direct, is served.
        g.send(&mut dev, guest_header(1, 6000, op::REQUEST, 0), b"");
        assert_eq!(g.recv()[0].0.op, op::RESPONSE);
        assert_eq!(dev.connection_count(), 1);
    }
}
