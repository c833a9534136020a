//! Bad `skiff-vmm` configurations give a clear error, exit status 1, and no panic.

use std::process::Command;
use std::time::Duration;

use skiff_tests::artefacts::{require, Artefact, Need};
use skiff_tests::process::{run_with_timeout, Finished};

fn vmm(args: &[&str]) -> Finished {
    let finished = run_with_timeout(
        Command::new(Artefact::SkiffVmm.path()).args(args),
        Duration::from_secs(60),
    )
    .expect("skiff-vmm runs");
    assert!(!finished.timed_out);
    finished
}

fn assert_clear_error(run: &Finished, expected: &str) {
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("skiff-vmm: error:"), "{}", run.stderr);
    assert!(
        run.stderr.contains(expected),
        "expected {expected:?} in {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn configuration_errors_are_clear() {
    if !require(
        "configuration_errors",
        &[Need::Artefact(Artefact::SkiffVmm)],
    ) {
        return;
    }
    let exe = Artefact::SkiffVmm.path();
    let exe = exe.to_str().unwrap();
    assert_clear_error(
        &vmm(&["--kernel", "/nonexistent/vmlinux"]),
        "kernel /nonexistent/vmlinux does not exist",
    );
    assert_clear_error(&vmm(&[]), "no kernel given");
    assert_clear_error(
        &vmm(&["--kernel", exe, "--vcpus", "0"]),
        "vCPU count must be between 1 and 32, not 0",
    );
    assert_clear_error(&vmm(&["--kernel", exe, "--vcpus", "200"]), "not 200");
    assert_clear_error(
        &vmm(&["--kernel", exe, "--memory-mib", "8"]),
        "memory must be between 32 MiB",
    );
    assert_clear_error(
        &vmm(&["--kernel", exe, "--initrd", "/nonexistent/initrd"]),
        "initrd /nonexistent/initrd does not exist",
    );
    assert_clear_error(
        &vmm(&["--config", "/nonexistent.json"]),
        "cannot read config file /nonexistent.json",
    );
    assert_clear_error(
        &vmm(&["--kernel", exe, "--cmdline", "console=ttyS0\tquiet"]),
        "only printable ASCII",
    );
}

#[test]
fn a_kernel_that_is_not_elf_or_does_not_fit_is_refused() {
    if !require(
        "kernel_errors",
        &[
            Need::Kvm,
            Need::Artefact(Artefact::SkiffVmm),
            Need::Artefact(Artefact::GuestKernel),
        ],
    ) {
        return;
    }
    let not_elf = std::env::temp_dir().join(format!("skiff-not-elf-{}", std::process::id()));
    std::fs::write(&not_elf, vec![b'x'; 4096]).unwrap();
    let run = vmm(&["--kernel", not_elf.to_str().unwrap()]);
    std::fs::remove_file(&not_elf).unwrap();
    assert_clear_error(&run, "is not a loadable x86_64 ELF vmlinux");

    // Our guest kernel is linked at 16 MiB and does not fit in the smallest guest.
    let kernel = Artefact::GuestKernel.path();
    let run = vmm(&["--kernel", kernel.to_str().unwrap(), "--memory-mib", "32"]);
    assert_clear_error(&run, "beyond the guest's 32 MiB of memory");
}
