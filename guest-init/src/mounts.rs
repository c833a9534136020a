//! The pseudo-filesystems every guest needs.

use std::ffi::CString;

/// Errors mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {target}: {source}")]
    MountPoint {
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// (filesystem type, mount point, flags, options)
const MOUNTS: [(&str, &str, libc::c_ulong, &str); 4] = [
    ("proc", "/proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", NOSUID_NODEV_NOEXEC, ""),
    ("devtmpfs", "/dev", libc::MS_NOSUID, "mode=0755"),
    (
        "tmpfs",
        "/tmp",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
];

fn cstr(s: &str) -> CString {
    // The strings are the constants above, none of which contains a NUL.
    CString::new(s).unwrap_or_default()
}

/// Mounts /proc, /sys, /dev (devtmpfs) and /tmp.
pub fn mount_pseudo_filesystems() -> Result<(), MountError> {
    for (fstype, target, flags, options) in MOUNTS {
        std::fs::create_dir_all(target)
            .map_err(|source| MountError::MountPoint { target, source })?;
        let (src, tgt, fst, opts) = (cstr(fstype), cstr(target), cstr(fstype), cstr(options));
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fst.as_ptr(),
                flags,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(MountError::Mount {
                fstype,
                target,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
