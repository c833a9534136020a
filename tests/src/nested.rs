//! The nested test host (verification level 4): our test-host kernel, with KVM built in, booted
//! under `qemu-system-x86_64 -M q35,accel=tcg -cpu max` (QEMU emulates AMD SVM there, so KVM works
//! inside). Its initramfs holds busybox, the binaries and files a test adds, and a script; the
//! script runs as the host's init work and its exit status comes back with the console output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use images::initramfs::{Initramfs, InitramfsError};

use crate::artefacts::{workspace_root, Artefact};
use crate::process::{run_with_deadlines, ProcessError};

/// Where busybox (Debian's `busybox-static`) is.
const BUSYBOX: &str = "/bin/busybox";
/// Parameters for the nested host's kernel. KVM keeps its default (TDP) MMU: with
/// `kvm.tdp_mmu=0` the nested host itself crashed once under a 100 MiB TCP echo; the TDP MMU in
/// turn oopsed with ten concurrent VMs, so the parallel jailer benchmark passes
/// `--append kvm.tdp_mmu=0` (see `scripts/bench-jailer.sh`).
const NESTED_KVM_PARAMS: &str = "";

/// The nested host's kernel command line. Its random pool is seeded from the CPU
/// (`random.trust_cpu=on`: RDRAND, which `-cpu max` emulates), as a real host's is by its
/// hardware; without it the pool stays uninitialised for long and programs that want random
/// numbers (`mkfs.ext4`'s UUIDs) stall.
const NESTED_CMDLINE: &str = "console=ttyS0 panic=-1 quiet rdinit=/init random.trust_cpu=on";

/// Runs of a script the emulation may fail before its failure is the test's.
const EMULATION_ATTEMPTS: u32 = 3;

/// A nested host silent this long — its heartbeat comes every minute — has frozen.
const MAX_SILENCE: Duration = Duration::from_secs(150);

/// How the nested host's heartbeat lines start (printed every minute by its init).
const HEARTBEAT: &str = "nested: alive";

/// What the console shows when QEMU's emulated SVM failed the run rather than the code under
/// test: the nested host's own kernel crashing (its DMI name is QEMU's q35), or a guest triple
/// fault — both seen under heavy guest network load (see `docs/testing.md`).
/// (The nested host's oops may be cut short before its DMI line, hence its first line too.)
pub const EMULATION_CRASHES: [&str; 3] = [
    "Hardware name: QEMU Standard PC (Q35",
    "BUG: kernel NULL pointer dereference",
    "guest crashed: triple fault",
];

/// Whether QEMU's emulation, not the code under test, failed a run — a crash on the console, or
/// a timeout after the host's heartbeat stopped (a host still printing it was alive: the test is
/// stuck) — and how it showed.
pub(crate) fn emulation_failure(result: &Result<NestedRun, NestedError>) -> Option<String> {
    let console = match result {
        Ok(run) => &run.console,
        Err(NestedError::NoStatus { console, .. } | NestedError::Timeout { console, .. }) => {
            console
        }
        Err(NestedError::Silent { .. }) => return Some("it went silent: froze".to_owned()),
        Err(_) => return None,
    };
    if let Some(sign) = EMULATION_CRASHES.iter().find(|s| console.contains(*s)) {
        return Some(format!("{sign:?} on the console"));
    }
    // The host's init always prints the status before it powers off: a host that stopped
    // without it reset on its own (a triple fault of the emulated host, which prints nothing).
    if matches!(result, Err(NestedError::NoStatus { .. })) {
        return Some("it reset without reporting the script's status".to_owned());
    }
    let alive_at_the_end = console
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.starts_with(HEARTBEAT));
    (matches!(result, Err(NestedError::Timeout { .. })) && !alive_at_the_end)
        .then(|| "its heartbeat stopped".to_owned())
}

/// Printed by the host's init with the script's exit status.
const EXIT_MARKER: &str = "SKIFF-NESTED-EXIT=";

