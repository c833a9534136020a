//! The host's image store: content-addressed blobs, verified before they are kept, and the
//! images (name → manifest, config, layers) that reference them.
//!
//! Layout under the data directory:
//! - `blobs/sha256/<hex>`: every blob once, named by its digest; written to `tmp/` while its
//!   digest is computed, fsynced, then renamed into place — a blob file is whole and correct or
//!   absent;
//! - `images.json`: the images, replaced atomically (temp file, fsync, rename) under `lock`
//!   (`flock`), so concurrent imports and removals do not lose each other's updates;
//! - garbage collection deletes blobs no image references, under the same lock.
//!
//! Images come in from an OCI layout directory (`oci`), a `docker save` archive (`archive`) or
//! an OCI distribution registry (`registry`), all through one all-or-nothing step
//! ([`Store::all_or_nothing`]): a failed import leaves no new blob and no new name.

pub mod archive;
pub mod digest;
pub mod name;
pub mod oci;
pub mod registry;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub use self::digest::{Digest, DigestError, Hasher};
pub use self::name::{check_name, NameError};

/// Most bytes of a JSON blob (manifest, index, config) we read into memory.
pub const MAX_JSON_BLOB: u64 = 4 << 20;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {expected}: the content's digest is {actual}; rejected, nothing stored")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(
        "blob {digest}: {actual} bytes where {expected} were announced; rejected, nothing stored"
    )]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is larger than {max} bytes")]
    TooLarge { digest: Digest, max: u64 },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("no image named {0:?}")]
    NoSuchImage(String),
    #[error(transparent)]
    BadName(#[from] NameError),
    #[error("image store index {path} is corrupt: {source}")]
    CorruptIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One layer of an image: its blob and how it is compressed (its media type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// What the store keeps for an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<Layer>,
}

impl ImageRecord {
    fn blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        [self.manifest, self.config]
            .into_iter()
            .chain(self.layers.iter().map(|l| l.digest))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

/// Whether `put_blob` wrote the blob or found it already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    Existing,
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub blobs: usize,
    pub bytes: u64,
}

/// The image store in a data directory.
pub struct Store {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An exclusive `flock` on the store's lock file, released on drop.
struct Lock(File);

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in [root.join("blobs/sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Where blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    fn temp_path(&self) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.root
            .join("tmp")
            .join(format!("{}-{n}-{nanos}", std::process::id()))
    }

    /// Stores the blob read from `content`, which must hash to `expected` (and be `size` bytes
    /// when given). Nothing is kept unless it does. An already stored blob is not read again.
    pub fn put_blob(
        &self,
        expected: &Digest,
        size: Option<u64>,
        content: &mut dyn Read,
    ) -> Result<Stored, StoreError> {
        let dst = self.blob_path(expected);
        if dst.is_file() {
            return Ok(Stored::Existing);
        }
        let tmp = self.temp_path();
        let result = self.write_verified(&tmp, expected, size, content);
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &dst).map_err(io(&dst))?;
        sync_dir(&dst)?;
        Ok(Stored::New)
    }

    fn write_verified(
        &self,
        tmp: &Path,
        expected: &Digest,
        size: Option<u64>,
        content: &mut dyn Read,
    ) -> Result<(), StoreError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(io(tmp))?;
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(tmp)(e)),
            };
            total += n as u64;
            if size.is_some_and(|s| total > s) {
                break; // more than announced: refused below without reading the rest
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io(tmp))?;
        }
        if let Some(expected_size) = size {
            if total != expected_size {
                return Err(StoreError::SizeMismatch {
                    digest: *expected,
                    expected: expected_size,
                    actual: total,
                });
            }
        }
        let actual = hasher.finish();
        if actual != *expected {
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        file.sync_all().map_err(io(tmp))
    }

    /// Stores `data` as a blob; returns its digest.
    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(data);
        self.put_blob(&digest, Some(data.len() as u64), &mut &data[..])?;
        Ok(digest)
    }

    /// Reads a small blob (a manifest or config) whole, checking its digest again.
    pub fn read_json_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let data = read_limited(&path, MAX_JSON_BLOB).map_err(|e| match e {
            ReadLimited::Missing => StoreError::MissingBlob(*digest),
            ReadLimited::TooLarge => StoreError::TooLarge {
                digest: *digest,
                max: MAX_JSON_BLOB,
            },
            ReadLimited::Io(source) => StoreError::Io { path, source },
        })?;
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        Ok(data)
    }

    fn lock(&self) -> Result<Lock, StoreError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        Ok(Lock(file))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|source| StoreError::CorruptIndex { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let path = self.index_path();
        let tmp = self.temp_path();
        let data = serde_json::to_vec_pretty(index).map_err(|source| StoreError::CorruptIndex {
            path: path.clone(),
            source,
        })?;
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&path)
    }

    /// Names `name` the image `record` (whose blobs must all be stored), replacing any image of
    /// that name. The name must be an OCI reference ([`check_name`]): every import and pull
    /// stores its name here. The blobs are checked under the lock, so a concurrent failed import
    /// (which deletes what it added under the same lock) cannot leave the image without one.
    pub fn tag(&self, name: &str, record: ImageRecord) -> Result<(), StoreError> {
        check_name(name)?;
        let _lock = self.lock()?;
        if let Some(missing) = record.blobs().find(|d| !self.has_blob(d)) {
            return Err(StoreError::MissingBlob(missing));
        }
        let mut index = self.read_index()?;
        index.images.insert(name.to_owned(), record);
        self.write_index(&index)
    }

    /// The images, by name.
    pub fn list(&self) -> Result<BTreeMap<String, ImageRecord>, StoreError> {
        Ok(self.read_index()?.images)
    }

    /// The image named `name`.
    pub fn get(&self, name: &str) -> Result<ImageRecord, StoreError> {
        self.read_index()?
            .images
            .remove(name)
            .ok_or_else(|| StoreError::NoSuchImage(name.to_owned()))
    }

    /// Forgets the image `name` (its blobs stay until garbage collection).
    pub fn remove(&self, name: &str) -> Result<ImageRecord, StoreError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let record = index
            .images
            .remove(name)
            .ok_or_else(|| StoreError::NoSuchImage(name.to_owned()))?;
        self.write_index(&index)?;
        Ok(record)
    }

    /// Runs an import that lists in its argument the blobs it newly stores; if it fails, those
    /// no image references are deleted again.
    pub fn all_or_nothing<T, E>(
        &self,
        import: impl FnOnce(&mut Vec<Digest>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut added = Vec::new();
        let result = import(&mut added);
        if result.is_err() {
            let _ = self.discard_unreferenced(&added);
        }
        result
    }

    /// Deletes `candidates` that no image references (what a failed import had added).
    pub fn discard_unreferenced(&self, candidates: &[Digest]) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let referenced = self.referenced()?;
        for d in candidates.iter().filter(|d| !referenced.contains(d)) {
            let _ = fs::remove_file(self.blob_path(d));
        }
        Ok(())
    }

    fn referenced(&self) -> Result<BTreeSet<Digest>, StoreError> {
        Ok(self
            .read_index()?
            .images
            .values()
            .flat_map(|r| r.blobs().collect::<Vec<_>>())
            .collect())
    }

    /// Deletes every blob no image references, and leftover temporary files.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _lock = self.lock()?;
        let referenced = self.referenced()?;
        let mut report = GcReport::default();
        let dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
                .is_some_and(|d| referenced.contains(&d));
            if !keep {
                let bytes = entry.metadata().map_or(0, |m| m.len());
                if fs::remove_file(entry.path()).is_ok() {
                    report.blobs += 1;
                    report.bytes += bytes;
                }
            }
        }
        // Image disks (see `image_disk`) of images no longer stored.
        let disks = self.root.join("disks");
        for entry in fs::read_dir(&disks).into_iter().flatten().flatten() {
            let name = entry.file_name();
            // Only finished disks (`<hex>.img`): a `.…tmp` file is one being built.
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".img")) else {
                continue;
            };
            let keep = format!("sha256:{hex}")
                .parse::<Digest>()
                .is_ok_and(|d| referenced.contains(&d));
            if !keep {
                let bytes = entry.metadata().map_or(0, |m| m.len());
                if fs::remove_file(entry.path()).is_ok() {
                    report.bytes += bytes;
                }
            }
        }
        // Temporary files of writers that died (a live writer's file is younger than a day).
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 24 * 3600);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(report)
    }
}

