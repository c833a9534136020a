//! What the guest sees of its machine: kernel release, online CPUs, memory.

/// The banner facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub kernel: String,
    pub cpus: usize,
    pub memory_kib: u64,
}

impl std::fmt::Display for SystemInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Linux {} cpus={} memory={}KiB",
            self.kernel, self.cpus, self.memory_kib
        )
    }
}

/// Counts the CPUs in a sysfs CPU list such as `0-3,5`.
pub fn count_cpu_list(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|range| match range.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(range.parse::<usize>().is_ok()),
        })
        .sum()
}

/// `MemTotal` from /proc/meminfo, in KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Reads the facts (after /proc and /sys are mounted); unknown values read as empty or zero.
pub fn read() -> SystemInfo {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    SystemInfo {
        kernel: kernel.trim().to_owned(),
        cpus: count_cpu_list(&cpus),
        memory_kib: mem_total_kib(&meminfo).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0\n"), 1);
        assert_eq!(count_cpu_list("0-1\n"), 2);
        assert_eq!(count_cpu_list("0-3,5,7-8"), 7);
        assert_eq!(count_cpu_list(""), 0);
        assert_eq!(count_cpu_list("3-1"), 0);
    }

    #[test]
    fn meminfo_total_is_found() {
        let text = "MemTotal:         492516 kB\nMemFree:          470000 kB\n";
        assert_eq!(mem_total_kib(text), Some(492_516));
        assert_eq!(mem_total_kib("nothing"), None);
    }

    #[test]
    fn banner_format_is_stable() {
        let info = SystemInfo {
            kernel: "6.1.0".into(),
            cpus: 2,
            memory_kib: 1000,
        };
        assert_eq!(info.to_string(), "Linux 6.1.0 cpus=2 memory=1000KiB");
    }
}
