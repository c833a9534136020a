//! A nested host that keeps running while the test talks to it: services its script starts are
//! reached through QEMU user networking's port forwards on 127.0.0.1 (the host's NIC is
//! `restrict=on`: it reaches nothing, only the forwards reach it), and the test stops it when
//! done. For clients that must run outside the nested host (the AWS CLI, boto3).

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::nested::{NestedError, NestedHost, EMULATION_CRASHES};
use crate::process::ProcessError;

/// The nested host's address on its user network (QEMU's default for the first guest).
pub const GUEST_ADDR: &str = "10.0.2.15";

/// Shell that brings the nested host's NIC up at [`GUEST_ADDR`].
pub const NIC_UP: &str = "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0";

/// A running nested host.
pub struct LiveHost {
    child: Child,
    console: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    initrd: PathBuf,
    forwards: Vec<(u16, u16)>,
}

/// A free TCP port on 127.0.0.1 (free when asked; QEMU binds it right after).
fn free_port() -> Result<u16, NestedError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| NestedError::Prepare {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| NestedError::Prepare {
            path: "127.0.0.1:0".into(),
            source,
        })
}

impl NestedHost {
    /// Boots the host running `script` and forwards a loopback port to each of `guest_ports`
    /// (see [`LiveHost::port`]); returns at once.
    pub fn spawn(&self, script: &str, guest_ports: &[u16]) -> Result<LiveHost, NestedError> {
        let initrd = self.initrd(script)?;
        let mut forwards = Vec::new();
        let mut netdev = "user,id=net0,restrict=on".to_owned();
        for &guest in guest_ports {
            let host = free_port()?;
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            forwards.push((guest, host));
        }
        let mut command = self.command(&initrd);
        command
            .args(["-netdev", &netdev])
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            program: "qemu-system-x86_64".into(),
            source,
        })?;
        let console = Arc::new(Mutex::new(String::new()));
        let reader = child.stdout.take().map(|mut out| {
            let console = console.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = out.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&chunk[..n]).replace("\r\n", "\n");
                    console
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            })
        });
        Ok(LiveHost {
            child,
            console,
            reader,
            initrd,
            forwards,
        })
    }
}

impl LiveHost {
    /// The loopback port forwarded to `guest_port`.
    pub fn port(&self, guest_port: u16) -> Option<u16> {
        self.forwards
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, h)| *h)
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the console shows `marker`; fails when the host ends, crashes or takes
    /// longer than `timeout`.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<(), NestedError> {
        let started = Instant::now();
        loop {
            let console = self.console();
            if console.contains(marker) {
                return Ok(());
            }
            let crashed = EMULATION_CRASHES.iter().any(|s| console.contains(s));
            let ended = matches!(self.child.try_wait(), Ok(Some(_)) | Err(_));
            if crashed || ended {
                return Err(NestedError::NoStatus {
                    code: None,
                    console,
                    stderr: format!("the host ended or crashed before showing {marker:?}"),
                });
            }
            if started.elapsed() > timeout {
                return Err(NestedError::Timeout { timeout, console });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the host; gives its whole console.
    pub fn stop(mut self) -> String {
        self.halt();
        self.console()
    }

    fn halt(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.initrd);
    }
}

impl Drop for LiveHost {
    fn drop(&mut self) {
        self.halt();
    }
}
