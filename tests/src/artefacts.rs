//! Where the things the end-to-end tests boot are, and what happens when they are missing: a
//! clear failure naming the set-up step, or — only with `SKIFF_ALLOW_SKIP=1` — a visible skip.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where release binaries are (`SKIFF_BIN_DIR`, or `target/release`).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("SKIFF_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release"))
}

/// Where the static release binaries are (`SKIFF_STATIC_BIN_DIR`, or
/// `target/x86_64-unknown-linux-gnu/release`): skiff-vmm, skiff-jailer, skiff-init.
pub fn static_bin_dir() -> PathBuf {
    std::env::var_os("SKIFF_STATIC_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/x86_64-unknown-linux-gnu/release"))
}

/// Where the container test images are (`SKIFF_TEST_IMAGES`, or `target/test-images`): OCI
/// image layouts that scripts/build-test-images.sh builds (its header describes each image).
pub fn test_images_dir() -> PathBuf {
    std::env::var_os("SKIFF_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/test-images"))
}

/// The OCI image layout of the container test image `name` (`busybox`, `httpd`, `layers`,
/// `evil`, `large`), for `skiff-image import DIR NAME`.
pub fn test_image(name: &str) -> PathBuf {
    test_images_dir().join(name)
}

/// The build artefacts a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artefact {
    /// `target/guest/vmlinux`
    GuestKernel,
    /// `target/guest/initramfs.cpio`
    GuestInitramfs,
    /// `target/test-host/vmlinux`
    TestHostKernel,
    /// `skiff-init`, guest-init's static binary
    GuestInit,
    /// `skiff-vmm` (static release build)
    SkiffVmm,
    /// `skiff-jailer` (static release build)
    SkiffJailer,
    /// `skiff-monitor` (static release build: small, and the same wherever it runs)
    SkiffMonitor,
    /// `skiff-bootbench` (release build)
    BootBench,
    /// `skiff-probe` (static release build: it runs in the nested host and in guests)
    Probe,
    /// `skiff-image` (release build)
    SkiffImage,
    /// A container test image's OCI layout directory, `target/test-images/NAME`
    TestImage(&'static str),
    /// The AWS CLI and boto3 from PyPI, in the virtualenv `target/ecs-venv` (its `aws`)
    EcsClients,
}

impl Artefact {
    pub fn path(self) -> PathBuf {
        let root = workspace_root();
        match self {
            Artefact::GuestKernel => root.join("target/guest/vmlinux"),
            Artefact::GuestInitramfs => root.join("target/guest/initramfs.cpio"),
            Artefact::TestHostKernel => root.join("target/test-host/vmlinux"),
            Artefact::GuestInit => static_bin_dir().join("skiff-init"),
            Artefact::SkiffVmm => static_bin_dir().join("skiff-vmm"),
            Artefact::SkiffJailer => static_bin_dir().join("skiff-jailer"),
            Artefact::SkiffMonitor => static_bin_dir().join("skiff-monitor"),
            Artefact::BootBench => bin_dir().join("skiff-bootbench"),
            Artefact::Probe => static_bin_dir().join("skiff-probe"),
            Artefact::SkiffImage => bin_dir().join("skiff-image"),
            Artefact::TestImage(name) => test_image(name),
            Artefact::EcsClients => root.join("target/ecs-venv/bin/aws"),
        }
    }

    /// Whether it has been built (an image layout counts once its index.json is there).
    fn exists(self) -> bool {
        match self {
            Artefact::TestImage(_) => self.path().join("index.json").is_file(),
            _ => self.path().is_file(),
        }
    }

    fn how_to_make(self) -> &'static str {
        match self {
            Artefact::GuestKernel
            | Artefact::GuestInitramfs
            | Artefact::TestHostKernel
            | Artefact::GuestInit
            | Artefact::SkiffVmm
            | Artefact::SkiffJailer
            | Artefact::SkiffMonitor
            | Artefact::Probe => "run scripts/setup.sh",
            Artefact::TestImage(_) => "run scripts/setup.sh (or scripts/build-test-images.sh)",
            Artefact::EcsClients => "run scripts/setup.sh (or scripts/ecs-clients.sh)",
            Artefact::BootBench | Artefact::SkiffImage => "run cargo build --release --workspace",
        }
    }
}

/// True when missing prerequisites may skip a test instead of failing it.
pub fn skips_allowed() -> bool {
    std::env::var("SKIFF_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// What a test needs that may be missing on this machine.
pub enum Need {
    Artefact(Artefact),
    /// `/dev/kvm`, openable read-write.
    Kvm,
    /// A program on PATH.
    Program(&'static str),
}

impl Need {
    /// `None` when satisfied, otherwise why not.
    fn missing(&self) -> Option<String> {
        match self {
            Need::Artefact(a) => (!a.exists())
                .then(|| format!("{} is missing ({})", a.path().display(), a.how_to_make())),
            Need::Kvm => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .err()
                .map(|e| format!("/dev/kvm cannot be opened: {e}")),
            Need::Program(name) => {
                (!on_path(name)).then(|| format!("{name} is not installed (run scripts/setup.sh)"))
            }
        }
    }
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Checks a test's prerequisites. Returns false (after saying so on stderr) when the test should
/// be skipped, which is only allowed with `SKIFF_ALLOW_SKIP=1`; otherwise panics naming what is
/// missing.
pub fn require(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(Need::missing).collect();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if skips_allowed() {
        // Straight to the process's stderr: libtest captures eprintln! of passing tests, and a
        // skip must never be silent.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {why} (SKIFF_ALLOW_SKIP=1)"
        );
        false
    } else {
        panic!("{test} cannot run: {why}. Set SKIFF_ALLOW_SKIP=1 to skip instead.");
    }
}
