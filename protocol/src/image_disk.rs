//! The header block of a Skiff image disk: the contract between the host, which writes image disks
//! (`images::image_disk`), and guest-init, which reads the layers from one.
//!
//! The first 4 KiB block of the disk (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `SKIFFIMG` |
//! | 8..12 | format version, [`VERSION`] |
//! | 12..16 | length of the JSON table of contents at 4096 (for tools; guest-init ignores it) |
//! | 16..20 | number of layers, at most [`MAX_LAYERS`] |
//! | 20..32 | reserved, zero |
//! | 32.. | one 24-byte entry per layer, bottom layer first: offset `u64`, size `u64`, compression `u8` (0 none, 1 gzip, 2 zstd), 7 bytes zero |
//!
//! Every layer starts on a 4 KiB boundary after the table of contents, layers do not overlap and
//! all lie inside the disk: [`DiskHeader::decode`] checks all of it before an offset is used.

/// The magic bytes at the start of every image disk.
pub const MAGIC: &[u8; 8] = b"SKIFFIMG";
/// The format version written and read.
pub const VERSION: u32 = 2;
/// Size of the header block, and the alignment of every blob on the disk.
pub const BLOCK: u64 = 4096;
/// Where the layer entries start in the header block.
const ENTRIES_AT: usize = 32;
/// Bytes per layer entry.
const ENTRY_SIZE: usize = 24;
/// The most layers a header block holds (Docker's own limit is 127).
pub const MAX_LAYERS: usize = (BLOCK as usize - ENTRIES_AT) / ENTRY_SIZE;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// A gzip-compressed tar.
    Gzip,
    /// A zstd-compressed tar.
    Zstd,
}

impl Compression {
    /// The compression of an OCI or Docker layer media type; `None` for one that is not a layer
    /// Skiff can unpack.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Where one layer blob is on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerExtent {
    /// Byte offset on the disk (a multiple of [`BLOCK`]).
    pub offset: u64,
    /// The blob's size in bytes.
    pub size: u64,
    /// How it is compressed.
    pub compression: Compression,
}

/// The header block's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHeader {
    /// Length of the JSON table of contents that follows the header block.
    pub toc_len: u32,
    /// The layers, bottom first.
    pub layers: Vec<LayerExtent>,
}

/// Why a header block is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskHeaderError {
    #[error("not a Skiff image disk (bad magic)")]
    BadMagic,
    #[error("image disk format version {0} is not supported (this reads version {VERSION})")]
    Version(u32),
    #[error("the header block is {0} bytes, shorter than {BLOCK}")]
    Short(usize),
    #[error("{0} layers: an image disk holds at most {MAX_LAYERS}")]
    TooManyLayers(usize),
    #[error("layer {index} has an unknown compression {code}")]
    Compression { index: usize, code: u8 },
    #[error("layer {index} at {offset}+{size} is misplaced (unaligned, overlapping, or outside the {disk_size}-byte disk)")]
    Misplaced {
        index: usize,
        offset: u64,
        size: u64,
        disk_size: u64,
    },
}

fn u32_at(block: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = block.get(at..at + 4) {
        b.copy_from_slice(src);
    }
    u32::from_le_bytes(b)
}

