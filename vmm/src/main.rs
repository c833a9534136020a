//! `skiff-vmm`: boots one microVM and exits with the guest's status.

use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use vmm::config::VmFlags;
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
    #[command(flatten)]
    vm: VmFlags,
    /// Do not install seccomp filters. For debugging only.
    #[arg(long)]
    no_seccomp: bool,
    /// Testing only: make this kind of thread (vmm, vcpu, blk-io) call a forbidden system call
    /// after installing its filter, to prove the filter is live.
    #[arg(long, hide = true, value_name = "KIND")]
    seccomp_test_violation: Option<ThreadKind>,
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
    let config = args.vm.into_config()?;
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
