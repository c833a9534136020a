//! Verification level 4: inside the nested test host (real KVM under QEMU TCG), `skiff-vmm` boots
//! our real guest kernel and guest-init. One nested boot serves every check here.

use skiff_tests::artefacts::{require, Artefact, Need};
use skiff_tests::guest_console::{banner_memory_kib, banner_value};
use skiff_tests::nested::{case, NestedHost, NestedRun};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

fn vmm_case(name: &str, vcpus: u8, memory_mib: u32, extra_cmdline: &str) -> String {
    case(
        name,
        &format!(
            "skiff-vmm --kernel /skiff/vmlinux --initrd /skiff/initramfs.cpio --vcpus {vcpus} \
             --memory-mib {memory_mib} --cmdline '{CMDLINE} {extra_cmdline}'"
        ),
    )
}

fn check_boot(run: &NestedRun, name: &str, vcpus: u8, memory_mib: u64) {
    let (out, status) = run
        .case(name)
        .unwrap_or_else(|| panic!("case {name} missing:\n{}", run.console));
    assert_eq!(status, 0, "{name}: {out}");
    assert!(out.contains("skiff-init: started"), "{name}: {out}");
    assert!(out.contains("boot: guest init after "), "{name}: {out}");
    assert_eq!(
        banner_value(&out, "cpus"),
        Some(vcpus.to_string().as_str()),
        "{name}: {out}"
    );
    let mem_kib =
        banner_memory_kib(&out).unwrap_or_else(|| panic!("{name}: no memory in banner: {out}"));
    let configured = memory_mib * 1024;
    assert!(
        (configured - 32 * 1024..=configured).contains(&mem_kib),
        "{name}: MemTotal {mem_kib} KiB for {memory_mib} MiB"
    );
    assert!(
        out.contains("skiff-vmm: guest exited with status 0"),
        "{name}: {out}"
    );
}

#[test]
fn real_linux_guests_boot_on_skiff_vmm_in_the_nested_host() {
    if !require(
        "nested_boot",
        &[
            Need::Program("qemu-system-x86_64"),
            Need::Artefact(Artefact::TestHostKernel),
            Need::Artefact(Artefact::GuestKernel),
            Need::Artefact(Artefact::GuestInitramfs),
            Need::Artefact(Artefact::SkiffVmm),
        ],
    ) {
        return;
    }
    let script = [
        case(
            "kvm",
            "test -c /dev/kvm && grep -qw svm /proc/cpuinfo && echo kvm-ready",
        ),
        vmm_case("small", 1, 128, ""),
        vmm_case("large", 2, 512, ""),
        vmm_case("exit7", 1, 128, "skiff.exit=7"),
        vmm_case("no-init", 1, 128, "rdinit=/nonexistent init=/nonexistent"),
        vmm_case("init-panic", 1, 128, "skiff.panic"),
    ]
    .concat();
    let run = NestedHost::with_skiff().unwrap().run(&script).unwrap();
    eprintln!("nested run took {:?}", run.elapsed);

    let (kvm, _) = run.case("kvm").unwrap();
    assert!(
        kvm.contains("kvm-ready"),
        "KVM inside the nested host: {}",
        run.console
    );

    check_boot(&run, "small", 1, 128);
    check_boot(&run, "large", 2, 512);

    let (out, status) = run.case("exit7").unwrap();
    assert_eq!(status, 7, "{out}");
    assert!(out.contains("skiff-init: exit status 7"), "{out}");

    // No init: the kernel panics, resets, and skiff-vmm reports the panic.
    let (out, status) = run.case("no-init").unwrap();
    assert_eq!(status, 125, "{out}");
    assert!(
        out.contains("skiff-vmm: guest crashed: Kernel panic"),
        "{out}"
    );
}
