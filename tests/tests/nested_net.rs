//! virtio-net over a tap and guest-init's network set-up, with a real Linux guest on `skiff-vmm`
//! inside the nested test host. In a network namespace of its own, the test creates a tap with
//! a host address; the guest gets the other address of the /30 from guest-init. Ping and a TCP
//! echo work in both directions, and 100 MiB go each way intact (every byte checked).

use skiff_tests::artefacts::{require, workspace_root, Artefact, Need};
use skiff_tests::guest_image::write_probe_initramfs;
use skiff_tests::nested::{case, NestedHost};

const STEPS: &[&str] = &[
    "exec=/bin/busybox --install -s /bin",
    "expect=hostname=>task-1",
    "expect=cat /etc/resolv.conf=>nameserver 172.16.0.1",
    "expect=ip -4 addr show eth0 | grep -o 'inet [0-9./]*'=>inet 172.16.0.2/30",
    "expect=cat /sys/class/net/eth0/address=>06:00:ac:10:00:02",
    "expect=ip route | grep default=>default via 172.16.0.1 dev eth0",
    "exec=ping -c 3 -W 10 172.16.0.1",
    "host=ping -c 3 -W 10 172.16.0.2",
    "exec=skiff-probe tcp-echo 7000 >/dev/null 2>&1 &",
    "exec=sleep 1",
    "host=skiff-probe tcp-streams 172.16.0.2 7000 1 104857600",
    "host=skiff-probe tcp-echo 7001 >/dev/null 2>&1 &",
    "exec=skiff-probe tcp-streams 172.16.0.1 7001 1 104857600",
    "host=skiff-probe tcp-streams 172.16.0.2 7000 4 4194304",
];

/// Runs in a fresh network namespace of the nested host.
const NETNS_SCRIPT: &str = r#"set -e
ip link set lo up
skiff-probe tap-add tap0
ip addr add 172.16.0.1/30 dev tap0
ip link set tap0 up
skiff-vmm --kernel /skiff/vmlinux --initrd /skiff/net-initramfs.cpio --memory-mib 256 \
    --net tap=tap0,mac=06:00:ac:10:00:02 --vsock cid=3,uds=/tmp/v.sock --serial-out /tmp/guest.log \
    --cmdline 'console=ttyS0 reboot=k panic=-1 quiet skiff.control skiff.ip=172.16.0.2/30 skiff.gw=172.16.0.1 skiff.hostname=task-1 skiff.dns=172.16.0.1' &
vmm=$!
set +e
skiff-probe control /tmp/v.sock STEPS
status=$?
wait $vmm
echo "vmm-exit $?"
exit $status
"#;

#[test]
fn a_guest_on_a_tap_talks_tcp_and_icmp_with_its_host_both_ways() {
    if !require(
        "nested_net",
        &[
            Need::Program("qemu-system-x86_64"),
            Need::Artefact(Artefact::TestHostKernel),
            Need::Artefact(Artefact::GuestKernel),
            Need::Artefact(Artefact::GuestInit),
            Need::Artefact(Artefact::SkiffVmm),
            Need::Artefact(Artefact::Probe),
        ],
    ) {
        return;
    }
    let dir = workspace_root().join(format!("target/nested/net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = dir.join("initramfs.cpio");
    write_probe_initramfs(&[], &initramfs).unwrap();

    let steps: Vec<String> = STEPS
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "'\\''")))
        .collect();
    let netns = NETNS_SCRIPT.replace("STEPS", &steps.join(" "));
    let script = format!(
        "cd /tmp\ncat > /tmp/netns.sh <<'NETNS'\n{netns}NETNS\n{}cat /tmp/guest.log\n",
        case("net", "unshare -n sh /tmp/netns.sh")
    );
    let mut host = NestedHost::with_skiff().unwrap();
    host.file("skiff/net-initramfs.cpio", &initramfs).unwrap();
    host.binary("bin/skiff-probe", &Artefact::Probe.path())
        .unwrap();
    let run = host.run(&script).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let console = &run.console;

    let (out, status) = run.case("net").unwrap();
    for step in STEPS {
        assert!(
            out.contains(&format!("step {step}: ok")),
            "{step}:\n{console}"
        );
    }
    assert_eq!(status, 0, "{console}");
    // 100 MiB each way, every byte compared: once started from the host, once from the guest.
    let intact = "tcp: 1 streams x 104857600 bytes echoed intact";
    assert_eq!(out.matches(intact).count(), 2, "{out}");
    assert!(
        console.contains("skiff-init: network eth0 172.16.0.2/30"),
        "{console}"
    );
    assert!(out.contains("vmm-exit 0"), "{out}");
}
