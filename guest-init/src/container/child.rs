//! What the container's process does between fork and exec (in Rust's `pre_exec`): a mount
//! namespace of its own, `pivot_root` into the container's root, the pseudo-filesystems and
//! device nodes a process expects, the working directory, its resource limits, its capability
//! bounding set, then its user and groups, and `no_new_privs`. (It is PID 1 of a PID namespace
//! of its own: init forks it there, see `super::start`.)
//!
//! guest-init is single-threaded, so allocating here (after fork) is safe. A failing step writes
//! its reason to `reason_fd` (a close-on-exec pipe init reads) and fails the spawn.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use skiff_protocol::privileges::Privileges;

use super::user::Credentials;

/// Where the child binds init's own root, to have a root mount `pivot_root` accepts (the
/// initramfs root itself, rootfs, cannot be pivoted away from).
pub const HOST_VIEW: &str = "/run/skiff/host";

/// Everything the child needs, prepared by init before the fork.
pub struct ChildSetup {
    /// The container's root as init sees it.
    pub root: PathBuf,
    /// The working directory inside the container.
    pub cwd: PathBuf,
    pub credentials: Credentials,
    pub privileges: Privileges,
}

/// A failed step: what it was, and the OS error.
struct StepError(String);

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

fn check(rc: libc::c_int, step: impl FnOnce() -> String) -> Result<(), StepError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(StepError(format!(
            "{}: {}",
            step(),
            std::io::Error::last_os_error()
        )))
    }
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), StepError> {
    crate::mounts::mount(
        source,
        target.to_str().unwrap_or_default(),
        fstype,
        flags,
        data,
    )
    .map_err(|e| StepError(format!("mount {fstype} on {}: {e}", target.display())))
}

fn mkdir_p(path: &Path, mode: u32) -> Result<(), StepError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| StepError(format!("mkdir {}: {e}", path.display())))
}

/// The device nodes of the container's /dev: (name, major, minor).
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// /dev as a container expects it: a tmpfs with the usual nodes and links, /dev/pts (its own
/// devpts instance) and /dev/shm.
fn populate_dev() -> Result<(), StepError> {
    let nosuid = libc::MS_NOSUID | libc::MS_NOEXEC;
    mkdir_p(Path::new("/dev"), 0o755)?;
    mount(
        "tmpfs",
        Path::new("/dev"),
        "tmpfs",
        nosuid,
        "mode=755,size=65536k",
    )?;
    for (name, major, minor) in DEVICES {
        let path = c(&Path::new("/dev").join(name));
        // SAFETY: `path` is a valid NUL-terminated string.
        let rc = unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        check(rc, || format!("mknod /dev/{name}"))?;
        // SAFETY: as above; mknod's mode was reduced by the umask.
        unsafe { libc::chmod(path.as_ptr(), 0o666) };
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, Path::new("/dev").join(link))
            .map_err(|e| StepError(format!("symlink /dev/{link}: {e}")))?;
    }
    mkdir_p(Path::new("/dev/pts"), 0o755)?;
    mount(
        "devpts",
        Path::new("/dev/pts"),
        "devpts",
        nosuid,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    mkdir_p(Path::new("/dev/shm"), 0o1777)?;
    mount(
        "shm",
        Path::new("/dev/shm"),
        "tmpfs",
        nosuid | libc::MS_NODEV,
        "mode=1777,size=65536k",
    )
}

/// `pivot_root` into `root`: first a private mount namespace, then a root mount with a parent
/// (a bind of init's root, chrooted into), then the container's root bound on itself and
/// pivoted to, the old root detached.
fn pivot(root: &Path) -> Result<(), StepError> {
    // SAFETY: unshare has no pointer arguments.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, || {
        "unshare(CLONE_NEWNS)".into()
    })?;
    mount("", Path::new("/"), "", libc::MS_REC | libc::MS_PRIVATE, "")?;
    let host = Path::new(HOST_VIEW);
    mount("/", host, "", libc::MS_BIND | libc::MS_REC, "")?;
    let host_c = c(host);
    // SAFETY: `host_c` is a valid NUL-terminated string.
    check(unsafe { libc::chroot(host_c.as_ptr()) }, || {
        format!("chroot {HOST_VIEW}")
    })?;
    let root_s = root.to_str().unwrap_or_default();
    mount(root_s, root, "", libc::MS_BIND | libc::MS_REC, "")?;
    // Device nodes a layer carries stay inert: the container's devices are the /dev tmpfs
    // mounted over it (as rootless runtimes do).
    mount(
        "",
        root,
        "",
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NODEV,
        "",
    )?;
    let root_c = c(root);
    let dot = c(Path::new("."));
    // SAFETY: valid NUL-terminated strings; pivot_root has no wrapper in libc, so the raw
    // syscall with its two path arguments.
    unsafe {
        check(libc::chdir(root_c.as_ptr()), || {
            format!("chdir {}", root.display())
        })?;
        let rc = libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int;
        check(rc, || "pivot_root".into())?;
        check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH), || {
            "detaching the old root".into()
        })?;
        let slash = c(Path::new("/"));
        check(libc::chdir(slash.as_ptr()), || "chdir /".into())
    }
}

