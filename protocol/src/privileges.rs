//! What the container's process may do: its capability set, `no_new_privs`, and its resource
//! limits. The host resolves a task's names (`NET_ADMIN`, `nofile`, as ECS and Docker spell them)
//! into the numbers [`Privileges`] carries in `RunContainer`; guest-init applies them between
//! fork and exec.

/// Linux capabilities by name (`capability.h`), without the `CAP_` prefix.
pub const CAPABILITIES: &[(&str, u8)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// Docker's (and so ECS's and Fargate's) default capabilities of a container.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Resource limits by ECS's name (`ulimits[].name`) and their `RLIMIT_*` number.
pub const RESOURCE_LIMITS: &[(&str, u32)] = &[
    ("cpu", 0),
    ("fsize", 1),
    ("data", 2),
    ("stack", 3),
    ("core", 4),
    ("rss", 5),
    ("nproc", 6),
    ("nofile", 7),
    ("memlock", 8),
    ("locks", 10),
    ("sigpending", 11),
    ("msgqueue", 12),
    ("nice", 13),
    ("rtprio", 14),
    ("rttime", 15),
];

/// Fargate's default open-file limit (soft and hard), which a task's `nofile` ulimit replaces.
pub const DEFAULT_NOFILE: u64 = 65_535;

/// `RLIMIT_NOFILE`.
const NOFILE: u32 = 7;

/// One resource limit: `setrlimit(resource, {soft, hard})`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    /// The `RLIMIT_*` number (one of [`RESOURCE_LIMITS`]).
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// What the container's process may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Its capability bounding set (bit N = capability N): what root in the container has, and
    /// the most any other user can gain.
    pub capabilities: u64,
    /// `PR_SET_NO_NEW_PRIVS`: set-user-id bits and file capabilities grant nothing on exec.
    pub no_new_privileges: bool,
    /// Limits set before exec; every other limit is the kernel's default.
    pub ulimits: Vec<Ulimit>,
}

impl Default for Privileges {
    /// Docker's capabilities, `no_new_privs`, and Fargate's `nofile` of 65535.
    fn default() -> Self {
        Self {
            capabilities: names_to_set(DEFAULT_CAPABILITIES.iter().copied()).unwrap_or(0),
            no_new_privileges: true,
            ulimits: vec![Ulimit {
                resource: NOFILE,
                soft: DEFAULT_NOFILE,
                hard: DEFAULT_NOFILE,
            }],
        }
    }
}

/// Why a task's privileges cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivilegeError {
    #[error("unknown capability {0:?} (names as in capabilities(7), e.g. NET_ADMIN, or ALL)")]
    UnknownCapability(String),
    #[error("unknown ulimit {0:?} (one of core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack)")]
    UnknownUlimit(String),
    #[error("ulimit {name}: the soft limit {soft} is above the hard limit {hard}")]
    SoftAboveHard { name: String, soft: u64, hard: u64 },
    #[error("ulimit {0} is given twice")]
    DuplicateUlimit(String),
}

/// The capability named `name` (case-insensitive, with or without `CAP_`).
pub fn capability(name: &str) -> Option<u8> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, bit)| *bit)
}

fn names_to_set<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<u64, PrivilegeError> {
    names.into_iter().try_fold(0u64, |set, name| {
        capability(name)
            .map(|bit| set | 1 << bit)
            .ok_or_else(|| PrivilegeError::UnknownCapability(name.to_owned()))
    })
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL")
}

/// The capability set of Docker's `--cap-add`/`--cap-drop` (ECS's `linuxParameters.capabilities`
/// `add`/`drop`): the defaults, or every capability when `add` holds `ALL`, or none when `drop`
/// holds `ALL`; then `add` added and `drop` removed.
pub fn capability_set(add: &[String], drop: &[String]) -> Result<u64, PrivilegeError> {
    let all = CAPABILITIES
        .iter()
        .fold(0u64, |set, (_, bit)| set | 1 << bit);
    let named =
        |list: &[String]| names_to_set(list.iter().map(String::as_str).filter(|n| !is_all(n)));
    let (add_set, drop_set) = (named(add)?, named(drop)?);
    let base = if add.iter().any(|n| is_all(n)) {
        all
    } else if drop.iter().any(|n| is_all(n)) {
        0
    } else {
        names_to_set(DEFAULT_CAPABILITIES.iter().copied())?
    };
    Ok((base | add_set) & !drop_set)
}

