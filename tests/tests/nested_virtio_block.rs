//! virtio-blk and virtio-rng with real Linux guests on `skiff-vmm` inside the nested test host:
//! the guest writes a pattern to a read-write disk, checksums a read-only disk, fails to write to
//! it, mounts an ext4 disk and writes a file, and reads /dev/hwrng; the nested host then checks
//! the disk files after the VMM exited. One nested boot, one guest, four devices.

use std::path::PathBuf;
use std::process::Command;

use skiff_tests::artefacts::{require, workspace_root, Artefact, Need};
use skiff_tests::guest_image::write_test_initramfs;
use skiff_tests::nested::{case, NestedHost};

/// Runs inside the guest (guest-init runs it with `skiff.run=/test.sh`).
const GUEST_SCRIPT: &str = r#"/bin/busybox --install -s /bin
set -e
yes skiff-block-pattern | head -c 1048576 > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=4096 conv=fsync 2>/dev/null
echo "guest: pattern written"
echo "guest: ro-sha $(sha256sum /dev/vdb | cut -d' ' -f1)"
echo "guest: ro-flag $(cat /sys/block/vdb/ro) serial $(cat /sys/block/vdb/serial)"
if dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then
    echo "guest: ro-write succeeded"
else
    echo "guest: ro-write refused"
fi
echo "guest: fs says $(cat /mnt/fs/hello.txt)"
echo "written by the guest" > /mnt/fs/from-guest.txt
sync
echo "guest: rng $(cat /sys/class/misc/hw_random/rng_current)"
a=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
b=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
echo "guest: rng-bytes ${#a} differ $([ "$a" != "$b" ] && echo yes || echo no)"
exit 0
"#;

/// Runs in the nested host around the guest.
const HOST_SCRIPT: &str = r#"cd /tmp
dd if=/dev/zero of=rw.img bs=1M count=8 2>/dev/null
dd if=/dev/urandom of=ro.img bs=1M count=4 2>/dev/null
cp /skiff/fs.ext4 fs.ext4
echo "host: ro-sha $(sha256sum ro.img | cut -d' ' -f1)"
CASE_GUEST
echo "host: pattern-sha $(yes skiff-block-pattern | head -c 1048576 | sha256sum | cut -d' ' -f1)"
echo "host: rw-head-sha $(head -c 1048576 rw.img | sha256sum | cut -d' ' -f1)"
echo "host: rw-tail-nonzero $(tail -c +1048577 rw.img | tr -d '\000' | wc -c)"
echo "host: ro-sha-after $(sha256sum ro.img | cut -d' ' -f1)"
mkdir -p /mnt/check && mount -o loop,ro fs.ext4 /mnt/check && echo "host: from-guest $(cat /mnt/check/from-guest.txt)"
"#;

fn value<'a>(console: &'a str, key: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} in:\n{console}"))
}

#[test]
fn block_and_entropy_devices_work_in_a_real_guest() {
    if !require(
        "nested_virtio_block",
        &[
            Need::Program("qemu-system-x86_64"),
            Need::Program("mkfs.ext4"),
            Need::Artefact(Artefact::TestHostKernel),
            Need::Artefact(Artefact::GuestKernel),
            Need::Artefact(Artefact::GuestInit),
            Need::Artefact(Artefact::SkiffVmm),
        ],
    ) {
        return;
    }
    let dir = workspace_root().join(format!("target/nested/virtio-block-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("fs")).unwrap();
    let initramfs = dir.join("initramfs.cpio");
    write_test_initramfs(&[("test.sh", GUEST_SCRIPT)], &initramfs).unwrap();
    std::fs::write(dir.join("fs/hello.txt"), "hello from the host\n").unwrap();
    let fs_image: PathBuf = dir.join("fs.ext4");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir.join("fs"))
        .arg(&fs_image)
        .arg("16M")
        .status()
        .unwrap();
    assert!(mkfs.success());

    let guest = case(
        "guest",
        "skiff-vmm --kernel /skiff/vmlinux --initrd /skiff/test-initramfs.cpio --memory-mib 128 \
         --rng --disk path=/tmp/rw.img --disk path=/tmp/ro.img,ro=true,id=golden-disk \
         --disk path=/tmp/fs.ext4 \
         --cmdline 'console=ttyS0 reboot=k panic=-1 quiet skiff.mount=/dev/vdc:/mnt/fs skiff.run=/test.sh'",
    );
    let script = HOST_SCRIPT.replace("CASE_GUEST\n", &guest);
    let mut host = NestedHost::with_skiff().unwrap();
    host.file("skiff/test-initramfs.cpio", &initramfs).unwrap();
    host.file("skiff/fs.ext4", &fs_image).unwrap();
    let run = host.run(&script).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let console = &run.console;

    let (guest_out, status) = run.case("guest").unwrap();
    assert_eq!(status, 0, "{guest_out}");
    assert!(guest_out.contains("guest: pattern written"), "{guest_out}");

    // The read-write disk holds exactly the pattern, the rest untouched.
    assert_eq!(
        value(console, "host: rw-head-sha"),
        value(console, "host: pattern-sha"),
        "{console}"
    );
    assert_eq!(value(console, "host: rw-tail-nonzero"), "0", "{console}");
    // The read-only disk reads back identically in the guest, refuses writes, and is unchanged.
    assert_eq!(
        value(console, "guest: ro-sha"),
        value(console, "host: ro-sha"),
        "{console}"
    );
    assert_eq!(
        value(console, "guest: ro-flag"),
        "1 serial golden-disk",
        "{console}"
    );
    assert_eq!(value(console, "guest: ro-write"), "refused", "{console}");
    assert_eq!(
        value(console, "host: ro-sha-after"),
        value(console, "host: ro-sha"),
        "{console}"
    );
    // The ext4 disk was mounted by guest-init, read, and written.
    assert_eq!(
        value(console, "guest: fs says"),
        "hello from the host",
        "{console}"
    );
    assert_eq!(
        value(console, "host: from-guest"),
        "written by the guest",
        "{console}"
    );
    // Entropy.
    assert_eq!(value(console, "guest: rng"), "virtio_rng.0", "{console}");
    assert_eq!(
        value(console, "guest: rng-bytes"),
        "64 differ yes",
        "{console}"
    );
}