/// The nested host's init: mounts what a VMM host needs, runs /test.sh, reports, powers off.
const HOST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/skiff
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /sys/fs/cgroup /dev/pts /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t devpts devpts /dev/pts
ip link set lo up 2>/dev/null
cd /tmp
# A heartbeat on the console: a run that times out shows whether the host was still alive.
(while sleep 60; do echo "nested: alive, uptime $(cut -d' ' -f1 /proc/uptime) s, load $(cut -d' ' -f1-3 /proc/loadavg)"; done) &
sh /test.sh
status=$?
# On a line of its own, even after output that did not end its last line.
echo
echo "SKIFF-NESTED-EXIT=$status"
poweroff -f
reboot -f
"#;

/// Errors running the nested host.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the nested host did not finish within {timeout:?}; console so far:\n{console}")]
    Timeout { timeout: Duration, console: String },
    #[error("the nested host printed nothing for {silent:?}, its heartbeat included: it froze; console so far:\n{console}")]
    Silent { silent: Duration, console: String },
    #[error("the nested host stopped without reporting the script's status (QEMU exit {code:?}); console:\n{console}\nstderr:\n{stderr}")]
    NoStatus {
        code: Option<i32>,
        console: String,
        stderr: String,
    },
}

/// What came back from a nested run.
#[derive(Debug, Clone)]
pub struct NestedRun {
    /// Everything the host printed on its console.
    pub console: String,
    /// The script's exit status.
    pub status: i32,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl NestedRun {
    /// The output of the case `name` written with [`case`], and its exit status.
    pub fn case(&self, name: &str) -> Option<(String, i32)> {
        let begin = format!("=== begin {name}\n");
        let end = format!("=== end {name} status=");
        let start = self.console.find(&begin)? + begin.len();
        let rest = &self.console[start..];
        let stop = rest.find(&end)?;
        let status = rest[stop + end.len()..]
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        Some((without_heartbeats(&rest[..stop]), status))
    }
}

/// `output` without the heartbeat lines the host's background loop printed into it (whole lines,
/// or spliced into a line another writer had begun).
fn without_heartbeats(output: &str) -> String {
    let mut output = output.to_owned();
    while let Some(start) = output.find(HEARTBEAT) {
        let end = output[start..]
            .find('\n')
            .map_or(output.len(), |newline| start + newline + 1);
        output.replace_range(start..end, "");
    }
    output
}

/// A shell fragment running `command` as the case `name` (output and status recoverable with
/// [`NestedRun::case`]).
pub fn case(name: &str, command: &str) -> String {
    format!("echo '=== begin {name}'\n{command} 2>&1\necho \"=== end {name} status=$?\"\n")
}

/// A nested host being prepared.
pub struct NestedHost {
    fs: Initramfs,
    memory_mib: u32,
    cpus: u32,
    extra_cmdline: String,
    timeout: Duration,
}

impl NestedHost {
    /// A host with busybox only.
    pub fn new() -> Result<Self, NestedError> {
        let mut fs = Initramfs::new();
        fs.host_file("bin/busybox", Path::new(BUSYBOX), Some(0o755))?;
        fs.file_bytes("init", 0o755, HOST_INIT.as_bytes())?;
        fs.char_device("dev/console", 0o600, 5, 1)?;
        for dir in ["proc", "sys", "tmp", "run", "etc"] {
            fs.dir(dir, 0o755)?;
        }
        Ok(Self {
            fs,
            memory_mib: 2048,
            cpus: 2,
            extra_cmdline: NESTED_KVM_PARAMS.to_owned(),
            timeout: Duration::from_secs(600),
        })
    }

