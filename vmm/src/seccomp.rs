//! Per-thread seccomp filters. Each kind of thread gets an allow-list of exactly the system calls
//! it makes once the guest runs (found with `strace -f` over a boot with disk and entropy I/O), with
//! argument conditions where they matter (`ioctl` only with `KVM_RUN`); anything else kills the
//! process with SIGSYS. Each thread installs its own filter before the guest's first instruction.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of threads skiff-vmm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the epoll event loop serving devices.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// A block device's I/O helper thread.
    BlockIo,
}

impl std::str::FromStr for ThreadKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vmm" => Ok(ThreadKind::Vmm),
            "vcpu" => Ok(ThreadKind::Vcpu),
            "blk-io" => Ok(ThreadKind::BlockIo),
            other => Err(format!("{other:?}: expected vmm, vcpu or blk-io")),
        }
    }
}

impl ThreadKind {
    /// The name `--seccomp-test-violation` takes.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::BlockIo => "blk-io",
        }
    }
}

/// The process-wide seccomp policy, set once by `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Install filters (off only with `--no-seccomp`, for debugging).
    pub enabled: bool,
    /// Testing only: this kind of thread makes a forbidden system call right after installing its
    /// filter, to prove the filter is live.
    pub violate_in: Option<ThreadKind>,
}

static POLICY: OnceLock<Policy> = OnceLock::new();

/// Sets the policy; the first call wins. Without a call, no filters are installed (unit tests).
pub fn configure(policy: Policy) {
    let _ = POLICY.set(policy);
}

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter for {kind:?} threads: {source}")]
    Build {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter for {kind:?} threads: {source}")]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
}

/// Installs the calling thread's filter, as the policy says.
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let policy = POLICY.get().copied().unwrap_or(Policy {
        enabled: false,
        violate_in: None,
    });
    if policy.enabled {
        let program = program(kind)?;
        seccompiler::apply_filter(&program)
            .map_err(|source| SeccompError::Install { kind, source })?;
    }
    if policy.violate_in == Some(kind) {
        // SAFETY: getppid has no arguments and no effect; no allow-list contains it.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

/// KVM_RUN: _IO(KVMIO, 0x80).
const KVM_RUN: u64 = 0xae80;

/// System calls every thread may make: memory allocation, locks, time, thread exit (which closes
/// what the thread owned, such as a vCPU's fd), and the signal calls `abort()` makes, so a panic
/// still ends in SIGABRT rather than SIGSYS.
const COMMON: &[i64] = &[
    libc::SYS_close,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_clock_gettime,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The extra system calls of each thread kind (beyond [`COMMON`]); `ioctl` is added separately.
fn allowed(kind: ThreadKind) -> &'static [i64] {
    match kind {
        ThreadKind::Vmm => &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fdatasync,
            libc::SYS_fsync,
            libc::SYS_getrandom,
            // virtio-net: frames to and from the tap.
            libc::SYS_readv,
            libc::SYS_writev,
            // virtio-vsock: host clients arrive on the listener; guest connections are forwarded
            // to host listeners; half-closes pass through.
            libc::SYS_accept4,
            libc::SYS_connect,
            // std reads sockets with recv() and writes them with send(MSG_NOSIGNAL).
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
        ],
        // Serial output and eventfd writes; the boot timer's getrusage and /proc/self/stat read.
        ThreadKind::Vcpu => &[libc::SYS_write, libc::SYS_pread64, libc::SYS_getrusage],
        ThreadKind::BlockIo => &[libc::SYS_preadv, libc::SYS_pwritev],
    }
}

/// The allow-list of `kind` as seccompiler rules.
fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(allowed(kind))
        .map(|&nr| (nr, Vec::new()))
        .collect();
    if kind == ThreadKind::Vmm {
        // Sockets only of the Unix domain: vsock connections forwarded to host listeners.
        let unix = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )
        .map_err(build)?;
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![unix]).map_err(build)?],
        );
        // ioctl only to set a tap's offloads once the guest's driver has chosen its features.
        let offload = SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            crate::virtio::net::tap::TUNSETOFFLOAD,
        )
        .map_err(build)?;
        rules.insert(
            libc::SYS_ioctl,
            vec![SeccompRule::new(vec![offload]).map_err(build)?],
        );
    }
    if kind == ThreadKind::Vcpu {
        let kvm_run = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, KVM_RUN)
            .map_err(build)?;
        rules.insert(
            libc::SYS_ioctl,
            vec![SeccompRule::new(vec![kvm_run]).map_err(build)?],
        );
    }
    Ok(rules)
}

/// The compiled filter of `kind`: allow-list, everything else kills the process.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let filter = SeccompFilter::new(
        rules(kind)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_to_a_filter() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::BlockIo] {
            assert!(!program(kind).unwrap().is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn allow_lists_are_minimal_where_it_matters() {
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        assert_eq!(
            vcpu[&libc::SYS_ioctl].len(),
            1,
            "ioctl only with a condition"
        );
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_openat,
            libc::SYS_clone,
            libc::SYS_getppid,
        ] {
            for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::BlockIo] {
                assert!(
                    !rules(kind).unwrap().contains_key(&forbidden),
                    "{kind:?} allows {forbidden}"
                );
            }
        }
        assert_eq!(
            rules(ThreadKind::Vmm).unwrap()[&libc::SYS_ioctl].len(),
            1,
            "ioctl only with a condition"
        );
        assert_eq!(
            rules(ThreadKind::Vmm).unwrap()[&libc::SYS_socket].len(),
            1,
            "socket only with a condition"
        );
        for kind in [ThreadKind::Vcpu, ThreadKind::BlockIo] {
            assert!(!rules(kind).unwrap().contains_key(&libc::SYS_socket));
        }
        assert!(!rules(ThreadKind::BlockIo)
            .unwrap()
            .contains_key(&libc::SYS_write));
    }

    #[test]
    fn filter_is_enforced_in_a_child_process() {
        // Fork so the kill does not take the test runner with it.
        // SAFETY: the child only installs a filter and makes raw system calls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let program = program(ThreadKind::BlockIo).unwrap_or_default();
            if seccompiler::apply_filter(&program).is_err() {
                // SAFETY: _exit in the forked child.
                unsafe { libc::_exit(2) };
            }
            // SAFETY: getppid is harmless; it is not allowed, so the kernel kills us here.
            unsafe { libc::syscall(libc::SYS_getppid) };
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn thread_kinds_parse() {
        assert_eq!("blk-io".parse::<ThreadKind>(), Ok(ThreadKind::BlockIo));
        assert!("gpu".parse::<ThreadKind>().is_err());
    }
}
