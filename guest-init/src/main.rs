//! skiff-init: PID 1 of a Skiff microVM. It tells the VMM it started (the boot timer), mounts the
//! pseudo-filesystems and any disks it is given, prints a banner with what the guest sees,
//! configures the network (loopback always; an interface, hostname and name servers when asked),
//! runs the program it is given (if any), and reports the exit status to the VMM before resetting
//! the machine. A panic is reported as a crash; init never hangs the VM.

mod container;
mod control;
mod host_port;
mod mounts;
mod netlink;
mod network;
mod power;
mod process;
mod settings;
mod system_info;
mod unpack;

use settings::Settings;

/// Exit status when init itself fails (mounts, settings, network).
const INIT_FAILURE: u8 = 1;

fn run() -> Result<u8, Box<dyn std::error::Error>> {
    mounts::mount_pseudo_filesystems()?;
    let info = system_info::read();
    println!("skiff-init: {info}");
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let settings = Settings::from_cmdline(&cmdline)?;
    if settings.panic {
        panic!("skiff.panic was given");
    }
    for spec in &settings.mounts {
        mounts::mount_disk(spec)?;
    }
    let status = match network::configure(&settings.network) {
        Ok(()) => {
            if let Some(summary) = network::summary(&settings.network) {
                println!("skiff-init: network {summary}");
            }
            let served = if settings.control {
                control::serve(&info.kernel, &settings.network).map_err(|e| {
                    eprintln!("skiff-init: {e}");
                    INIT_FAILURE
                })
            } else {
                Ok(())
            };
            match (served, &settings.run) {
                (Err(status), _) => Ok(status),
                (Ok(()), Some(path)) => process::run(path),
                (Ok(()), None) => Ok(settings.exit_status),
            }
        }
        // Reported here rather than returned, so that the disks are still unmounted.
        Err(e) => {
            eprintln!("skiff-init: network: {e}");
            Ok(INIT_FAILURE)
        }
    };
    mounts::unmount_disks(&settings.mounts);
    Ok(status?)
}

fn main() {
    // The same binary is a container's init process when the task asks for one (it then runs in
    // the container, unprivileged: nothing of PID 1's below applies).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(argv) = container::init_process::requested(&args) {
        std::process::exit(container::init_process::run(argv));
    }
    // First action: the boot timer stops here.
    let ported = host_port::enable();
    host_port::report_boot();
    println!(
        "skiff-init: started{}",
        if ported {
            ""
        } else {
            " (no report port access)"
        }
    );
    std::panic::set_hook(Box::new(|info| {
        eprintln!("skiff-init: panic: {info}");
        host_port::report_panic();
        power::reset();
    }));
    if std::process::id() != 1 {
        eprintln!("skiff-init: must run as PID 1");
        std::process::exit(i32::from(INIT_FAILURE));
    }
    let status = run().unwrap_or_else(|e| {
        eprintln!("skiff-init: error: {e}");
        INIT_FAILURE
    });
    power::finish(status)
}
