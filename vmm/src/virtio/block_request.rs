//! Parsing and validating one virtio-blk request from a descriptor chain written by a hostile
//! guest (virtio 1.2, 5.2.6): a 16-byte device-readable header, data buffers, and a one-byte
//! device-writable status at the end. Nothing here trusts a length, an address or a flag.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

pub use super::{ChainError, Desc};

/// Bytes in a sector, the unit of request offsets.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header (type, reserved, sector).
pub const HEADER_SIZE: u32 = 16;
/// Longest chain accepted: header, up to `MAX_SEGMENTS` data buffers, status.
pub const MAX_SEGMENTS: usize = 254;
/// Most data bytes one request may move (Linux sends at most a few MiB).
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;
/// Length of the device id returned by GET_ID.
pub const ID_BYTES: usize = 20;

/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    Flush,
    GetId,
    /// A type we do not implement: answered `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

/// A guest memory range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// First sector (In and Out).
    pub sector: u64,
    pub data: Vec<Segment>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// Total bytes in the data buffers.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain is empty")]
    Empty,
    #[error("descriptor chain is longer than {MAX_SEGMENTS} data buffers")]
    TooLong,
    #[error("descriptor chain is broken (loops, or points outside the descriptor table)")]
    BrokenChain,
    /// Refused before parsing (see [`super::pop_chain`]): no status descriptor can be trusted.
    #[error(transparent)]
    Refused(#[from] ChainError),
    #[error("descriptor chain has no status descriptor")]
    NoStatus,
    #[error("status descriptor is read-only, empty, or outside guest memory")]
    BadStatus,
    #[error(
        "request header is write-only, shorter than {HEADER_SIZE} bytes, or outside guest memory"
    )]
    BadHeader,
    #[error("data buffer {index} is outside guest memory, empty, or has the wrong direction")]
    BadData { index: usize },
    #[error("request moves {0} bytes, not a whole number of sectors up to {MAX_REQUEST_BYTES}")]
    BadLength(u64),
    #[error("sectors {sector}+{sectors} lie beyond the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
}

impl RequestError {
    /// Whether the status byte can still be written (otherwise the request is dropped).
    pub fn status_writable(&self) -> bool {
        !matches!(
            self,
            RequestError::Empty
                | RequestError::TooLong
                | RequestError::BrokenChain
                | RequestError::Refused(_)
                | RequestError::NoStatus
                | RequestError::BadStatus
        )
    }
}

