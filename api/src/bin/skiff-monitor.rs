//! `skiff-monitor --task-dir DIR`: the per-task monitor skiffd starts for each task (see
//! `api::executor::monitor`). Prints `ready` on stdout once skiffd can rely on it, then runs the
//! task to its end; its own messages go to stderr (skiffd points it at the task's
//! `monitor.log`).

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "skiff-monitor", version)]
struct Args {
    /// The task's directory (with its launch.json).
    #[arg(long)]
    task_dir: PathBuf,
}

fn main() {
    let args = Args::parse();
    let result = api::executor::monitor::run(&args.task_dir, || {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"ready\n").and_then(|()| out.flush());
        // Nobody reads on after this line: point stdout at /dev/null so that a later write
        // cannot fail on a closed pipe.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 of two descriptors this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
        }
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("skiff-monitor: {e}");
            std::process::exit(1)
        }
    }
}
