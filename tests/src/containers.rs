//! Container tasks in the nested test host: an image store filled on this machine from the test
//! images (`scripts/build-test-images.sh`), copied into a nested host that has `skiff-run`,
//! `skiff-vmm`, the guest kernel and initramfs, and `mkfs.ext4` for scratch disks.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::artefacts::{bin_dir, test_image, Artefact};
use crate::nested::{NestedError, NestedHost};

/// Where the store is inside the nested host.
pub const NESTED_STORE: &str = "/store";

/// For nested scripts: `$SKIFF_RUN` is `skiff-run` with the nested host's paths and a 256 MiB
/// scratch disk, and `run` a function calling it (`run --image busybox:latest -- echo hi`).
/// Kernel messages are kept off the console so that they do not land inside a case's output.
pub const RUN_FUNCTION: &str = "mkdir -p /run/skiff\necho 1 > /proc/sys/kernel/printk\n\
    SKIFF_RUN='/skiff/skiff-run --store /store --vmm /skiff/skiff-vmm --kernel /skiff/vmlinux \
    --initramfs /skiff/initramfs.cpio --ephemeral-storage-mib 256'\n\
    run() { $SKIFF_RUN \"$@\"; }\n";

/// Errors preparing a container host.
#[derive(Debug, thiserror::Error)]
pub enum ContainerHostError {
    #[error("test image {0} is missing: run scripts/setup.sh (scripts/build-test-images.sh)")]
    MissingImage(PathBuf),
    #[error("skiff-image import of {layout}: {message}")]
    Import { layout: PathBuf, message: String },
    #[error(transparent)]
    Nested(#[from] NestedError),
}

/// Imports the test images `names` into a fresh store at `store`, each as `NAME:latest`.
pub fn import_test_images(store: &Path, names: &[&str]) -> Result<(), ContainerHostError> {
    let _ = std::fs::remove_dir_all(store);
    for name in names {
        let layout = test_image(name);
        if !layout.join("index.json").is_file() {
            return Err(ContainerHostError::MissingImage(layout));
        }
        let output = Command::new(bin_dir().join("skiff-image"))
            .arg("--store")
            .arg(store)
            .arg("import")
            .arg(&layout)
            .arg(format!("{name}:latest"))
            .output()
            .map_err(|e| ContainerHostError::Import {
                layout: layout.clone(),
                message: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(ContainerHostError::Import {
                layout,
                message: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
    }
    Ok(())
}

/// A nested host ready to run container tasks from `store` (see [`RUN_FUNCTION`]).
pub fn container_host(store: &Path) -> Result<NestedHost, ContainerHostError> {
    let mut host = NestedHost::with_skiff()?;
    host.binary("skiff/skiff-run", &bin_dir().join("skiff-run"))?
        .binary("sbin/mkfs.ext4", Path::new("/sbin/mkfs.ext4"))?
        .dir(NESTED_STORE.trim_start_matches('/'), store)?;
    Ok(host)
}

/// What a container host needs built, for [`crate::artefacts::require`].
pub const CONTAINER_ARTEFACTS: [Artefact; 4] = [
    Artefact::TestHostKernel,
    Artefact::GuestKernel,
    Artefact::GuestInitramfs,
    Artefact::SkiffVmm,
];
