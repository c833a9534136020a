//! Guest initramfs images for tests: guest-init plus busybox and a script it runs
//! (`skiff.run=/test.sh`), so a real guest can exercise devices from the inside.

use std::path::Path;

use images::initramfs::{Initramfs, InitramfsError};

use crate::artefacts::Artefact;

/// Writes to `out` a guest initramfs holding guest-init, busybox (`/bin/busybox`, `/bin/sh`) and
/// each `(path, script)` as an executable shell script (run one with `skiff.run=/path`). A script
/// should start with `/bin/busybox --install -s /bin` to get the other applets.
pub fn write_test_initramfs(scripts: &[(&str, &str)], out: &Path) -> Result<(), InitramfsError> {
    test_initramfs(scripts)?.write_to(out)
}

/// As [`write_test_initramfs`], plus the static `skiff-probe` at `/bin/skiff-probe`.
pub fn write_probe_initramfs(scripts: &[(&str, &str)], out: &Path) -> Result<(), InitramfsError> {
    let mut fs = test_initramfs(scripts)?;
    fs.host_file("bin/skiff-probe", &Artefact::Probe.path(), Some(0o755))?;
    fs.write_to(out)
}

fn test_initramfs(scripts: &[(&str, &str)]) -> Result<Initramfs, InitramfsError> {
    let mut fs = Initramfs::guest(&Artefact::GuestInit.path())?;
    fs.host_file("bin/busybox", Path::new("/bin/busybox"), Some(0o755))?;
    fs.symlink("bin/sh", "busybox")?;
    for (path, script) in scripts {
        fs.file_bytes(path, 0o755, format!("#!/bin/sh\n{script}").as_bytes())?;
    }
    Ok(fs)
}
