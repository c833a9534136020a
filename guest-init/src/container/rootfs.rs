//! The container's root filesystem: the scratch disk mounted, the image's layers unpacked onto it
//! from the image disk (bottom first), and the files the runtime owns written into its /etc.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use skiff_protocol::image_disk::{DiskHeader, DiskHeaderError, BLOCK};

use crate::mounts;
use crate::unpack::{self, UnpackError, UnpackStats};

/// Where init mounts the scratch disk.
pub const SCRATCH_MOUNT: &str = "/run/skiff/scratch";
/// The container's root, on the scratch disk.
pub const ROOTFS: &str = "/run/skiff/scratch/rootfs";
/// Largest /etc/passwd or /etc/group read from an image.
const MAX_ACCOUNT_FILE: u64 = 1 << 20;
/// Symlinks followed to an image file.
const MAX_FILE_LINKS: usize = 8;
/// Read-ahead for layer blobs on the image disk.
const LAYER_BUFFER: usize = 1 << 20;

/// Why the root filesystem could not be built: each is a task failure reason.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot mount the scratch disk {device} (ext4): {source}")]
    Scratch {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the image disk {device}: {source}")]
    ImageDisk {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image disk {device}: {source}")]
    Header {
        device: String,
        #[source]
        source: DiskHeaderError,
    },
    #[error("image layer {index} of {count}: {source}")]
    Layer {
        index: usize,
        count: usize,
        #[source]
        source: UnpackError,
    },
    #[error("cannot write /{path} in the container: {source}")]
    RuntimeFile {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy)]
pub struct RootfsStats {
    pub layers: usize,
    pub entries: u64,
    pub whiteouts: u64,
    pub xattrs: u64,
    pub xattrs_skipped: u64,
}

/// Mounts the scratch disk and unpacks the image disk's layers onto it; returns the root.
pub fn build(
    image_device: &str,
    scratch_device: &str,
) -> Result<(PathBuf, RootfsStats), RootfsError> {
    let scratch = |source| RootfsError::Scratch {
        device: scratch_device.to_owned(),
        source,
    };
    fs::create_dir_all(SCRATCH_MOUNT).map_err(scratch)?;
    mounts::mount(scratch_device, SCRATCH_MOUNT, "ext4", libc::MS_NOATIME, "").map_err(scratch)?;
    let root = PathBuf::from(ROOTFS);
    fs::create_dir_all(&root).map_err(scratch)?;
    let stats = unpack_image(image_device, &root)?;
    Ok((root, stats))
}

/// Unpacks every layer of the image disk at `device` onto `root`.
pub fn unpack_image(device: &str, root: &Path) -> Result<RootfsStats, RootfsError> {
    let disk_err = |source| RootfsError::ImageDisk {
        device: device.to_owned(),
        source,
    };
    let mut disk = File::open(device).map_err(disk_err)?;
    let size = disk.seek(SeekFrom::End(0)).map_err(disk_err)?;
    let mut block = vec![0u8; BLOCK as usize];
    disk.seek(SeekFrom::Start(0)).map_err(disk_err)?;
    disk.read_exact(&mut block).map_err(disk_err)?;
    let header = DiskHeader::decode(&block, size).map_err(|source| RootfsError::Header {
        device: device.to_owned(),
        source,
    })?;
    let count = header.layers.len();
    let mut stats = RootfsStats {
        layers: count,
        ..RootfsStats::default()
    };
    for (i, layer) in header.layers.iter().enumerate() {
        disk.seek(SeekFrom::Start(layer.offset)).map_err(disk_err)?;
        let blob = BufReader::with_capacity(LAYER_BUFFER, (&disk).take(layer.size));
        let UnpackStats {
            entries,
            whiteouts,
            xattrs,
            xattrs_skipped,
        } = unpack::unpack_layer(root, blob, layer.compression, true).map_err(|source| {
            RootfsError::Layer {
                index: i + 1,
                count,
                source,
            }
        })?;
        stats.entries += entries;
        stats.whiteouts += whiteouts;
        stats.xattrs += xattrs;
        stats.xattrs_skipped += xattrs_skipped;
    }
    Ok(stats)
}

/// Reads a small file of the image (e.g. `etc/passwd`), its path — symlinks included — resolved
/// inside `root`; empty if it is missing or not a regular file. Invalid UTF-8 is replaced.
pub fn read_image_file(root: &Path, rel: &str) -> String {
    let mut rel = PathBuf::from(rel);
    for _ in 0..MAX_FILE_LINKS {
        let Ok(path) = unpack::resolve(root, &rel) else {
            return String::new();
        };
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let Ok(target) = fs::read_link(&path) else {
                    return String::new();
                };
                rel = match target.strip_prefix("/") {
                    Ok(absolute) => absolute.to_owned(),
                    Err(_) => rel.parent().unwrap_or(Path::new("")).join(target),
                };
            }
            Ok(m) if m.is_file() => {
                let Ok(file) = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open(path)
                else {
                    return String::new();
                };
                let mut bytes = Vec::new();
                let _ = file.take(MAX_ACCOUNT_FILE).read_to_end(&mut bytes);
                return String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => return String::new(),
        }
    }
    String::new()
}