/// The capability names in `set`, in number order.
pub fn capability_names(set: u64) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .filter(|(_, bit)| set & (1 << bit) != 0)
        .map(|(name, _)| *name)
        .collect()
}

/// The resource limits of a task's `ulimits` (name, soft, hard), with Fargate's `nofile` unless
/// the task names its own.
pub fn ulimits<'a>(
    given: impl IntoIterator<Item = (&'a str, u64, u64)>,
) -> Result<Vec<Ulimit>, PrivilegeError> {
    let mut out: Vec<Ulimit> = Vec::new();
    for (name, soft, hard) in given {
        let resource = RESOURCE_LIMITS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| PrivilegeError::UnknownUlimit(name.to_owned()))?;
        if soft > hard {
            return Err(PrivilegeError::SoftAboveHard {
                name: name.to_owned(),
                soft,
                hard,
            });
        }
        if out.iter().any(|u| u.resource == resource) {
            return Err(PrivilegeError::DuplicateUlimit(name.to_owned()));
        }
        out.push(Ulimit {
            resource,
            soft,
            hard,
        });
    }
    if !out.iter().any(|u| u.resource == NOFILE) {
        out.push(Ulimit {
            resource: NOFILE,
            soft: DEFAULT_NOFILE,
            hard: DEFAULT_NOFILE,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn capability_sets_follow_docker() {
        let default = capability_set(&[], &[]).unwrap();
        assert_eq!(capability_names(default).len(), 14);
        assert_eq!(default, Privileges::default().capabilities);
        assert_eq!(default & 1 << 21, 0, "no SYS_ADMIN");
        assert_eq!(default & 1 << 19, 0, "no SYS_PTRACE");
        let traced = capability_set(&strings(&["SYS_PTRACE"]), &strings(&["cap_net_raw"])).unwrap();
        assert_eq!(traced, (default | 1 << 19) & !(1 << 13));
        let only = capability_set(&strings(&["NET_BIND_SERVICE"]), &strings(&["ALL"])).unwrap();
        assert_eq!(capability_names(only), ["NET_BIND_SERVICE"]);
        let all = capability_set(&strings(&["all"]), &strings(&["SYS_ADMIN"])).unwrap();
        assert_eq!(capability_names(all).len(), CAPABILITIES.len() - 1);
        assert_eq!(
            capability_set(&strings(&["NET_WIZARD"]), &[]),
            Err(PrivilegeError::UnknownCapability("NET_WIZARD".into()))
        );
    }

    #[test]
    fn ulimits_are_checked_and_nofile_defaults_to_fargates() {
        let limits = ulimits([("nproc", 100, 200)]).unwrap();
        assert_eq!(
            limits,
            [
                Ulimit {
                    resource: 6,
                    soft: 100,
                    hard: 200
                },
                Ulimit {
                    resource: 7,
                    soft: 65_535,
                    hard: 65_535
                }
            ]
        );
        assert_eq!(
            ulimits([("nofile", 1024, 4096)]).unwrap(),
            [Ulimit {
                resource: 7,
                soft: 1024,
                hard: 4096
            }]
        );
        assert!(matches!(
            ulimits([("files", 1, 1)]),
            Err(PrivilegeError::UnknownUlimit(_))
        ));
        assert!(matches!(
            ulimits([("nofile", 2, 1)]),
            Err(PrivilegeError::SoftAboveHard { .. })
        ));
        assert!(matches!(
            ulimits([("core", 0, 0), ("core", 1, 1)]),
            Err(PrivilegeError::DuplicateUlimit(_))
        ));
        assert_eq!(Privileges::default().ulimits, ulimits([]).unwrap());
    }
}
