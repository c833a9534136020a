//! `skiff-jailer` on this machine (cgroup v1 controllers, emulated /dev/kvm) with tiny test guests:
//! isolation of the jailed VMM (with a disk, and a tap in the task's network namespace), the
//! serial log and vsock sockets in the task's run directory, seccomp on every thread kind, jails
//! of different uids, a VMM that dies with its jailer, and clear errors that leave nothing behind.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::artefacts::{require, Artefact, Need};
use skiff_tests::jail_run::{cleanup, start, write_vm_config};
use skiff_tests::process::run_with_timeout;
use vmm::config::{DiskConfig, NetConfig, SerialOutput, VmConfig, VsockConfig};

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
    std::fs::set_permissions(&guest, std::fs::Permissions::from_mode(0o644)).unwrap();
    (base, guest)
}

/// The test guest with `cmdline` and `memory_mib`, serial output on stdout.
fn guest_vm(guest: &Path, cmdline: &str, memory_mib: u64) -> VmConfig {
    let mut vm = VmConfig::with_kernel(guest.to_owned());
    vm.cmdline = cmdline.into();
    vm.memory_mib = memory_mib;
    vm
}

fn disk(path: &Path) -> DiskConfig {
    DiskConfig {
        path: path.to_owned(),
        read_only: false,
        id: None,
    }
}

