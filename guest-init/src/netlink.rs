//! A minimal rtnetlink client over a raw `AF_NETLINK`/`NETLINK_ROUTE` socket: just what
//! guest-init needs to configure an interface (no `ip`, no busybox in the guest).
//!
//! Messages are built by pure functions returning the bytes to send, so their layout is tested on
//! any host. Every request asks for an acknowledgement (`NLM_F_ACK`) and waits for the kernel's
//! `NLMSG_ERROR` reply with its sequence number: error 0 is success, a negative errno a refusal.
//! Replies are parsed with bounds checks: a truncated or malformed reply is an error, never a
//! panic.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Errors talking to the kernel over rtnetlink. Each names the request it concerns.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("{op}: cannot send the request: {source}")]
    Send {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op}: cannot read the reply: {source}")]
    Receive {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op}: {source}{}", detail(.message.as_deref()))]
    Refused {
        op: &'static str,
        #[source]
        source: io::Error,
        /// The kernel's extended acknowledgement message, if it sent one.
        message: Option<String>,
    },
    #[error("{op}: malformed reply: {reason}")]
    Malformed {
        op: &'static str,
        reason: &'static str,
    },
}

/// `" (message)"`, or nothing.
fn detail(message: Option<&str>) -> String {
    message.map(|m| format!(" ({m})")).unwrap_or_default()
}

