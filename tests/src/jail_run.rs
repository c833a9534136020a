//! Running `skiff-jailer` from tests: write the VM's configuration, start the jailer with it, wait
//! for a line of its output (the guest's console, when it goes to stdout), find the VMM's pid, and
//! stop and clean up afterwards.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vmm::config::VmConfig;

use crate::artefacts::Artefact;

/// Writes `vm` as JSON to `path` (for `--vm-config`) and returns the path.
pub fn write_vm_config(path: &Path, vm: &VmConfig) -> PathBuf {
    std::fs::write(path, vm.to_json().expect("the VM configuration is JSON"))
        .expect("the VM configuration is written");
    path.to_owned()
}

/// A running jailer (and its VMM).
pub struct RunningJail {
    pub id: String,
    pub base: PathBuf,
    pub vmm_pid: i32,
    child: Child,
    /// Everything the jailer and VMM printed (stdout and stderr), in arrival order.
    lines: mpsc::Receiver<String>,
    pub output: Vec<String>,
}

/// Starts `skiff-jailer --id ID --uid UID --gid UID --chroot-base BASE JAILER_ARGS --vm-config
/// VM_CONFIG` and waits until a line of its output contains `ready` (or panics after `timeout`).
pub fn start(
    id: &str,
    uid: u32,
    base: &Path,
    jailer_args: &[&str],
    vm_config: &Path,
    ready: &str,
    timeout: Duration,
) -> RunningJail {
    let mut child = Command::new(Artefact::SkiffJailer.path())
        .args([
            "--id",
            id,
            "--uid",
            &uid.to_string(),
            "--gid",
            &uid.to_string(),
        ])
        .arg("--exec-file")
        .arg(Artefact::SkiffVmm.path())
        .arg("--chroot-base")
        .arg(base)
        .args(jailer_args)
        .arg("--vm-config")
        .arg(vm_config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skiff-jailer starts");
    let (tx, lines) = mpsc::channel();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    let mut jail = RunningJail {
        id: id.to_owned(),
        base: base.to_owned(),
        vmm_pid: 0,
        child,
        lines,
        output: Vec::new(),
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut seen_ready = false;
    while !(seen_ready && jail.vmm_pid != 0) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = jail.lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!("jail {id} not ready within {timeout:?}: {:?}", jail.output)
        });
        if let Some(pid) = line
            .split("running as pid ")
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
        {
            jail.vmm_pid = pid;
        }
        seen_ready |= line.contains(ready);
        jail.output.push(line);
    }
    jail
}

impl RunningJail {
    /// Sends `signal` to the VMM and returns the jailer's exit code and everything printed.
    pub fn stop(mut self, signal: i32) -> (Option<i32>, Vec<String>) {
        // SAFETY: signalling a process we started.
        unsafe { libc::kill(self.vmm_pid, signal) };
        let status = self.child.wait().expect("skiff-jailer exits");
        // Drain what the reader threads still have.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.output.push(line);
        }
        (status.code(), std::mem::take(&mut self.output))
    }

    /// Kills the jailer itself (SIGKILL) and returns what it printed; its VMM should die with it.
    pub fn kill_jailer(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.output.push(line);
        }
        std::mem::take(&mut self.output)
    }

    /// The jail's directory.
    pub fn dir(&self) -> PathBuf {
        self.base.join("skiff-vmm").join(&self.id)
    }
}

/// Runs `skiff-jailer --cleanup` for `id`; panics if it fails.
pub fn cleanup(base: &Path, id: &str) {
    let status = Command::new(Artefact::SkiffJailer.path())
        .args(["--cleanup", "--id", id])
        .arg("--chroot-base")
        .arg(base)
        .status()
        .expect("skiff-jailer --cleanup runs");
    assert!(status.success(), "cleanup of {id} failed");
}
