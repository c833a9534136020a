//! The pseudo-filesystems every guest needs.

use std::ffi::CString;

use crate::settings::MountSpec;

/// Errors mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount {device} on {path} ({fstype}): {source}")]
    Disk {
        device: String,
        path: String,
        fstype: String,
        #[source]
        source: std::io::Error,
    },
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

/// A C string; a string with a NUL (impossible from the kernel command line) becomes empty.
fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// Mounts a disk as `spec` says, creating the mount point.
pub fn mount_disk(spec: &MountSpec) -> Result<(), MountError> {
    let err = |source| MountError::Disk {
        device: spec.device.clone(),
        path: spec.path.clone(),
        fstype: spec.fstype.clone(),
        source,
    };
    std::fs::create_dir_all(&spec.path).map_err(err)?;
    let flags = if spec.read_only { libc::MS_RDONLY } else { 0 } | libc::MS_NOSUID | libc::MS_NODEV;
    mount(&spec.device, &spec.path, &spec.fstype, flags, "").map_err(err)
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    options: &str,
) -> std::io::Result<()> {
    let (src, tgt, fst, opts) = (cstr(source), cstr(target), cstr(fstype), cstr(options));
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
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Mounts /proc, /sys, /dev (devtmpfs) and /tmp.
pub fn mount_pseudo_filesystems() -> Result<(), MountError> {
    for (fstype, target, flags, options) in MOUNTS {
        std::fs::create_dir_all(target)
            .map_err(|source| MountError::MountPoint { target, source })?;
        mount(fstype, target, fstype, flags, options).map_err(|source| MountError::Mount {
            fstype,
            target,
            source,
        })?;
    }
    Ok(())
}

/// Unmounts the disks mounted from `specs`, last first, so their filesystems are clean when the
/// VM ends. Failures are reported and skipped: the caller syncs anyway.
pub fn unmount_disks(specs: &[MountSpec]) {
    for spec in specs.iter().rev() {
        let target = cstr(&spec.path);
        // SAFETY: `target` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            eprintln!(
                "skiff-init: cannot unmount {}: {}",
                spec.path,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// umount2(2) of `target`, lazily (`MNT_DETACH`) if it is busy.
pub fn unmount(target: &str) -> std::io::Result<()> {
    let t = cstr(target);
    // SAFETY: `t` is a valid NUL-terminated string that outlives the calls.
    if unsafe { libc::umount2(t.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error())
}
