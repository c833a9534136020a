//! `skiff-jailer` on this machine (cgroup v1 controllers, emulated /dev/kvm) with tiny test guests:
//! isolation of the jailed VMM (with a disk, and a tap in the task's network namespace), seccomp on every thread kind, jails of different uids, and clear
//! errors that leave nothing behind.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_tests::artefacts::{require, Artefact, Need};
use skiff_tests::jail_run::{cleanup, start};

const TEST_GUEST: &str = env!("SKIFF_TEST_GUEST");

fn ready(test: &str) -> bool {
    require(
        test,
        &[
            Need::Kvm,
            Need::Artefact(Artefact::SkiffVmm),
            Need::Artefact(Artefact::SkiffJailer),
        ],
    )
}

/// A fresh chroot base, and a world-readable copy of the test guest (the jail links it).
fn base(name: &str) -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("skiff-jails-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let guest = base.join("guest.elf");
    std::fs::copy(TEST_GUEST, &guest).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&guest, std::fs::Permissions::from_mode(0o644)).unwrap();
    (base, guest)
}

fn status_field(pid: i32, task: Option<&str>, key: &str) -> String {
    let path = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A network namespace holding a persistent tap owned by `uid`; deleted (with the tap) on drop.
struct NetnsWithTap {
    name: String,
}

impl NetnsWithTap {
    fn new(name: &str, tap: &str, uid: u32) -> Self {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", name]);
        let uid = uid.to_string();
        ip(&[
            "-n", name, "tuntap", "add", "dev", tap, "mode", "tap", "user", &uid, "vnet_hdr",
        ]);
        Self {
            name: name.to_owned(),
        }
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for NetnsWithTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The network interface a tun/tap file descriptor of `pid` is attached to, if any.
fn attached_tap(pid: i32) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .find_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("iff:"))
                .map(|n| n.trim().to_owned())
        })
}

fn v1_group(controller: &str, id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("skiff")
        .join(id)
}

