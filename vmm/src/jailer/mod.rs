//! `skiff-jailer`: starts one `skiff-vmm` in an empty, unprivileged, resource-capped jail.
//!
//! In order: validate the id and every path; close inherited file descriptors; clear the
//! environment; create `<base>/skiff-vmm/<id>/root` (refusing an existing jail); copy the VMM
//! binary in and place the files it opens; create the task's cgroup (v1 or v2) with its limits and
//! join it; set rlimits; join the network namespace; unshare mount, PID, IPC and UTS namespaces;
//! pivot into the jail and create only `/dev/kvm`, `/dev/net/tun` and `/dev/urandom`; fork (the
//! child is PID 1 of the new PID namespace), drop to the task's uid/gid with no supplementary
//! groups and `PR_SET_NO_NEW_PRIVS`, and exec the VMM. The parent waits and reports how the VMM
//! ended (or, with `--daemonize`, prints its pid and leaves). [`cleanup`] removes a finished jail.

pub mod cgroup;
pub mod jail;
pub mod resources;

use std::path::{Path, PathBuf};

use cgroup::{CgroupError, Setting};
use jail::JailError;
use resources::ResourceError;

/// Where jails go unless `--chroot-base` says otherwise.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// Name of the VMM binary inside the jail.
const VMM_IN_JAIL: &str = "/skiff-vmm";

/// Errors of the jailer.
#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error("invalid id {0:?}: use 1 to 64 letters, digits and '-'")]
    Id(String),
    #[error("exec file {0} does not exist or is not a regular file")]
    ExecFile(PathBuf),
    #[error("chroot base {0} must be an absolute path without '..'")]
    ChrootBase(PathBuf),
    #[error("network namespace {0} does not exist")]
    Netns(PathBuf),
    #[error("refusing to run the VMM as root (uid and gid must not be 0)")]
    Root,
    #[error("a jail for id {id} already exists at {path}")]
    Exists { id: String, path: PathBuf },
    #[error("invalid --resource-limit {0:?}: expected no-file=N or fsize=N")]
    ResourceLimit(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Jail(#[from] JailError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailerError {
    let what = what.into();
    move |source| JailerError::Io { what, source }
}

/// An rlimit to set on the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceLimit {
    /// Most open files (`RLIMIT_NOFILE`).
    NoFile(u64),
    /// Largest file the VMM may create (`RLIMIT_FSIZE`), in bytes.
    FileSize(u64),
}

impl std::str::FromStr for ResourceLimit {
    type Err = JailerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || JailerError::ResourceLimit(s.to_owned());
        let (key, value) = s.split_once('=').ok_or_else(bad)?;
        let n: u64 = value.parse().map_err(|_| bad())?;
        match key {
            "no-file" => Ok(ResourceLimit::NoFile(n)),
            "fsize" => Ok(ResourceLimit::FileSize(n)),
            _ => Err(bad()),
        }
    }
}

/// Everything the jailer is told.
#[derive(Debug, Clone)]
pub struct JailConfig {
    pub id: String,
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub netns: Option<PathBuf>,
    pub cgroups: Vec<Setting>,
    pub rlimits: Vec<ResourceLimit>,
    pub daemonize: bool,
    /// Arguments for the VMM; file paths are rewritten to the jail's.
    pub vmm_args: Vec<String>,
}

/// Checks a jail id: 1 to 64 of `[A-Za-z0-9-]`.
pub fn validate_id(id: &str) -> Result<(), JailerError> {
    let ok =
        (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(JailerError::Id(id.to_owned()))
    }
}

fn validate_base(base: &Path) -> Result<(), JailerError> {
    let clean = base.is_absolute()
        && !base
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if clean {
        Ok(())
    } else {
        Err(JailerError::ChrootBase(base.to_owned()))
    }
}

/// The jail directory of `id`: `<base>/skiff-vmm/<id>` (its `root/` is the VMM's `/`).
pub fn jail_dir(base: &Path, id: &str) -> PathBuf {
    base.join("skiff-vmm").join(id)
}

