//! `skiff-jailer`: starts one `skiff-vmm` in an empty, unprivileged, resource-capped jail.
//!
//! In order: validate the id, every path and the VM configuration (`--vm-config`, the JSON of
//! `skiff-vmm --config`); relocate its paths into the jail; close inherited file descriptors;
//! clear the environment; create `<base>/skiff-vmm/<id>/root` as root (refusing an existing jail),
//! copy the VMM binary in, place the files it opens, write the relocated configuration as
//! `/vm.json` and prepare the mount point of the task's run directory (`/run/task`); create the
//! task's cgroup (v1 or v2) with its limits and join it; set rlimits; join the network namespace;
//! unshare mount, PID, IPC and UTS namespaces; mount the run directory and writable disks from
//! other filesystems, pivot into the jail and create only `/dev/kvm`, `/dev/net/tun` and
//! `/dev/urandom`; fork (the child is PID 1 of the new PID namespace), drop to the task's uid/gid
//! with no supplementary groups, `PR_SET_NO_NEW_PRIVS` and `PR_SET_PDEATHSIG` (SIGKILL: the VMM
//! does not outlive the jailer), and exec `skiff-vmm --config /vm.json`. The parent waits and
//! reports how the VMM ended (or, with `--daemonize`, prints its pid and leaves; the VMM then
//! outlives it). [`cleanup`] removes a finished jail.
//!
//! Only the task's gid may enter the jail (`<id>` and `root/` are root's, mode 0750); the VMM may
//! write only its writable disks, its device nodes and the run directory.

pub mod cgroup;
pub mod jail;
pub mod resources;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use cgroup::{CgroupError, Setting};
use jail::JailError;
use resources::ResourceError;

use crate::config::{ConfigError, VmConfig};
use crate::seccomp::ThreadKind;

/// Where jails go unless `--chroot-base` says otherwise.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// Name of the VMM binary inside the jail.
const VMM_IN_JAIL: &str = "/skiff-vmm";
/// The VM configuration inside the jail.
const CONFIG_IN_JAIL: &str = "/vm.json";

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
    #[error("VM configuration: {0}")]
    VmConfig(#[from] ConfigError),
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
    /// The VM configuration file (host paths; relocated into the jail).
    pub vm_config: PathBuf,
    /// Testing only: `--seccomp-test-violation` for the VMM.
    pub seccomp_test_violation: Option<ThreadKind>,
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
    let dir = match dir.canonicalize() {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cgroup::remove(id)?;
            return Ok(());
        }
        Err(e) => return Err(io_err(format!("resolve {}", dir.display()))(e)),
    };
    // Never remove through a mount (in the jail's own mount namespace, a failed start may have
    // left the task's run directory mounted in it): detach them first.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read /proc/self/mountinfo"))?;
    for mount_point in mounts_under(&mountinfo, &dir) {
        let c = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes())
            .map_err(|e| io_err(format!("unmount {}", mount_point.display()))(e.into()))?;
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io_err(format!("unmount {}", mount_point.display()))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove {}", dir.display()))(e)),
    }
    cgroup::remove(id)?;
    Ok(())
}

/// The mount points strictly under `dir` in `mountinfo` (`/proc/self/mountinfo`), deepest first.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|path| path.starts_with(dir) && path != dir)
        .collect();
    found.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    found.dedup();
    found
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mount_path(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u16, |v, b| v * 8 + u16::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
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
    // What the jailer creates gets the modes it asks for.
    // SAFETY: umask only sets this process's file mode mask.
    unsafe { libc::umask(0o022) };
    let vm = VmConfig::from_file(&config.vm_config)?;
    vm.validate()?;
    let relocated = resources::relocate(&vm)?;
    close_inherited_fds();
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }

    let dir = jail_dir(&config.chroot_base, &config.id);
    let parent = dir.parent().unwrap_or(&config.chroot_base);
    std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    // Root's, and only the task's group may enter (mode 0750 whatever the umask).
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(JailerError::Exists {
                id: config.id.clone(),
                path: dir,
            })
        }
        Err(e) => return Err(io_err(format!("create {}", dir.display()))(e)),
    }
    match prepare_and_start(config, &dir, &relocated) {
        Ok(code) => Ok(code),
        Err(e) => {
            // Nothing is left behind. (Errors after the pivot cannot reach the jail any more;
            // `skiff-jailer --cleanup` removes it then.)
            let _ = cleanup(&config.chroot_base, &config.id);
            Err(e)
        }
    }
}