#[test]
fn a_jailed_vmm_is_unprivileged_filtered_namespaced_and_capped() {
    if !ready("jailed_vmm_isolation") {
        return;
    }
    let (base, guest) = base("iso");
    let disk = base.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let id = "iso-1";
    let netns = NetnsWithTap::new(
        &format!("skiff-iso-{}", std::process::id()),
        "tap-iso",
        10_001,
    );
    let netns_path = netns.path();
    let jail = start(
        id,
        10_001,
        &base,
        &[
            "--netns",
            &netns_path,
            "--cgroup",
            "memory=96M",
            "--cgroup",
            "cpus=0.5",
            "--cgroup",
            "pids=16",
            "--resource-limit",
            "no-file=64",
        ],
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "wait",
            "--memory-mib",
            "48",
            "--disk",
            &format!("path={}", disk.display()),
            "--net",
            "tap=tap-iso",
        ],
        "test guest: waiting",
        Duration::from_secs(60),
    );
    let pid = jail.vmm_pid;
    // It lives in the task's network namespace, attached to the task's tap.
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        std::fs::metadata(&netns_path).unwrap().ino(),
        "the VMM joined the task's network namespace"
    );
    assert_eq!(attached_tap(pid).as_deref(), Some("tap-iso"));
    assert_eq!(status_field(pid, None, "Uid"), "10001 10001 10001 10001");
    assert_eq!(status_field(pid, None, "Gid"), "10001 10001 10001 10001");
    assert_eq!(status_field(pid, None, "Groups"), "");
    assert_eq!(status_field(pid, None, "NoNewPrivs"), "1");
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        tasks.len() >= 3,
        "VMM, vCPU and block I/O threads: {tasks:?}"
    );
    for t in &tasks {
        assert_eq!(status_field(pid, Some(t), "Seccomp"), "2", "thread {t}");
    }
    // Its root is the jail: only the VMM, its files and three device nodes.
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    root.sort();
    assert_eq!(root, ["dev", "disk0", "skiff-vmm", "vmlinux"]);
    let mut dev: Vec<String> = ["kvm", "urandom", "net/tun"]
        .iter()
        .filter(|d| Path::new(&format!("/proc/{pid}/root/dev/{d}")).exists())
        .map(|d| d.to_string())
        .collect();
    dev.sort();
    assert_eq!(dev, ["kvm", "net/tun", "urandom"]);
    assert!(
        !Path::new(&format!("/proc/{pid}/root/etc")).exists(),
        "nothing outside the jail"
    );
    for ns in ["pid", "mnt", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace");
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for controller in ["memory", "pids", "cpu"] {
        assert!(
            cgroups
                .lines()
                .any(|l| l.ends_with(&format!(":{controller}:/skiff/{id}"))),
            "{controller} in {cgroups}"
        );
    }
    let read = |c: &str, f: &str| {
        std::fs::read_to_string(v1_group(c, id).join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "16");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 64 ")),
        "{limits}"
    );

    let dir = jail.dir();
    let (code, output) = jail.stop(libc::SIGTERM);
    assert_eq!(code, Some(143), "{output:?}");
    assert!(
        output.iter().any(|l| l.contains("stopped by SIGTERM")),
        "{output:?}"
    );
    cleanup(&base, id);
    assert!(!dir.exists());
    assert!(!v1_group("memory", id).exists());
    cleanup(&base, id); // idempotent
    drop(netns);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_forbidden_system_call_on_any_thread_kills_the_vmm_with_sigsys() {
    if !ready("seccomp_violations") {
        return;
    }
    let (base, guest) = base("sys");
    let disk = base.join("disk.img");
    for kind in ["vmm", "vcpu", "blk-io"] {
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let id = format!("sys-{kind}");
        let out = Command::new(Artefact::SkiffJailer.path())
            .args([
                "--id",
                &id,
                "--uid",
                "10001",
                "--gid",
                "10001",
                "--exec-file",
            ])
            .arg(Artefact::SkiffVmm.path())
            .arg("--chroot-base")
            .arg(&base)
            .args([
                "--",
                "--kernel",
                guest.to_str().unwrap(),
                "--cmdline",
                "hello",
            ])
            .args([
                "--disk",
                &format!("path={}", disk.display()),
                "--seccomp-test-violation",
                kind,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(128 + libc::SIGSYS),
            "{kind}: {stderr}"
        );
        assert!(
            stderr.contains("killed (SIGSYS: it made a system call its seccomp filter forbids)"),
            "{kind}: {stderr}"
        );
        cleanup(&base, &id);
    }
    std::fs::remove_dir_all(&base).unwrap();
}

/// Whether `uid` can list `dir` (in a child process that becomes `uid`).
fn can_list_as(uid: u32, dir: &Path) -> bool {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: the child only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain system calls in the forked child, then _exit.
        unsafe {
            libc::setgroups(0, std::ptr::null());
            libc::setresgid(uid, uid, uid);
            libc::setresuid(uid, uid, uid);
            let d = libc::opendir(path.as_ptr());
            libc::_exit(if d.is_null() { 1 } else { 0 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

#[test]
fn jails_of_different_uids_cannot_read_each_other() {
    if !ready("jails_of_different_uids") {
        return;
    }
    let (base, guest) = base("uids");
    let a = start(
        "uid-a",
        10_011,
        &base,
        &[],
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "wait",
            "--memory-mib",
            "32",
        ],
        "test guest: waiting",
        Duration::from_secs(60),
    );
    let b = start(
        "uid-b",
        10_012,
        &base,
        &[],
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--cmdline",
            "wait",
            "--memory-mib",
            "32",
        ],
        "test guest: waiting",
        Duration::from_secs(60),
    );
    assert!(
        can_list_as(10_011, &a.dir().join("root")),
        "a reads its own jail"
    );
    assert!(
        !can_list_as(10_011, &b.dir().join("root")),
        "a must not read b's jail"
    );
    assert!(
        !can_list_as(10_012, &a.dir().join("root")),
        "b must not read a's jail"
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/mnt", a.vmm_pid)).unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/mnt", b.vmm_pid)).unwrap()
    );
    for jail in [a, b] {
        let id = jail.id.clone();
        let (code, _) = jail.stop(libc::SIGTERM);
        assert_eq!(code, Some(143));
        cleanup(&base, &id);
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn bad_requests_are_clear_errors_and_leave_nothing_behind() {
    if !ready("jailer_errors") {
        return;
    }
    let (base, guest) = base("err");
    let jailer = |id: &str, exec: &Path| {
        Command::new(Artefact::SkiffJailer.path())
            .args([
                "--id",
                id,
                "--uid",
                "10001",
                "--gid",
                "10001",
                "--exec-file",
            ])
            .arg(exec)
            .arg("--chroot-base")
            .arg(&base)
            .args([
                "--cgroup",
                "pids=8",
                "--",
                "--kernel",
                guest.to_str().unwrap(),
                "--cmdline",
                "hello",
            ])
            .output()
            .unwrap()
    };
    let vmm = Artefact::SkiffVmm.path();
    let entries = || std::fs::read_dir(&base).unwrap().count();
    let before = entries();
    for (id, expected) in [
        ("a/b", "invalid id \"a/b\""),
        ("..", "invalid id \"..\""),
        ("", "invalid id"),
    ] {
        let out = jailer(id, &vmm);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{id}: {stderr}");
        assert!(stderr.contains(expected), "{id}: {stderr}");
    }
    let out = jailer("no-exec", Path::new("/nonexistent/skiff-vmm"));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("exec file /nonexistent/skiff-vmm does not exist"));
    assert_eq!(entries(), before, "nothing created");

    // An existing jail is refused and left as it was.
    let existing = base.join("skiff-vmm/taken/root");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("marker"), b"mine").unwrap();
    let out = jailer("taken", &vmm);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a jail for id taken already exists"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(existing.join("marker")).unwrap(), b"mine");
    assert!(!v1_group("pids", "taken").exists(), "no cgroup made");

    // A failure half-way (a kernel that does not exist) removes what was made.
    let out = Command::new(Artefact::SkiffJailer.path())
        .args([
            "--id",
            "half",
            "--uid",
            "10001",
            "--gid",
            "10001",
            "--exec-file",
        ])
        .arg(&vmm)
        .arg("--chroot-base")
        .arg(&base)
        .args([
            "--cgroup",
            "pids=8",
            "--",
            "--kernel",
            "/nonexistent/vmlinux",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vmlinux"));
    assert!(!base.join("skiff-vmm/half").exists());
    assert!(!v1_group("pids", "half").exists());
    std::fs::remove_dir_all(&base).unwrap();
}