impl JailConfig {
    /// Everything checkable before touching the system.
    pub fn validate(&self) -> Result<(), JailerError> {
        validate_id(&self.id)?;
        validate_base(&self.chroot_base)?;
        if !self.exec_file.is_file() {
            return Err(JailerError::ExecFile(self.exec_file.clone()));
        }
        if let Some(ns) = &self.netns {
            if !ns.exists() {
                return Err(JailerError::Netns(ns.clone()));
            }
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(JailerError::Root);
        }
        Ok(())
    }
}

/// Removes a finished jail: its directory and its cgroups. Idempotent.
pub fn cleanup(base: &Path, id: &str) -> Result<(), JailerError> {
    validate_id(id)?;
    validate_base(base)?;
    let dir = jail_dir(base, id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove {}", dir.display()))(e)),
    }
    cgroup::remove(id)?;
    Ok(())
}

/// Closes every file descriptor above 2.
fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; none above 2 is in use by this process yet.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        // Older kernels: close what /proc lists (collected first: listing opens a descriptor).
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        for fd in fds.into_iter().filter(|fd| *fd > 2) {
            // SAFETY: closing a descriptor number; a stale one fails harmlessly with EBADF.
            unsafe { libc::close(fd) };
        }
    }
}

/// Builds the jail and starts the VMM in it. Returns the exit status to exit with: the VMM's
/// (128 + signal if killed), or 0 after daemonizing.
pub fn run(config: &JailConfig) -> Result<i32, JailerError> {
    config.validate()?;
    close_inherited_fds();
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    let (vmm_args, resources) = resources::rewrite_vmm_args(&config.vmm_args)?;

    let dir = jail_dir(&config.chroot_base, &config.id);
    let parent = dir.parent().unwrap_or(&config.chroot_base);
    std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(JailerError::Exists {
                id: config.id.clone(),
                path: dir,
            })
        }
        Err(e) => return Err(io_err(format!("create {}", dir.display()))(e)),
    }
    match prepare_and_start(config, &dir, &vmm_args, &resources) {
        Ok(code) => Ok(code),
        Err(e) => {
            // Nothing is left behind. (Errors after the pivot cannot reach the jail any more;
            // `skiff-jailer --cleanup` removes it then.)
            let _ = cleanup(&config.chroot_base, &config.id);
            Err(e)
        }
    }
}

fn prepare_and_start(
    config: &JailConfig,
    dir: &Path,
    vmm_args: &[String],
    resources: &[resources::Resource],
) -> Result<i32, JailerError> {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = (config.uid, config.gid);
    // Only the task's uid may enter its jail directory.
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", dir.display())))?;
    let root = dir.join("root");
    std::fs::create_dir(&root).map_err(io_err(format!("create {}", root.display())))?;
    // Our own copy of the VMM: no two VMMs share its pages.
    let vmm = root.join(VMM_IN_JAIL.trim_start_matches('/'));
    std::fs::copy(&config.exec_file, &vmm)
        .map_err(io_err(format!("copy {}", config.exec_file.display())))?;
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o555))
        .map_err(io_err(format!("chmod {}", vmm.display())))?;
    let mut binds = Vec::new();
    for r in resources {
        binds.extend(resources::place(&root, r, uid, gid)?);
    }

    cgroup::create_and_join(&config.id, &config.cgroups)?;
    for limit in &config.rlimits {
        let (resource, n) = match *limit {
            ResourceLimit::NoFile(n) => (libc::RLIMIT_NOFILE, n),
            ResourceLimit::FileSize(n) => (libc::RLIMIT_FSIZE, n),
        };
        let rl = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: `rl` is a valid rlimit.
        if unsafe { libc::setrlimit(resource, &rl) } != 0 {
            return Err(io_err("setrlimit")(std::io::Error::last_os_error()));
        }
    }
    if let Some(ns) = &config.netns {
        let f = std::fs::File::open(ns).map_err(io_err(format!("open {}", ns.display())))?;
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is an open namespace file for the duration of the call.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io_err(format!("join {}", ns.display()))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    // For --daemonize: the VMM's stdio, opened while /dev/null is still reachable.
    let devnull = if config.daemonize {
        Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(io_err("open /dev/null"))?,
        )
    } else {
        None
    };
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io_err("unshare namespaces")(std::io::Error::last_os_error()));
    }
    jail::enter_root(&root, &binds, uid, gid, &config.id)?;

    // SAFETY: the process is single-threaded here, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io_err("fork")(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        if let Some(null) = &devnull {
            use std::os::fd::AsRawFd;
            // SAFETY: setsid and dup2 on descriptors we own.
            unsafe {
                libc::setsid();
                for fd in 0..3 {
                    libc::dup2(null.as_raw_fd(), fd);
                }
            }
        }
        let e = jail::drop_privileges_and_exec(uid, gid, Path::new(VMM_IN_JAIL), vmm_args);
        eprintln!("skiff-jailer: cannot start the VMM: {e}");
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    if config.daemonize {
        println!("{pid}");
        return Ok(0);
    }
    eprintln!("skiff-jailer: VMM for {} running as pid {pid}", config.id);
    Ok(wait_and_report(pid))
}