    /// A host with `skiff-vmm` and the guest kernel and initramfs at `/skiff/`.
    pub fn with_skiff() -> Result<Self, NestedError> {
        let mut host = Self::new()?;
        host.binary("skiff/skiff-vmm", &Artefact::SkiffVmm.path())?;
        host.file("skiff/vmlinux", &Artefact::GuestKernel.path())?;
        host.file("skiff/initramfs.cpio", &Artefact::GuestInitramfs.path())?;
        Ok(host)
    }

    /// Adds a host file at `path` inside the nested host.
    pub fn file(&mut self, path: &str, host_path: &Path) -> Result<&mut Self, NestedError> {
        self.fs.host_file(path, host_path, None)?;
        Ok(self)
    }

    /// Adds every file under the host directory `host_dir` below `path` (symlinks and special
    /// files are skipped).
    pub fn dir(&mut self, path: &str, host_dir: &Path) -> Result<&mut Self, NestedError> {
        let read = |dir: &Path| {
            std::fs::read_dir(dir).map_err(|source| NestedError::Prepare {
                path: dir.to_owned(),
                source,
            })
        };
        let mut pending = vec![(path.trim_end_matches('/').to_owned(), host_dir.to_owned())];
        while let Some((nested, host)) = pending.pop() {
            for entry in read(&host)? {
                let entry = entry.map_err(|source| NestedError::Prepare {
                    path: host.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let (nested_path, host_path) = (format!("{nested}/{name}"), entry.path());
                match entry.file_type() {
                    Ok(t) if t.is_dir() => pending.push((nested_path, host_path)),
                    Ok(t) if t.is_file() => {
                        self.fs.host_file(&nested_path, &host_path, None)?;
                    }
                    _ => {}
                }
            }
        }
        Ok(self)
    }

    /// Adds a dynamically linked host binary and its shared libraries.
    pub fn binary(&mut self, path: &str, host_path: &Path) -> Result<&mut Self, NestedError> {
        self.fs.host_binary(path, host_path)?;
        Ok(self)
    }

    /// Adds a file with the given content.
    pub fn bytes(
        &mut self,
        path: &str,
        mode: u32,
        content: &[u8],
    ) -> Result<&mut Self, NestedError> {
        self.fs.file_bytes(path, mode, content)?;
        Ok(self)
    }

    pub fn memory_mib(&mut self, mib: u32) -> &mut Self {
        self.memory_mib = mib;
        self
    }

    /// Adds `params` to the nested host kernel's command line.
    pub fn append(&mut self, params: &str) -> &mut Self {
        self.extra_cmdline.push(' ');
        self.extra_cmdline.push_str(params);
        self
    }

    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Boots the host, runs `script` with `sh`, and returns the console and the script's status.
    /// A run that the emulation itself failed (see [`emulation_failure`]) is run again, up to
    /// [`EMULATION_ATTEMPTS`] in all, saying so on stderr; the last failure is returned as it is.
    pub fn run(&self, script: &str) -> Result<NestedRun, NestedError> {
        let mut result = self.run_once(script);
        for attempt in 2..=EMULATION_ATTEMPTS {
            let Some(sign) = emulation_failure(&result) else {
                break;
            };
            // Straight to the process's stderr, past libtest's capture: a retry must be visible.
            let _ = writeln!(
                std::io::stderr(),
                "RETRY nested host: the emulation crashed ({sign}); running the script again \
                 (attempt {attempt} of {EMULATION_ATTEMPTS})"
            );
            result = self.run_once(script);
        }
        result
    }

    /// Writes the host's initramfs with `script` as `/test.sh`; gives its path.
    pub(crate) fn initrd(&self, script: &str) -> Result<PathBuf, NestedError> {
        let dir = workspace_root().join("target/nested");
        std::fs::create_dir_all(&dir).map_err(|source| NestedError::Prepare {
            path: dir.clone(),
            source,
        })?;
        let initrd = dir.join(format!(
            "host-{}-{:?}.cpio",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut fs = self.fs.clone();
        fs.file_bytes("test.sh", 0o755, script.as_bytes())?;
        fs.write_to(&initrd)?;
        Ok(initrd)
    }

    /// The QEMU command booting the host from `initrd`, its console on stdout.
    pub(crate) fn command(&self, initrd: &Path) -> Command {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-M", "q35,accel=tcg", "-cpu", "max"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-no-reboot", "-nodefaults", "-no-user-config", "-nographic"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(Artefact::TestHostKernel.path())
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!("{NESTED_CMDLINE}{}", self.extra_cmdline));
        qemu
    }

    fn run_once(&self, script: &str) -> Result<NestedRun, NestedError> {
        let initrd = self.initrd(script)?;
        let result =
            run_with_deadlines(&mut self.command(&initrd), self.timeout, Some(MAX_SILENCE));
        let _ = std::fs::remove_file(&initrd);
        let finished = result?;
        let console = finished.stdout.replace("\r\n", "\n");
        if finished.went_silent {
            return Err(NestedError::Silent {
                silent: MAX_SILENCE,
                console,
            });
        }
        if finished.timed_out {
            return Err(NestedError::Timeout {
                timeout: self.timeout,
                console,
            });
        }
        let status = console
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(EXIT_MARKER))
            .and_then(|s| s.trim().parse().ok());
        match status {
            Some(status) => Ok(NestedRun {
                console,
                status,
                elapsed: finished.elapsed,
            }),
            None => Err(NestedError::NoStatus {
                code: finished.code,
                console,
                stderr: finished.stderr,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_recovered_from_the_console() {
        let run = NestedRun {
            console:
                "noise\n=== begin a\nhello\n=== end a status=7\n=== begin b\n=== end b status=0\n"
                    .into(),
            status: 0,
            elapsed: Duration::ZERO,
        };
        assert_eq!(run.case("a"), Some(("hello\n".into(), 7)));
        assert_eq!(run.case("b"), Some((String::new(), 0)));
        assert_eq!(run.case("c"), None);
        assert!(case("x", "true").contains("=== end x status=$?"));

        let run = NestedRun {
            console: "=== begin a\nnested: alive, uptime 61 s\nfirst\nsec\
                      nested: alive, uptime 121 s\nond\n=== end a status=0\n"
                .into(),
            status: 0,
            elapsed: Duration::ZERO,
        };
        assert_eq!(run.case("a"), Some(("first\nsecond\n".into(), 0)));
    }

    #[test]
    fn only_emulation_failures_are_retried() {
        let timeout = |console: &str| {
            Err(NestedError::Timeout {
                timeout: Duration::from_secs(1),
                console: console.into(),
            })
        };
        let passed = |console: &str| {
            Ok(NestedRun {
                console: console.into(),
                status: 0,
                elapsed: Duration::ZERO,
            })
        };
        assert_eq!(emulation_failure(&passed("all fine\n")), None);
        assert!(emulation_failure(&passed("skiff-vmm: guest crashed: triple fault\n")).is_some());
        assert!(
            emulation_failure(&timeout("step 3\n")).is_some(),
            "went silent"
        );
        assert_eq!(
            emulation_failure(&timeout("step 3\nnested: alive, uptime 61 s\n\n")),
            None,
            "alive but stuck: the test's own failure"
        );
        let silent = Err(NestedError::Silent {
            silent: MAX_SILENCE,
            console: "step 3\nnested: alive, uptime 61 s\n".into(),
        });
        assert!(
            emulation_failure(&silent).is_some(),
            "froze after a heartbeat"
        );
        let oops = "BUG: kernel NULL pointer dereference, address: 0\n";
        assert!(emulation_failure(&timeout(oops)).is_some());
        let reset = Err(NestedError::NoStatus {
            code: Some(0),
            console: "control: step exec=sleep 1: ok\n".into(),
            stderr: String::new(),
        });
        assert!(
            emulation_failure(&reset).is_some(),
            "a silent reset of the host"
        );
    }
}
