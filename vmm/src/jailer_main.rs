//! `skiff-jailer`: starts `skiff-vmm` in a jail, or cleans a finished jail up.

use std::path::PathBuf;

use clap::Parser;
use vmm::jailer::cgroup::Setting;
use vmm::jailer::{self, JailConfig, ResourceLimit, DEFAULT_CHROOT_BASE};
use vmm::seccomp::ThreadKind;

/// Starts one skiff-vmm in an empty, unprivileged, resource-capped jail.
///
/// Example: skiff-jailer --id task-1 --exec-file target/release/skiff-vmm --uid 10001 --gid 10001
/// --cgroup memory=192M --cgroup cpus=1 --cgroup pids=32 --vm-config /run/skiff/task-1/vm.json
///
/// The VM configuration is the JSON of `skiff-vmm --config`. Its kernel, initrd and disks are
/// placed in the jail; its serial output file and vsock socket must be in one directory owned by
/// the task's uid (the task's run directory), which the jail mounts at /run/task.
#[derive(Debug, Parser)]
#[command(name = "skiff-jailer", version)]
struct Args {
    /// Jail id: 1 to 64 letters, digits and '-'.
    #[arg(long)]
    id: String,
    /// The VMM binary (copied into the jail).
    #[arg(long, required_unless_present = "cleanup")]
    exec_file: Option<PathBuf>,
    /// uid the VMM runs as (not 0).
    #[arg(long, required_unless_present = "cleanup")]
    uid: Option<u32>,
    /// gid the VMM runs as (not 0).
    #[arg(long, required_unless_present = "cleanup")]
    gid: Option<u32>,
    /// Where jails are created: <base>/skiff-vmm/<id>/root.
    #[arg(long, default_value = DEFAULT_CHROOT_BASE)]
    chroot_base: PathBuf,
    /// Network namespace to join (e.g. /var/run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// cgroup limit: memory=BYTES[K|M|G], cpus=N (CPU quota), pids=N, or <controller>.<file>=VALUE.
    #[arg(long = "cgroup", value_name = "KEY=VALUE")]
    cgroups: Vec<String>,
    /// rlimit: no-file=N or fsize=BYTES.
    #[arg(long = "resource-limit", value_name = "KEY=VALUE")]
    resource_limits: Vec<String>,
    /// Print the VMM's pid and return at once instead of waiting for it.
    #[arg(long)]
    daemonize: bool,
    /// Remove the finished jail <id> (directory and cgroups) instead of starting one.
    #[arg(long)]
    cleanup: bool,
    /// The VM configuration (JSON, as for `skiff-vmm --config`), with host paths.
    #[arg(long, value_name = "FILE", required_unless_present = "cleanup")]
    vm_config: Option<PathBuf>,
    /// Testing only: passed to the VMM as --seccomp-test-violation KIND.
    #[arg(long, hide = true, value_name = "KIND")]
    seccomp_test_violation: Option<ThreadKind>,
}

fn main() {
    let args = Args::parse();
    let result = if args.cleanup {
        jailer::cleanup(&args.chroot_base, &args.id).map(|()| 0)
    } else {
        build(args).and_then(|config| jailer::run(&config))
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("skiff-jailer: error: {e}");
            std::process::exit(1)
        }
    }
}

fn build(args: Args) -> Result<JailConfig, jailer::JailerError> {
    Ok(JailConfig {
        id: args.id,
        exec_file: args.exec_file.unwrap_or_default(),
        uid: args.uid.unwrap_or(0),
        gid: args.gid.unwrap_or(0),
        chroot_base: args.chroot_base,
        netns: args.netns,
        cgroups: args
            .cgroups
            .iter()
            .map(|s| s.parse::<Setting>())
            .collect::<Result<_, _>>()?,
        rlimits: args
            .resource_limits
            .iter()
            .map(|s| s.parse::<ResourceLimit>())
            .collect::<Result<_, _>>()?,
        daemonize: args.daemonize,
        vm_config: args.vm_config.unwrap_or_default(),
        seccomp_test_violation: args.seccomp_test_violation,
    })
}
