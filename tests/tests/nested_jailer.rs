//! `skiff-jailer` inside the nested test host (cgroup v2 only) with real Linux guests: the jailed
//! VMM's isolation (with a disk, and a tap in the task's network namespace that the guest pings
//! through) and its vsock and console in the task's run directory (the control channel's
//! guest-initiated connection and host-initiated streams through the jail), a guest that uses all
//! of its memory staying within the VMM's cgroup limit, and a fork bomb inside a guest leaving the
//! host alone. One nested boot.

use std::time::Duration;

use skiff_tests::artefacts::{require, workspace_root, Artefact, Need};
use skiff_tests::guest_image::write_probe_initramfs;
use skiff_tests::nested::NestedHost;

const SLEEP: &str = "/bin/busybox --install -s /bin\necho 'guest: sleeping'\nping -c 2 -W 10 172.16.0.1 >/dev/null && echo 'guest: ping ok'\nsleep 4\necho 'guest: done'\n";
/// sort holds its whole input (one endless line of zeros) in memory: the guest runs out of
/// memory and its kernel's OOM killer ends sort.
const FILL: &str = "/bin/busybox --install -s /bin\necho 'guest: filling'\nhead -c 200000000 /dev/zero | sort > /dev/null\necho \"guest: filled (sort status $?)\"\n";
const BOMB: &str = "echo 'guest: bombing'\nbomb() { bomb | bomb & }\nbomb\nsleep 600\n";

/// Guest memory, and the VMM cgroup limit: guest memory plus the documented overhead.
const GUEST_MIB: u32 = 128;
const OVERHEAD_MIB: u32 = 32;

const HOST_SCRIPT: &str = r#"
J="/skiff/skiff-jailer"
mkdir -p /srv/jailer
dd if=/dev/zero of=/tmp/disk.img bs=1M count=8 2>/dev/null
CMD="console=ttyS0 reboot=k panic=-1 quiet"
vm_json() { # file "cmdline settings" [more JSON members]: the VM configuration for --vm-config
    cat > "$1" <<EOF
{"kernel": "/skiff/vmlinux", "initrd": "/skiff/test.cpio", "memory_mib": GUEST_MIB,
 "cmdline": "$CMD $2"$3}
EOF
}
# What the host knows when a step takes too long.
diagnose() { # log
    echo "check: stuck; $1 ends with:"; tail -n 20 "$1"
    ps -o pid,stat,time,comm | tail -n 30
}
wait_for() { # file text: within 120 s
    end=$(($(date +%s) + 120))
    while ! grep -q "$2" "$1" 2>/dev/null; do
        [ "$(date +%s)" -ge $end ] && { diagnose "$1"; return 1; }
        sleep 0.2
    done
}
wait_exit() { # pid log: the jailer's exit status, killing it after 300 s
    end=$(($(date +%s) + 300))
    while kill -0 "$1" 2>/dev/null; do
        [ "$(date +%s)" -ge $end ] && { diagnose "$2"; kill -KILL "$1"; break; }
        sleep 0.2
    done
    wait "$1"
}
vmm_pid() { sed -n 's/.*running as pid //p' "$1"; }

# 1. Isolation, with a real guest, a disk and a tap (owned by the jail's uid, in a network
#    namespace of the task's own: a process holds it, the jailer joins it by /proc path); its
#    console and vsock sockets in the task's run directory (the jail's /run/task), where the
#    host serves the control channel (a guest-initiated connection) and streams to the guest.
unshare -n sleep 100000 &
NS=$!
sleep 0.5
nsenter -n -t $NS sh -c 'ip link set lo up && skiff-probe tap-add tap0 10001 &&
    ip addr add 172.16.0.1/30 dev tap0 && ip link set tap0 up' || echo "check: tap-failed"
R=/tmp/run-real-1
mkdir -p $R && chown 10001:10001 $R && chmod 0700 $R
vm_json /tmp/real.json "skiff.control skiff.run=/sleep.sh skiff.ip=172.16.0.2/30" \
    ", \"disks\": [{\"path\": \"/tmp/disk.img\"}], \"nets\": [{\"tap\": \"tap0\"}],
     \"vsock\": {\"cid\": 3, \"uds\": \"$R/v.sock\"}, \"serial_out\": \"$R/console.log\""
# The control socket is made connectable for the jail's uid (umask 0; the directory is the task's).
(umask 0; exec skiff-probe control $R/v.sock 'expect=echo hi=>hi' \
    'exec=/bin/busybox --install -s /bin' 'exec=skiff-probe guest-echo 5000 >/dev/null 2>&1 &' \
    'exec=sleep 1' 'streams=5000:2:1048576') > /tmp/control.log 2>&1 &
CP=$!
$J --id real-1 --exec-file /skiff/skiff-vmm --uid 10001 --gid 10001 --netns /proc/$NS/ns/net \
   --cgroup memory=LIMIT_MIBM --cgroup cpus=1 --cgroup pids=32 --resource-limit no-file=128 \
   --vm-config /tmp/real.json > /tmp/real.log 2>&1 &
