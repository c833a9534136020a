//! The virtio-net header that precedes every frame (virtio 1.2, 5.1.6), and the checks a frame
//! from the guest passes before it reaches the tap.

/// Size of the header with VERSION_1 (`num_buffers` always present).
pub const NET_HDR_LEN: usize = 12;
/// Smallest frame worth sending: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Largest frame: a 64 KiB GSO packet plus its Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65535 + 14 + 4;

/// `flags` bits.
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

/// A parsed header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl NetHeader {
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// The offloads the driver accepted that matter for frames it sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffloads {
    /// Partial checksums (`VIRTIO_NET_F_CSUM`).
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
}

/// Why a frame from the guest was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    TooShort(usize),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    #[error("unknown flags {0:#x}")]
    Flags(u8),
    #[error("segmentation type {0:#x} was not negotiated or is unknown")]
    GsoType(u8),
    #[error("segmentation with a zero segment size")]
    GsoSize,
    #[error("checksum offload was not negotiated")]
    Csum,
    #[error("checksum at {start}+{offset} lies outside the {len}-byte frame")]
    CsumRange { start: u16, offset: u16, len: usize },
    #[error("header length {hdr_len} exceeds the {len}-byte frame")]
    HdrLen { hdr_len: u16, len: usize },
}

/// Checks a transmitted frame's header against the negotiated offloads; `frame_len` excludes the
/// virtio-net header.
pub fn check_tx(h: &NetHeader, frame_len: usize, offloads: TxOffloads) -> Result<(), FrameError> {
    if frame_len < MIN_FRAME {
        return Err(FrameError::TooShort(frame_len));
    }
    if frame_len > MAX_FRAME {
        return Err(FrameError::TooLong(frame_len));
    }
    if h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(FrameError::Flags(h.flags));
    }
    if h.flags & F_NEEDS_CSUM != 0 {
        if !offloads.csum {
            return Err(FrameError::Csum);
        }
        let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
        if end > frame_len {
            return Err(FrameError::CsumRange {
                start: h.csum_start,
                offset: h.csum_offset,
                len: frame_len,
            });
        }
    }
    let allowed = match h.gso_type & !GSO_ECN {
        GSO_NONE => h.gso_type == GSO_NONE,
        GSO_TCPV4 => offloads.tso4,
        GSO_TCPV6 => offloads.tso6,
        _ => false, // UDP fragmentation offload is not offered
    };
    if !allowed {
        return Err(FrameError::GsoType(h.gso_type));
    }
    if h.gso_type != GSO_NONE {
        if h.gso_size == 0 {
            return Err(FrameError::GsoSize);
        }
        if h.flags & F_NEEDS_CSUM == 0 {
            return Err(FrameError::Csum);
        }
        if usize::from(h.hdr_len) > frame_len {
            return Err(FrameError::HdrLen {
                hdr_len: h.hdr_len,
                len: frame_len,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: TxOffloads = TxOffloads {
        csum: true,
        tso4: true,
        tso6: true,
    };

    #[test]
    fn header_round_trips() {
        let h = NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 1,
        };
        assert_eq!(NetHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(&h.to_bytes()[4..6], &1448u16.to_le_bytes());
    }

    #[test]
    fn plain_and_offloaded_frames_pass() {
        check_tx(&NetHeader::default(), 60, TxOffloads::default()).unwrap();
        let tso = NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        check_tx(&tso, 30000, ALL).unwrap();
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        let plain = NetHeader::default();
        assert_eq!(check_tx(&plain, 10, ALL), Err(FrameError::TooShort(10)));
        assert_eq!(
            check_tx(&plain, 70000, ALL),
            Err(FrameError::TooLong(70000))
        );
        let h = NetHeader {
            flags: 0x40,
            ..plain
        };
        assert_eq!(check_tx(&h, 60, ALL), Err(FrameError::Flags(0x40)));
        let csum = NetHeader {
            flags: F_NEEDS_CSUM,
            csum_start: 50,
            csum_offset: 16,
            ..plain
        };
        assert_eq!(
            check_tx(&csum, 60, TxOffloads::default()),
            Err(FrameError::Csum)
        );
        assert!(matches!(
            check_tx(&csum, 60, ALL),
            Err(FrameError::CsumRange { .. })
        ));
        let csum = NetHeader {
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..csum
        };
        assert!(check_tx(&csum, MAX_FRAME, ALL).is_err());
        let tso = NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            gso_size: 1400,
            hdr_len: 74,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 0,
        };
        let only4 = TxOffloads { tso6: false, ..ALL };
        assert_eq!(
            check_tx(&tso, 9000, only4),
            Err(FrameError::GsoType(GSO_TCPV6))
        );
        let udp = NetHeader {
            gso_type: GSO_UDP,
            ..tso
        };
        assert_eq!(check_tx(&udp, 9000, ALL), Err(FrameError::GsoType(GSO_UDP)));
        let zero = NetHeader { gso_size: 0, ..tso };
        assert_eq!(check_tx(&zero, 9000, ALL), Err(FrameError::GsoSize));
        let no_csum = NetHeader { flags: 0, ..tso };
        assert_eq!(check_tx(&no_csum, 9000, ALL), Err(FrameError::Csum));
        let long_hdr = NetHeader {
            hdr_len: 9001,
            ..tso
        };
        assert!(matches!(
            check_tx(&long_hdr, 9000, ALL),
            Err(FrameError::HdrLen { .. })
        ));
    }
}
