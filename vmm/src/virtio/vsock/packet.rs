//! virtio-vsock packets (virtio 1.2, 5.10.6): the 44-byte header, and moving packets between
//! descriptor chains and host buffers. Everything read from a chain is validated: a hostile driver
//! gets its packet dropped, never a panic or a read outside the chain.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::Desc;

/// Size of a packet header.
pub const HDR_LEN: usize = 44;
/// The only socket type we carry: a stream.
pub const TYPE_STREAM: u16 = 1;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// Largest payload of one packet, in either direction (Linux never sends more than 64 KiB).
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Packet operations.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `SHUTDOWN` flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the little-endian wire form.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        let u32_at = |i: usize| {
            let mut v = [0u8; 4];
            v.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(v)
        };
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A reply to `self` (source and destination swapped) with operation `op`.
    pub fn reply(&self, op: u16) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }
}

/// Why a chain from the driver was not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("a transmit chain has a device-writable descriptor")]
    WritableInTx,
    #[error("a receive chain has a device-readable descriptor")]
    ReadableInRx,
    #[error("the chain holds {0} bytes, less than a packet header")]
    NoHeader(usize),
    #[error("payload length {0} exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLong(u32),
    #[error("payload length {len} but the chain holds only {available} bytes after the header")]
    PayloadTruncated { len: u32, available: usize },
    #[error("a descriptor lies outside guest memory")]
    Memory,
}

/// Reads the packet of a transmit chain: its header, and its payload into `payload` (replacing
/// what was there).
pub fn read_tx(
    descs: &[Desc],
    mem: &GuestMemoryMmap,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    if descs.iter().any(|d| d.write_only) {
        return Err(PacketError::WritableInTx);
    }
    let total: usize = descs.iter().map(|d| d.len as usize).sum();
    let mut hdr = [0u8; HDR_LEN];
    let mut cursor = ChainCursor::new(descs);
    if total < HDR_LEN {
        return Err(PacketError::NoHeader(total));
    }
    cursor.read(mem, &mut hdr)?;
    let header = Header::from_bytes(&hdr);
    if header.len as usize > MAX_PAYLOAD {
        return Err(PacketError::PayloadTooLong(header.len));
    }
    let available = total - HDR_LEN;
    if header.len as usize > available {
        return Err(PacketError::PayloadTruncated {
            len: header.len,
            available,
        });
    }
    payload.clear();
    payload.resize(header.len as usize, 0);
    cursor.read(mem, payload)?;
    Ok(header)
}

/// Bytes of packet a receive chain can take (header included), once checked to be all writable.
pub fn rx_capacity(descs: &[Desc]) -> Result<usize, PacketError> {
    if descs.iter().any(|d| !d.write_only) {
        return Err(PacketError::ReadableInRx);
    }
    let total: usize = descs.iter().map(|d| d.len as usize).sum();
    if total < HDR_LEN {
        return Err(PacketError::NoHeader(total));
    }
    Ok(total)
}

/// Writes `header` and `payload` (`header.len` bytes) into a receive chain whose capacity was
/// checked with [`rx_capacity`]; returns the used length.
pub fn write_rx(
    descs: &[Desc],
    mem: &GuestMemoryMmap,
    header: &Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let mut cursor = ChainCursor::new(descs);
    cursor.write(mem, &header.to_bytes())?;
    cursor.write(mem, payload)?;
    Ok((HDR_LEN + payload.len()) as u32)
}

/// A position in a descriptor chain, for reading or writing it as one byte stream.
struct ChainCursor<'a> {
    descs: &'a [Desc],
    index: usize,
    offset: u32,
}

impl<'a> ChainCursor<'a> {
    fn new(descs: &'a [Desc]) -> Self {
        Self {
            descs,
            index: 0,
            offset: 0,
        }
    }

