//! Inside the new namespaces: make the jail directory the root (pivot_root, old root detached),
//! create the only device nodes the VMM needs, then — in the child — drop to the task's uid/gid
//! with no supplementary groups and no new privileges, arm the parent-death signal, and exec the
//! VMM.

use std::ffi::{CString, NulError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::resources::{open_owned_dir, BindMount, ResourceError};

/// Errors entering the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{what} failed: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("path contains a NUL byte: {0}")]
    Nul(#[from] NulError),
    #[error("the jailer exited before the VMM started")]
    ParentGone,
    #[error(transparent)]
    Resource(#[from] ResourceError),
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<(), JailError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(JailError::Sys {
            what: what(),
            source: std::io::Error::last_os_error(),
        })
    }
}

fn cstr(p: &Path) -> Result<CString, NulError> {
    CString::new(p.as_os_str().as_encoded_bytes())
}

/// mount(2) with no filesystem type and no data.
fn mount(src: Option<&Path>, target: &Path, flags: libc::c_ulong) -> Result<(), JailError> {
    let src_c = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    // SAFETY: the strings are valid and NUL-terminated for the call; null type and data are
    // allowed for bind mounts and propagation changes.
    let rc = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(rc, || {
        format!("mount {} (flags {flags:#x})", target.display())
    })
}

/// Device nodes the VMM may open: (path, major, minor).
pub const DEVICES: [(&str, u32, u32); 3] = [
    ("/dev/kvm", 10, 232),
    ("/dev/net/tun", 10, 200),
    ("/dev/urandom", 1, 9),
];

/// Makes `root` this mount namespace's root: mounts become private (nothing propagates back to
/// the host), writable disks from other filesystems are bind-mounted in, `root` is pivoted to and
/// the old root detached (on an initramfs host, where pivot_root is impossible, `root` is moved
/// over `/` and chrooted into instead). Then creates [`DEVICES`] owned by `uid`/`gid` and names the UTS
/// namespace after `hostname`.
pub fn enter_root(
    root: &Path,
    binds: &[BindMount],
    uid: u32,
    gid: u32,
    hostname: &str,
) -> Result<(), JailError> {
    mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?;
    for b in binds {
        match b.dir_owner {
            None => mount(Some(&b.host), &b.target, libc::MS_BIND)?,
            Some(uid) => {
                // Opened (and checked) in this mount namespace: a bind mount's source must be
                // one of its mounts. Mounted through the descriptor: what was checked is mounted.
                let dir = open_owned_dir(&b.host, uid)?;
                let source = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                mount(Some(&source), &b.target, libc::MS_BIND)?;
            }
        }
    }
    // pivot_root needs the new root to be a mount point.
    mount(Some(root), root, libc::MS_BIND | libc::MS_REC)?;
    std::env::set_current_dir(root).map_err(|source| JailError::Sys {
        what: format!("chdir {}", root.display()),
        source,
    })?;
    std::fs::create_dir("old_root").map_err(|source| JailError::Sys {
        what: "mkdir old_root".into(),
        source,
    })?;
    let (dot, old) = (CString::new(".")?, CString::new("old_root")?);
    // SAFETY: two valid NUL-terminated paths; pivot_root has no other memory effects.
    let rc =
        unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr()) } as libc::c_int;
    if rc == 0 {
        std::env::set_current_dir("/").map_err(|source| JailError::Sys {
            what: "chdir /".into(),
            source,
        })?;
        let old_abs = CString::new("/old_root")?;
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::umount2(old_abs.as_ptr(), libc::MNT_DETACH) };
        check(rc, || "detach the old root".into())?;
        std::fs::remove_dir("/old_root").map_err(|source| JailError::Sys {
            what: "rmdir /old_root".into(),
            source,
        })?;
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // The host's root is the initramfs rootfs, which cannot be pivoted away from. Do what
        // switch_root does: move the jail over / and chroot into it. The VMM cannot climb out of
        // the chroot: it runs without capabilities (unprivileged uid, no new privileges).
        std::fs::remove_dir("old_root").map_err(|source| JailError::Sys {
            what: "rmdir old_root".into(),
            source,
        })?;
        mount(Some(Path::new(".")), Path::new("/"), libc::MS_MOVE)?;
        // SAFETY: a valid NUL-terminated path.
        check(unsafe { libc::chroot(dot.as_ptr()) }, || "chroot".into())?;
        std::env::set_current_dir("/").map_err(|source| JailError::Sys {
            what: "chdir /".into(),
            source,
        })?;
    } else {
        check(rc, || "pivot_root".into())?;
    }

    for (path, major, minor) in DEVICES {
        let path = Path::new(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| JailError::Sys {
                what: format!("mkdir {}", dir.display()),
                source,
            })?;
        }
        let c = cstr(path)?;
        // SAFETY: a valid NUL-terminated path; makedev is pure arithmetic.
        let rc = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(major, minor),
            )
        };
        check(rc, || format!("mknod {}", path.display()))?;
        // SAFETY: a valid NUL-terminated path.
        check(unsafe { libc::chown(c.as_ptr(), uid, gid) }, || {
            format!("chown {}", path.display())
        })?;
    }
    // SAFETY: `hostname` points to `len` valid bytes.
    let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    check(rc, || "sethostname".into())
}

/// A pipe that tells a forked child whether its parent is still alive: the parent keeps the
/// write end open for as long as it lives and never writes, so the read end reports a hang-up
/// once the parent is gone. Both ends are close-on-exec.
pub struct ParentWatch {
    read: OwnedFd,
    write: OwnedFd,
}

impl ParentWatch {
    pub fn new() -> std::io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self { read, write })
    }

    /// For the child: the read end (the child's copy of the write end is closed).
    pub fn into_child_end(self) -> OwnedFd {
        self.read
    }

    /// For the parent: the write end, to keep open for its whole life.
    pub fn into_parent_end(self) -> OwnedFd {
        self.write
    }
}

/// Whether the other side of a [`ParentWatch`] read end is gone.
fn parent_gone(read_end: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout only samples its state.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n != 0 && pfd.revents & (libc::POLLHUP | libc::POLLIN | libc::POLLERR) != 0
}

/// In the child: become `uid`/`gid` with no supplementary groups and no new privileges, arm
/// `PR_SET_PDEATHSIG` (SIGKILL) when `parent` watches the parent, and exec `program` with `args`
/// and an empty environment. Returns only on failure.
///
/// The death signal is armed after the uid/gid change (changing credentials clears it) and
/// follows the thread that forked this process; the parent check afterwards closes the window in
/// which the parent died before it was armed.
pub fn drop_privileges_and_exec(
    uid: u32,
    gid: u32,
    program: &Path,
    args: &[String],
    parent: Option<OwnedFd>,
) -> JailError {
    let fail = |what: &str| JailError::Sys {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: setgroups with a zero count reads no memory.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return fail("setgroups");
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return fail("setresgid");
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return fail("setresuid");
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return fail("PR_SET_NO_NEW_PRIVS");
    }
    if let Some(parent) = parent {
        // SAFETY: plain integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
            return fail("PR_SET_PDEATHSIG");
        }
        if parent_gone(&parent) {
            return JailError::ParentGone;
        }
    }
    let program_c = match cstr(program) {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let mut argv_owned = vec![program_c.clone()];
    for a in args {
        match CString::new(a.as_bytes()) {
            Ok(c) => argv_owned.push(c),
            Err(e) => return e.into(),
        }
    }
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(program_c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    fail("execve")
}