enum ReadLimited {
    Missing,
    TooLarge,
    Io(std::io::Error),
}

/// Reads a file of at most `max` bytes.
pub(crate) fn read_limited_file(path: &Path, max: u64) -> Result<Vec<u8>, std::io::Error> {
    read_limited(path, max).map_err(|e| match e {
        ReadLimited::Missing => std::io::Error::from(std::io::ErrorKind::NotFound),
        ReadLimited::TooLarge => std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ),
        ReadLimited::Io(e) => e,
    })
}

fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, ReadLimited> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadLimited::Missing,
        _ => ReadLimited::Io(e),
    })?;
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(ReadLimited::Io)?;
    if data.len() as u64 > max {
        return Err(ReadLimited::TooLarge);
    }
    Ok(data)
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn temp_store(name: &str) -> (PathBuf, Store) {
        let root = std::env::temp_dir().join(format!("skiff-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = Store::open(&root).unwrap();
        (root, store)
    }

    #[test]
    fn blobs_are_kept_only_when_their_digest_matches() {
        let (root, store) = temp_store("verify");
        let good = Digest::of(b"layer");
        assert_eq!(
            store.put_blob(&good, Some(5), &mut &b"layer"[..]).unwrap(),
            Stored::New
        );
        assert_eq!(fs::read(store.blob_path(&good)).unwrap(), b"layer");
        // Stored once: a second put does not read its input.
        let mut poisoned: &[u8] = b"something else";
        assert_eq!(
            store.put_blob(&good, Some(5), &mut poisoned).unwrap(),
            Stored::Existing
        );

        let claimed = Digest::of(b"what the manifest says");
        let err = store
            .put_blob(&claimed, None, &mut &b"tampered"[..])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::DigestMismatch { expected, .. } if expected == claimed),
            "{err}"
        );
        assert!(err.to_string().contains("rejected, nothing stored"));
        let err = store
            .put_blob(&Digest::of(b"layer!"), Some(3), &mut &b"layer!"[..])
            .unwrap_err();
        assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
        assert!(!store.has_blob(&claimed));
        assert_eq!(
            fs::read_dir(root.join("tmp")).unwrap().count(),
            0,
            "no leftovers"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn images_are_tagged_listed_removed_and_their_blobs_collected() {
        let (root, store) = temp_store("gc");
        let put = |b: &[u8]| store.put_bytes(b).unwrap();
        let (m1, c1, shared, l1) = (put(b"m1"), put(b"c1"), put(b"shared"), put(b"l1"));
        let (m2, c2) = (put(b"m2"), put(b"c2"));
        let layer = |d: Digest| Layer {
            digest: d,
            media_type: oci::MEDIA_LAYER_GZIP.into(),
            size: 0,
        };
        let a = ImageRecord {
            manifest: m1,
            config: c1,
            layers: vec![layer(shared), layer(l1)],
        };
        let b = ImageRecord {
            manifest: m2,
            config: c2,
            layers: vec![layer(shared)],
        };
        store.tag("a:1", a.clone()).unwrap();
        store.tag("b:1", b.clone()).unwrap();
        let orphan = put(b"orphan");
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(store.get("a:1").unwrap(), a);

        let report = store.gc().unwrap();
        assert_eq!(report.blobs, 1, "only the orphan");
        assert!(!store.has_blob(&orphan));
        store.remove("a:1").unwrap();
        assert!(matches!(store.get("a:1"), Err(StoreError::NoSuchImage(_))));
        assert_eq!(store.gc().unwrap().blobs, 3, "m1, c1, l1");
        assert!(store.has_blob(&shared), "still used by b:1");
        assert!(matches!(
            store.remove("a:1"),
            Err(StoreError::NoSuchImage(_))
        ));
        // Nor can a name that is not an OCI reference; nothing is stored under it.
        for bad in ["../evil", "a/../b", "Upper:1", "", &"x".repeat(300)] {
            let err = store.tag(bad, b.clone()).unwrap_err();
            assert!(matches!(err, StoreError::BadName(_)), "{bad:?}: {err}");
            assert!(err.to_string().contains("invalid image name"), "{err}");
        }
        assert_eq!(
            store.list().unwrap().keys().collect::<Vec<_>>(),
            vec!["b:1"]
        );
        // An image whose blobs are not stored cannot be tagged.
        assert!(matches!(
            store.tag("c:1", a),
            Err(StoreError::MissingBlob(_))
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn concurrent_writers_of_the_same_blobs_and_tags_lose_nothing() {
        let (root, store) = temp_store("concurrent");
        let store = std::sync::Arc::new(store);
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (store, data) = (store.clone(), data.clone());
                std::thread::spawn(move || {
                    store.put_blob(&digest, None, &mut &data[..]).unwrap();
                    let config = store.put_bytes(format!("config {i}").as_bytes()).unwrap();
                    let record = ImageRecord {
                        manifest: config,
                        config,
                        layers: vec![],
                    };
                    store.tag(&format!("img:{i}"), record).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(fs::read(store.blob_path(&digest)).unwrap(), data);
        assert_eq!(store.list().unwrap().len(), 8, "every tag survived");
        fs::remove_dir_all(root).unwrap();
    }
}
