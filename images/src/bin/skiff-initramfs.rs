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
    /// Where to write the archive.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut fs = Initramfs::guest(&args.init)?;
    for spec in &args.files {
        let (host, guest) = spec
            .split_once('=')
            .with_context(|| format!("--file {spec:?}: expected HOST_PATH=GUEST_PATH"))?;
        fs.host_file(guest, host.as_ref(), None)?;
    }
    fs.write_to(&args.out)?;
    Ok(())
}
