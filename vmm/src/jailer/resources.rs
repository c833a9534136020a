//! The files the VMM will open (kernel, initrd, disks), found in its arguments, placed inside the
//! jail (hard link; a copy for read-only files on another filesystem; a bind mount for writable
//! disks on another filesystem), and the arguments rewritten to their paths inside the jail.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors placing resources.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("VMM argument {0} needs a value")]
    MissingValue(String),
    #[error("VMM argument {0} is not supported under the jailer (give kernel, initrd and disks as flags)")]
    Unsupported(String),
    #[error("VMM argument --disk {0:?} has no path=")]
    DiskPath(String),
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

/// What is left to do inside the jail's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub host: PathBuf,
    /// Path of the (empty) target file under the jail root, on the host.
    pub target: PathBuf,
}

/// Rewrites the VMM arguments so every file lies inside the jail; returns the new arguments and
/// the files to place.
pub fn rewrite_vmm_args(args: &[String]) -> Result<(Vec<String>, Vec<Resource>), ResourceError> {
    let mut out = Vec::with_capacity(args.len());
    let mut resources = Vec::new();
    let mut disks = 0;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let takes_file = matches!(flag, "--kernel" | "--initrd" | "--disk");
        if flag == "--config" {
            return Err(ResourceError::Unsupported(flag.to_owned()));
        }
        if !takes_file {
            out.push(arg.clone());
            i += 1;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| ResourceError::MissingValue(flag.to_owned()))?
            }
        };
        let rewritten = match flag {
            "--kernel" | "--initrd" => {
                let jailed = PathBuf::from(if flag == "--kernel" {
                    "/vmlinux"
                } else {
                    "/initrd"
                });
                resources.push(Resource {
                    host: PathBuf::from(&value),
                    jailed: jailed.clone(),
                    writable: false,
                });
                jailed.display().to_string()
            }
            _ => {
                let jailed = PathBuf::from(format!("/disk{disks}"));
                disks += 1;
                let mut host = None;
                let mut writable = true;
                let parts: Vec<String> = value
                    .split(',')
                    .map(|part| match part.split_once('=') {
                        Some(("path", p)) => {
                            host = Some(PathBuf::from(p));
                            format!("path={}", jailed.display())
                        }
                        Some(("ro", v)) => {
                            writable = v != "true";
                            part.to_owned()
                        }
                        _ => part.to_owned(),
                    })
                    .collect();
                let host = host.ok_or_else(|| ResourceError::DiskPath(value.clone()))?;
                resources.push(Resource {
                    host,
                    jailed,
                    writable,
                });
                parts.join(",")
            }
        };
        out.push(flag.to_owned());
        out.push(rewritten);
        i += 1;
    }
    Ok((out, resources))
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

/// Places `r` under `root` for `uid`/`gid`. Read-only files are hard-linked when the task can read
/// them, else copied (and the copy given to the task); writable disks are hard-linked (or, across
/// filesystems, bind-mounted later) and handed to the task's uid if it cannot write them.
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
            // Linked but unreadable for the task: replace the link by a copy the task owns.
            std::fs::remove_file(&dst).map_err(err)?;
            copy_for(&r.host, &dst, uid, gid).map_err(err)?;
            Ok(None)
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            if r.writable {
                std::fs::File::create(&dst).map_err(err)?;
                Ok(Some(BindMount {
                    host: r.host.clone(),
                    target: dst,
                }))
            } else {
                copy_for(&r.host, &dst, uid, gid).map_err(err)?;
                Ok(None)
            }
        }
        Err(e) => Err(err(e)),
    }
}

fn copy_for(src: &Path, dst: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::fs::copy(src, dst)?;
    std::os::unix::fs::chown(dst, Some(uid), Some(gid))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o400))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kernel_initrd_and_disks_are_rewritten_into_the_jail() {
        let (args, res) = rewrite_vmm_args(&strings(&[
            "--kernel",
            "/k/vmlinux",
            "--initrd=/k/initrd.cpio",
            "--vcpus",
            "2",
            "--disk",
            "path=/d/a.img,ro=true,id=img",
            "--disk",
            "id=s,path=/d/scratch.img",
        ]))
        .unwrap();
        assert_eq!(
            args,
            strings(&[
                "--kernel",
                "/vmlinux",
                "--initrd",
                "/initrd",
                "--vcpus",
                "2",
                "--disk",
                "path=/disk0,ro=true,id=img",
                "--disk",
                "id=s,path=/disk1",
            ])
        );
        assert_eq!(res.len(), 4);
        assert_eq!(
            (res[2].host.as_path(), res[2].writable),
            (Path::new("/d/a.img"), false)
        );
        assert_eq!(
            (res[3].jailed.as_path(), res[3].writable),
            (Path::new("/disk1"), true)
        );
    }

    #[test]
    fn unsupported_or_incomplete_arguments_are_refused() {
        assert!(matches!(
            rewrite_vmm_args(&strings(&["--config", "x.json"])),
            Err(ResourceError::Unsupported(_))
        ));
        assert!(matches!(
            rewrite_vmm_args(&strings(&["--kernel"])),
            Err(ResourceError::MissingValue(_))
        ));
        assert!(matches!(
            rewrite_vmm_args(&strings(&["--disk", "ro=true"])),
            Err(ResourceError::DiskPath(_))
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
}
