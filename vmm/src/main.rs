//! `skiff-vmm`: boots one microVM and exits with the guest's status.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use vmm::config::{DiskConfig, NetConfig, SerialOutput, VmConfig, VsockConfig};
use vmm::exit::EXIT_VMM_ERROR;
use vmm::microvm::MicroVm;
use vmm::seccomp::{self, ThreadKind};

/// Boots one KVM microVM and exits with the status the guest reports.
///
/// Exit status: the guest's own (0-255) when guest-init reports one; 0 when the guest powers
/// off; 125 when the guest crashes (kernel panic, triple fault, KVM emulation failure, guest-init
/// panic); 1 when the VMM fails.
#[derive(Debug, Parser)]
#[command(name = "skiff-vmm", version)]
struct Args {
    /// JSON configuration file; flags given on the command line override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Uncompressed ELF kernel (vmlinux).
    #[arg(long, value_name = "VMLINUX")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (newc cpio).
    #[arg(long, value_name = "CPIO")]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=-1 quiet"].
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB [default: 128].
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Serial console output: stdout, none, or a file path [default: stdout].
    #[arg(long, value_name = "stdout|none|FILE")]
    serial_out: Option<SerialOutput>,
    /// Forward standard input to the guest's serial console.
    #[arg(long)]
    serial_in: bool,
    /// A disk: path=FILE[,ro=true|false][,id=ID] (repeatable; the guest sees vda, vdb, ...).
    #[arg(long = "disk", value_name = "path=FILE[,ro=BOOL][,id=ID]")]
    disks: Vec<DiskConfig>,
    /// Give the guest a virtio entropy device.
    #[arg(long)]
    rng: bool,
    /// A network interface backed by a host tap: tap=NAME[,mac=MAC] (repeatable; eth0, eth1, ...).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<NetConfig>,
    /// A vsock device: the guest's cid and the Unix socket the host connects to (host-initiated
    /// connections send "CONNECT <port>\n"; guest connections to port P go to <uds>_P).
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<VsockConfig>,
    /// Do not install seccomp filters. For debugging only.
    #[arg(long)]
    no_seccomp: bool,
    /// Testing only: make this kind of thread (vmm, vcpu, blk-io) call a forbidden system call
    /// after installing its filter, to prove the filter is live.
    #[arg(long, hide = true, value_name = "KIND")]
    seccomp_test_violation: Option<ThreadKind>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<VmConfig> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::with_kernel(PathBuf::new()),
        };
        if let Some(kernel) = self.kernel {
            config.kernel = kernel;
        }
        if self.initrd.is_some() {
            config.initrd = self.initrd;
        }
        if let Some(cmdline) = self.cmdline {
            config.cmdline = cmdline;
        }
        if let Some(vcpus) = self.vcpus {
            config.vcpus = vcpus;
        }
        if let Some(memory_mib) = self.memory_mib {
            config.memory_mib = memory_mib;
        }
        if let Some(serial_out) = self.serial_out {
            config.serial_out = serial_out;
        }
        config.serial_in |= self.serial_in;
        config.disks.extend(self.disks);
        config.rng |= self.rng;
        config.nets.extend(self.nets);
        if self.vsock.is_some() {
            config.vsock = self.vsock;
        }
        Ok(config)
    }
}

fn run(started: Instant) -> anyhow::Result<i32> {
    let args = Args::parse();
    if args.no_seccomp {
        eprintln!(
            "skiff-vmm: warning: seccomp filters disabled (--no-seccomp): for debugging only"
        );
    }
    seccomp::configure(seccomp::Policy {
        enabled: !args.no_seccomp,
        violate_in: args.seccomp_test_violation,
    });
    let config = args.into_config()?;
    let vm = MicroVm::build(&config, started).context("cannot start the microVM")?;
    let outcome = vm.run()?;
    eprintln!("skiff-vmm: {}", outcome.message);
    Ok(outcome.code)
}

fn main() {
    let started = Instant::now();
    let code = match run(started) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff-vmm: error: {e:#}");
            EXIT_VMM_ERROR
        }
    };
    // vCPU threads may still be inside KVM_RUN: end the process without joining them.
    std::process::exit(code)
}