// Constants of <linux/netlink.h> and <linux/rtnetlink.h>, typed as they are on the wire.
const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
const NLM_F_EXCL: u16 = libc::NLM_F_EXCL as u16;
const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
/// In an acknowledgement: the original request's payload was left out (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = libc::NLM_F_CAPPED as u16;
/// In an acknowledgement: extended-ack attributes follow (`NETLINK_EXT_ACK`).
const NLM_F_ACK_TLVS: u16 = libc::NLM_F_ACK_TLVS as u16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message, a NUL-terminated string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// The attribute type bits of `rta_type` (`NLA_TYPE_MASK`).
const NLA_TYPE_MASK: u16 = 0x3fff;
const AF_UNSPEC: u8 = libc::AF_UNSPEC as u8;
const AF_INET: u8 = libc::AF_INET as u8;
const IFF_UP: u32 = libc::IFF_UP as u32;

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct rtattr)`.
const RTA_HDRLEN: usize = 4;
/// Size of the receive buffer: larger than any reply to the requests made here.
const RECEIVE_BUFFER: usize = 16 * 1024;
/// Datagrams read while waiting for one acknowledgement before giving up.
const MAX_REPLIES: usize = 64;
/// How long to wait for the kernel's reply; it always answers at once.
const REPLY_TIMEOUT_SECS: libc::time_t = 5;

/// `NLMSG_ALIGN` / `RTA_ALIGN`: rounds `len` up to a multiple of 4.
pub const fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// Builds one netlink message: the header, a family-specific header, then attributes.
struct MessageBuilder(Vec<u8>);

impl MessageBuilder {
    /// Starts a message of type `kind`; its length is filled in by [`MessageBuilder::finish`].
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len
        buf.extend_from_slice(&kind.to_ne_bytes()); // nlmsg_type
        buf.extend_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
        buf.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
        MessageBuilder(buf)
    }

    /// Appends raw bytes (fields of a family header), then pads to the alignment.
    fn bytes(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self.pad()
    }

    /// Appends an attribute (`struct rtattr` + payload, padded).
    fn attr<const N: usize>(mut self, kind: u16, payload: [u8; N]) -> Self {
        const { assert!(RTA_HDRLEN + N <= u16::MAX as usize) };
        // Fits: checked at compile time above.
        let rta_len = (RTA_HDRLEN + N) as u16;
        self.0.extend_from_slice(&rta_len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(&payload);
        self.pad()
    }

    fn pad(mut self) -> Self {
        self.0.resize(align4(self.0.len()), 0);
        self
    }

    /// The finished message, with its length in the header.
    fn finish(mut self) -> Vec<u8> {
        // The messages built here are well under 100 bytes.
        let len = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// `struct ifinfomsg` for link `index`.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = AF_UNSPEC; // ifi_family; [1] pad; [2..4] ifi_type
    m[4..8].copy_from_slice(&index.to_ne_bytes()); // ifi_index
    m[8..12].copy_from_slice(&flags.to_ne_bytes()); // ifi_flags
    m[12..16].copy_from_slice(&change.to_ne_bytes()); // ifi_change
    m
}

/// `RTM_NEWLINK` setting `IFF_UP` on link `index`.
pub fn set_link_up_message(seq: u32, index: u32) -> Vec<u8> {
    MessageBuilder::new(libc::RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .bytes(&ifinfomsg(index, IFF_UP, IFF_UP))
        .finish()
}

/// `RTM_NEWLINK` setting the MTU (`IFLA_MTU`) of link `index`.
pub fn set_mtu_message(seq: u32, index: u32, mtu: u32) -> Vec<u8> {
    MessageBuilder::new(libc::RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .bytes(&ifinfomsg(index, 0, 0))
        .attr(libc::IFLA_MTU, mtu.to_ne_bytes())
        .finish()
}

/// `RTM_NEWADDR` adding `address/prefix_len` (`IFA_LOCAL` and `IFA_ADDRESS`, plus
/// `IFA_BROADCAST` if given) to link `index`; fails if the address is already there.
pub fn add_ipv4_address_message(
    seq: u32,
    index: u32,
    address: Ipv4Addr,
    prefix_len: u8,
    broadcast: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut ifaddrmsg = [0u8; 8];
    ifaddrmsg[0] = AF_INET; // ifa_family
    ifaddrmsg[1] = prefix_len; // ifa_prefixlen
                               // [2] ifa_flags = 0
    ifaddrmsg[3] = libc::RT_SCOPE_UNIVERSE; // ifa_scope
    ifaddrmsg[4..8].copy_from_slice(&index.to_ne_bytes()); // ifa_index
    let message = MessageBuilder::new(
        libc::RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
    .bytes(&ifaddrmsg)
    .attr(libc::IFA_LOCAL, address.octets())
    .attr(libc::IFA_ADDRESS, address.octets());
    match broadcast {
        Some(broadcast) => message.attr(libc::IFA_BROADCAST, broadcast.octets()),
        None => message,
    }
    .finish()
}

/// `RTM_NEWROUTE` adding the default route via `gateway` out of link `index` (main table,
/// protocol boot, scope universe, unicast); fails if there is one already.
pub fn add_default_route_message(seq: u32, index: u32, gateway: Ipv4Addr) -> Vec<u8> {
    let rtmsg = [
        AF_INET,                 // rtm_family
        0,                       // rtm_dst_len: the default route
        0,                       // rtm_src_len
        0,                       // rtm_tos
        libc::RT_TABLE_MAIN,     // rtm_table
        libc::RTPROT_BOOT,       // rtm_protocol
        libc::RT_SCOPE_UNIVERSE, // rtm_scope
        libc::RTN_UNICAST,       // rtm_type
        0,                       // rtm_flags (4 bytes)
        0,
        0,
        0,
    ];
    MessageBuilder::new(
        libc::RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
    .bytes(&rtmsg)
    .attr(libc::RTA_GATEWAY, gateway.octets())
    .attr(libc::RTA_OIF, index.to_ne_bytes())
    .finish()
}

/// What a datagram from the kernel says about the request with sequence number `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nothing about it (other replies, or stale ones): keep reading.
    Pending,
    /// Acknowledged: done.
    Done,
    /// Refused with this errno, and the kernel's extended-ack message if it sent one.
    Refused { errno: i32, message: Option<String> },
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let field = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(field.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let field = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(field.try_into().ok()?))
}

/// Parses one datagram from the kernel (one or more netlink messages) for the acknowledgement of
/// request `seq`. Errors name what is malformed.
pub fn parse_reply(datagram: &[u8], seq: u32) -> Result<Reply, &'static str> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let (Some(len), Some(kind), Some(flags), Some(msg_seq)) = (
            u32_at(rest, 0),
            u16_at(rest, 4),
            u16_at(rest, 6),
            u32_at(rest, 8),
        ) else {
            return Err("truncated message header");
        };
        let len = usize::try_from(len).map_err(|_| "message length out of range")?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err("message length out of range");
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        if kind == NLMSG_ERROR && msg_seq == seq {
            let error = u32_at(payload, 0).ok_or("truncated error message")?;
            // The error is a C int: 0 or a negative errno.
            let error = i32::from_ne_bytes(error.to_ne_bytes());
            if error == 0 {
                return Ok(Reply::Done);
            }
            let errno = error
                .checked_neg()
                .filter(|e| *e > 0)
                .ok_or("error code out of range")?;
            let message = if flags & NLM_F_ACK_TLVS != 0 {
                extended_ack_message(payload, flags & NLM_F_CAPPED != 0)
            } else {
                None
            };
            return Ok(Reply::Refused { errno, message });
        }
        // Not ours to read: skip it (the last message of a datagram need not be padded).
        rest = rest.get(align4(len)..).unwrap_or_default();
    }
    Ok(Reply::Pending)
}

