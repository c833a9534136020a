//! One vsock stream between a guest port and a host Unix socket: its state machine, its data in
//! both directions, and credit-based flow control (virtio 1.2, 5.10.6.3).
//!
//! Guest → host: payloads are written to the Unix socket; what the socket cannot take yet waits in
//! a buffer bounded by the credit we advertise (`BUF_ALLOC`), so a guest that honours credit never
//! overflows it and one that does not gets the connection reset.
//! Host → guest: data is read from the socket only when the guest has credit for it and a receive
//! buffer to put it in; otherwise it stays in the socket and the host's writes block.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::packet::{op, Header, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Bytes of guest → host data we buffer per connection: the credit we give the guest.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Longest `CONNECT <port>\n` line a host may send.
const MAX_CONNECT_LINE: usize = 32;

/// Where a connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A host client connected to the VMM's socket; waiting for its `CONNECT <port>` line.
    AwaitingConnect(Vec<u8>),
    /// We sent the guest a REQUEST for a host client; waiting for its RESPONSE.
    Requested,
    /// Data flows.
    Established,
}

/// What reading the host's `CONNECT` line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectLine {
    /// The whole line: the guest port to connect to.
    Port(u32),
    /// Not all of it has arrived.
    Incomplete,
    /// The host sent something else, or closed: drop the connection.
    Invalid,
}

/// One stream.
pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    /// The host end's port (ours).
    pub local_port: u32,
    /// The guest end's port.
    pub peer_port: u32,
    pub state: State,
    /// The socket may have data or an EOF to read (edge-triggered: set on EPOLLIN, cleared when a
    /// read would block).
    pub readable: bool,
    /// The host will send no more (its EOF was read).
    host_eof: bool,
    /// The guest will send no more / receive no more.
    guest_shut_send: bool,
    /// We shut the host stream's write side (once: every shutdown wakes the socket's waiters,
    /// edge-triggered epoll included, so repeating it would wake us forever).
    host_write_shut: bool,
    guest_shut_rcv: bool,
    /// Guest data the socket has not taken yet.
    to_host: VecDeque<u8>,
    /// Bytes of guest data written to the host (our `fwd_cnt`), and its value when last told.
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    /// Bytes of host data sent to the guest, and the guest's receive buffer and counter.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    credit_requested: bool,
    /// Control packets owed to the guest.
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    pending_rst: bool,
    /// The RST was sent: the connection is over.
    done: bool,
    /// Queued for the receive queue.
    pub scheduled: bool,
}

impl Connection {
    /// A host client that connected to the VMM's socket.
    pub fn from_host(stream: UnixStream, guest_cid: u64) -> Self {
        Self::new(stream, guest_cid, 0, 0, State::AwaitingConnect(Vec::new()))
    }

