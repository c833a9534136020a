//! A writer for the "newc" (SVR4, no CRC) cpio format that the Linux kernel unpacks as initramfs.
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 eight-digit hex fields), the NUL-terminated
//! name padded to a multiple of 4, then the data padded to a multiple of 4. The archive ends with an
//! entry named `TRAILER!!!`.

use std::io::{self, Write};

/// Errors writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error(
        "cpio entry name {0:?} is empty, absolute, or contains '..', '.', or an empty component"
    )]
    BadName(String),
    #[error("cpio entry {name:?} is too large ({size} bytes; newc stores sizes in 32 bits)")]
    TooLarge { name: String, size: u64 },
    #[error("cannot write cpio archive: {0}")]
    Io(#[from] io::Error),
}

/// File type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

/// Checks that `name` is a clean relative path (`a/b/c`).
pub fn check_name(name: &str) -> Result<(), CpioError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || name.contains('\0');
    if bad {
        Err(CpioError::BadName(name.to_owned()))
    } else {
        Ok(())
    }
}

/// One entry's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number, for device nodes.
    pub rdev: (u32, u32),
}

impl Header {
    pub fn dir(perm: u32) -> Self {
        Self::of(S_IFDIR | perm)
    }
    pub fn file(perm: u32) -> Self {
        Self::of(S_IFREG | perm)
    }
    pub fn symlink() -> Self {
        Self::of(S_IFLNK | 0o777)
    }
    pub fn char_device(perm: u32, major: u32, minor: u32) -> Self {
        Self {
            rdev: (major, minor),
            ..Self::of(S_IFCHR | perm)
        }
    }
    fn of(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            rdev: (0, 0),
        }
    }
}

/// Streams entries into a newc archive.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn header(&mut self, name: &str, h: Header, ino: u32, nlink: u32, size: u32) -> io::Result<()> {
        let fields = [
            ino,
            h.mode,
            h.uid,
            h.gid,
            nlink,
            0, // mtime: fixed, so archives are reproducible
            size,
            0, // devmajor
            0, // devminor
            h.rdev.0,
            h.rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut text = String::with_capacity(110);
        text.push_str(MAGIC);
        for f in fields {
            text.push_str(&format!("{f:08x}"));
        }
        self.put(text.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    /// Adds an entry with `data` as its content (a file's bytes or a symlink's target).
    pub fn add(&mut self, name: &str, header: Header, data: &[u8]) -> Result<(), CpioError> {
        check_name(name)?;
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            name: name.to_owned(),
            size: data.len() as u64,
        })?;
        let nlink = if header.mode & S_IFDIR == S_IFDIR {
            2
        } else {
            1
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, header, ino, nlink, size)?;
        self.put(data)?;
        self.pad()?;
        Ok(())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header(TRAILER, Header::of(0), 0, 1, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed entry: (name, mode, data, rdev).
    pub type Parsed = (String, u32, Vec<u8>, (u32, u32));

    /// Parses a newc archive back into entries: the reader the tests use.
    pub fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&bytes[..6], b"070701", "magic at offset {offset}");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, size, rdev, namesize) = (
                field(1),
                field(6) as usize,
                (field(9), field(10)),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&bytes[110..110 + namesize - 1])
                .unwrap()
                .to_owned();
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = bytes[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            offset += next;
            bytes = &bytes[next..];
            if name == TRAILER {
                assert!(bytes.is_empty());
                return out;
            }
            out.push((name, mode, data, rdev));
        }
    }

    #[test]
    fn round_trips_entries_with_alignment() {
        let mut w = CpioWriter::new(Vec::new());
        w.add("dev", Header::dir(0o755), &[]).unwrap();
        w.add("dev/console", Header::char_device(0o600, 5, 1), &[])
            .unwrap();
        w.add("init", Header::file(0o755), b"#!/bin/sh\necho hi\n")
            .unwrap();
        w.add("bin/sh", Header::symlink(), b"busybox").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!((entries[1].1, entries[1].3), (S_IFCHR | 0o600, (5, 1)));
        assert_eq!(entries[2].2, b"#!/bin/sh\necho hi\n");
        assert_eq!(
            (entries[3].1 & S_IFLNK, entries[3].2.as_slice()),
            (S_IFLNK, &b"busybox"[..])
        );
    }

    #[test]
    fn rejects_unsafe_names() {
        for name in ["", "/init", "a/../b", "..", "a//b", "./a", "a/", "a\0b"] {
            let mut w = CpioWriter::new(Vec::new());
            assert!(
                matches!(
                    w.add(name, Header::file(0o644), b""),
                    Err(CpioError::BadName(_))
                ),
                "{name:?}"
            );
        }
        check_name("usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    }
}
