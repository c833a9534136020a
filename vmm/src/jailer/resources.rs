//! The files the VMM opens, taken from its configuration and relocated into the jail: the
//! kernel, initrd and disks are placed in the jail's root (hard link; a copy for read-only files
//! on another filesystem or that the task cannot read; a bind mount for writable disks on another
//! filesystem); the serial output file and the vsock socket (with its `_PORT` siblings) live in the
//! task's run directory on the host, which the jail mounts at [`RUN_DIR_IN_JAIL`]. The
//! configuration the VMM reads names the paths inside the jail.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, SerialOutput, VmConfig};

/// Where the task's run directory appears inside the jail.
pub const RUN_DIR_IN_JAIL: &str = "/run/task";

/// Errors relocating or placing resources.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("VM configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{what} {path} names no file")]
    NoFileName { what: &'static str, path: PathBuf },
    #[error("{what} {path}: cannot make the path absolute: {source}")]
    Absolute {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the serial output file {serial} and the vsock socket {vsock} must be in one directory \
         (the task's run directory, mounted in the jail at {RUN_DIR_IN_JAIL})"
    )]
    RunDirs { serial: PathBuf, vsock: PathBuf },
    #[error("run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "run directory {path} must be a directory owned by the task's uid {uid} with rwx for it \
         (it is mounted into the jail at {RUN_DIR_IN_JAIL})"
    )]
    RunDirOwner { path: PathBuf, uid: u32 },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot place {src} in the jail at {dst}: {source}")]
    Place {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A file the VMM opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// On the host.
    pub host: PathBuf,
    /// Inside the jail (absolute, from the jail's root).
    pub jailed: PathBuf,
    /// The VMM writes it.
    pub writable: bool,
}

/// A VM configuration relocated into a jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocated {
    /// What the VMM reads: every path inside the jail.
    pub config: VmConfig,
    /// The kernel, initrd and disks to place in the jail's root.
    pub files: Vec<Resource>,
    /// The host directory holding the serial output file and the vsock socket, to mount at
    /// [`RUN_DIR_IN_JAIL`].
    pub run_dir: Option<PathBuf>,
}

/// What is left to do inside the jail's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub host: PathBuf,
    /// Path of the (empty) target file or directory under the jail root, on the host.
    pub target: PathBuf,
    /// `host` is a directory that must belong to this uid: checked again on the descriptor that
    /// is mounted, so no symbolic link or swapped directory gets in between (see
    /// [`open_owned_dir`]).
    pub dir_owner: Option<u32>,
}

/// The host directory a run-directory file lives in, and its name there.
fn split_run_path(what: &'static str, path: &Path) -> Result<(PathBuf, PathBuf), ResourceError> {
    let absolute = std::path::absolute(path).map_err(|source| ResourceError::Absolute {
        what,
        path: path.to_owned(),
        source,
    })?;
    let no_name = || ResourceError::NoFileName {
        what,
        path: path.to_owned(),
    };
    let name = absolute.file_name().ok_or_else(no_name)?;
    let dir = absolute.parent().ok_or_else(no_name)?;
    Ok((dir.to_owned(), PathBuf::from(name)))
}