fn mount_pseudo_filesystems() -> Result<(), StepError> {
    let base = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mkdir_p(Path::new("/proc"), 0o555)?;
    mount("proc", Path::new("/proc"), "proc", base, "")?;
    mkdir_p(Path::new("/sys"), 0o555)?;
    mount(
        "sysfs",
        Path::new("/sys"),
        "sysfs",
        base | libc::MS_RDONLY,
        "",
    )?;
    // /tmp is the image's, on the task's disk, as Docker and ECS leave it (no tmpfs over it).
    populate_dev()
}

/// The task's resource limits (raising a hard limit needs `CAP_SYS_RESOURCE`: before the
/// capabilities go).
fn set_limits(privileges: &Privileges) -> Result<(), StepError> {
    for limit in &privileges.ulimits {
        let value = libc::rlimit {
            rlim_cur: limit.soft,
            rlim_max: limit.hard,
        };
        // SAFETY: `value` is a valid rlimit; the resource number was checked by the protocol.
        let rc = unsafe { libc::setrlimit(limit.resource as libc::__rlimit_resource_t, &value) };
        check(rc, || {
            format!("setrlimit {} {}:{}", limit.resource, limit.soft, limit.hard)
        })?;
    }
    Ok(())
}

/// Drops every capability outside the task's set from the bounding set: root in the container
/// gets exactly that set at exec, and no other user can gain more (setuid binaries, file
/// capabilities). Capabilities this kernel does not know end the loop.
fn bound_capabilities(privileges: &Privileges) -> Result<(), StepError> {
    for cap in 0..64u32 {
        if privileges.capabilities & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(StepError(format!(
                "dropping capability {cap} from the bounding set: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    // No ambient capabilities are inherited (init has none; cleared all the same).
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Ok(())
}

fn become_user(creds: &Credentials) -> Result<(), StepError> {
    let groups: Vec<libc::gid_t> = creds.groups.clone();
    // SAFETY: `groups` holds `groups.len()` gids; setgid/setuid take plain integers.
    unsafe {
        check(libc::setgroups(groups.len(), groups.as_ptr()), || {
            format!("setgroups {:?}", creds.groups)
        })?;
        check(libc::setgid(creds.gid), || format!("setgid {}", creds.gid))?;
        check(libc::setuid(creds.uid), || format!("setuid {}", creds.uid))
    }
}

/// Runs in the forked child before exec.
pub fn enter(setup: &ChildSetup, reason_fd: RawFd) -> std::io::Result<()> {
    let result = (|| {
        // The process starts with no signal blocked (init blocks some for its signalfd, and a
        // signal mask survives fork and exec) and without init's I/O port rights.
        // SAFETY: `empty` is initialised by sigemptyset; the calls take valid pointers.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // SAFETY (setsid): no arguments; the child is not a group leader.
            libc::setsid();
        }
        crate::host_port::revoke();
        pivot(&setup.root)?;
        mount_pseudo_filesystems()?;
        if setup
            .cwd
            .components()
            .nth(1)
            .is_some_and(|c| matches!(c.as_os_str().to_str(), Some("proc" | "sys" | "dev")))
        {
            return Err(StepError(format!(
                "working directory {}: not under /proc, /sys or /dev",
                setup.cwd.display()
            )));
        }
        mkdir_p(&setup.cwd, 0o755)?;
        std::env::set_current_dir(&setup.cwd)
            .map_err(|e| StepError(format!("working directory {}: {e}", setup.cwd.display())))?;
        set_limits(&setup.privileges)?;
        bound_capabilities(&setup.privileges)?;
        become_user(&setup.credentials)?;
        if setup.privileges.no_new_privileges {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            check(rc, || "PR_SET_NO_NEW_PRIVS".into())?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(()),
        Err(StepError(reason)) => {
            // SAFETY: `reason` is valid for `reason.len()` bytes; a short or failed write only
            // loses detail, the spawn fails anyway.
            unsafe { libc::write(reason_fd, reason.as_ptr().cast(), reason.len()) };
            Err(std::io::Error::other(reason))
        }
    }
}