/// Parses the chain `descs` against a disk of `capacity` sectors. On failure the caller learns
/// where the status byte is, when the chain's tail is a valid status descriptor, through
/// [`find_status`].
pub fn parse<M: GuestMemory + ?Sized>(
    descs: impl IntoIterator<Item = Desc>,
    mem: &M,
    capacity: u64,
) -> Result<Request, RequestError> {
    let descs = collect(descs)?;
    let status = status_of(&descs, mem)?;
    let (header_desc, data_descs) = match &descs[..descs.len() - 1] {
        [header, data @ ..] => (header, data),
        [] => return Err(RequestError::BadHeader),
    };
    if header_desc.write_only || header_desc.len < HEADER_SIZE {
        return Err(RequestError::BadHeader);
    }
    let header_addr = GuestAddress(header_desc.addr);
    let kind: u32 = mem
        .read_obj(header_addr)
        .map_err(|_| RequestError::BadHeader)?;
    let sector: u64 = header_addr
        .checked_add(8)
        .and_then(|a| mem.read_obj(a).ok())
        .ok_or(RequestError::BadHeader)?;
    let kind = match u32::from_le(kind) {
        VIRTIO_BLK_T_IN => RequestKind::In,
        VIRTIO_BLK_T_OUT => RequestKind::Out,
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
        other => RequestKind::Unsupported(other),
    };
    let sector = u64::from_le(sector);

    let device_writes = matches!(kind, RequestKind::In | RequestKind::GetId);
    let mut data = Vec::with_capacity(data_descs.len());
    for (index, d) in data_descs.iter().enumerate() {
        // The device writes the buffers of In and GetId requests and reads the others.
        let access = if d.write_only {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let in_memory = mem.check_range(GuestAddress(d.addr), d.len as usize, access);
        let direction_ok = match kind {
            RequestKind::In | RequestKind::GetId => d.write_only,
            RequestKind::Out => !d.write_only,
            _ => true,
        };
        if d.len == 0 || !in_memory || !direction_ok {
            return Err(RequestError::BadData { index });
        }
        data.push(Segment {
            addr: GuestAddress(d.addr),
            len: d.len,
        });
    }
    let request = Request {
        kind,
        sector,
        data,
        status,
    };
    match kind {
        RequestKind::In | RequestKind::Out => {
            let len = request.data_len();
            if len == 0 || len % SECTOR_SIZE != 0 || len > MAX_REQUEST_BYTES {
                return Err(RequestError::BadLength(len));
            }
            let sectors = len / SECTOR_SIZE;
            if sector.checked_add(sectors).is_none_or(|end| end > capacity) {
                return Err(RequestError::OutOfRange {
                    sector,
                    sectors,
                    capacity,
                });
            }
        }
        RequestKind::GetId if !device_writes || request.data.is_empty() => {
            return Err(RequestError::BadData { index: 0 });
        }
        _ => {}
    }
    Ok(request)
}

/// The status byte's address, when the chain ends in a valid status descriptor (so even a bad
/// request can be answered with an error status).
pub fn find_status<M: GuestMemory + ?Sized>(
    descs: impl IntoIterator<Item = Desc>,
    mem: &M,
) -> Option<GuestAddress> {
    let descs = collect(descs).ok()?;
    status_of(&descs, mem).ok()
}

fn collect(descs: impl IntoIterator<Item = Desc>) -> Result<Vec<Desc>, RequestError> {
    let mut out = Vec::new();
    for d in descs {
        if out.len() == MAX_SEGMENTS + 2 {
            return Err(RequestError::TooLong);
        }
        out.push(d);
    }
    match out.last() {
        None => Err(RequestError::Empty),
        // The iterator stopped on a descriptor that says more follow: a loop or a bad index.
        Some(last) if last.has_next => Err(RequestError::BrokenChain),
        Some(_) => Ok(out),
    }
}

fn status_of<M: GuestMemory + ?Sized>(
    descs: &[Desc],
    mem: &M,
) -> Result<GuestAddress, RequestError> {
    if descs.len() < 2 {
        return Err(RequestError::NoStatus);
    }
    let last = descs[descs.len() - 1];
    let addr = GuestAddress(last.addr);
    if !last.write_only || last.len < 1 || !mem.check_range(addr, 1, Permissions::Write) {
        return Err(RequestError::BadStatus);
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MEM: u64 = 1 << 20;
    const CAPACITY: u64 = 64; // sectors

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) -> Desc {
        mem.write_obj(kind.to_le(), GuestAddress(addr)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(addr + 8))
            .unwrap();
        Desc {
            addr,
            len: 16,
            write_only: false,
            has_next: true,
        }
    }

    fn data(addr: u64, len: u32, write_only: bool) -> Desc {
        Desc {
            addr,
            len,
            write_only,
            has_next: true,
        }
    }

    fn status(addr: u64) -> Desc {
        Desc {
            addr,
            len: 1,
            write_only: true,
            has_next: false,
        }
    }

    #[test]
    fn a_valid_read_is_parsed() {
        let m = mem();
        let r = parse(
            [
                header(&m, 0x1000, VIRTIO_BLK_T_IN, 2),
                data(0x2000, 512, true),
                data(0x3000, 1024, true),
                status(0x4000),
            ],
            &m,
            CAPACITY,
        )
        .unwrap();
        assert_eq!(r.kind, RequestKind::In);
        assert_eq!(r.sector, 2);
        assert_eq!(r.data_len(), 1536);
        assert_eq!(r.status, GuestAddress(0x4000));
    }

    #[test]
    fn reads_into_read_only_buffers_and_writes_from_write_only_ones_are_refused() {
        let m = mem();
        let e = parse(
            [
                header(&m, 0x1000, VIRTIO_BLK_T_IN, 0),
                data(0x2000, 512, false),
                status(0x4000),
            ],
            &m,
            CAPACITY,
        );
        assert_eq!(e, Err(RequestError::BadData { index: 0 }));
        let e = parse(
            [
                header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0),
                data(0x2000, 512, true),
                status(0x4000),
            ],
            &m,
            CAPACITY,
        );
        assert_eq!(e, Err(RequestError::BadData { index: 0 }));
        assert!(e.unwrap_err().status_writable());
    }

    #[test]
    fn buffers_outside_memory_are_refused() {
        let m = mem();
        for d in [
            data(MEM - 256, 512, true),
            data(u64::MAX - 10, 512, true),
            data(0x2000, 0, true),
        ] {
            let e = parse(
                [header(&m, 0x1000, VIRTIO_BLK_T_IN, 0), d, status(0x4000)],
                &m,
                CAPACITY,
            );
            assert_eq!(e, Err(RequestError::BadData { index: 0 }), "{d:?}");
        }
        let mut h = header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        h.addr = MEM - 8;
        assert_eq!(
            parse([h, status(0x4000)], &m, CAPACITY),
            Err(RequestError::BadHeader)
        );
    }

    #[test]
    fn requests_past_the_end_of_the_disk_or_of_odd_length_are_refused() {
        let m = mem();
        let e = parse(
            [
                header(&m, 0x1000, VIRTIO_BLK_T_IN, CAPACITY - 1),
                data(0x2000, 1024, true),
                status(0x4000),
            ],
            &m,
            CAPACITY,
        );
        assert!(matches!(e, Err(RequestError::OutOfRange { .. })), "{e:?}");
        let e = parse(
            [
                header(&m, 0x1000, VIRTIO_BLK_T_IN, u64::MAX),
                data(0x2000, 512, true),
                status(0x4000),
            ],
            &m,
            CAPACITY,
        );
        assert!(matches!(e, Err(RequestError::OutOfRange { .. })), "{e:?}");
        let e = parse(
            [
                header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0),
                data(0x2000, 100, false),
                status(0x4000),
            ],
            &m,
            CAPACITY,
        );
        assert_eq!(e, Err(RequestError::BadLength(100)));
        let e = parse(
            [header(&m, 0x1000, VIRTIO_BLK_T_IN, 0), status(0x4000)],
            &m,
            CAPACITY,
        );
        assert_eq!(e, Err(RequestError::BadLength(0)));
    }

    #[test]
    fn status_must_be_a_writable_byte_in_memory() {
        let m = mem();
        let mut st = status(0x4000);
        st.write_only = false;
        let e = parse(
            [header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0), st],
            &m,
            CAPACITY,
        );
        assert_eq!(e, Err(RequestError::BadStatus));
        assert!(!e.unwrap_err().status_writable());
        let e = parse(
            [header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0), status(MEM)],
            &m,
            CAPACITY,
        );
        assert_eq!(e, Err(RequestError::BadStatus));
        assert_eq!(
            parse([status(0x4000)], &m, CAPACITY),
            Err(RequestError::NoStatus)
        );
        assert_eq!(parse([], &m, CAPACITY), Err(RequestError::Empty));
    }

    #[test]
    fn broken_and_overlong_chains_are_refused() {
        let m = mem();
        let mut st = status(0x4000);
        st.has_next = true; // the chain was cut short by the queue (a loop)
        assert_eq!(
            parse(
                [header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0), st],
                &m,
                CAPACITY
            ),
            Err(RequestError::BrokenChain)
        );
        let long: Vec<Desc> = std::iter::once(header(&m, 0x1000, VIRTIO_BLK_T_IN, 0))
            .chain((0..MAX_SEGMENTS + 1).map(|i| data(0x2000 + 512 * i as u64, 512, true)))
            .chain([status(0x4000)])
            .collect();
        assert_eq!(parse(long, &m, CAPACITY), Err(RequestError::TooLong));
    }

    #[test]
    fn unknown_types_parse_as_unsupported_and_header_must_be_readable() {
        let m = mem();
        let r = parse([header(&m, 0x1000, 99, 0), status(0x4000)], &m, CAPACITY).unwrap();
        assert_eq!(r.kind, RequestKind::Unsupported(99));
        let mut h = header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        h.write_only = true;
        assert_eq!(
            parse([h, data(0x2000, 512, true), status(0x4000)], &m, CAPACITY),
            Err(RequestError::BadHeader)
        );
        h.write_only = false;
        h.len = 8;
        assert_eq!(
            parse([h, data(0x2000, 512, true), status(0x4000)], &m, CAPACITY),
            Err(RequestError::BadHeader)
        );
        assert_eq!(
            find_status([h, data(0x2000, 512, true), status(0x4000)], &m),
            Some(GuestAddress(0x4000))
        );
    }
}
