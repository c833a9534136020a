//! Building an initramfs: a tree of directories, files (from bytes or host files), symlinks and
//! device nodes, written as one newc cpio archive. Parent directories are added automatically.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::{check_name, CpioError, CpioWriter, Header};

/// Errors building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(transparent)]
    Cpio(#[from] CpioError),
    #[error("{path} is already in the initramfs as a different kind of entry")]
    Conflict { path: String },
    #[error("cannot read {path}: {source}")]
    ReadHost {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the shared libraries of {path}: {reason}")]
    Ldd { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Content },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

/// An initramfs being assembled. Paths are written without a leading `/`, or with one (ignored).
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    // Sorted by path, so a directory always precedes what it contains.
    entries: BTreeMap<String, Entry>,
}

fn normalize(path: &str) -> Result<String, CpioError> {
    let name = path.trim_start_matches('/').to_owned();
    check_name(&name)?;
    Ok(name)
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The layout every Skiff guest initramfs has: `/init` (the given binary), `/dev/console`, and
    /// the mount points guest-init uses.
    pub fn guest(init: &Path) -> Result<Self, InitramfsError> {
        let mut fs = Self::new();
        fs.host_file("init", init, Some(0o755))?;
        fs.char_device("dev/console", 0o600, 5, 1)?;
        for dir in ["proc", "sys", "tmp", "run", "mnt"] {
            fs.dir(dir, 0o755)?;
        }
        Ok(fs)
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), InitramfsError> {
        let name = normalize(path)?;
        // Parents first: every proper prefix becomes a directory.
        let mut parent = String::new();
        for component in name
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => return Err(InitramfsError::Conflict { path: parent }),
            }
        }
        match (self.entries.get(&name), &entry) {
            (Some(Entry::Dir { .. }), Entry::Dir { .. }) | (None, _) => {}
            (Some(existing), _) if *existing == entry => {}
            (Some(Entry::File { .. }), Entry::File { .. })
            | (Some(Entry::Symlink { .. }), Entry::Symlink { .. }) => {} // replaced below
            (Some(_), _) => return Err(InitramfsError::Conflict { path: name }),
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), InitramfsError> {
        self.insert(path, Entry::Dir { mode })
    }

    pub fn file_bytes(
        &mut self,
        path: &str,
        mode: u32,
        bytes: &[u8],
    ) -> Result<(), InitramfsError> {
        self.insert(
            path,
            Entry::File {
                mode,
                content: Content::Bytes(bytes.to_vec()),
            },
        )
    }

    /// Adds the host file `source` at `path`; its permissions are kept unless `mode` is given.
    /// Symlinks are followed: the archive holds the file's content.
    pub fn host_file(
        &mut self,
        path: &str,
        source: &Path,
        mode: Option<u32>,
    ) -> Result<(), InitramfsError> {
        let meta = std::fs::metadata(source).map_err(|e| InitramfsError::ReadHost {
            path: source.to_owned(),
            source: e,
        })?;
        let mode = mode.unwrap_or(meta.permissions().mode() & 0o7777);
        self.insert(
            path,
            Entry::File {
                mode,
                content: Content::Host(source.to_owned()),
            },
        )
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        )
    }

    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), InitramfsError> {
        self.insert(path, Entry::CharDevice { mode, major, minor })
    }

    /// Adds a dynamically linked host binary at `path` and every shared library `ldd` lists for it,
    /// at the libraries' own absolute paths. Only for binaries we trust: `ldd` may run them.
    pub fn host_binary(&mut self, path: &str, source: &Path) -> Result<(), InitramfsError> {
        self.host_file(path, source, None)?;
        for lib in shared_libraries(source)? {
            let lib_path = lib.to_string_lossy().into_owned();
            self.host_file(&lib_path, &lib, None)?;
        }
        Ok(())
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|name| self.entries.contains_key(&name))
    }

    /// Writes the archive to `out` atomically (a temporary file renamed into place).
    pub fn write_to(&self, out: &Path) -> Result<(), InitramfsError> {
        let write_err = |source| InitramfsError::Write {
            path: out.to_owned(),
            source,
        };
        let tmp = out.with_extension("cpio.tmp");
        let file = File::create(&tmp).map_err(write_err)?;
        let mut cpio = CpioWriter::new(BufWriter::new(file));
        let mut buf = Vec::new();
        for (name, entry) in &self.entries {
            match entry {
                Entry::Dir { mode } => cpio.add(name, Header::dir(*mode), &[])?,
                Entry::File { mode, content } => {
                    let data = match content {
                        Content::Bytes(bytes) => bytes.as_slice(),
                        Content::Host(path) => {
                            buf.clear();
                            File::open(path)
                                .and_then(|mut f| f.read_to_end(&mut buf))
                                .map_err(|source| InitramfsError::ReadHost {
                                    path: path.clone(),
                                    source,
                                })?;
                            buf.as_slice()
                        }
                    };
                    cpio.add(name, Header::file(*mode), data)?;
                }
                Entry::Symlink { target } => {
                    cpio.add(name, Header::symlink(), target.as_bytes())?
                }
                Entry::CharDevice { mode, major, minor } => {
                    cpio.add(name, Header::char_device(*mode, *major, *minor), &[])?
                }
            }
        }
        let writer = cpio.finish()?;
        let file = writer.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, out).map_err(write_err)
    }
}

