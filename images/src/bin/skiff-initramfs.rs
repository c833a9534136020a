//! `skiff-initramfs`: writes a Skiff guest initramfs (newc cpio) around a guest-init binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use images::initramfs::Initramfs;

/// Writes a guest initramfs: /init (guest-init), /dev/console, mount points, and extra files.
#[derive(Debug, Parser)]
#[command(name = "skiff-initramfs", version)]
struct Args {
    /// The guest-init binary (static), installed as /init.
    #[arg(long)]
    init: PathBuf,
    /// Extra host file to add, as HOST_PATH=GUEST_PATH (repeatable).
    #[arg(long = "file", value_name = "HOST=GUEST")]
    files: Vec<String>,
    /// Extra dynamically linked host binary, with the shared libraries it needs, as
    /// HOST_PATH=GUEST_PATH (repeatable).
    #[arg(long = "binary", value_name = "HOST=GUEST")]
    binaries: Vec<String>,
    /// Where to write the archive.
    #[arg(long)]
    out: PathBuf,
}

fn split(spec: &str) -> anyhow::Result<(&str, &str)> {
    spec.split_once('=')
        .with_context(|| format!("{spec:?}: expected HOST_PATH=GUEST_PATH"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut fs = Initramfs::guest(&args.init)?;
    for spec in &args.files {
        let (host, guest) = split(spec)?;
        fs.host_file(guest, host.as_ref(), None)?;
    }
    for spec in &args.binaries {
        let (host, guest) = split(spec)?;
        fs.host_binary(guest, host.as_ref())?;
    }
    fs.write_to(&args.out)?;
    Ok(())
}
