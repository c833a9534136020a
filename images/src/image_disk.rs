//! The image disk: what carries an image to the guest. A read-only block device holding the
//! image's config and its layer blobs exactly as stored (still compressed, still verifiable by
//! digest), built once per image and shared by every task of that image; guest-init unpacks the
//! layers from it.
//!
//! Layout (little-endian, every part 4 KiB aligned):
//! - at 0: the header block ([`skiff_protocol::image_disk`], shared with guest-init) — magic
//!   `SKIFFIMG`, format version, table length, and the layer table guest-init reads: each layer's
//!   offset, size and compression;
//! - at 4096: the table of contents, JSON ([`Toc`]), for tools: where each blob is, its size,
//!   digest and media type;
//! - then the config and the layers, each starting on a 4 KiB boundary.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_protocol::image_disk::{Compression, DiskHeader, DiskHeaderError, LayerExtent};

use crate::store::{Digest, ImageRecord, Store, StoreError};

pub use skiff_protocol::image_disk::{BLOCK as ALIGN, MAGIC, VERSION};
/// Most bytes of the table of contents a reader accepts.
pub const MAX_TOC: u32 = 1 << 20;

/// One blob on the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub size: u64,
    pub digest: Digest,
    pub media_type: String,
}

/// The table of contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    pub manifest: Digest,
    pub config: Extent,
    pub layers: Vec<Extent>,
}

/// Errors building or reading an image disk.
#[derive(Debug, thiserror::Error)]
pub enum ImageDiskError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image disk {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image disk header: {0}")]
    Header(#[from] DiskHeaderError),
    #[error("layer {digest} has media type {media_type:?}, which Skiff cannot unpack")]
    UnsupportedLayer { digest: Digest, media_type: String },
    #[error("image disk table of contents: {0}")]
    BadToc(String),
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Where the image disk of `record` lives in the store.
pub fn disk_path(store_root: &Path, record: &ImageRecord) -> PathBuf {
    store_root
        .join("disks")
        .join(format!("{}.img", record.manifest.hex()))
}

/// Numbers the temporary files of this process (with the pid and the clock, a unique name).
static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A new temporary file in `dir` for the disk `hex`, never one another builder is writing:
/// `.<hex>.<pid>.<counter>.<nanoseconds>.tmp`, created exclusively.
fn create_temp(dir: &Path, hex: &str) -> Result<(PathBuf, File), ImageDiskError> {
    let mut attempts = 0;
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{hex}.{}.{n}.{nanos}.tmp", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            // Left over by a killed process of the same pid: take another name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 100 => {
                attempts += 1
            }
            Err(source) => return Err(ImageDiskError::Io { path: tmp, source }),
        }
    }
}