/// The shared libraries (and dynamic loader) a host binary needs, from `ldd`.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    let ldd_err = |reason: String| InitramfsError::Ldd {
        path: binary.to_owned(),
        reason,
    };
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| ldd_err(format!("cannot run ldd: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // Static binaries make ldd say so and exit non-zero.
        let all = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(ldd_err(all.trim().to_owned()));
    }
    Ok(parse_ldd(&stdout))
}

/// Extracts library paths from `ldd` output.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::parse;
    use crate::cpio::{S_IFCHR, S_IFDIR};

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("skiff-initramfs-{}-{name}", std::process::id()))
    }

    #[test]
    fn parents_are_created_before_children() {
        let mut fs = Initramfs::new();
        fs.file_bytes("/usr/lib/x/libfoo.so", 0o644, b"lib")
            .unwrap();
        fs.file_bytes("usr/bin/tool", 0o755, b"bin").unwrap();
        let out = temp("parents.cpio");
        fs.write_to(&out).unwrap();
        let names: Vec<_> = parse(&std::fs::read(&out).unwrap())
            .into_iter()
            .map(|e| (e.0, e.1 & S_IFDIR == S_IFDIR))
            .collect();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(
            names,
            vec![
                ("usr".into(), true),
                ("usr/bin".into(), true),
                ("usr/bin/tool".into(), false),
                ("usr/lib".into(), true),
                ("usr/lib/x".into(), true),
                ("usr/lib/x/libfoo.so".into(), false),
            ]
        );
    }

    #[test]
    fn guest_layout_has_init_and_console() {
        let init = temp("init");
        std::fs::write(&init, b"\x7fELF-not-really").unwrap();
        let fs = Initramfs::guest(&init).unwrap();
        let out = temp("guest.cpio");
        fs.write_to(&out).unwrap();
        let entries = parse(&std::fs::read(&out).unwrap());
        std::fs::remove_file(&out).unwrap();
        std::fs::remove_file(&init).unwrap();
        let init_entry = entries.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(init_entry.1 & 0o777, 0o755);
        assert_eq!(init_entry.2, b"\x7fELF-not-really");
        let console = entries.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!((console.1 & S_IFCHR, console.3), (S_IFCHR, (5, 1)));
        assert!(entries.iter().any(|e| e.0 == "proc"));
    }

    #[test]
    fn conflicting_kinds_are_refused() {
        let mut fs = Initramfs::new();
        fs.file_bytes("bin", 0o755, b"x").unwrap();
        assert!(matches!(
            fs.dir("bin", 0o755),
            Err(InitramfsError::Conflict { .. })
        ));
        assert!(matches!(
            fs.file_bytes("bin/sh", 0o755, b"x"),
            Err(InitramfsError::Conflict { .. })
        ));
        assert!(fs.file_bytes("../escape", 0o644, b"x").is_err());
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn a_real_binary_brings_its_libraries() {
        let mut fs = Initramfs::new();
        fs.host_binary("bin/ls", Path::new("/bin/ls")).unwrap();
        assert!(
            fs.contains("lib64/ld-linux-x86-64.so.2") || fs.contains("lib/ld-linux-x86-64.so.2")
        );
    }
}