/// The `NLMSGERR_ATTR_MSG` of an `NLMSG_ERROR` payload (`struct nlmsgerr`: the error, the
/// original request's header and, unless `capped`, its payload; then attributes). A malformed
/// extended ack only loses the message: the errno stands on its own.
fn extended_ack_message(payload: &[u8], capped: bool) -> Option<String> {
    let request_len = if capped {
        NLMSG_HDRLEN
    } else {
        usize::try_from(u32_at(payload, 4)?).ok()?
    };
    let mut attrs = payload.get(4usize.checked_add(align4(request_len))?..)?;
    while let (Some(rta_len), Some(kind)) = (u16_at(attrs, 0), u16_at(attrs, 2)) {
        let rta_len = usize::from(rta_len);
        if rta_len < RTA_HDRLEN || rta_len > attrs.len() {
            return None;
        }
        if kind & NLA_TYPE_MASK == NLMSGERR_ATTR_MSG {
            let text = &attrs[RTA_HDRLEN..rta_len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attrs = attrs.get(align4(rta_len)..).unwrap_or_default();
    }
    None
}

/// The index of the network interface `name` (`if_nametoindex`).
pub fn link_index(name: &str) -> io::Result<u32> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// Sets an int socket option.
fn set_int_option(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: the option value is a valid int whose size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// An rtnetlink socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens and binds a `NETLINK_ROUTE` socket.
    pub fn open() -> Result<Self, NetlinkError> {
        // SAFETY: socket takes no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a descriptor just opened here, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain integers, for which all zeroes is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl whose size is passed; the kernel only reads it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        // Best effort (kernels since 4.12 / 4.3): refusals explained in words, and without a copy
        // of the request.
        set_int_option(&fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
        set_int_option(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        let timeout = libc::timeval {
            tv_sec: REPLY_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval whose size is passed; the kernel only reads it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// Brings link `index` up.
    pub fn set_link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.request("RTM_NEWLINK (IFF_UP)", |seq| {
            set_link_up_message(seq, index)
        })
    }

    /// Sets the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.request("RTM_NEWLINK (IFLA_MTU)", |seq| {
            set_mtu_message(seq, index, mtu)
        })
    }

    /// Adds `address/prefix_len` to link `index`, with `broadcast` as its broadcast address.
    pub fn add_ipv4_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix_len: u8,
        broadcast: Option<Ipv4Addr>,
    ) -> Result<(), NetlinkError> {
        self.request("RTM_NEWADDR", |seq| {
            add_ipv4_address_message(seq, index, address, prefix_len, broadcast)
        })
    }

    /// Adds the default route via `gateway` out of link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        self.request("RTM_NEWROUTE", |seq| {
            add_default_route_message(seq, index, gateway)
        })
    }

    /// Sends the message `build` makes with the next sequence number and waits for its
    /// acknowledgement.
    fn request(
        &mut self,
        op: &'static str,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.send(&build(seq))
            .map_err(|source| NetlinkError::Send { op, source })?;
        let mut buf = vec![0u8; RECEIVE_BUFFER];
        for _ in 0..MAX_REPLIES {
            let Some(len) = self
                .receive(&mut buf)
                .map_err(|source| NetlinkError::Receive { op, source })?
            else {
                continue;
            };
            let datagram = buf.get(..len).ok_or(NetlinkError::Malformed {
                op,
                reason: "reply larger than the receive buffer",
            })?;
            match parse_reply(datagram, seq)
                .map_err(|reason| NetlinkError::Malformed { op, reason })?
            {
                Reply::Pending => {}
                Reply::Done => return Ok(()),
                Reply::Refused { errno, message } => {
                    return Err(NetlinkError::Refused {
                        op,
                        source: io::Error::from_raw_os_error(errno),
                        message,
                    })
                }
            }
        }
        Err(NetlinkError::Malformed {
            op,
            reason: "no acknowledgement",
        })
    }

    /// Sends one message to the kernel.
    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain integers, for which all zeroes is a valid value.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `message` and `kernel` are valid for the lengths passed; the kernel only
            // reads them.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                    (&raw const kernel).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            match usize::try_from(sent) {
                Ok(n) if n == message.len() => return Ok(()),
                Ok(_) => return Err(io::Error::other("short send")),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Receives one datagram into `buf`: its full length (more than `buf.len()` if it was
    /// truncated), or `None` if it did not come from the kernel.
    fn receive(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: sockaddr_nl is plain integers, for which all zeroes is a valid value.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: `buf` is writable for `buf.len()` bytes and `from` for `from_len`; the
            // kernel writes no more than that.
            let received = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&raw mut from).cast(),
                    &mut from_len,
                )
            };
            match usize::try_from(received) {
                Ok(len) => return Ok((from.nl_pid == 0).then_some(len)),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl NetlinkError {
        /// The errno the kernel refused the request with, if it did.
        fn errno(&self) -> Option<i32> {
            match self {
                NetlinkError::Refused { source, .. } => source.raw_os_error(),
                _ => None,
            }
        }
    }

    fn u32s(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// A netlink message header as bytes.
    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_ne_bytes());
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&flags.to_ne_bytes());
        h.extend_from_slice(&seq.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    #[test]
    fn constants_match_the_kernel_headers() {
        assert_eq!(
            (NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE),
            (1, 4, 0x200, 0x400)
        );
        assert_eq!(
            (NLM_F_CAPPED, NLM_F_ACK_TLVS, NLMSG_ERROR),
            (0x100, 0x200, 2)
        );
        assert_eq!((AF_UNSPEC, AF_INET, IFF_UP), (0, 2, 1));
        assert_eq!(NLMSG_HDRLEN, std::mem::size_of::<libc::nlmsghdr>());
        assert_eq!(16, std::mem::size_of::<libc::ifinfomsg>());
    }

    #[test]
    fn alignment_rounds_up_to_four() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 8, 13].map(align4),
            [0, 4, 4, 4, 4, 8, 8, 16]
        );
    }

    #[test]
    fn add_address_message_layout() {
        let m = add_ipv4_address_message(
            7,
            2,
            Ipv4Addr::new(172, 16, 0, 2),
            30,
            Some(Ipv4Addr::new(172, 16, 0, 3)),
        );
        // nlmsghdr (16) + ifaddrmsg (8) + 3 attributes of 4 + 4 bytes.
        assert_eq!(m.len(), 48);
        let flags: u16 = 0x1 | 0x4 | 0x400 | 0x200;
        let mut expected = header(48, 20, flags, 7);
        expected.extend_from_slice(&[2, 30, 0, 0]); // AF_INET, /30, flags, scope universe
        expected.extend_from_slice(&2u32.to_ne_bytes()); // ifa_index
        for (kind, octets) in [
            (2u16, [172, 16, 0, 2]),
            (1, [172, 16, 0, 2]),
            (4, [172, 16, 0, 3]),
        ] {
            expected.extend_from_slice(&8u16.to_ne_bytes());
            expected.extend_from_slice(&kind.to_ne_bytes());
            expected.extend_from_slice(&octets);
        }
        assert_eq!(m, expected);

        let without_broadcast =
            add_ipv4_address_message(8, 2, Ipv4Addr::new(10, 0, 0, 1), 31, None);
        assert_eq!(without_broadcast.len(), 40);
        assert_eq!(u32s(&without_broadcast[..4]), [40]);
        assert_eq!(without_broadcast[17], 31);
    }

    #[test]
    fn link_messages_layout() {
        let up = set_link_up_message(1, 3);
        let mut expected = header(32, 16, 0x1 | 0x4, 1);
        expected.extend_from_slice(&[0, 0, 0, 0]); // AF_UNSPEC, pad, ifi_type
        expected.extend_from_slice(&3u32.to_ne_bytes()); // ifi_index
        expected.extend_from_slice(&1u32.to_ne_bytes()); // ifi_flags: IFF_UP
        expected.extend_from_slice(&1u32.to_ne_bytes()); // ifi_change: IFF_UP
        assert_eq!(up, expected);

        let mtu = set_mtu_message(2, 3, 1500);
        assert_eq!(mtu.len(), 40);
        assert_eq!(u32s(&mtu[..16]), u32s(&header(40, 16, 0x1 | 0x4, 2)));
        assert_eq!(u32s(&mtu[16..32]), [0, 3, 0, 0]);
        assert_eq!(
            &mtu[32..36],
            [8u16.to_ne_bytes(), 4u16.to_ne_bytes()].concat()
        );
        assert_eq!(u32s(&mtu[36..]), [1500]);
    }

    #[test]
    fn default_route_message_layout() {
        let m = add_default_route_message(9, 2, Ipv4Addr::new(172, 16, 0, 1));
        // nlmsghdr (16) + rtmsg (12) + RTA_GATEWAY (8) + RTA_OIF (8).
        assert_eq!(m.len(), 44);
        assert_eq!(&m[..16], header(44, 24, 0x1 | 0x4 | 0x400 | 0x200, 9));
        // family, dst_len, src_len, tos, table main, protocol boot, scope universe, unicast.
        assert_eq!(&m[16..24], [2, 0, 0, 0, 254, 3, 0, 1]);
        assert_eq!(u32s(&m[24..28]), [0]);
        assert_eq!(
            &m[28..32],
            [8u16.to_ne_bytes(), 5u16.to_ne_bytes()].concat()
        );
        assert_eq!(&m[32..36], [172, 16, 0, 1]);
        assert_eq!(
            &m[36..40],
            [8u16.to_ne_bytes(), 4u16.to_ne_bytes()].concat()
        );
        assert_eq!(u32s(&m[40..44]), [2]);
    }

    /// An `NLMSG_ERROR` message answering request `seq`, with `tail` after the error code.
    fn error_message(seq: u32, flags: u16, error: i32, tail: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + 4 + tail.len()) as u32;
        let mut m = header(len, NLMSG_ERROR, flags, seq);
        m.extend_from_slice(&error.to_ne_bytes());
        m.extend_from_slice(tail);
        m
    }

    #[test]
    fn acknowledgements_are_parsed() {
        let request = header(16, 16, 5, 4);
        assert_eq!(
            parse_reply(&error_message(4, 0, 0, &request), 4),
            Ok(Reply::Done)
        );
        assert_eq!(
            parse_reply(&error_message(4, 0, -libc::EEXIST, &request), 4),
            Ok(Reply::Refused {
                errno: libc::EEXIST,
                message: None
            })
        );
        // Another request's acknowledgement, then a reply message, then ours.
        let mut datagram = error_message(3, 0, -libc::EPERM, &request);
        let mut other = header(17, 16, 0, 4);
        other.push(9);
        datagram.extend_from_slice(&other);
        datagram.extend_from_slice(&[0; 3]); // padding to the next message
        datagram.extend_from_slice(&error_message(4, 0, 0, &request));
        assert_eq!(parse_reply(&datagram, 4), Ok(Reply::Done));
        assert_eq!(parse_reply(&datagram[..36], 4), Ok(Reply::Pending));
        assert_eq!(parse_reply(&[], 4), Ok(Reply::Pending));
    }

    #[test]
    fn extended_ack_messages_are_read() {
        let mut attr = Vec::new();
        let text = b"Nexthop has invalid gateway\0";
        attr.extend_from_slice(&((RTA_HDRLEN + text.len()) as u16).to_ne_bytes());
        attr.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        attr.extend_from_slice(text);
        let refused = |message: &str| Reply::Refused {
            errno: libc::ENETUNREACH,
            message: Some(message.to_owned()),
        };
        // Capped: only the request's header is echoed.
        let capped = [header(44, 24, 0x405, 1), attr.clone()].concat();
        let m = error_message(
            1,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            -libc::ENETUNREACH,
            &capped,
        );
        assert_eq!(
            parse_reply(&m, 1),
            Ok(refused("Nexthop has invalid gateway"))
        );
        // Not capped: the whole request (here 18 bytes, padded to 20) is echoed.
        let full = [header(18, 24, 0x405, 1), vec![0; 4], attr.clone()].concat();
        let m = error_message(1, NLM_F_ACK_TLVS, -libc::ENETUNREACH, &full);
        assert_eq!(
            parse_reply(&m, 1),
            Ok(refused("Nexthop has invalid gateway"))
        );
        // A broken extended ack loses only the message.
        let mut broken = capped.clone();
        broken[16] = 200; // rta_len past the end
        let m = error_message(
            1,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            -libc::ENETUNREACH,
            &broken,
        );
        assert_eq!(
            parse_reply(&m, 1),
            Ok(Reply::Refused {
                errno: libc::ENETUNREACH,
                message: None
            })
        );
        let huge = [header(u32::MAX, 24, 0x405, 1), attr].concat();
        let m = error_message(1, NLM_F_ACK_TLVS, -libc::ENETUNREACH, &huge);
        assert!(matches!(
            parse_reply(&m, 1),
            Ok(Reply::Refused { message: None, .. })
        ));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let ok = error_message(1, 0, 0, &header(16, 16, 5, 1));
        for cut in 1..ok.len() {
            let reply = parse_reply(&ok[..cut], 1);
            assert!(reply.is_err(), "{cut} bytes: {reply:?}");
        }
        let mut short = ok.clone();
        short[..4].copy_from_slice(&8u32.to_ne_bytes()); // shorter than a header
        assert_eq!(parse_reply(&short, 1), Err("message length out of range"));
        let mut long = ok.clone();
        long[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(parse_reply(&long, 1), Err("message length out of range"));
        let no_code = header(16, NLMSG_ERROR, 0, 1);
        assert_eq!(parse_reply(&no_code, 1), Err("truncated error message"));
        for bad in [i32::MIN, 5] {
            assert_eq!(
                parse_reply(&error_message(1, 0, bad, &[]), 1),
                Err("error code out of range")
            );
        }
        // Arbitrary bytes never panic.
        let mut state = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut junk = ok.clone();
            for byte in &mut junk {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if state >> 29 == 0 {
                    *byte = (state >> 16) as u8;
                }
            }
            let _ = parse_reply(&junk, 1);
        }
    }

    #[test]
    fn refusals_name_the_operation() {
        let e = NetlinkError::Refused {
            op: "RTM_NEWADDR",
            source: io::Error::from_raw_os_error(libc::EEXIST),
            message: None,
        };
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.to_string().starts_with("RTM_NEWADDR: File exists"), "{e}");
        let e = NetlinkError::Refused {
            op: "RTM_NEWROUTE",
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
            message: Some("Nexthop has invalid gateway".into()),
        };
        assert!(
            e.to_string().ends_with(" (Nexthop has invalid gateway)"),
            "{e}"
        );
    }

    // Against the host's kernel, without changing its configuration.

    #[test]
    fn loopback_index_is_resolved() {
        assert_eq!(link_index("lo").unwrap(), 1);
        assert!(link_index("skiffnosuchif0").is_err());
        assert_eq!(
            link_index("l\0o").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn the_kernel_acknowledges_a_read_only_request() {
        let mut netlink = Netlink::open().unwrap();
        // RTM_GETLINK for lo: the kernel replies with the link, then the acknowledgement.
        let get_lo = |seq| {
            MessageBuilder::new(libc::RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
                .bytes(&ifinfomsg(1, 0, 0))
                .finish()
        };
        netlink.request("RTM_GETLINK", get_lo).unwrap();
        netlink.request("RTM_GETLINK", get_lo).unwrap();
        assert_eq!(netlink.seq, 2);
    }

    #[test]
    fn the_kernel_refuses_a_missing_link() {
        // No such interface: refused whether or not the tests run with CAP_NET_ADMIN, and
        // nothing on the host changes.
        let missing = 0x7fff_fff0;
        let mut netlink = Netlink::open().unwrap();
        let e = netlink.set_link_up(missing).unwrap_err();
        assert!(matches!(e.errno(), Some(libc::ENODEV | libc::EPERM)), "{e}");
        assert!(e.to_string().starts_with("RTM_NEWLINK (IFF_UP): "), "{e}");
        let e = netlink
            .add_ipv4_address(missing, Ipv4Addr::new(192, 0, 2, 1), 24, None)
            .unwrap_err();
        assert!(matches!(e.errno(), Some(libc::ENODEV | libc::EPERM)), "{e}");
    }
}