JP=$!
wait_exit $CP /tmp/control.log; echo "check: control-exit $?"
sed 's/^/control: /' /tmp/control.log | tail -n 20
echo "check: vsock-owner $(stat -c %u $R/v.sock)"
wait_for $R/console.log "guest: sleeping" || echo "check: real-timeout"
P=$(vmm_pid /tmp/real.log)
[ "$(readlink /proc/$P/ns/net)" = "$(readlink /proc/$NS/ns/net)" ] && echo "check: ns-net task"
echo "check: tap $(grep -h '^iff:' /proc/$P/fdinfo/* 2>/dev/null | cut -f2)"
echo "check: uid $(sed -n 's/^Uid:\s*//p' /proc/$P/status | tr -s '\t ' ' ')"
echo "check: gid $(sed -n 's/^Gid:\s*//p' /proc/$P/status | tr -s '\t ' ' ')"
echo "check: nnp $(sed -n 's/^NoNewPrivs:\s*//p' /proc/$P/status)"
echo "check: seccomp $(for t in /proc/$P/task/*; do sed -n 's/^Seccomp:\s*//p' $t/status; done | sort -u | tr '\n' ' ')"
echo "check: threads $(ls /proc/$P/task | wc -l)"
echo "check: root $(ls /proc/$P/root | tr '\n' ' ')"
echo "check: run-task $(ls /proc/$P/root/run/task | tr '\n' ' ')"
echo "check: devices $(cd /proc/$P/root/dev && ls kvm urandom net/tun | tr '\n' ' ')"
for ns in pid mnt ipc uts; do
    [ "$(readlink /proc/$P/ns/$ns)" != "$(readlink /proc/self/ns/$ns)" ] && echo "check: ns-$ns differs"
done
echo "check: cgroup $(cat /proc/$P/cgroup)"
G=/sys/fs/cgroup/skiff/real-1
echo "check: limits $(cat $G/memory.max) $(cat $G/cpu.max) $(cat $G/pids.max)"
echo "check: etc-visible $([ -e /proc/$P/root/etc ] && echo yes || echo no)"
wait_exit $JP /tmp/real.log; echo "check: real-exit $?"
grep -q "guest: ping ok" $R/console.log && echo "check: real-guest-ping"
grep -q "guest: done" $R/console.log && echo "check: real-guest-done"
kill $NS
$J --cleanup --id real-1
echo "check: real-cleaned $([ -e /srv/jailer/skiff-vmm/real-1 ] || [ -e $G ] && echo no || echo yes)"

# 2. A guest that uses all of its memory.
vm_json /tmp/mem.json "skiff.run=/fill.sh"
$J --id mem-1 --exec-file /skiff/skiff-vmm --uid 10002 --gid 10002 --cgroup memory=LIMIT_MIBM \
   --vm-config /tmp/mem.json > /tmp/mem.log 2>&1 &
wait_exit $! /tmp/mem.log; echo "check: mem-exit $?"
grep "guest: filled" /tmp/mem.log | sed 's/^/check: /'
G=/sys/fs/cgroup/skiff/mem-1
echo "check: mem-peak $(cat $G/memory.peak)"
echo "check: mem-max $(cat $G/memory.max)"
echo "check: mem-oom-kills $(sed -n 's/^oom_kill //p' $G/memory.events)"
$J --cleanup --id mem-1

# 3. A fork bomb inside the guest.
vm_json /tmp/bomb.json "skiff.run=/bomb.sh"
$J --id bomb-1 --exec-file /skiff/skiff-vmm --uid 10003 --gid 10003 --cgroup pids=16 \
   --vm-config /tmp/bomb.json > /tmp/bomb.log 2>&1 &
JP=$!
wait_for /tmp/bomb.log "guest: bombing" || echo "check: bomb-timeout"
# Long enough for the bomb to fill the guest; short, since the emulated nested host has frozen
# (QEMU's SVM) during this step now and then.
sleep 3
P=$(vmm_pid /tmp/bomb.log)
echo "check: bomb-vmm-threads $(ls /proc/$P/task | wc -l)"
echo "check: bomb-cgroup-pids $(cat /sys/fs/cgroup/skiff/bomb-1/pids.current)"
echo "check: host-alive $(echo ok)"
echo "check: host-procs $(ls -d /proc/[0-9]* | wc -l)"
kill -TERM $P
wait_exit $JP /tmp/bomb.log; echo "check: bomb-exit $?"
$J --cleanup --id bomb-1
"#;

fn check<'a>(console: &'a str, key: &str) -> &'a str {
    let prefix = format!("check: {key}");
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{console}"))
}