/// Makes `path` root's, of group `gid`, with `mode`.
fn hand_to_group(path: &Path, gid: u32, mode: u32) -> Result<(), JailerError> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(0), Some(gid))
        .map_err(io_err(format!("chown {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))
}

fn prepare_and_start(
    config: &JailConfig,
    dir: &Path,
    relocated: &resources::Relocated,
) -> Result<i32, JailerError> {
    let (uid, gid) = (config.uid, config.gid);
    // Made and filled by root; the task's group may enter and read, not write.
    let root = dir.join("root");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .map_err(io_err(format!("create {}", root.display())))?;
    // Our own copy of the VMM: no two VMMs share its pages.
    let vmm = root.join(VMM_IN_JAIL.trim_start_matches('/'));
    resources::copy_new(&config.exec_file, &vmm, 0o555, None)
        .map_err(io_err(format!("copy {}", config.exec_file.display())))?;
    let mut binds = Vec::new();
    for r in &relocated.files {
        binds.extend(resources::place(&root, r, uid, gid)?);
    }
    if let Some(host) = &relocated.run_dir {
        binds.push(resources::place_run_dir(&root, host, uid, gid)?);
    }
    let json = relocated.config.to_json()?;
    let vm_json = root.join(CONFIG_IN_JAIL.trim_start_matches('/'));
    resources::write_new(&vm_json, json.as_bytes(), 0o440, gid)
        .map_err(io_err(format!("write {}", vm_json.display())))?;
    hand_to_group(&root, gid, 0o750)?;
    hand_to_group(dir, gid, 0o750)?;

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

    let mut vmm_args = vec!["--config".to_owned(), CONFIG_IN_JAIL.to_owned()];
    if let Some(kind) = config.seccomp_test_violation {
        vmm_args.extend([
            "--seccomp-test-violation".to_owned(),
            kind.name().to_owned(),
        ]);
    }
    // Unless daemonizing, the VMM dies with the jailer (PR_SET_PDEATHSIG): this pipe's write end
    // stays open in the jailer for its whole life, so the child can tell whether the jailer was
    // still alive once its death signal was armed.
    let watch = if config.daemonize {
        None
    } else {
        Some(jail::ParentWatch::new().map_err(io_err("pipe"))?)
    };
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
        let e = jail::drop_privileges_and_exec(
            uid,
            gid,
            Path::new(VMM_IN_JAIL),
            &vmm_args,
            watch.map(jail::ParentWatch::into_child_end),
        );
        eprintln!("skiff-jailer: cannot start the VMM: {e}");
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    // The read end goes; the write end lives as long as this process.
    let _watch = watch.map(jail::ParentWatch::into_parent_end);
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
            vm_config: PathBuf::from("/nonexistent/vm.json"),
            seccomp_test_violation: None,
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
    fn mounts_under_a_jail_are_found_deepest_first() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:5 / /srv/jailer/skiff-vmm/t1/root/run/task rw - tmpfs tmpfs rw
41 40 8:1 /x /srv/jailer/skiff-vmm/t1/root/run/task/sub rw - ext4 /dev/sda1 rw
42 22 8:1 /d /srv/jailer/skiff-vmm/t1/root/disk\\0400 rw - ext4 /dev/sda1 rw
43 22 8:1 /d /srv/jailer/skiff-vmm/t10/root/disk0 rw - ext4 /dev/sda1 rw
";
        let dir = Path::new("/srv/jailer/skiff-vmm/t1");
        let found = mounts_under(info, dir);
        assert_eq!(
            found,
            [
                PathBuf::from("/srv/jailer/skiff-vmm/t1/root/run/task/sub"),
                PathBuf::from("/srv/jailer/skiff-vmm/t1/root/run/task"),
                PathBuf::from("/srv/jailer/skiff-vmm/t1/root/disk 0"),
            ]
        );
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
