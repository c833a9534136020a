//! Unpacking an image layer (a tar, plain, gzip or zstd) onto the container's root filesystem, inside
//! the guest: the layer is untrusted.
//!
//! - Entry names with `..` or an absolute path are refused (the task fails with the name).
//! - Parent directories are resolved inside the root: a symlink on the way (from this or a lower
//!   layer) is followed as if the root were `/`, so nothing is ever created outside it.
//! - Files are created with `O_NOFOLLOW`; whatever non-directory was at the path is replaced.
//! - Whiteouts: `.wh.NAME` deletes NAME from lower layers; `.wh..wh..opq` empties its directory
//!   of what lower layers put there.
//! - Hard links must name a regular file already unpacked inside the root.
//! - Modes, owners and mtimes are applied (directory mtimes last, as their children change them);
//!   the mode after the owner, as a change of owner clears the set-user-ID and set-group-ID bits.
//! - Extended attributes from PAX `SCHILY.xattr.NAME` records (`security.*` — file capabilities
//!   —, `user.*`, `trusted.*`) are set last, as a change of owner also clears
//!   `security.capability`; one the filesystem refuses (`user.*` on a symlink) is counted.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Symlinks followed while resolving one path.
const MAX_LINK_HOPS: usize = 40;
/// How a PAX record names an extended attribute (as GNU tar, Docker and containerd write it).
const PAX_XATTR: &str = "SCHILY.xattr.";
/// The attribute namespaces applied; others (`system.*`: ACLs) are skipped and counted.
const XATTR_NAMESPACES: [&str; 3] = ["security.", "user.", "trusted."];
/// At most this many attributes are applied to one entry (ext4 holds about a block's worth).
const MAX_XATTRS_PER_ENTRY: usize = 64;

pub use skiff_protocol::image_disk::Compression;

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {0:?} leaves the root (`..` or an absolute path)")]
    Traversal(String),
    #[error("layer entry {0:?}: too many symbolic links on the way")]
    LinkLoop(String),
    #[error(
        "layer entry {entry:?}: hard link to {target:?}, which is not a file unpacked in the root"
    )]
    BadHardLink { entry: String, target: String },
    #[error("layer entry {entry:?}: {source}")]
    Io {
        entry: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the layer is not a valid tar: {0}")]
    Tar(std::io::Error),
}

/// What a layer held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub whiteouts: u64,
    /// Extended attributes set, and those skipped (namespace not applied, refused by the
    /// filesystem, or beyond the per-entry bound).
    pub xattrs: u64,
    pub xattrs_skipped: u64,
}

/// The entry's path as relative components, refusing `..` and absolute paths.
pub fn clean(name: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(UnpackError::Traversal(name.display().to_string())),
        }
    }
    Ok(out)
}

/// Resolves `rel`'s parent inside `root`, following symlinks as if `root` were `/`, and returns
/// the host path of `rel` (its last component is not followed).
pub fn resolve(root: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let name = || rel.display().to_string();
    let Some(last) = rel.file_name() else {
        return Ok(root.to_owned());
    };
    let mut pending: Vec<std::ffi::OsString> = rel
        .parent()
        .map(|p| p.components().map(|c| c.as_os_str().to_owned()).collect())
        .unwrap_or_default();
    pending.reverse();
    let mut current = root.to_owned();
    let mut depth = 0usize;
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.to_str() {
            Some("." | "") => continue,
            Some("..") => {
                if depth > 0 {
                    current.pop();
                    depth -= 1;
                }
                continue;
            }
            _ => {}
        }
        let next = current.join(&part);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(UnpackError::LinkLoop(name()));
                }
                let target = fs::read_link(&next).map_err(|source| UnpackError::Io {
                    entry: name(),
                    source,
                })?;
                if target.is_absolute() {
                    current = root.to_owned();
                    depth = 0;
                }
                let parts: Vec<_> = target
                    .components()
                    .filter(|c| !matches!(c, Component::RootDir))
                    .map(|c| c.as_os_str().to_owned())
                    .collect();
                pending.extend(parts.into_iter().rev());
            }
            _ => {
                current = next;
                depth += 1;
            }
        }
    }
    Ok(current.join(last))
}