/// Waits for the VMM and says how it ended; returns the matching exit status.
fn wait_and_report(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; `status` is a valid int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            eprintln!(
                "skiff-jailer: lost track of the VMM: {}",
                std::io::Error::last_os_error()
            );
            return 1;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let why = match sig {
            libc::SIGSYS => {
                " (SIGSYS: it made a system call its seccomp filter forbids)".to_string()
            }
            libc::SIGKILL => {
                " (SIGKILL: killed, possibly by the OOM killer at its memory limit)".to_string()
            }
            other => format!(" (signal {other})"),
        };
        eprintln!("skiff-jailer: the VMM was killed{why}");
        128 + sig
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JailConfig {
        JailConfig {
            id: "task-1".into(),
            exec_file: PathBuf::from("/proc/self/exe").canonicalize().unwrap(),
            uid: 1000,
            gid: 1000,
            chroot_base: std::env::temp_dir()
                .join(format!("skiff-jail-unit-{}", std::process::id())),
            netns: None,
            cgroups: vec![],
            rlimits: vec![],
            daemonize: false,
            vmm_args: vec![],
        }
    }

    #[test]
    fn ids_are_checked() {
        for good in ["a", "task-1", &"x".repeat(64)] {
            validate_id(good).unwrap();
        }
        for bad in ["", "a/b", "..", "a.b", "a b", &"x".repeat(65), "ü"] {
            assert!(
                matches!(validate_id(bad), Err(JailerError::Id(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn configuration_errors_are_named() {
        config().validate().unwrap();
        let mut c = config();
        c.exec_file = PathBuf::from("/nonexistent/skiff-vmm");
        assert!(matches!(c.validate(), Err(JailerError::ExecFile(_))));
        let mut c = config();
        c.chroot_base = PathBuf::from("relative/base");
        assert!(matches!(c.validate(), Err(JailerError::ChrootBase(_))));
        c.chroot_base = PathBuf::from("/srv/../etc");
        assert!(matches!(c.validate(), Err(JailerError::ChrootBase(_))));
        let mut c = config();
        c.uid = 0;
        assert!(matches!(c.validate(), Err(JailerError::Root)));
        let mut c = config();
        c.netns = Some(PathBuf::from("/var/run/netns/nope"));
        assert!(matches!(c.validate(), Err(JailerError::Netns(_))));
    }

    #[test]
    fn resource_limits_parse() {
        assert_eq!(
            "no-file=64".parse::<ResourceLimit>().unwrap(),
            ResourceLimit::NoFile(64)
        );
        assert_eq!(
            "fsize=1024".parse::<ResourceLimit>().unwrap(),
            ResourceLimit::FileSize(1024)
        );
        assert!("nofile=64".parse::<ResourceLimit>().is_err());
        assert!("fsize=-1".parse::<ResourceLimit>().is_err());
    }

    #[test]
    fn cleanup_is_idempotent() {
        let base = std::env::temp_dir().join(format!("skiff-cleanup-{}", std::process::id()));
        let dir = jail_dir(&base, "gone");
        std::fs::create_dir_all(dir.join("root")).unwrap();
        cleanup(&base, "gone").unwrap();
        assert!(!dir.exists());
        cleanup(&base, "gone").unwrap();
        assert!(matches!(cleanup(&base, "../x"), Err(JailerError::Id(_))));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