/// Rewrites `config` so every path lies inside the jail: the kernel becomes `/vmlinux`, the
/// initrd `/initrd`, disk N `/diskN`, and the serial output file and the vsock socket
/// `/run/task/<name>`; both of these must be in one host directory (the task's run directory).
/// Nothing is touched on the host.
pub fn relocate(config: &VmConfig) -> Result<Relocated, ResourceError> {
    let mut jailed = config.clone();
    let mut files = Vec::new();
    let mut add = |host: &Path, jailed: &str, writable: bool| {
        files.push(Resource {
            host: host.to_owned(),
            jailed: PathBuf::from(jailed),
            writable,
        });
        PathBuf::from(jailed)
    };
    jailed.kernel = add(&config.kernel, "/vmlinux", false);
    if let Some(initrd) = &config.initrd {
        jailed.initrd = Some(add(initrd, "/initrd", false));
    }
    for (i, disk) in jailed.disks.iter_mut().enumerate() {
        disk.path = add(&disk.path, &format!("/disk{i}"), !disk.read_only);
    }

    let in_jail = Path::new(RUN_DIR_IN_JAIL);
    let mut run_dir: Option<(PathBuf, &Path)> = None;
    if let SerialOutput::File(path) = &config.serial_out {
        let (dir, name) = split_run_path("serial output file", path)?;
        jailed.serial_out = SerialOutput::File(in_jail.join(name));
        run_dir = Some((dir, path));
    }
    if let (Some(vsock), Some(jailed_vsock)) = (&config.vsock, &mut jailed.vsock) {
        let (dir, name) = split_run_path("vsock socket", &vsock.uds)?;
        jailed_vsock.uds = in_jail.join(name);
        match &run_dir {
            Some((serial_dir, serial)) if *serial_dir != dir => {
                return Err(ResourceError::RunDirs {
                    serial: serial.to_path_buf(),
                    vsock: vsock.uds.clone(),
                })
            }
            Some(_) => {}
            None => run_dir = Some((dir, &vsock.uds)),
        }
    }
    jailed.validate_values()?;
    Ok(Relocated {
        config: jailed,
        files,
        run_dir: run_dir.map(|(dir, _)| dir),
    })
}

/// Can `uid`/`gid` open a file with this metadata (read, or read-write)?
fn accessible(meta: &std::fs::Metadata, uid: u32, gid: u32, write: bool) -> bool {
    let mode = meta.permissions().mode();
    let need = if write { 0o6 } else { 0o4 };
    let bits = if meta.uid() == uid {
        mode >> 6
    } else if meta.gid() == gid {
        mode >> 3
    } else {
        mode
    };
    bits & need == need
}