    /// A guest REQUEST that reached a host listener: established at once, RESPONSE owed.
    pub fn from_guest(stream: UnixStream, request: &Header) -> Self {
        let mut c = Self::new(
            stream,
            request.src_cid,
            request.dst_port,
            request.src_port,
            State::Established,
        );
        c.update_peer_credit(request);
        c.pending_response = true;
        c
    }

    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: State,
    ) -> Self {
        Self {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            readable: false,
            host_eof: false,
            guest_shut_send: false,
            host_write_shut: false,
            guest_shut_rcv: false,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            pending_rst: false,
            done: false,
            scheduled: false,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads what has arrived of the host's `CONNECT <port>\n` line. Reads a byte at a time so
    /// that data the host sends after the line stays in the socket for the guest.
    pub fn read_connect_line(&mut self) -> ConnectLine {
        let State::AwaitingConnect(line) = &mut self.state else {
            return ConnectLine::Invalid;
        };
        loop {
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return ConnectLine::Invalid,
                Ok(_) if byte[0] == b'\n' => return parse_connect_line(line),
                Ok(_) if line.len() >= MAX_CONNECT_LINE => return ConnectLine::Invalid,
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return ConnectLine::Incomplete;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return ConnectLine::Invalid,
            }
        }
    }

    /// The host asked for guest port `port`; `local_port` is the port we give its end.
    pub fn request(&mut self, local_port: u32, port: u32) {
        self.local_port = local_port;
        self.peer_port = port;
        self.state = State::Requested;
        self.pending_request = true;
    }

    /// Takes the credit information every guest packet carries.
    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Handles a packet from the guest for this connection (credit already taken).
    pub fn handle_guest_packet(&mut self, h: &Header, payload: &[u8]) {
        match (h.op, &self.state) {
            (op::RESPONSE, State::Requested) => {
                self.state = State::Established;
                let line = format!("OK {}\n", self.local_port);
                // The socket is fresh and empty: a short line fits; anything else is fatal.
                if !matches!(self.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
                    self.pending_rst = true;
                }
            }
            (op::RW, State::Established) if !self.guest_shut_send => self.send_to_host(payload),
            (op::CREDIT_UPDATE, _) => {}
            (op::CREDIT_REQUEST, _) => self.pending_credit_update = true,
            (op::SHUTDOWN, State::Established) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    self.guest_shut_send = true;
                    self.flush_to_host();
                }
                if h.flags & SHUTDOWN_RCV != 0 {
                    self.guest_shut_rcv = true;
                }
                if self.guest_shut_send && self.guest_shut_rcv {
                    // The guest closed its socket: it waits for our RST to finish.
                    self.pending_rst = true;
                }
            }
            // Anything else is a protocol error (data before the handshake, a second REQUEST...).
            _ => self.pending_rst = true,
        }
        self.check_closed();
    }

    /// Writes a guest payload to the host, buffering what the socket cannot take yet.
    fn send_to_host(&mut self, payload: &[u8]) {
        if self.to_host.len() + payload.len() > BUF_ALLOC as usize {
            // The guest sent more than the credit we gave it.
            self.pending_rst = true;
            return;
        }
        self.to_host.extend(payload);
        self.flush_to_host();
    }

    /// Writes buffered guest data to the host socket until it would block; the socket became
    /// writable, or new data arrived.
    pub fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => {
                    self.pending_rst = true;
                    return;
                }
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // The host closed its end.
                    self.pending_rst = true;
                    return;
                }
            }
        }
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 4 {
            self.pending_credit_update = true;
        }
        if self.to_host.is_empty() && self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.check_closed();
    }

    /// Both ends are done sending and everything was delivered: reset to release the guest.
    fn check_closed(&mut self) {
        if self.host_eof && self.guest_shut_send && self.to_host.is_empty() {
            self.pending_rst = true;
        }
    }

    /// Whether the connection can put a packet on the receive queue now.
    pub fn has_rx(&self) -> bool {
        self.pending_rst
            || self.pending_request
            || self.pending_response
            || self.pending_credit_update
            || self.wants_to_read()
            || self.needs_credit_request()
    }

    fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() > 0
    }

    fn needs_credit_request(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() == 0
            && !self.credit_requested
    }

    /// Whether the connection is over (its RST was sent): it can be dropped.
    pub fn is_closed(&self) -> bool {
        self.done
    }

    /// The next packet for the guest, its payload read into `buf` (at most `max_payload` bytes),
    /// or None if there is nothing to send.
    pub fn next_rx(&mut self, buf: &mut Vec<u8>, max_payload: usize) -> Option<Header> {
        let op = if self.pending_rst {
            self.done = true;
            op::RST
        } else if self.pending_request {
            self.pending_request = false;
            op::REQUEST
        } else if self.pending_response {
            self.pending_response = false;
            op::RESPONSE
        } else if self.wants_to_read() {
            return self.read_from_host(buf, max_payload);
        } else if self.pending_credit_update {
            op::CREDIT_UPDATE
        } else if self.needs_credit_request() {
            self.credit_requested = true;
            op::CREDIT_REQUEST
        } else {
            return None;
        };
        Some(self.header(op, 0))
    }

    fn read_from_host(&mut self, buf: &mut Vec<u8>, max_payload: usize) -> Option<Header> {
        let n = max_payload
            .min(MAX_PAYLOAD)
            .min(self.peer_credit() as usize);
        buf.resize(n, 0);
        loop {
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.check_closed();
                    let mut h = self.header(op::SHUTDOWN, 0);
                    h.flags = SHUTDOWN_SEND;
                    return Some(h);
                }
                Ok(read) => {
                    self.rx_cnt = self.rx_cnt.wrapping_add(read as u32);
                    buf.truncate(read);
                    return Some(self.header(op::RW, read as u32));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return None;
                }
                Err(_) => {
                    self.pending_rst = true;
                    return self.next_rx(buf, max_payload);
                }
            }
        }
    }

    /// A packet from the host end to the guest end, carrying our credit.
    fn header(&mut self, op: u16, len: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        if op != op::RST {
            self.pending_credit_update = false;
        }
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

/// Parses `CONNECT <port>` (the newline already removed).
fn parse_connect_line(line: &[u8]) -> ConnectLine {
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|p| p.trim_end_matches('\r').parse().ok())
        .map_or(ConnectLine::Invalid, ConnectLine::Port)
}
