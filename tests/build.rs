//! Assembles the tiny test guests (verification level 2) into ELF images skiff-vmm can load.

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (binutils must be installed)"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = PathBuf::from("guests/test-guest.S");
    println!("cargo:rerun-if-changed={}", src.display());
    let obj = out.join("test-guest.o");
    let elf = out.join("test-guest.elf");
    run(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src));
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-static",
            "-nostdlib",
            "--build-id=none",
        ])
        .args(["-Ttext=0x100000", "-e", "_start", "-o"])
        .arg(&elf)
        .arg(&obj));
    println!("cargo:rustc-env=SKIFF_TEST_GUEST={}", elf.display());
}