/// A task run directory owned by `uid` (mode 0700), as the runner makes it.
fn run_dir(base: &Path, name: &str, uid: u32) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Waits until `file` contains `text`; panics after `timeout`.
fn wait_for_text(file: &Path, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let content = std::fs::read_to_string(file).unwrap_or_default();
        if content.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {} within {timeout:?}: {content:?}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a process of `uid`, in the mount namespace (and so the root) of process `pid`, can
/// connect to the Unix socket `path` there: what the jailed VMM does for a guest connection.
fn can_connect_in_jail_as(pid: i32, uid: u32, path: &str) -> bool {
    let ns = std::ffi::CString::new(format!("/proc/{pid}/ns/mnt")).unwrap();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the child makes system calls only, on data prepared before the fork, and exits.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        // SAFETY: system calls on valid pointers in the forked child, then _exit.
        unsafe {
            let fd = libc::open(ns.as_ptr(), libc::O_RDONLY);
            let ok = fd >= 0
                && libc::setns(fd, libc::CLONE_NEWNS) == 0
                && libc::chdir(c"/".as_ptr()) == 0
                && libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(uid, uid, uid) == 0
                && libc::setresuid(uid, uid, uid) == 0;
            let sock = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let connected = ok
                && sock >= 0
                && libc::connect(
                    sock,
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                ) == 0;
            libc::_exit(if connected { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// `skiff-jailer --cleanup`, again while the cgroup is still busy (a killed VMM leaving it).
fn cleanup_soon(base: &Path, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = Command::new(Artefact::SkiffJailer.path())
            .args(["--cleanup", "--id", id])
            .arg("--chroot-base")
            .arg(base)
            .status()
            .expect("skiff-jailer --cleanup runs");
        if status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "cleanup of {id} failed");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let disk_path = base.join("disk.img");
    std::fs::write(&disk_path, vec![0u8; 1 << 20]).unwrap();
    let id = "iso-1";
    let netns = NetnsWithTap::new(
        &format!("skiff-iso-{}", std::process::id()),
        "tap-iso",
        10_001,
    );
    let netns_path = netns.path();
    let mut vm = guest_vm(&guest, "wait", 48);
    vm.disks.push(disk(&disk_path));
    vm.nets.push(NetConfig {
        tap: "tap-iso".into(),
        mac: None,
    });
    let vm_config = write_vm_config(&base.join("vm.json"), &vm);
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
        &vm_config,
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
    // Each thread installs its own filter as it starts (the block I/O helper asynchronously).
    let deadline = Instant::now() + Duration::from_secs(10);
    for t in &tasks {
        while status_field(pid, Some(t), "Seccomp") != "2" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(status_field(pid, Some(t), "Seccomp"), "2", "thread {t}");
    }
    // Its root is the jail: only the VMM, its files and three device nodes.
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    root.sort();
    assert_eq!(root, ["dev", "disk0", "skiff-vmm", "vm.json", "vmlinux"]);
    // Made and filled by root: the task's group may read it, nobody else enter it.
    for dir in [
        format!("/proc/{pid}/root"),
        jail.dir().display().to_string(),
    ] {
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (0, 10_001, 0o750),
            "{dir}"
        );
    }
    let jailed = VmConfig::from_file(Path::new(&format!("/proc/{pid}/root/vm.json"))).unwrap();
    assert_eq!(jailed.kernel, Path::new("/vmlinux"));
    assert_eq!(jailed.disks[0].path, Path::new("/disk0"));
    assert_eq!(jailed.nets, vm.nets);
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, "/skiff-vmm\0--config\0/vm.json\0");
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
    let disk_path = base.join("disk.img");
    // A guest that waits: only the violation ends the VMM (the helper thread starts
    // asynchronously; a guest that exits could beat it).
    let mut vm = guest_vm(&guest, "wait", 128);
    vm.disks.push(disk(&disk_path));
    let vm_config = write_vm_config(&base.join("vm.json"), &vm);
    for kind in ["vmm", "vcpu", "blk-io"] {
        std::fs::write(&disk_path, vec![0u8; 1 << 20]).unwrap();
        let id = format!("sys-{kind}");
        let out = run_with_timeout(
            Command::new(Artefact::SkiffJailer.path())
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
                .arg("--vm-config")
                .arg(&vm_config)
                .args(["--seccomp-test-violation", kind]),
            Duration::from_secs(60),
        )
        .unwrap();
        let stderr = &out.stderr;
        assert!(!out.timed_out, "{kind}: no violation within 60 s: {stderr}");
        assert_eq!(out.code, Some(128 + libc::SIGSYS), "{kind}: {stderr}");
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
    let vm_config = write_vm_config(&base.join("vm.json"), &guest_vm(&guest, "wait", 32));
    let a = start(
        "uid-a",
        10_011,
        &base,
        &[],
        &vm_config,
        "test guest: waiting",
        Duration::from_secs(60),
    );
    let b = start(
        "uid-b",
        10_012,
        &base,
        &[],
        &vm_config,
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
fn the_serial_log_and_vsock_sockets_are_in_the_task_run_directory() {
    if !ready("jailed_run_directory") {
        return;
    }
    let (base, guest) = base("run");
    let uid = 10_021;
    let run = run_dir(&base, "task-run", uid);
    // The host listens for guest connections to port 1024 before the VMM starts, as the runner
    // does (the socket handed to the task's uid).
    let control = run.join("v.sock_1024");
    let listener = std::os::unix::net::UnixListener::bind(&control).unwrap();
    std::os::unix::fs::chown(&control, Some(uid), Some(uid)).unwrap();
    let mut vm = guest_vm(&guest, "wait", 32);
    vm.serial_out = SerialOutput::File(run.join("console.log"));
    vm.vsock = Some(VsockConfig {
        cid: 3,
        uds: run.join("v.sock"),
    });
    let vm_config = write_vm_config(&base.join("vm.json"), &vm);
    let id = "run-1";
    let jail = start(
        id,
        uid,
        &base,
        &[],
        &vm_config,
        "running as pid",
        Duration::from_secs(60),
    );
    let pid = jail.vmm_pid;
    // The console goes to the host's run directory, through the jail's /run/task.
    wait_for_text(
        &run.join("console.log"),
        "test guest: waiting",
        Duration::from_secs(60),
    );
    let jailed = VmConfig::from_file(Path::new(&format!("/proc/{pid}/root/vm.json"))).unwrap();
    assert_eq!(
        jailed.serial_out,
        SerialOutput::File("/run/task/console.log".into())
    );
    assert_eq!(jailed.vsock.unwrap().uds, Path::new("/run/task/v.sock"));
    // (a) The VMM made its listening socket there; a host program connects to it.
    let sock = std::fs::symlink_metadata(run.join("v.sock")).unwrap();
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.uid(), uid, "created by the jailed VMM");
    std::os::unix::net::UnixStream::connect(run.join("v.sock")).expect("the host connects");
    // (b) From the jail, the VMM's uid reaches the host's listener at /run/task/v.sock_1024.
    listener.set_nonblocking(true).unwrap();
    assert!(can_connect_in_jail_as(pid, uid, "/run/task/v.sock_1024"));
    assert!(
        listener.accept().is_ok(),
        "the host listener got the connection"
    );
    assert!(
        !can_connect_in_jail_as(pid, uid + 1, "/run/task/v.sock_1024"),
        "another uid cannot"
    );
    // The jail holds the directory mounted, nothing else of the host.
    let mut entries: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/run/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, ["console.log", "v.sock", "v.sock_1024"]);
    let (code, output) = jail.stop(libc::SIGTERM);
    assert_eq!(code, Some(143), "{output:?}");
    cleanup(&base, id);
    assert!(run.join("console.log").is_file(), "the run directory stays");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_vmm_does_not_outlive_its_jailer() {
    if !ready("jailer_death") {
        return;
    }
    let (base, guest) = base("death");
    let vm_config = write_vm_config(&base.join("vm.json"), &guest_vm(&guest, "wait", 32));
    let id = "death-1";
    let jail = start(
        id,
        10_031,
        &base,
        &["--cgroup", "pids=16"],
        &vm_config,
        "test guest: waiting",
        Duration::from_secs(60),
    );
    let pid = jail.vmm_pid;
    assert!(!gone(pid));
    jail.kill_jailer();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(pid) {
        assert!(
            Instant::now() < deadline,
            "the VMM (pid {pid}) outlived its jailer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cleanup_soon(&base, id);
    assert!(!v1_group("pids", id).exists());
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn bad_requests_are_clear_errors_and_leave_nothing_behind() {
    if !ready("jailer_errors") {
        return;
    }
    let (base, guest) = base("err");
    let vm_config = write_vm_config(&base.join("vm.json"), &guest_vm(&guest, "hello", 128));
    let jailer = |id: &str, exec: &Path, vm_config: &Path| {
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
            .args(["--cgroup", "pids=8", "--vm-config"])
            .arg(vm_config)
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
        let out = jailer(id, &vmm, &vm_config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{id}: {stderr}");
        assert!(stderr.contains(expected), "{id}: {stderr}");
    }
    let out = jailer("no-exec", Path::new("/nonexistent/skiff-vmm"), &vm_config);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("exec file /nonexistent/skiff-vmm does not exist"));
    let out = jailer("no-config", &vmm, Path::new("/nonexistent/vm.json"));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read config file /nonexistent/vm.json"));
    assert_eq!(entries(), before, "nothing created");

    // VM configurations the jail cannot hold, refused before anything is made.
    let run = run_dir(&base, "run-ok", 10_001);
    let other_run = run_dir(&base, "run-other", 10_002);
    let with = |name: &str, change: &dyn Fn(&mut VmConfig)| {
        let mut vm = guest_vm(&guest, "hello", 128);
        change(&mut vm);
        write_vm_config(&base.join(name), &vm)
    };
    let cases: [(PathBuf, &str); 3] = [
        (
            with("nokernel.json", &|vm| {
                vm.kernel = "/nonexistent/vmlinux".into()
            }),
            "kernel /nonexistent/vmlinux does not exist",
        ),
        (
            with("split.json", &|vm| {
                vm.serial_out = SerialOutput::File(base.join("console.log"));
                vm.vsock = Some(VsockConfig {
                    cid: 3,
                    uds: run.join("v.sock"),
                });
            }),
            "must be in one directory",
        ),
        (
            with("badcid.json", &|vm| {
                vm.vsock = Some(VsockConfig {
                    cid: 1,
                    uds: run.join("v.sock"),
                })
            }),
            "vsock cid 1 is reserved",
        ),
    ];
    for (config, expected) in &cases {
        let out = jailer("refused", &vmm, config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
    assert!(!base.join("skiff-vmm").exists(), "nothing created");

    // An existing jail is refused and left as it was.
    let existing = base.join("skiff-vmm/taken/root");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::write(existing.join("marker"), b"mine").unwrap();
    let out = jailer("taken", &vmm, &vm_config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a jail for id taken already exists"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(existing.join("marker")).unwrap(), b"mine");
    assert!(!v1_group("pids", "taken").exists(), "no cgroup made");

    // Failures half-way (a run directory of another uid; a disk that is not a file) remove what
    // was made.
    for (config, expected) in [
        (
            with("otheruid.json", &|vm| {
                vm.serial_out = SerialOutput::File(other_run.join("console.log"))
            }),
            "must be a directory owned by the task's uid 10001",
        ),
        (
            with("dirdisk.json", &|vm| vm.disks.push(disk(&run))),
            "is not a regular file",
        ),
    ] {
        let out = jailer("half", &vmm, &config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
        assert!(!base.join("skiff-vmm/half").exists());
        assert!(!v1_group("pids", "half").exists());
    }
    std::fs::remove_dir_all(&base).unwrap();
}