/// Writes a file the runtime owns (e.g. `etc/hosts`) into the container, replacing whatever the
/// image had there; its directory is resolved inside `root`.
pub fn write_runtime_file(
    root: &Path,
    rel: &'static str,
    contents: &str,
) -> Result<(), RootfsError> {
    let err = |source| RootfsError::RuntimeFile { path: rel, source };
    let path = unpack::resolve(root, Path::new(rel)).map_err(|e| err(std::io::Error::other(e)))?;
    if let Some(parent) = path.parent() {
        unpack::ensure_dir(parent).map_err(err)?;
    }
    unpack::remove_any(&path).map_err(err)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)
}

/// Unmounts the scratch disk (after the container's processes are gone), so its filesystem is
/// clean when the VM ends.
pub fn release() {
    let _ = mounts::unmount(SCRATCH_MOUNT);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-rootfs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn runtime_files_replace_links_and_stay_inside_the_root() {
        let dir = root("etc");
        let rootfs = dir.join("root");
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        // The image's hosts is a symlink out of the root; its etc/hostname a directory.
        std::os::unix::fs::symlink(dir.join("outside"), rootfs.join("etc/hosts")).unwrap();
        fs::create_dir(rootfs.join("etc/hostname")).unwrap();
        write_runtime_file(&rootfs, "etc/hosts", "127.0.0.1 localhost\n").unwrap();
        write_runtime_file(&rootfs, "etc/hostname", "task\n").unwrap();
        assert!(!dir.join("outside").exists());
        assert_eq!(
            fs::read_to_string(rootfs.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert_eq!(read_image_file(&rootfs, "etc/hostname"), "task\n");
        // An etc that is a symlink to / of the host resolves inside the root instead.
        let other = dir.join("other");
        fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink("/", other.join("etc")).unwrap();
        write_runtime_file(&other, "etc/resolv.conf", "nameserver 10.0.0.1\n").unwrap();
        assert!(other.join("resolv.conf").is_file());
        // Missing or odd account files read as empty.
        assert_eq!(read_image_file(&other, "etc/passwd"), "");
        std::os::unix::fs::symlink("/etc/passwd", other.join("passwd")).unwrap();
        assert_eq!(
            read_image_file(&other, "passwd"),
            "",
            "a loop reads as empty"
        );
        // Links are followed inside the root, relative and absolute.
        fs::create_dir_all(rootfs.join("usr/lib")).unwrap();
        fs::write(rootfs.join("usr/lib/group"), "app:x:1000:\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/group", rootfs.join("etc/group")).unwrap();
        std::os::unix::fs::symlink("/etc/group", rootfs.join("etc/group2")).unwrap();
        assert_eq!(read_image_file(&rootfs, "etc/group"), "app:x:1000:\n");
        assert_eq!(read_image_file(&rootfs, "etc/group2"), "app:x:1000:\n");
        assert_eq!(
            read_image_file(&rootfs, "etc"),
            "",
            "a directory reads as empty"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_hostile_image_disk_header_is_a_clear_failure() {
        let dir = root("disk");
        let disk = dir.join("disk.img");
        fs::write(&disk, vec![0u8; 8192]).unwrap();
        let err = unpack_image(disk.to_str().unwrap(), &dir).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
        let err = unpack_image("/nonexistent/disk", &dir).unwrap_err();
        assert!(matches!(err, RootfsError::ImageDisk { .. }));
        fs::remove_dir_all(dir).unwrap();
    }
}