fn io_err(entry: &Path) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        entry: entry.display().to_string(),
        source,
    }
}

/// Removes whatever is at `path` (a directory with its contents), if anything.
pub fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the directories of `path` that do not exist (mode 0755).
pub fn ensure_dir(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            fs::remove_file(path)?;
            fs::create_dir(path)
        }
        Err(_) => fs::create_dir_all(path),
    }
}

fn lchown(path: &Path, uid: u64, gid: u64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let (uid, gid) = (
        u32::try_from(uid).unwrap_or(u32::MAX),
        u32::try_from(gid).unwrap_or(u32::MAX),
    );
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let t = libc::timespec {
        tv_sec: libc::time_t::try_from(mtime).unwrap_or(0),
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a valid path and `times` two timespecs, as utimensat expects.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The extended attributes a layer entry's PAX records carry, by name (skipped ones counted).
fn xattrs_of<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    stats: &mut UnpackStats,
) -> Result<Vec<(CString, Vec<u8>)>, UnpackError> {
    let mut xattrs = Vec::new();
    let Some(records) = entry.pax_extensions().map_err(UnpackError::Tar)? else {
        return Ok(xattrs);
    };
    for record in records {
        let record = record.map_err(UnpackError::Tar)?;
        let Some(name) = record.key_bytes().strip_prefix(PAX_XATTR.as_bytes()) else {
            continue;
        };
        let applied = XATTR_NAMESPACES
            .iter()
            .any(|ns| name.starts_with(ns.as_bytes()));
        match CString::new(name) {
            Ok(name) if applied && xattrs.len() < MAX_XATTRS_PER_ENTRY => {
                xattrs.push((name, record.value_bytes().to_vec()))
            }
            _ => stats.xattrs_skipped += 1,
        }
    }
    Ok(xattrs)
}

/// Sets `xattrs` on `path` (not following a symlink); what the filesystem refuses as unsupported
/// or not permitted is counted as skipped.
fn set_xattrs(
    path: &Path,
    xattrs: &[(CString, Vec<u8>)],
    stats: &mut UnpackStats,
) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    for (name, value) in xattrs {
        // SAFETY: `c` and `name` are NUL-terminated; `value` is valid for `value.len()` bytes.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc == 0 {
            stats.xattrs += 1;
            continue;
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::ENOTSUP | libc::EPERM) => stats.xattrs_skipped += 1,
            _ => {
                return Err(std::io::Error::new(
                    error.kind(),
                    format!("extended attribute {}: {error}", name.to_string_lossy()),
                ))
            }
        }
    }
    Ok(())
}

/// A symlink made with the umask off: ext4 applies the process's umask to a new symlink's mode
/// (which cannot be changed afterwards), and images expect `lrwxrwxrwx` as Docker gives them.
/// The mask is process-wide: guest-init has no other thread creating files meanwhile.
fn symlink_unmasked(target: &Path, path: &Path) -> std::io::Result<()> {
    // SAFETY: umask only swaps the process's file-creation mask.
    let before = unsafe { libc::umask(0) };
    let made = std::os::unix::fs::symlink(target, path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(before) };
    made
}