    /// Calls `step(addr, range)` for consecutive pieces of the chain covering `len` bytes.
    fn walk(
        &mut self,
        len: usize,
        mut step: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), PacketError>,
    ) -> Result<(), PacketError> {
        let mut done = 0;
        while done < len {
            let desc = self.descs.get(self.index).ok_or(PacketError::Memory)?;
            let left = (desc.len - self.offset) as usize;
            if left == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = left.min(len - done);
            let addr = desc
                .addr
                .checked_add(u64::from(self.offset))
                .ok_or(PacketError::Memory)?;
            step(GuestAddress(addr), done..done + n)?;
            done += n;
            self.offset += n as u32;
        }
        Ok(())
    }

    fn read(&mut self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<(), PacketError> {
        self.walk(buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range], addr)
                .map_err(|_| PacketError::Memory)
        })
    }

    fn write(&mut self, mem: &GuestMemoryMmap, buf: &[u8]) -> Result<(), PacketError> {
        self.walk(buf.len(), |addr, range| {
            mem.write_slice(&buf[range], addr)
                .map_err(|_| PacketError::Memory)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(addr: u64, len: u32, write_only: bool) -> Desc {
        Desc {
            addr,
            len,
            write_only,
            has_next: false,
        }
    }

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 5,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn header_round_trips_and_reply_swaps_ends() {
        let h = sample();
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        let r = h.reply(op::RST);
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 1024, 1234)
        );
        assert_eq!((r.op, r.len), (op::RST, 0));
        // Field offsets as the spec lays them out.
        let b = h.to_bytes();
        assert_eq!(&b[24..28], &5u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
    }

    #[test]
    fn tx_packet_split_over_descriptors_is_read_whole() {
        let m = mem();
        let h = sample();
        let bytes = h.to_bytes();
        // Header split 10 + 34, payload in a third descriptor.
        m.write_slice(&bytes[..10], GuestAddress(0x1000)).unwrap();
        m.write_slice(&bytes[10..], GuestAddress(0x2000)).unwrap();
        m.write_slice(b"hello", GuestAddress(0x3000)).unwrap();
        let descs = [
            desc(0x1000, 10, false),
            desc(0x2000, 34, false),
            desc(0x3000, 100, false),
        ];
        let mut payload = Vec::new();
        assert_eq!(read_tx(&descs, &m, &mut payload).unwrap(), h);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn hostile_tx_chains_are_refused() {
        let m = mem();
        let mut payload = Vec::new();
        let mut h = sample();
        m.write_slice(&h.to_bytes(), GuestAddress(0x1000)).unwrap();
        // Too short for a header.
        assert_eq!(
            read_tx(&[desc(0x1000, 20, false)], &m, &mut payload),
            Err(PacketError::NoHeader(20))
        );
        // A writable descriptor.
        assert_eq!(
            read_tx(&[desc(0x1000, 64, true)], &m, &mut payload),
            Err(PacketError::WritableInTx)
        );
        // Payload longer than the chain.
        assert_eq!(
            read_tx(&[desc(0x1000, 46, false)], &m, &mut payload),
            Err(PacketError::PayloadTruncated {
                len: 5,
                available: 2
            })
        );
        // Payload longer than any packet may be.
        h.len = u32::MAX;
        m.write_slice(&h.to_bytes(), GuestAddress(0x1000)).unwrap();
        assert_eq!(
            read_tx(&[desc(0x1000, u32::MAX, false)], &m, &mut payload),
            Err(PacketError::PayloadTooLong(u32::MAX))
        );
        // Outside guest memory.
        assert_eq!(
            read_tx(&[desc(0xffff_0000_0000, 64, false)], &m, &mut payload),
            Err(PacketError::Memory)
        );
        assert_eq!(
            read_tx(&[desc(u64::MAX - 4, 64, false)], &m, &mut payload),
            Err(PacketError::Memory)
        );
    }

    #[test]
    fn rx_packets_fill_chains_and_bad_chains_are_refused() {
        let m = mem();
        let descs = [desc(0x1000, HDR_LEN as u32, true), desc(0x2000, 4096, true)];
        assert_eq!(rx_capacity(&descs).unwrap(), HDR_LEN + 4096);
        let h = sample();
        assert_eq!(write_rx(&descs, &m, &h, b"hello").unwrap(), 49);
        let mut hdr = [0u8; HDR_LEN];
        m.read_slice(&mut hdr, GuestAddress(0x1000)).unwrap();
        assert_eq!(Header::from_bytes(&hdr), h);
        let mut data = [0u8; 5];
        m.read_slice(&mut data, GuestAddress(0x2000)).unwrap();
        assert_eq!(&data, b"hello");

        assert_eq!(
            rx_capacity(&[desc(0x1000, 100, false)]),
            Err(PacketError::ReadableInRx)
        );
        assert_eq!(
            rx_capacity(&[desc(0x1000, 8, true)]),
            Err(PacketError::NoHeader(8))
        );
        assert_eq!(
            write_rx(&[desc(0xffff_0000_0000, 100, true)], &m, &h, b""),
            Err(PacketError::Memory)
        );
    }
}