/// Creates `path` as a new file with `mode`, never following a symbolic link there.
pub fn create_new(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Copies `src` to the new file `dst` (see [`create_new`]) with `mode`, owned by root and the
/// group `gid` when given.
pub fn copy_new(src: &Path, dst: &Path, mode: u32, gid: Option<u32>) -> std::io::Result<()> {
    let mut from = File::open(src)?;
    let mut to = create_new(dst, mode)?;
    std::io::copy(&mut from, &mut to)?;
    if let Some(gid) = gid {
        std::os::unix::fs::fchown(&to, None, Some(gid))?;
    }
    Ok(())
}

/// Writes `bytes` to the new file `dst` (see [`create_new`]) with `mode`, owned by root and the
/// group `gid`.
pub fn write_new(dst: &Path, bytes: &[u8], mode: u32, gid: u32) -> std::io::Result<()> {
    let mut to = create_new(dst, mode)?;
    to.write_all(bytes)?;
    std::os::unix::fs::fchown(&to, None, Some(gid))
}

/// Places `r` under `root` for `uid`/`gid`. Read-only files are hard-linked when the task can read
/// them, else copied (the copy readable by the task's group); writable disks are hard-linked (or,
/// across filesystems, bind-mounted later) and handed to the task's uid if it cannot write them.
pub fn place(
    root: &Path,
    r: &Resource,
    uid: u32,
    gid: u32,
) -> Result<Option<BindMount>, ResourceError> {
    let dst = root.join(r.jailed.strip_prefix("/").unwrap_or(&r.jailed));
    let err = |source| ResourceError::Place {
        src: r.host.clone(),
        dst: dst.clone(),
        source,
    };
    let meta = std::fs::metadata(&r.host).map_err(err)?;
    if !meta.is_file() {
        return Err(ResourceError::NotAFile {
            path: r.host.clone(),
        });
    }
    if r.writable && !accessible(&meta, uid, gid, true) {
        std::os::unix::fs::chown(&r.host, Some(uid), Some(gid)).map_err(err)?;
    }
    let readable = accessible(&meta, uid, gid, false);
    match std::fs::hard_link(&r.host, &dst) {
        Ok(()) if r.writable || readable => Ok(None),
        Ok(()) => {
            // Linked but unreadable for the task: replace the link by a copy the task can read.
            std::fs::remove_file(&dst).map_err(err)?;
            copy_new(&r.host, &dst, 0o440, Some(gid)).map_err(err)?;
            Ok(None)
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            if r.writable {
                create_new(&dst, 0o600).map_err(err)?;
                Ok(Some(BindMount {
                    host: r.host.clone(),
                    target: dst,
                    dir_owner: None,
                }))
            } else {
                copy_new(&r.host, &dst, 0o440, Some(gid)).map_err(err)?;
                Ok(None)
            }
        }
        Err(e) => Err(err(e)),
    }
}

/// Opens the directory `path` (never through a symbolic link) as an `O_PATH` descriptor, checking
/// that it belongs to `uid`, who has rwx on it.
pub fn open_owned_dir(path: &Path, uid: u32) -> Result<File, ResourceError> {
    let dir_err = |source| ResourceError::RunDir {
        path: path.to_owned(),
        source,
    };
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(dir_err)?;
    let meta = dir.metadata().map_err(dir_err)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o700 != 0o700 {
        return Err(ResourceError::RunDirOwner {
            path: path.to_owned(),
            uid,
        });
    }
    Ok(dir)
}

/// Checks the task's run directory (see [`open_owned_dir`]: the jail sees it whole, so it must be
/// the task's) and prepares its mount point `<root>/run/task` (made by root, mode 0700, owned by
/// the task). Returns the mount to make in the jail's mount namespace.
pub fn place_run_dir(
    root: &Path,
    host: &Path,
    uid: u32,
    gid: u32,
) -> Result<BindMount, ResourceError> {
    open_owned_dir(host, uid)?;
    let in_root = root.join(RUN_DIR_IN_JAIL.trim_start_matches('/'));
    let place_err = |source| ResourceError::Place {
        src: host.to_owned(),
        dst: in_root.clone(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(0o755);
    if let Some(parent) = in_root.parent() {
        builder.recursive(true).create(parent).map_err(place_err)?;
    }
    builder
        .recursive(false)
        .mode(0o700)
        .create(&in_root)
        .map_err(place_err)?;
    std::os::unix::fs::chown(&in_root, Some(uid), Some(gid)).map_err(place_err)?;
    Ok(BindMount {
        host: host.to_owned(),
        target: in_root,
        dir_owner: Some(uid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, VsockConfig};

    fn config() -> VmConfig {
        let mut c = VmConfig::with_kernel("/k/vmlinux".into());
        c.initrd = Some("/k/initrd.cpio".into());
        c.vcpus = 2;
        c.disks = vec![
            DiskConfig {
                path: "/d/a.img".into(),
                read_only: true,
                id: Some("img".into()),
            },
            DiskConfig {
                path: "/d/scratch.img".into(),
                read_only: false,
                id: None,
            },
        ];
        c.serial_out = SerialOutput::File("/run/skiff/task-1/console.log".into());
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds: "/run/skiff/task-1/v.sock".into(),
        });
        c
    }

    #[test]
    fn every_path_is_relocated_into_the_jail() {
        let r = relocate(&config()).unwrap();
        let c = &r.config;
        assert_eq!(c.kernel, Path::new("/vmlinux"));
        assert_eq!(c.initrd.as_deref(), Some(Path::new("/initrd")));
        assert_eq!(c.disks[0].path, Path::new("/disk0"));
        assert_eq!(c.disks[1].path, Path::new("/disk1"));
        assert_eq!(c.disks[0].id.as_deref(), Some("img"));
        assert!(c.disks[0].read_only && !c.disks[1].read_only);
        assert_eq!(
            c.serial_out,
            SerialOutput::File("/run/task/console.log".into())
        );
        assert_eq!(c.vsock.as_ref().unwrap().uds, Path::new("/run/task/v.sock"));
        assert_eq!(c.vsock.as_ref().unwrap().cid, 3);
        assert_eq!(
            (c.vcpus, c.cmdline.as_str()),
            (2, config().cmdline.as_str())
        );
        assert_eq!(r.run_dir.as_deref(), Some(Path::new("/run/skiff/task-1")));
        let placed: Vec<(&Path, &Path, bool)> = r
            .files
            .iter()
            .map(|f| (f.host.as_path(), f.jailed.as_path(), f.writable))
            .collect();
        assert_eq!(
            placed,
            [
                (Path::new("/k/vmlinux"), Path::new("/vmlinux"), false),
                (Path::new("/k/initrd.cpio"), Path::new("/initrd"), false),
                (Path::new("/d/a.img"), Path::new("/disk0"), false),
                (Path::new("/d/scratch.img"), Path::new("/disk1"), true),
            ]
        );
    }

    #[test]
    fn the_run_directory_comes_from_either_file_alone() {
        let mut c = config();
        c.serial_out = SerialOutput::Stdout;
        let r = relocate(&c).unwrap();
        assert_eq!(r.run_dir.as_deref(), Some(Path::new("/run/skiff/task-1")));
        assert_eq!(r.config.serial_out, SerialOutput::Stdout);
        c.vsock = None;
        c.serial_out = SerialOutput::File("/var/log/t/console.log".into());
        let r = relocate(&c).unwrap();
        assert_eq!(r.run_dir.as_deref(), Some(Path::new("/var/log/t")));
        c.serial_out = SerialOutput::None;
        assert_eq!(relocate(&c).unwrap().run_dir, None);
    }

    #[test]
    fn a_serial_file_outside_the_vsock_directory_is_refused() {
        let mut c = config();
        c.serial_out = SerialOutput::File("/var/log/console.log".into());
        let err = relocate(&c).unwrap_err();
        assert!(matches!(err, ResourceError::RunDirs { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("/var/log/console.log"), "{text}");
        assert!(text.contains("/run/skiff/task-1/v.sock"), "{text}");
        assert!(text.contains("one directory"), "{text}");
        c.serial_out = SerialOutput::File("/".into());
        assert!(matches!(
            relocate(&c),
            Err(ResourceError::NoFileName { .. })
        ));
    }

    #[test]
    fn access_follows_owner_group_other_bits() {
        let path = std::env::temp_dir().join(format!("skiff-acc-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(accessible(&meta, meta.uid(), 0, true));
        assert!(accessible(&meta, 12345, meta.gid(), false));
        assert!(!accessible(&meta, 12345, meta.gid(), true));
        assert!(!accessible(&meta, 12345, 12345, false));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn new_files_never_follow_a_link_or_replace_a_file() {
        let dir = std::env::temp_dir().join(format!("skiff-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_new(&link, b"x", 0o440, 0).is_err());
        assert!(write_new(&target, b"x", 0o440, 0).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let new = dir.join("new");
        copy_new(&target, &new, 0o440, None).unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"keep");
        assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o777, 0o440);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_run_directory_must_belong_to_the_task() {
        let base = std::env::temp_dir().join(format!("skiff-rundir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (root, run) = (base.join("root"), base.join("run"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let me = std::fs::metadata(&run).unwrap();
        let err = place_run_dir(&root, &run, me.uid() + 1, me.gid()).unwrap_err();
        assert!(matches!(err, ResourceError::RunDirOwner { .. }), "{err}");
        let link = base.join("link");
        std::os::unix::fs::symlink(&run, &link).unwrap();
        let err = place_run_dir(&root, &link, me.uid(), me.gid()).unwrap_err();
        assert!(matches!(err, ResourceError::RunDir { .. }), "{err}");
        let mount = place_run_dir(&root, &run, me.uid(), me.gid()).unwrap();
        assert_eq!(mount.target, root.join("run/task"));
        assert_eq!(mount.dir_owner, Some(me.uid()));
        let target = std::fs::metadata(&mount.target).unwrap();
        assert_eq!(target.mode() & 0o777, 0o700);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
