//! The task's cgroup, on cgroup v1 or v2 — detected from `/proc/mounts`, per controller: a
//! controller mounted as a v1 hierarchy is used there, otherwise from the v2 hierarchy. (This
//! allows hybrid hosts: v1 controllers plus an empty v2 mount.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors managing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/mounts: {0}")]
    Mounts(#[source] std::io::Error),
    #[error("cgroup controller {0:?} is not available (neither a v1 hierarchy nor enabled in v2)")]
    NoController(String),
    #[error("invalid --cgroup {0:?}: expected memory=BYTES, cpus=N, pids=N or <controller>.<file>=VALUE")]
    BadSetting(String),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The controllers a v1 hierarchy can carry (mount options name them among other flags).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// Where each controller lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hierarchies {
    /// v1: controller name -> mount point.
    pub v1: BTreeMap<String, PathBuf>,
    /// v2 mount point, if any.
    pub v2: Option<PathBuf>,
}

impl Hierarchies {
    /// Parses `/proc/mounts` text.
    pub fn parse(mounts: &str) -> Self {
        let mut h = Hierarchies::default();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, path, fstype, options, ..] = fields[..] else {
                continue;
            };
            match fstype {
                "cgroup2" => {
                    h.v2.get_or_insert_with(|| PathBuf::from(path));
                }
                "cgroup" => {
                    for option in options.split(',') {
                        if V1_CONTROLLERS.contains(&option) {
                            h.v1.entry(option.to_owned())
                                .or_insert_with(|| PathBuf::from(path));
                        }
                    }
                }
                _ => {}
            }
        }
        h
    }

    /// Reads this host's hierarchies.
    pub fn detect() -> Result<Self, CgroupError> {
        let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
        Ok(Self::parse(&mounts))
    }
}

/// One value to write: (controller, file, value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: String,
    pub file: String,
    pub value: String,
}

/// A task limit in the jailer's terms, before it is mapped to v1 or v2 files.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// Memory limit in bytes.
    Memory(u64),
    /// CPU quota in CPUs (1.5 = one and a half CPUs' time per period).
    Cpus(f64),
    /// Most processes/threads.
    Pids(u64),
    /// A file written as given: `<controller>.<file>=VALUE`.
    Raw(Write),
}

/// The CFS period used for CPU quotas.
const CPU_PERIOD_US: u64 = 100_000;

fn parse_bytes(s: &str) -> Option<u64> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl std::str::FromStr for Setting {
    type Err = CgroupError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CgroupError::BadSetting(s.to_owned());
        let (key, value) = s.split_once('=').ok_or_else(bad)?;
        let valid_value = !value.is_empty() && !value.contains(['\n', '\0']);
        match key {
            "memory" => parse_bytes(value)
                .filter(|n| *n > 0)
                .map(Setting::Memory)
                .ok_or_else(bad),
            "cpus" => value
                .parse::<f64>()
                .ok()
                .filter(|c| c.is_finite() && *c > 0.0 && *c <= 1024.0)
                .map(Setting::Cpus)
                .ok_or_else(bad),
            "pids" => value
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .map(Setting::Pids)
                .ok_or_else(bad),
            raw => {
                let (controller, _) = raw.split_once('.').ok_or_else(bad)?;
                let name_ok = |n: &str| {
                    !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                };
                if !name_ok(raw) || !name_ok(controller) || !valid_value || raw.contains("..") {
                    return Err(bad());
                }
                Ok(Setting::Raw(Write {
                    controller: controller.to_owned(),
                    file: raw.to_owned(),
                    value: value.to_owned(),
                }))
            }
        }
    }
}

