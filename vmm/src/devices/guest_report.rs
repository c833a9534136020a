//! Skiff's guest report port: how guest-init tells the VMM that it started (the boot timer), its
//! exit status, or that it panicked. guest-init writes single bytes to these I/O ports (see
//! `guest-init/src/host_port.rs`, which must agree with the offsets below).
//!
//! | port  | write                | effect                                                |
//! |-------|----------------------|-------------------------------------------------------|
//! | 0x440 | any byte             | guest-init started: print the boot time (first only)  |
//! | 0x441 | the exit status      | the guest is done: `skiff-vmm` exits with this status |
//! | 0x442 | any byte             | guest-init panicked: `skiff-vmm` reports a crash      |

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};

/// First port of the device.
pub const REPORT_PORT_BASE: u64 = 0x440;
/// Ports decoded.
pub const REPORT_PORT_LEN: u64 = 3;

const OFFSET_BOOT_MARKER: u64 = 0;
const OFFSET_EXIT_STATUS: u64 = 1;
const OFFSET_INIT_PANIC: u64 = 2;

/// The boot time, as the VMM measured it when guest-init reported that it started.
#[derive(Debug, Clone, Copy)]
pub struct BootTime {
    /// Wall time since the VMM process started.
    pub wall: Duration,
    /// CPU time the VMM itself used (guest time excluded).
    pub vmm_cpu: Duration,
}

impl std::fmt::Display for BootTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "boot: guest init after {:.1} ms (VMM CPU {:.1} ms)",
            self.wall.as_secs_f64() * 1e3,
            self.vmm_cpu.as_secs_f64() * 1e3
        )
    }
}

/// The report port as a bus device.
pub struct GuestReport {
    started: Instant,
    boot_time: Option<BootTime>,
    exit: Arc<ExitSignal>,
    /// `/proc/self/stat`, opened up front: the vCPU thread that reads it may not open files.
    stat: Option<File>,
}

impl GuestReport {
    /// `started` is when the VMM process started; boot times are measured from it.
    pub fn new(started: Instant, exit: Arc<ExitSignal>) -> Self {
        Self {
            started,
            boot_time: None,
            exit,
            stat: File::open("/proc/self/stat").ok(),
        }
    }
}

impl BusDevice for GuestReport {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            OFFSET_BOOT_MARKER if self.boot_time.is_none() => {
                let boot = BootTime {
                    wall: self.started.elapsed(),
                    vmm_cpu: vmm_cpu_time(self.stat.as_ref()),
                };
                eprintln!("{boot}");
                self.boot_time = Some(boot);
            }
            OFFSET_EXIT_STATUS => self.exit.signal(GuestExit::Status(*value)),
            OFFSET_INIT_PANIC => self.exit.signal(GuestExit::InitPanicked),
            _ => {}
        }
    }
}

/// CPU time of this process minus the time its vCPU threads spent running guest code (when
/// `/proc/self/stat` could be opened; otherwise guest time is included).
fn vmm_cpu_time(stat: Option<&File>) -> Duration {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; getrusage only writes to it.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    let total = tv(usage.ru_utime) + tv(usage.ru_stime);
    total.saturating_sub(stat.and_then(guest_time).unwrap_or_default())
}

/// Time this process's threads spent in guest mode (field 43 of `/proc/self/stat`).
fn guest_time(stat_file: &File) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let n = stat_file.read_at(&mut buf, 0).ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = rest
        .split_whitespace()
        .nth(43 - 3)
        .and_then(|f| f.parse().ok())?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_millis(ticks * 1000 / hz as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_marker_records_the_boot_time_once() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut port = GuestReport::new(Instant::now(), exit.clone());
        port.write(OFFSET_BOOT_MARKER, &[1]);
        let first = port.boot_time.unwrap().wall;
        port.write(OFFSET_BOOT_MARKER, &[1]);
        assert_eq!(port.boot_time.unwrap().wall, first);
        assert_eq!(exit.get(), None, "the boot marker does not end the VM");
    }

    #[test]
    fn exit_status_and_panic_end_the_vm() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        GuestReport::new(Instant::now(), exit.clone()).write(OFFSET_EXIT_STATUS, &[7]);
        assert_eq!(exit.get(), Some(GuestExit::Status(7)));

        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut port = GuestReport::new(Instant::now(), exit.clone());
        port.write(OFFSET_EXIT_STATUS, &[1, 2]); // not a byte write: ignored
        assert_eq!(exit.get(), None);
        port.write(OFFSET_INIT_PANIC, &[0]);
        assert_eq!(exit.get(), Some(GuestExit::InitPanicked));
    }

    #[test]
    fn boot_time_prints_in_the_documented_format() {
        let t = BootTime {
            wall: Duration::from_micros(12_345),
            vmm_cpu: Duration::from_micros(2_500),
        };
        assert_eq!(
            t.to_string(),
            "boot: guest init after 12.3 ms (VMM CPU 2.5 ms)"
        );
        let stat = File::open("/proc/self/stat").unwrap();
        assert!(guest_time(&stat).is_some());
    }
}
