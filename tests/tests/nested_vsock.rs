//! virtio-vsock and the host↔guest control channel with a real Linux guest on `skiff-vmm` inside
//! the nested test host. guest-init connects to the host at boot (`skiff.control`); the host then
//! runs commands in the guest through it, and drives 16 concurrent 10 MiB streams each way,
//! a CONNECT to a port nobody listens on, garbage on the VMM's socket, a peer that closes
//! abruptly and one that connects before the guest's driver is up (dropped at the driver's reset) — and the VMM keeps serving and exits cleanly when the host shuts the guest down.

use skiff_tests::artefacts::{require, workspace_root, Artefact, Need};
use skiff_tests::guest_image::write_probe_initramfs;
use skiff_tests::nested::{case, NestedHost};

const STEPS: &[&str] = &[
    "exec=/bin/busybox --install -s /bin",
    "expect=echo hello; echo on-stderr >&2=>hello",
    "status=exit 3=>3",
    "expect=cd /tmp && FOO=bar sh -c 'echo $FOO $(pwd)'=>bar /tmp",
    "exec=skiff-probe guest-echo 5000 >/dev/null 2>&1 &",
    "exec=sleep 1",
    "streams=5000:16:10485760",
    "refused=5001",
    "garbage",
    "abrupt=5000",
    "host-echo=6000",
    "exec=skiff-probe guest-streams 6000 16 10485760",
    "expect=echo still-alive=>still-alive",
];

#[test]
fn vsock_streams_and_the_control_channel_work_with_a_real_guest() {
    if !require(
        "nested_vsock",
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
    let dir = workspace_root().join(format!("target/nested/vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = dir.join("initramfs.cpio");
    write_probe_initramfs(&[], &initramfs).unwrap();

    let steps: Vec<String> = STEPS
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "'\\''")))
        .collect();
    let script = format!(
        "cd /tmp\n\
         skiff-vmm --kernel /skiff/vmlinux --initrd /skiff/vsock-initramfs.cpio --memory-mib 256 \
         --vsock cid=3,uds=/tmp/v.sock --serial-out /tmp/guest.log \
         --cmdline 'console=ttyS0 reboot=k panic=-1 quiet skiff.control' &\n\
         vmm=$!\n\
         while [ ! -S /tmp/v.sock ]; do sleep 0.05; done\n\
         skiff-probe uds-connects /tmp/v.sock 5000 1 > /tmp/early.log 2>&1 &\n\
         {}\
         wait $vmm; echo \"vmm-exit $?\"\n\
         cat /tmp/guest.log\n",
        case(
            "control",
            &format!("skiff-probe control /tmp/v.sock {}", steps.join(" "))
        )
    );
    let mut host = NestedHost::with_skiff().unwrap();
    host.file("skiff/vsock-initramfs.cpio", &initramfs).unwrap();
    host.binary("bin/skiff-probe", &Artefact::Probe.path())
        .unwrap();
    let run = host.run(&script).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let console = &run.console;

    let (out, status) = run.case("control").unwrap();
    assert_eq!(status, 0, "{console}");
    assert!(out.contains("guest-init says hello: kernel 6.1"), "{out}");
    for step in STEPS {
        assert!(out.contains(&format!("step {step}: ok")), "{step}:\n{out}");
    }
    assert!(
        out.contains("host->guest: 16 streams x 10485760 bytes echoed intact"),
        "{out}"
    );
    assert!(
        out.contains("guest->host: 16 streams x 10485760 bytes echoed intact"),
        "{out}"
    );
    assert!(out.contains("control: all steps passed"), "{out}");
    // The guest side's own report, and the orderly end.
    assert!(console.contains("vmm-exit 0"), "{console}");
}