fn u64_at(block: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = block.get(at..at + 8) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

impl DiskHeader {
    /// The header block. Fails only with more than [`MAX_LAYERS`] layers.
    pub fn encode(&self) -> Result<Vec<u8>, DiskHeaderError> {
        if self.layers.len() > MAX_LAYERS {
            return Err(DiskHeaderError::TooManyLayers(self.layers.len()));
        }
        let mut block = vec![0u8; BLOCK as usize];
        block[..8].copy_from_slice(MAGIC);
        block[8..12].copy_from_slice(&VERSION.to_le_bytes());
        block[12..16].copy_from_slice(&self.toc_len.to_le_bytes());
        block[16..20].copy_from_slice(&(self.layers.len() as u32).to_le_bytes());
        for (i, layer) in self.layers.iter().enumerate() {
            let at = ENTRIES_AT + i * ENTRY_SIZE;
            block[at..at + 8].copy_from_slice(&layer.offset.to_le_bytes());
            block[at + 8..at + 16].copy_from_slice(&layer.size.to_le_bytes());
            block[at + 16] = layer.compression.code();
        }
        Ok(block)
    }

    /// Parses and checks a header block read from a disk of `disk_size` bytes: every layer
    /// aligned, after the table of contents, inside the disk, and not overlapping another.
    pub fn decode(block: &[u8], disk_size: u64) -> Result<Self, DiskHeaderError> {
        if block.len() < BLOCK as usize {
            return Err(DiskHeaderError::Short(block.len()));
        }
        if &block[..8] != MAGIC {
            return Err(DiskHeaderError::BadMagic);
        }
        let version = u32_at(block, 8);
        if version != VERSION {
            return Err(DiskHeaderError::Version(version));
        }
        let toc_len = u32_at(block, 12);
        let count = u32_at(block, 16) as usize;
        if count > MAX_LAYERS {
            return Err(DiskHeaderError::TooManyLayers(count));
        }
        let mut layers = Vec::with_capacity(count);
        let mut next_free = BLOCK + u64::from(toc_len);
        for index in 0..count {
            let at = ENTRIES_AT + index * ENTRY_SIZE;
            let offset = u64_at(block, at);
            let size = u64_at(block, at + 8);
            let code = block[at + 16];
            let compression =
                Compression::from_code(code).ok_or(DiskHeaderError::Compression { index, code })?;
            let end = offset.checked_add(size);
            if offset % BLOCK != 0 || offset < next_free || end.is_none_or(|e| e > disk_size) {
                return Err(DiskHeaderError::Misplaced {
                    index,
                    offset,
                    size,
                    disk_size,
                });
            }
            next_free = end.unwrap_or(u64::MAX);
            layers.push(LayerExtent {
                offset,
                size,
                compression,
            });
        }
        Ok(DiskHeader { toc_len, layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DiskHeader {
        DiskHeader {
            toc_len: 300,
            layers: vec![
                LayerExtent {
                    offset: 8192,
                    size: 5000,
                    compression: Compression::Gzip,
                },
                LayerExtent {
                    offset: 16384,
                    size: 0,
                    compression: Compression::Zstd,
                },
                LayerExtent {
                    offset: 16384,
                    size: 4096,
                    compression: Compression::None,
                },
            ],
        }
    }

    #[test]
    fn headers_round_trip() {
        let block = sample().encode().unwrap();
        assert_eq!(block.len(), 4096);
        assert_eq!(DiskHeader::decode(&block, 20480).unwrap(), sample());
        let max = DiskHeader {
            toc_len: 0,
            layers: vec![
                LayerExtent {
                    offset: 4096,
                    size: 0,
                    compression: Compression::None
                };
                MAX_LAYERS
            ],
        };
        assert_eq!(MAX_LAYERS, 169);
        assert_eq!(
            DiskHeader::decode(&max.encode().unwrap(), 4096).unwrap(),
            max
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        let good = sample().encode().unwrap();
        let check = |f: &dyn Fn(&mut Vec<u8>), size: u64| {
            let mut b = good.clone();
            f(&mut b);
            DiskHeader::decode(&b, size)
        };
        assert!(check(&|_| {}, 20479)
            .unwrap_err()
            .to_string()
            .contains("misplaced"));
        assert_eq!(
            check(&|b| b[0] = 0, 1 << 20),
            Err(DiskHeaderError::BadMagic)
        );
        assert_eq!(
            check(&|b| b[8] = 1, 1 << 20),
            Err(DiskHeaderError::Version(1))
        );
        assert!(matches!(
            check(
                &|b| b[16..20].copy_from_slice(&u32::MAX.to_le_bytes()),
                1 << 20
            ),
            Err(DiskHeaderError::TooManyLayers(_))
        ));
        assert!(matches!(
            check(&|b| b[32 + 16] = 7, 1 << 20),
            Err(DiskHeaderError::Compression { index: 0, code: 7 })
        ));
        // Inside the table of contents, unaligned, overlapping, wrapping around.
        for (i, value) in [
            (0usize, 4096u64),
            (0, 8193),
            (1, 12288),
            (2, u64::MAX - 4095),
        ] {
            let at = 32 + i * 24;
            let r = check(
                &|b| b[at..at + 8].copy_from_slice(&value.to_le_bytes()),
                1 << 20,
            );
            assert!(
                matches!(r, Err(DiskHeaderError::Misplaced { .. })),
                "{i} {value}"
            );
        }
        let r = check(
            &|b| b[32 + 8..32 + 16].copy_from_slice(&u64::MAX.to_le_bytes()),
            1 << 20,
        );
        assert!(matches!(
            r,
            Err(DiskHeaderError::Misplaced { index: 0, .. })
        ));
        assert_eq!(
            DiskHeader::decode(&good[..100], 1 << 20),
            Err(DiskHeaderError::Short(100))
        );
        let too_many = DiskHeader {
            toc_len: 0,
            layers: vec![sample().layers[0]; MAX_LAYERS + 1],
        };
        assert!(too_many.encode().is_err());
    }

    #[test]
    fn media_types_map_to_compressions() {
        for (media_type, expected) in [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
            ("text/plain", None),
        ] {
            assert_eq!(
                Compression::from_media_type(media_type),
                expected,
                "{media_type}"
            );
        }
    }
}