/// Returns the image disk of `record`, building it first if it does not exist yet. Each builder
/// writes a temporary file of its own and links it into place atomically: a disk file is
/// complete or absent, and when two tasks of a new image build it at once, the first one in place
/// stays (the other's copy is dropped).
pub fn ensure(
    store: &Store,
    store_root: &Path,
    record: &ImageRecord,
) -> Result<PathBuf, ImageDiskError> {
    let path = disk_path(store_root, record);
    if path.is_file() {
        return Ok(path);
    }
    let dir = store_root.join("disks");
    fs::create_dir_all(&dir).map_err(|source| ImageDiskError::Io {
        path: dir.clone(),
        source,
    })?;
    let (tmp, file) = create_temp(&dir, &record.manifest.hex())?;
    let result = write_file(store, record, file, &tmp).and_then(|_| put_in_place(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    result.map(|()| path)
}

/// Links the complete disk `tmp` to `path` unless a disk is there already (link(2) never
/// replaces: a disk another builder put in place first is kept, and tasks may have it open).
fn put_in_place(tmp: &Path, path: &Path) -> Result<(), ImageDiskError> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // A filesystem without hard links: rename, which replaces a complete disk with another
        // complete one of the same content.
        Err(_) => fs::rename(tmp, path).map_err(|source| ImageDiskError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the image disk of `record` to `out`.
pub fn write(store: &Store, record: &ImageRecord, out: &Path) -> Result<Toc, ImageDiskError> {
    let file = File::create(out).map_err(|source| ImageDiskError::Io {
        path: out.to_owned(),
        source,
    })?;
    write_file(store, record, file, out)
}

/// Writes the image disk of `record` to `file` (empty, at `out`).
fn write_file(
    store: &Store,
    record: &ImageRecord,
    mut file: File,
    out: &Path,
) -> Result<Toc, ImageDiskError> {
    let io = |source| ImageDiskError::Io {
        path: out.to_owned(),
        source,
    };
    let config_size = fs::metadata(store.blob_path(&record.config))
        .map_err(|_| StoreError::MissingBlob(record.config))?
        .len();
    // The table's size depends on the offsets it holds: lay out with room for it first.
    let mut blobs = vec![(
        record.config,
        config_size,
        "application/vnd.oci.image.config.v1+json".to_owned(),
    )];
    for l in &record.layers {
        let size = fs::metadata(store.blob_path(&l.digest))
            .map_err(|_| StoreError::MissingBlob(l.digest))?
            .len();
        blobs.push((l.digest, size, l.media_type.clone()));
    }
    let toc_room = align_up(256 + 256 * blobs.len() as u64);
    let mut offset = ALIGN + toc_room;
    let mut extents = Vec::new();
    for (digest, size, media_type) in &blobs {
        extents.push(Extent {
            offset,
            size: *size,
            digest: *digest,
            media_type: media_type.clone(),
        });
        offset = align_up(offset + size);
    }
    let mut layers = extents;
    let config = layers.remove(0);
    let header = DiskHeader {
        toc_len: 0,
        layers: layers
            .iter()
            .map(|l| {
                Ok(LayerExtent {
                    offset: l.offset,
                    size: l.size,
                    compression: Compression::from_media_type(&l.media_type).ok_or_else(|| {
                        ImageDiskError::UnsupportedLayer {
                            digest: l.digest,
                            media_type: l.media_type.clone(),
                        }
                    })?,
                })
            })
            .collect::<Result<Vec<_>, ImageDiskError>>()?,
    };
    let toc = Toc {
        manifest: record.manifest,
        config,
        layers,
    };
    let json = serde_json::to_vec(&toc).map_err(|e| ImageDiskError::BadToc(e.to_string()))?;
    if json.len() as u64 > toc_room {
        return Err(ImageDiskError::BadToc(format!(
            "{} bytes do not fit the {toc_room} reserved",
            json.len()
        )));
    }
    let header = DiskHeader {
        toc_len: json.len() as u32,
        ..header
    }
    .encode()?;
    file.write_all(&header).map_err(io)?;
    file.write_all(&json).map_err(io)?;
    for extent in std::iter::once(&toc.config).chain(&toc.layers) {
        file.seek(SeekFrom::Start(extent.offset)).map_err(io)?;
        let src = store.blob_path(&extent.digest);
        let mut blob =
            File::open(&src).map_err(|source| ImageDiskError::Io { path: src, source })?;
        let copied = std::io::copy(&mut blob, &mut file).map_err(io)?;
        if copied != extent.size {
            return Err(ImageDiskError::BadToc(format!(
                "blob {} changed size while being copied",
                extent.digest
            )));
        }
    }
    // Whole 4 KiB blocks: a block device's size is a multiple of its sector size.
    file.set_len(align_up(offset)).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(toc)
}

/// Reads and checks the table of contents of an image disk of `disk_size` bytes: every extent
/// aligned, inside the disk, after the table and not overlapping another. (What guest-init does
/// before trusting any offset.)
pub fn read_toc(disk: &mut (impl Read + Seek), disk_size: u64) -> Result<Toc, ImageDiskError> {
    let io = |source| ImageDiskError::Io {
        path: PathBuf::from("(image disk)"),
        source,
    };
    let mut block = vec![0u8; ALIGN as usize];
    disk.seek(SeekFrom::Start(0)).map_err(io)?;
    disk.read_exact(&mut block).map_err(io)?;
    let header = DiskHeader::decode(&block, disk_size)?;
    let len = header.toc_len;
    if len == 0 || len > MAX_TOC || ALIGN + u64::from(len) > disk_size {
        return Err(ImageDiskError::BadToc(format!("length {len} out of range")));
    }
    let mut json = vec![0u8; len as usize];
    disk.seek(SeekFrom::Start(ALIGN)).map_err(io)?;
    disk.read_exact(&mut json).map_err(io)?;
    let toc: Toc =
        serde_json::from_slice(&json).map_err(|e| ImageDiskError::BadToc(e.to_string()))?;
    let mut next_free = ALIGN + u64::from(len);
    for e in std::iter::once(&toc.config).chain(&toc.layers) {
        let end = e.offset.checked_add(e.size);
        if e.offset % ALIGN != 0 || e.offset < next_free || end.is_none_or(|end| end > disk_size) {
            return Err(ImageDiskError::BadToc(format!(
                "blob {} at {}+{} is misplaced",
                e.digest, e.offset, e.size
            )));
        }
        next_free = end.unwrap_or(u64::MAX);
    }
    let same_layers = toc.layers.len() == header.layers.len()
        && toc
            .layers
            .iter()
            .zip(&header.layers)
            .all(|(t, h)| (t.offset, t.size) == (h.offset, h.size));
    if !same_layers {
        return Err(ImageDiskError::BadToc(
            "the layers differ from the header's layer table".into(),
        ));
    }
    Ok(toc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Layer, Store};

    fn setup(name: &str) -> (PathBuf, Store, ImageRecord) {
        let root = std::env::temp_dir().join(format!("skiff-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = Store::open(&root).unwrap();
        let config = store
            .put_bytes(br#"{"os":"linux","architecture":"amd64"}"#)
            .unwrap();
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let layers = [&b"tiny"[..], &big[..]]
            .iter()
            .map(|data| Layer {
                digest: store.put_bytes(data).unwrap(),
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                size: data.len() as u64,
            })
            .collect();
        let manifest = store.put_bytes(b"manifest").unwrap();
        let record = ImageRecord {
            manifest,
            config,
            layers,
        };
        (root, store, record)
    }

    #[test]
    fn a_disk_carries_the_config_and_layers_where_its_table_says() {
        let (root, store, record) = setup("roundtrip");
        let path = ensure(&store, &root, &record).unwrap();
        let size = fs::metadata(&path).unwrap().len();
        assert_eq!(size % ALIGN, 0);
        let mut disk = File::open(&path).unwrap();
        let toc = read_toc(&mut disk, size).unwrap();
        assert_eq!(toc.manifest, record.manifest);
        assert_eq!(toc.layers.len(), 2);
        for e in std::iter::once(&toc.config).chain(&toc.layers) {
            let mut data = vec![0u8; e.size as usize];
            disk.seek(SeekFrom::Start(e.offset)).unwrap();
            disk.read_exact(&mut data).unwrap();
            assert_eq!(Digest::of(&data), e.digest, "blob intact at its offset");
        }
        // Built once: a second call returns the same file untouched.
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(ensure(&store, &root, &record).unwrap(), path);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), modified);
        // Kept while its image is, collected after.
        store.tag("img:1", record).unwrap();
        store.gc().unwrap();
        assert!(path.is_file());
        store.remove("img:1").unwrap();
        store.gc().unwrap();
        assert!(!path.exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn two_tasks_building_a_new_image_disk_at_once_both_get_a_complete_one() {
        let (root, _, record) = setup("concurrent");
        for round in 0..4 {
            let _ = fs::remove_file(disk_path(&root, &record));
            let barrier = std::sync::Barrier::new(2);
            let paths: Vec<PathBuf> = std::thread::scope(|s| {
                let builders: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            let store = Store::open(&root).unwrap();
                            barrier.wait();
                            ensure(&store, &root, &record)
                        })
                    })
                    .collect();
                builders
                    .into_iter()
                    .map(|b| b.join().unwrap().unwrap())
                    .collect()
            });
            assert_eq!(paths[0], paths[1], "round {round}");
            let size = fs::metadata(&paths[0]).unwrap().len();
            let toc = read_toc(&mut File::open(&paths[0]).unwrap(), size).unwrap();
            assert_eq!(toc.layers.len(), 2, "round {round}");
            let left: Vec<_> = fs::read_dir(root.join("disks"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(left.is_empty(), "temporary files left: {left:?}");
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_disk_that_appeared_meanwhile_is_kept() {
        let (root, store, record) = setup("kept");
        let dir = root.join("disks");
        fs::create_dir_all(&dir).unwrap();
        let path = disk_path(&root, &record);
        // Another builder's disk appears while this one writes: it stays.
        fs::write(&path, b"the other builder's disk").unwrap();
        let (tmp, file) = create_temp(&dir, &record.manifest.hex()).unwrap();
        let (tmp2, _) = create_temp(&dir, &record.manifest.hex()).unwrap();
        assert_ne!(tmp, tmp2, "every builder has a file of its own");
        write_file(&store, &record, file, &tmp).unwrap();
        put_in_place(&tmp, &path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"the other builder's disk");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_layer_guest_init_cannot_unpack_is_refused_when_the_disk_is_built() {
        let (root, store, mut record) = setup("media");
        record.layers[1].media_type = "application/vnd.oci.image.layer.v1.tar+bzip2".into();
        let err = ensure(&store, &root, &record).unwrap_err();
        assert!(
            matches!(err, ImageDiskError::UnsupportedLayer { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("tar+bzip2"), "{err}");
        assert!(!disk_path(&root, &record).exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn hostile_disks_are_refused_before_any_offset_is_used() {
        let (root, store, record) = setup("hostile");
        let path = root.join("d.img");
        write(&store, &record, &path).unwrap();
        let good = fs::read(&path).unwrap();
        let check = |bytes: &[u8]| read_toc(&mut std::io::Cursor::new(bytes), bytes.len() as u64);
        assert!(check(&good).is_ok());

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            check(&bad),
            Err(ImageDiskError::Header(DiskHeaderError::BadMagic))
        ));
        let mut bad = good.clone();
        bad[8] = 9;
        assert!(matches!(
            check(&bad),
            Err(ImageDiskError::Header(DiskHeaderError::Version(9)))
        ));
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            check(&bad),
            Err(ImageDiskError::Header(DiskHeaderError::Misplaced { .. }))
        ));
        // A table pointing past the end of the disk, or into the table itself.
        let toc = check(&good).unwrap();
        for (offset, size) in [(toc.config.offset, u64::MAX), (0, 10), (4096 * 1000, 10)] {
            let mut t = toc.clone();
            t.layers[0].offset = offset;
            t.layers[0].size = size;
            let json = serde_json::to_vec(&t).unwrap();
            let mut bad = good.clone();
            bad[12..16].copy_from_slice(&(json.len() as u32).to_le_bytes());
            bad[4096..4096 + json.len()].copy_from_slice(&json);
            assert!(
                matches!(check(&bad), Err(ImageDiskError::BadToc(_))),
                "{offset}+{size}"
            );
        }
        // Truncated.
        assert!(check(&good[..100]).is_err());
        fs::remove_dir_all(root).unwrap();
    }
}