/// Unpacks one layer onto `root`. `chown` is false when not running as root (host unit tests).
pub fn unpack_layer(
    root: &Path,
    layer: impl Read,
    compression: Compression,
    chown: bool,
) -> Result<UnpackStats, UnpackError> {
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(layer),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(layer)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(layer)
                .map_err(|e| UnpackError::Tar(std::io::Error::other(e.to_string())))?,
        ),
    };
    let mut archive = tar::Archive::new(reader);
    let mut stats = UnpackStats::default();
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        let raw = entry.path().map_err(UnpackError::Tar)?.into_owned();
        let rel = clean(&raw)?;
        let Some(file_name) = rel.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue; // the root itself
        };
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let mtime = header.mtime().unwrap_or(0);
        let xattrs = xattrs_of(&mut entry, &mut stats)?;

        // Whiteouts.
        if file_name == OPAQUE {
            let dir = resolve(root, &rel)?
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| root.to_owned());
            let parent_rel = rel.parent().unwrap_or(Path::new("")).to_owned();
            if let Ok(children) = fs::read_dir(&dir) {
                for child in children.flatten() {
                    if !this_layer.contains(&parent_rel.join(child.file_name())) {
                        remove_any(&child.path()).map_err(io_err(&rel))?;
                    }
                }
            }
            stats.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let target = rel.with_file_name(hidden);
            let path = resolve(root, &clean(&target)?)?;
            remove_any(&path).map_err(io_err(&rel))?;
            stats.whiteouts += 1;
            continue;
        }

        let path = resolve(root, &rel)?;
        if let Some(parent) = path.parent() {
            ensure_dir(parent).map_err(io_err(&rel))?;
        }
        let kind = header.entry_type();
        if kind.is_dir() {
            ensure_dir(&path).map_err(io_err(&rel))?;
            dir_times.push((path.clone(), mtime));
        } else {
            remove_any(&path).map_err(io_err(&rel))?;
            if kind.is_file() {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err(&rel))?;
                std::io::copy(&mut entry, &mut file).map_err(io_err(&rel))?;
            } else if kind.is_symlink() {
                let target = header
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| UnpackError::Traversal(rel.display().to_string()))?;
                symlink_unmasked(&target, &path).map_err(io_err(&rel))?;
            } else if kind.is_hard_link() {
                let bad = |t: &Path| UnpackError::BadHardLink {
                    entry: rel.display().to_string(),
                    target: t.display().to_string(),
                };
                let target = header
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| bad(Path::new("")))?
                    .into_owned();
                let source = resolve(root, &clean(&target)?)?;
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => return Err(bad(&target)),
                }
                fs::hard_link(&source, &path).map_err(io_err(&rel))?;
            } else if kind.is_fifo() || kind.is_character_special() || kind.is_block_special() {
                let c = CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| UnpackError::Traversal(rel.display().to_string()))?;
                let type_bits = if kind.is_fifo() {
                    libc::S_IFIFO
                } else if kind.is_character_special() {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                let dev = libc::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                // SAFETY: `c` is a valid path; mknod has no other memory arguments.
                if unsafe { libc::mknod(c.as_ptr(), type_bits | mode, dev) } != 0 {
                    return Err(io_err(&rel)(std::io::Error::last_os_error()));
                }
            } else {
                continue; // pax headers and the like carry no file
            }
            // Symlinks too: utimensat with AT_SYMLINK_NOFOLLOW sets the link's own times.
            if !kind.is_hard_link() {
                set_mtime(&path, mtime).map_err(io_err(&rel))?;
            }
        }
        if chown && !kind.is_hard_link() {
            lchown(&path, uid, gid).map_err(io_err(&rel))?;
        }
        // Only now: lchown clears S_ISUID and S_ISGID of what is not a directory. (A symlink's
        // mode means nothing; a hard link shares its target's.) Also undoes mknod's umask.
        if !kind.is_symlink() && !kind.is_hard_link() {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&rel))?;
        }
        // Last: a change of owner clears security.capability. A hard link has its target's.
        if !kind.is_hard_link() {
            set_xattrs(&path, &xattrs, &mut stats).map_err(io_err(&rel))?;
        }
        this_layer.insert(rel);
        stats.entries += 1;
    }
    for (dir, mtime) in dir_times.iter().rev() {
        set_mtime(dir, *mtime).map_err(io_err(dir))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8], u32),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    fn tar(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_000_000);
            match e {
                E::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_cksum();
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
                E::File(p, data, mode) => {
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append_data(&mut h, p, *data).unwrap();
                }
                E::Link(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
                E::Hard(p, target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// A raw tar header naming `name` (the tar crate itself refuses to write `..`).
    fn raw_entry(name: &str) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_size(1);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&[b'x'; 512]);
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn root(name: &str) -> PathBuf {
        let r = std::env::temp_dir().join(format!("skiff-unpack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&r);
        fs::create_dir_all(&r).unwrap();
        r
    }

    fn unpack(root: &Path, data: &[u8]) -> Result<UnpackStats, UnpackError> {
        unpack_layer(root, data, Compression::None, false)
    }

    #[test]
    fn layers_stack_with_whiteouts_opaque_dirs_links_and_modes() {
        let r = root("stack");
        unpack(
            &r,
            &tar(&[
                E::Dir("etc"),
                E::File("etc/keep", b"keep", 0o644),
                E::File("etc/gone", b"gone", 0o644),
                E::Dir("opt"),
                E::File("opt/old", b"old", 0o644),
                E::File("bin/tool", b"#!tool", 0o755),
                E::Hard("bin/tool2", "bin/tool"),
                E::Link("bin/sh", "tool"),
                E::Dir("usr"),
                E::File("usr/x", b"x", 0o644),
            ]),
        )
        .unwrap();
        let stats = unpack(
            &r,
            &tar(&[
                E::File("etc/.wh.gone", b"", 0o644),
                E::File("opt/new", b"new", 0o600),
                E::File("opt/.wh..wh..opq", b"", 0o644),
            ]),
        )
        .unwrap();
        assert_eq!(stats.whiteouts, 2);
        assert_eq!(fs::read(r.join("etc/keep")).unwrap(), b"keep");
        assert!(!r.join("etc/gone").exists(), "whited out");
        assert!(
            !r.join("opt/old").exists(),
            "opaque dir hides the lower layer"
        );
        assert_eq!(
            fs::read(r.join("opt/new")).unwrap(),
            b"new",
            "this layer's entry stays"
        );
        let tool = fs::metadata(r.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o777, 0o755);
        assert_eq!(tool.mtime(), 1_000_000);
        assert_eq!(
            tool.ino(),
            fs::metadata(r.join("bin/tool2")).unwrap().ino(),
            "hard link"
        );
        assert_eq!(fs::read_link(r.join("bin/sh")).unwrap(), Path::new("tool"));
        assert_eq!(
            fs::metadata(r.join("usr")).unwrap().mtime(),
            1_000_000,
            "directory mtimes survive their children being unpacked"
        );
        fs::remove_dir_all(r).unwrap();
    }

    #[test]
    fn traversal_and_escaping_links_touch_nothing_outside_the_root() {
        let r = root("escape");
        let outside = r.with_extension("outside");
        let _ = fs::remove_dir_all(&outside);
        fs::create_dir_all(&outside).unwrap();
        let jail = r.join("root");
        fs::create_dir_all(&jail).unwrap();
        for name in ["../evil", "a/../../evil"] {
            let err = unpack(&jail, &raw_entry(name)).unwrap_err();
            assert!(matches!(err, UnpackError::Traversal(_)), "{name}: {err}");
            assert!(err.to_string().contains("leaves the root"));
        }
        // A symlink to the outside, then a file "through" it: lands inside the root.
        unpack(
            &jail,
            &tar(&[
                E::Link("out", outside.to_str().unwrap()),
                E::Link("up", "../../../.."),
                E::File("out/planted", b"x", 0o644),
                E::File("up/planted2", b"x", 0o644),
            ]),
        )
        .unwrap();
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing outside"
        );
        assert!(jail
            .join(outside.strip_prefix("/").unwrap())
            .join("planted")
            .is_file());
        assert!(jail.join("planted2").is_file(), "`..` stops at the root");
        // A hard link to a file outside the root is refused.
        fs::write(outside.join("secret"), b"s").unwrap();
        let err = unpack(&jail, &tar(&[E::Hard("stolen", "out/secret")])).unwrap_err();
        assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
        fs::remove_dir_all(&r).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn gzip_and_zstd_layers_and_garbage() {
        use std::io::Write;
        let r = root("gzip");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar(&[E::File("hello", b"world", 0o644)]))
            .unwrap();
        unpack_layer(&r, &gz.finish().unwrap()[..], Compression::Gzip, false).unwrap();
        assert_eq!(fs::read(r.join("hello")).unwrap(), b"world");
        let err = unpack_layer(&r, &b"not gzip at all"[..], Compression::Gzip, false).unwrap_err();
        assert!(matches!(err, UnpackError::Tar(_)), "{err}");
        let zst = ruzstd::encoding::compress_to_vec(
            &tar(&[E::File("zhello", b"zworld", 0o644)])[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        unpack_layer(&r, &zst[..], Compression::Zstd, false).unwrap();
        assert_eq!(fs::read(r.join("zhello")).unwrap(), b"zworld");
        let err = unpack_layer(&r, &b"not zstd at all"[..], Compression::Zstd, false).unwrap_err();
        assert!(matches!(err, UnpackError::Tar(_)), "{err}");
        fs::remove_dir_all(r).unwrap();
    }

    #[test]
    fn set_id_bits_survive_the_change_of_owner() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let r = root("setid");
        let mut b = tar::Builder::new(Vec::new());
        let entries: [(&str, u32, u64, tar::EntryType); 4] = [
            ("bin/su", 0o4755, 0, tar::EntryType::Regular),
            ("bin/wall", 0o2755, 1000, tar::EntryType::Regular),
            ("bin/both", 0o6711, 1000, tar::EntryType::Regular),
            ("shared", 0o2775, 1000, tar::EntryType::Directory),
        ];
        for (name, mode, owner, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(owner);
            h.set_gid(owner);
            h.set_mtime(1_000_000);
            h.set_size(if kind.is_dir() { 0 } else { 2 });
            h.set_cksum();
            let data: &[u8] = if kind.is_dir() { b"" } else { b"#!" };
            b.append_data(&mut h, name, data).unwrap();
        }
        let layer = b.into_inner().unwrap();
        unpack_layer(&r, &layer[..], Compression::None, true).unwrap();
        for (name, mode, owner, _) in entries {
            let m = fs::symlink_metadata(r.join(name)).unwrap();
            assert_eq!(
                (m.mode() & 0o7777, m.uid(), m.gid()),
                (mode, owner as u32, owner as u32),
                "{name}"
            );
        }
        fs::remove_dir_all(r).unwrap();
    }

    #[test]
    fn symlinks_keep_their_mtime_and_full_mode() {
        let r = root("symlinks");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_mtime(1_234_567);
        h.set_size(0);
        b.append_link(&mut h, "link", "target/elsewhere").unwrap();
        let layer = b.into_inner().unwrap();
        unpack_layer(&r, &layer[..], Compression::None, false).unwrap();
        let m = fs::symlink_metadata(r.join("link")).unwrap();
        assert!(m.file_type().is_symlink());
        assert_eq!(m.mtime(), 1_234_567, "the link's own mtime");
        assert_eq!(m.mode() & 0o777, 0o777, "no umask on the link");
        fs::remove_dir_all(r).unwrap();
    }

    #[test]
    fn extended_attributes_from_pax_records_are_set_and_the_rest_counted() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(2);
        h.set_cksum();
        b.append_pax_extensions([
            ("SCHILY.xattr.user.skiff", b"hello".as_slice()),
            (
                "SCHILY.xattr.system.posix_acl_access",
                b"\x02\0\0\0".as_slice(),
            ),
            ("mtime", b"1000000".as_slice()),
        ])
        .unwrap();
        b.append_data(&mut h, "bin/tool", &b"#!"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_pax_extensions([("SCHILY.xattr.user.on-a-link", b"x".as_slice())])
            .unwrap();
        b.append_link(&mut h, "bin/link", "tool").unwrap();
        let r = root("xattrs");
        let stats = unpack(&r, &b.into_inner().unwrap()).unwrap();
        assert_eq!(stats.entries, 2);
        // user.* on a symlink is refused by the kernel; system.* is not applied.
        assert_eq!((stats.xattrs, stats.xattrs_skipped), (1, 2), "{stats:?}");
        let path = CString::new(r.join("bin/tool").as_os_str().as_bytes()).unwrap();
        let mut value = [0u8; 16];
        // SAFETY: valid NUL-terminated strings and a buffer of `value.len()` bytes.
        let len = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                c"user.skiff".as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert_eq!(&value[..usize::try_from(len).unwrap()], b"hello");
        fs::remove_dir_all(r).unwrap();
    }
}