impl Setting {
    /// The files to write for this setting on v1 or v2.
    pub fn writes(&self, v2: bool) -> Vec<Write> {
        let w = |controller: &str, file: &str, value: String| Write {
            controller: controller.into(),
            file: file.into(),
            value,
        };
        match (self, v2) {
            (Setting::Memory(bytes), true) => vec![w("memory", "memory.max", bytes.to_string())],
            (Setting::Memory(bytes), false) => {
                vec![w("memory", "memory.limit_in_bytes", bytes.to_string())]
            }
            (Setting::Cpus(cpus), true) => {
                let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
                vec![w("cpu", "cpu.max", format!("{quota} {CPU_PERIOD_US}"))]
            }
            (Setting::Cpus(cpus), false) => {
                let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
                vec![
                    w("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    w("cpu", "cpu.cfs_quota_us", quota.to_string()),
                ]
            }
            (Setting::Pids(n), _) => vec![w("pids", "pids.max", n.to_string())],
            (Setting::Raw(write), _) => vec![write.clone()],
        }
    }

    fn controller(&self) -> &str {
        match self {
            Setting::Memory(_) => "memory",
            Setting::Cpus(_) => "cpu",
            Setting::Pids(_) => "pids",
            Setting::Raw(w) => &w.controller,
        }
    }
}

/// The group directory of a task under a hierarchy mount.
fn group_dir(mount: &Path, id: &str) -> PathBuf {
    mount.join("skiff").join(id)
}

/// Where a controller's group for task `id` is, and whether that is v2.
fn locate(h: &Hierarchies, controller: &str, id: &str) -> Result<(PathBuf, bool), CgroupError> {
    if let Some(mount) = h.v1.get(controller) {
        return Ok((group_dir(mount, id), false));
    }
    if let Some(v2) = &h.v2 {
        let available = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        if available.split_whitespace().any(|c| c == controller) {
            return Ok((group_dir(v2, id), true));
        }
    }
    Err(CgroupError::NoController(controller.to_owned()))
}

/// Creates the task's groups, applies `settings`, and moves the calling process into them
/// (children inherit). Returns the group directories.
pub fn create_and_join(id: &str, settings: &[Setting]) -> Result<Vec<PathBuf>, CgroupError> {
    let h = Hierarchies::detect()?;
    let mut dirs: Vec<(PathBuf, bool)> = Vec::new();
    // Every controller a setting names, plus nothing when there are no settings.
    for setting in settings {
        let (dir, v2) = locate(&h, setting.controller(), id)?;
        if v2 {
            // Controllers must be enabled in every ancestor's subtree_control.
            let mount = h.v2.as_deref().unwrap_or(Path::new("/"));
            let enable = format!("+{}", setting.controller());
            for parent in [mount.to_path_buf(), mount.join("skiff")] {
                std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
                let control = parent.join("cgroup.subtree_control");
                std::fs::write(&control, &enable).map_err(io("write", &control))?;
            }
        }
        if !dirs.iter().any(|(d, _)| *d == dir) {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            dirs.push((dir.clone(), v2));
        }
        for write in setting.writes(v2) {
            let file = dir.join(&write.file);
            std::fs::write(&file, &write.value).map_err(io("write", &file))?;
        }
    }
    let pid = std::process::id().to_string();
    for (dir, _) in &dirs {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &pid).map_err(io("join", &procs))?;
    }
    Ok(dirs.into_iter().map(|(d, _)| d).collect())
}

/// Removes task `id`'s groups from every hierarchy; missing ones are fine.
pub fn remove(id: &str) -> Result<(), CgroupError> {
    let h = Hierarchies::detect()?;
    let mounts = h.v1.values().chain(h.v2.iter());
    for mount in mounts {
        let dir = group_dir(mount, id);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &dir)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,nodev,noexec,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0
";

    #[test]
    fn hybrid_hosts_use_v1_controllers() {
        let h = Hierarchies::parse(HYBRID);
        assert_eq!(h.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(h.v1["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(h.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(h.v1["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(!h.v1.contains_key("xattr") && !h.v1.contains_key("name=systemd"));
        assert_eq!(
            locate(&h, "pids", "t1").unwrap(),
            (PathBuf::from("/sys/fs/cgroup/pids/skiff/t1"), false)
        );
    }

    #[test]
    fn pure_v2_hosts_have_no_v1_controllers() {
        let h = Hierarchies::parse("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n");
        assert!(h.v1.is_empty());
        assert_eq!(h.v2, Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn settings_map_to_v1_and_v2_files() {
        let mem: Setting = "memory=160M".parse().unwrap();
        assert_eq!(mem, Setting::Memory(160 << 20));
        assert_eq!(mem.writes(true)[0].file, "memory.max");
        assert_eq!(mem.writes(false)[0].file, "memory.limit_in_bytes");
        let cpu: Setting = "cpus=1.5".parse().unwrap();
        assert_eq!(cpu.writes(true)[0].value, "150000 100000");
        assert_eq!(cpu.writes(false)[1].value, "150000");
        let pids: Setting = "pids=64".parse().unwrap();
        assert_eq!(pids.writes(false)[0].file, "pids.max");
        let raw: Setting = "cpuset.cpus=0".parse().unwrap();
        assert_eq!(raw.controller(), "cpuset");
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            "memory",
            "memory=-1",
            "memory=10X",
            "cpus=0",
            "cpus=nan",
            "pids=0",
            "x=1",
            "../memory.max=1",
            "memory.max=a\nb",
            "memory.max=",
        ] {
            assert!(bad.parse::<Setting>().is_err(), "{bad}");
        }
    }
}
