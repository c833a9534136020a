//! A task's scratch disk: the writable disk its container's root filesystem is unpacked onto.
//! A sparse file of the task's ephemeral storage size (20 GiB by default), formatted ext4 on the
//! host while it is still empty — so a hostile image's content never passes through a host
//! filesystem driver — and handed to the guest as a read-write virtio-blk disk.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default ephemeral storage of a task.
pub const DEFAULT_SIZE: u64 = 20 << 30;
/// Smallest scratch disk we make (ext4 needs room for its metadata and journal).
pub const MIN_SIZE: u64 = 16 << 20;

/// Errors making a scratch disk.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("scratch disk of {0} bytes: at least {MIN_SIZE} bytes are needed")]
    TooSmall(u64),
    #[error("scratch disk {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scratch disk {path}: mkfs.ext4 failed: {message}")]
    Mkfs { path: PathBuf, message: String },
}

/// Creates the sparse scratch disk `path` of `size` bytes and formats it ext4. `path` must not
/// exist yet (a task's disk is never reused).
pub fn create(path: &Path, size: u64) -> Result<(), ScratchError> {
    if size < MIN_SIZE {
        return Err(ScratchError::TooSmall(size));
    }
    let io = |source| ScratchError::Io {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    file.set_len(size).map_err(io)?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "skiff-scratch"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(path)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output();
    let failed = |message: String| {
        let _ = std::fs::remove_file(path);
        ScratchError::Mkfs {
            path: path.to_owned(),
            message,
        }
    };
    match output {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_scratch_disk_is_sparse_ext4_of_the_asked_size() {
        let path = std::env::temp_dir().join(format!("skiff-scratch-{}.img", std::process::id()));
        let _ = std::fs::remove_file(&path);
        create(&path, 1 << 30).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "sparse: {} bytes allocated",
            meta.blocks() * 512
        );
        let mut f = std::fs::File::open(&path).unwrap();
        let mut magic = [0u8; 2];
        f.seek(SeekFrom::Start(1024 + 0x38)).unwrap();
        f.read_exact(&mut magic).unwrap();
        assert_eq!(u16::from_le_bytes(magic), 0xef53, "an ext4 superblock");
        // Never over an existing file; too small is refused.
        assert!(matches!(
            create(&path, 1 << 30),
            Err(ScratchError::Io { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            create(&path, 1 << 20),
            Err(ScratchError::TooSmall(_))
        ));
        assert!(!path.exists());
    }
}