#[test]
fn jailed_vmms_in_the_nested_host() {
    if !require(
        "nested_jailer",
        &[
            Need::Program("qemu-system-x86_64"),
            Need::Artefact(Artefact::TestHostKernel),
            Need::Artefact(Artefact::GuestKernel),
            Need::Artefact(Artefact::GuestInit),
            Need::Artefact(Artefact::SkiffVmm),
            Need::Artefact(Artefact::SkiffJailer),
            Need::Artefact(Artefact::Probe),
        ],
    ) {
        return;
    }
    let dir = workspace_root().join(format!("target/nested/jailer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = dir.join("test.cpio");
    write_probe_initramfs(
        &[("sleep.sh", SLEEP), ("fill.sh", FILL), ("bomb.sh", BOMB)],
        &initramfs,
    )
    .unwrap();
    let script = HOST_SCRIPT
        .replace("GUEST_MIB", &GUEST_MIB.to_string())
        .replace("LIMIT_MIB", &(GUEST_MIB + OVERHEAD_MIB).to_string());
    let mut host = NestedHost::with_skiff().unwrap();
    host.binary("skiff/skiff-jailer", &Artefact::SkiffJailer.path())
        .unwrap();
    host.file("skiff/test.cpio", &initramfs).unwrap();
    host.binary("bin/skiff-probe", &Artefact::Probe.path())
        .unwrap();
    host.timeout(Duration::from_secs(600));
    let run = host.run(&script).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let c = &run.console;
    eprintln!("nested jailer run took {:?}", run.elapsed);

    assert!(!c.contains("check: stuck"), "a step did not finish: {c}");

    // Isolation.
    assert_eq!(check(c, "uid"), "10001 10001 10001 10001", "{c}");
    assert_eq!(check(c, "gid"), "10001 10001 10001 10001", "{c}");
    assert_eq!(check(c, "nnp"), "1", "{c}");
    assert_eq!(check(c, "seccomp"), "2", "every thread filtered: {c}");
    assert_eq!(
        check(c, "root"),
        "dev disk0 initrd run skiff-vmm vm.json vmlinux",
        "{c}"
    );
    // The console and the VMM's socket in the task's run directory, through the jail's
    // /run/task (the host's control socket is gone with its listener by then): the guest
    // connected to the host (control channel) and the host to the guest (streams).
    assert_eq!(check(c, "run-task"), "console.log v.sock", "{c}");
    assert_eq!(check(c, "control-exit"), "0", "{c}");
    assert!(
        c.contains("guest-init says hello"),
        "guest-initiated connection: {c}"
    );
    assert!(
        c.contains("host->guest: 2 streams x 1048576 bytes echoed intact"),
        "host-initiated streams: {c}"
    );
    assert!(c.contains("control: all steps passed"), "{c}");
    assert_eq!(
        check(c, "vsock-owner"),
        "10001",
        "made by the jailed VMM: {c}"
    );
    assert_eq!(check(c, "devices"), "kvm net/tun urandom", "{c}");
    assert_eq!(check(c, "ns-net"), "task", "joined the task's netns: {c}");
    assert_eq!(check(c, "tap"), "tap0", "attached to the task's tap: {c}");
    for ns in ["pid", "mnt", "ipc", "uts"] {
        assert_eq!(check(c, &format!("ns-{ns}")), "differs", "{c}");
    }
    assert_eq!(check(c, "cgroup"), "0::/skiff/real-1", "cgroup v2: {c}");
    let limit = u64::from(GUEST_MIB + OVERHEAD_MIB) << 20;
    assert_eq!(
        check(c, "limits"),
        format!("{limit} 100000 100000 32"),
        "{c}"
    );
    assert_eq!(check(c, "etc-visible"), "no", "{c}");
    assert_eq!(check(c, "real-exit"), "0", "{c}");
    check(c, "real-guest-ping");
    check(c, "real-guest-done");
    assert_eq!(check(c, "real-cleaned"), "yes", "{c}");

    // All guest memory in use: the VMM stays within its limit and is never OOM-killed.
    assert_eq!(check(c, "mem-exit"), "0", "{c}");
    assert!(check(c, "guest: filled").contains("sort status"), "{c}");
    let peak: u64 = check(c, "mem-peak").parse().unwrap();
    assert!(peak <= limit, "peak {peak} over the limit {limit}");
    assert!(
        peak >= (u64::from(GUEST_MIB) << 20) / 2,
        "the guest really used its memory: peak {peak}"
    );
    assert_eq!(check(c, "mem-oom-kills"), "0", "{c}");

    // Fork bomb: contained in the guest; the VMM keeps its threads; the host is fine.
    let threads: u32 = check(c, "bomb-vmm-threads").parse().unwrap();
    assert!(threads <= 4, "VMM threads {threads}");
    let pids: u32 = check(c, "bomb-cgroup-pids").parse().unwrap();
    assert!(pids <= 8, "cgroup pids {pids}");
    assert_eq!(check(c, "host-alive"), "ok");
    assert_eq!(check(c, "bomb-exit"), "143", "stopped by SIGTERM: {c}");
}
