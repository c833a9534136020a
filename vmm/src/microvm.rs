//! Assembles a microVM from a [`VmConfig`] — memory, kernel, boot structures, devices, vCPUs — and
//! runs it until the guest stops.

use std::fs::File;
use std::io::{LineWriter, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use kvm_ioctls::IoEventAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_START};
use crate::arch::{boot, memory, mptable, paging, regs};
use crate::bus::{lock, Bus, BusError};
use crate::config::{ConfigError, MacAddr, SerialOutput, VmConfig};
use crate::devices::guest_report::{GuestReport, REPORT_PORT_BASE, REPORT_PORT_LEN};
use crate::devices::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::serial::{
    ConsoleTail, ConsoleWriter, IrqTrigger, SerialDevice, SERIAL_IRQ, SERIAL_PORT_BASE,
    SERIAL_PORT_LEN,
};
use crate::exit::{ExitSignal, Outcome};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::stop_signals::{self, StopSignals};
use crate::vcpu::{Vcpu, VcpuError};
use crate::virtio::block::{Block, BlockError};
use crate::virtio::mmio::{MmioError, MmioTransport, MMIO_DEVICE_SIZE, REG_QUEUE_NOTIFY};
use crate::virtio::net::{Net, NetError};
use crate::virtio::rng::Rng;
use crate::virtio::vsock::{Vsock, VsockError};
use crate::virtio::{Interrupt, VirtioDevice};
use crate::vm::{Vm, VmError};

/// Errors building or running a microVM.
#[derive(Debug, thiserror::Error)]
pub enum MicroVmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{requested} vCPUs requested but KVM allows at most {max} per VM")]
    TooManyVcpus { requested: u8, max: usize },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error("cannot write boot page tables: {0}")]
    PageTables(#[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot open serial output {path}: {source}")]
    SerialOutput {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> MicroVmError {
    move |source| MicroVmError::Host { what, source }
}

/// A microVM ready to run.
pub struct MicroVm {
    // Field order is drop order: vCPUs and the VM go before the memory they map.
    vcpus: Vec<Vcpu>,
    _vm: Vm,
    _memory: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    serial: Arc<Mutex<SerialDevice>>,
    console_tail: Arc<Mutex<ConsoleTail>>,
    serial_in: bool,
    queue_events: Vec<QueueEvent>,
    host_events: Vec<HostEvent>,
    stop_signals: StopSignals,
}

/// A virtio queue's notification: the ioeventfd KVM signals when the guest writes the queue's
/// index to `QueueNotify`.
struct QueueEvent {
    transport: Arc<Mutex<MmioTransport>>,
    queue: usize,
    event: EventFd,
}

impl QueueEvent {
    /// Notifies the queue as the guest would: the event loop serves it at its next wait, after
    /// whatever else is ready (epoll reports a newly ready descriptor after those already ready).
    fn kick(&self) {
        // Fails only when the counter would overflow, and then the event is already pending.
        let _ = self.event.write(1);
    }
}

/// A device's host-side file descriptor (tap, sockets) that the event loop watches for it.
struct HostEvent {
    transport: Arc<Mutex<MmioTransport>>,
    fd: std::os::fd::RawFd,
}

/// What placing a virtio device produced.
struct PlacedDevice {
    cmdline: String,
    queue_events: Vec<QueueEvent>,
    host_event: Option<HostEvent>,
}

/// Places a virtio device in MMIO slot `slot`: its registers, interrupt line (irqfd), queue
/// notifications (ioeventfds) and the command-line entry through which the guest finds it.
fn attach_virtio(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slot: usize,
    device: Box<dyn VirtioDevice>,
) -> Result<PlacedDevice, MicroVmError> {
    let addr = VIRTIO_MMIO_START + slot as u64 * MMIO_DEVICE_SIZE;
    let irq = VIRTIO_IRQ_BASE + slot as u32;
    let kvm_err = |op| move |source| VmError::Kvm { op, source };
    let irqfd = EventFd::new(EFD_NONBLOCK).map_err(host("cannot create an eventfd"))?;
    vm.fd()
        .register_irqfd(&irqfd, irq)
        .map_err(kvm_err("IRQFD"))?;
    let transport = MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(irqfd)))?;
    let queues = transport.queue_count();
    let host_fd = transport.host_event_fd();
    let transport = Arc::new(Mutex::new(transport));
    let host_event = host_fd.map(|fd| HostEvent {
        transport: transport.clone(),
        fd,
    });
    let mut queue_events = Vec::with_capacity(queues);
    for queue in 0..queues {
        let event = EventFd::new(EFD_NONBLOCK).map_err(host("cannot create an eventfd"))?;
        vm.fd()
            .register_ioevent(
                &event,
                &IoEventAddress::Mmio(addr + REG_QUEUE_NOTIFY),
                queue as u32,
            )
            .map_err(kvm_err("IOEVENTFD"))?;
        queue_events.push(QueueEvent {
            transport: transport.clone(),
            queue,
            event,
        });
    }
    mmio.insert(addr, MMIO_DEVICE_SIZE, transport)?;
    Ok(PlacedDevice {
        cmdline: format!(" virtio_mmio.device=4K@{addr:#x}:{irq}"),
        queue_events,
        host_event,
    })
}

impl MicroVm {
    /// Builds the VM described by `config`. `started` is when the VMM process started (the boot
    /// timer measures from it).
    pub fn build(config: &VmConfig, started: Instant) -> Result<Self, MicroVmError> {
        config.validate()?;
        // Before any thread starts, so that every thread inherits the blocked mask.
        let stop_signals = StopSignals::install().map_err(host("cannot set up signal handling"))?;
        // Checked now so a bad command line fails before anything is built; checked again once
        // the device entries are appended.
        boot::parse_cmdline(&config.cmdline)?;

        let vm = Vm::new()?;
        if usize::from(config.vcpus) > vm.max_vcpus() {
            return Err(MicroVmError::TooManyVcpus {
                requested: config.vcpus,
                max: vm.max_vcpus(),
            });
        }
        let mem_size = config.memory_mib << 20;
        let mem = memory::create_guest_memory(mem_size)?;
        vm.register_memory(&mem)?;
        vm.setup_interrupt_controllers()?;

        // Boot structures.
        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(&mem, path, kernel.end)?),
            None => None,
        };
        mptable::write(&mem, config.vcpus)?;
        paging::write_identity_page_tables(&mem).map_err(MicroVmError::PageTables)?;
        regs::write_gdt_and_idt(&mem)?;

        // Legacy devices on the port I/O bus.
        let exit = Arc::new(ExitSignal::new().map_err(host("cannot create the exit eventfd"))?);
        let console_tail = Arc::new(Mutex::new(ConsoleTail::default()));
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(host("cannot create an eventfd"))?;
        vm.fd()
            .register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(|source| VmError::Kvm {
                op: "IRQFD",
                source,
            })?;
        let out = serial_writer(&config.serial_out)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            IrqTrigger(serial_irq),
            ConsoleWriter::new(out, console_tail.clone()),
        )));
        let mut pio = Bus::new();
        pio.insert(SERIAL_PORT_BASE, SERIAL_PORT_LEN, serial.clone())?;
        pio.insert(
            I8042_PORT_BASE,
            I8042_PORT_LEN,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        pio.insert(
            REPORT_PORT_BASE,
            REPORT_PORT_LEN,
            Arc::new(Mutex::new(GuestReport::new(started, exit.clone()))),
        )?;
        let pio = Arc::new(pio);

        // virtio devices on the MMIO bus, announced on the kernel command line.
        let mut mmio = Bus::new();
        let mut queue_events = Vec::new();
        let mut host_events = Vec::new();
        let mut cmdline = config.cmdline.clone();
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let id = disk.id.clone().unwrap_or_else(|| format!("disk{i}"));
            let block = Block::open(&disk.path, disk.read_only, &id)?.with_io_helper(&mem)?;
            devices.push(Box::new(block));
        }
        for net in &config.nets {
            let mac = net.mac.unwrap_or_else(|| MacAddr::derived(&net.tap));
            devices.push(Box::new(Net::open(&net.tap, mac)?));
        }
        if config.rng {
            devices.push(Box::new(Rng));
        }
        if let Some(vsock) = &config.vsock {
            devices.push(Box::new(Vsock::new(vsock.cid, &vsock.uds)?));
        }
        for (slot, device) in devices.into_iter().enumerate() {
            let placed = attach_virtio(&vm, &mem, &mut mmio, slot, device)?;
            cmdline.push_str(&placed.cmdline);
            queue_events.extend(placed.queue_events);
            host_events.extend(placed.host_event);
        }
        let mmio = Arc::new(mmio);

        let cmdline = boot::parse_cmdline(&cmdline)?;
        boot::write_cmdline(&mem, &cmdline)?;
        let cmdline_len = cmdline
            .as_cstring()
            .map(|c| c.as_bytes().len())
            .map_err(boot::BootError::Cmdline)?;
        boot::write_boot_params(
            &mem,
            &boot::build_boot_params(mem_size, cmdline_len, initrd)?,
        )?;

        let supported = vm.supported_cpuid()?;
        let vcpus = (0..config.vcpus)
            .map(|index| {
                let vcpu = Vcpu::new(vm.fd(), index, pio.clone(), mmio.clone(), exit.clone())?;
                vcpu.configure(&supported, config.vcpus, kernel.entry)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>, MicroVmError>>()?;

        Ok(Self {
            vcpus,
            _vm: vm,
            _memory: mem,
            exit,
            serial,
            console_tail,
            serial_in: config.serial_in,
            queue_events,
            host_events,
            stop_signals,
        })
    }

    /// Runs the guest until it stops; returns `skiff-vmm`'s exit status and why.
    pub fn run(mut self) -> Result<Outcome, MicroVmError> {
        let epoll = Epoll::new().map_err(host("cannot create epoll"))?;
        const EXIT_TOKEN: u64 = 0;
        const STDIN_TOKEN: u64 = 1;
        const STOP_TOKEN: u64 = 2;
        epoll
            .ctl(
                ControlOperation::Add,
                self.stop_signals.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP_TOKEN),
            )
            .map_err(host("cannot watch the signalfd"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                self.exit.event().as_raw_fd(),
                EpollEvent::new(EventSet::IN, EXIT_TOKEN),
            )
            .map_err(host("cannot watch the exit eventfd"))?;
        let mut stdin_open = self.serial_in
            && epoll
                .ctl(
                    ControlOperation::Add,
                    libc::STDIN_FILENO,
                    EpollEvent::new(EventSet::IN, STDIN_TOKEN),
                )
                .is_ok();

        // The threads run until the process exits: the VM is torn down with it. They start the
        // guest only once this thread has installed its seccomp filter too.
        let go = Arc::new(Barrier::new(self.vcpus.len() + 1));
        for vcpu in self.vcpus.drain(..) {
            vcpu.start(go.clone())?;
        }
        seccomp::enter(ThreadKind::Vmm)?;
        go.wait();

        const QUEUE_TOKEN_BASE: u64 = 16;
        for (i, q) in self.queue_events.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    q.event.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, QUEUE_TOKEN_BASE + i as u64),
                )
                .map_err(host("cannot watch a queue eventfd"))?;
        }

        const HOST_TOKEN_BASE: u64 = 1 << 32;
        for (i, h) in self.host_events.iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    h.fd,
                    EpollEvent::new(EventSet::IN, HOST_TOKEN_BASE + i as u64),
                )
                .map_err(host("cannot watch a device's host events"))?;
        }

        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(host("epoll_wait failed")(e)),
            };
            for event in &events[..n] {
                match event.data() {
                    EXIT_TOKEN => {
                        if let Some(exit) = self.exit.get() {
                            lock(&self.serial).flush();
                            return Ok(exit.outcome(&lock(&self.console_tail).text()));
                        }
                    }
                    STDIN_TOKEN if stdin_open => {
                        let mut buf = [0u8; 64];
                        match read_stdin(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = epoll.ctl(
                                    ControlOperation::Delete,
                                    libc::STDIN_FILENO,
                                    EpollEvent::default(),
                                );
                                stdin_open = false;
                            }
                            Ok(n) => {
                                lock(&self.serial).enqueue_input(&buf[..n]);
                            }
                        }
                    }
                    STOP_TOKEN => {
                        if let Some(signo) = self.stop_signals.read() {
                            lock(&self.serial).flush();
                            return Ok(Outcome {
                                code: 128 + signo,
                                message: format!("stopped by {}", stop_signals::name(signo)),
                            });
                        }
                    }
                    token if token >= HOST_TOKEN_BASE => {
                        let index = usize::try_from(token - HOST_TOKEN_BASE).unwrap_or(usize::MAX);
                        if let Some(h) = self.host_events.get(index) {
                            if lock(&h.transport).process_host_events() {
                                // Cut short: the device's queues are served again (a notified
                                // queue also serves what host events left) after the events
                                // already waiting.
                                for q in &self.queue_events {
                                    if Arc::ptr_eq(&q.transport, &h.transport) {
                                        q.kick();
                                    }
                                }
                            }
                        }
                    }
                    token if token >= QUEUE_TOKEN_BASE => {
                        let index = usize::try_from(token - QUEUE_TOKEN_BASE).unwrap_or(usize::MAX);
                        if let Some(q) = self.queue_events.get(index) {
                            // Reading resets the counter; a failure means nothing was pending.
                            let _ = q.event.read();
                            if lock(&q.transport).notify_queue(q.queue) {
                                // Cut short: served again after the events already waiting
                                // (stop and exit among them).
                                q.kick();
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Reads what is available on standard input, unbuffered: epoll reports the fd's readiness, so no
/// bytes may wait in a user-space buffer.
fn read_stdin(buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; fd 0 stays open for the process.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

fn serial_writer(out: &SerialOutput) -> Result<Option<Box<dyn Write + Send>>, MicroVmError> {
    Ok(match out {
        SerialOutput::Stdout => Some(Box::new(std::io::stdout())),
        SerialOutput::None => None,
        SerialOutput::File(path) => {
            let file = File::create(path).map_err(|source| MicroVmError::SerialOutput {
                path: path.clone(),
                source,
            })?;
            Some(Box::new(Capped::new(
                LineWriter::new(file),
                CONSOLE_LOG_MAX,
            )))
        }
    })
}

/// The most bytes of guest console output written to a console log file: a guest flooding its
/// console cannot fill the host's disk (the log keeps the boot and what followed, up to here).
pub const CONSOLE_LOG_MAX: u64 = 16 << 20;

/// What the console log says, once, where the cap cut it.
const CONSOLE_LOG_CUT: &[u8] = b"\n[skiff-vmm: console log cap reached; further output dropped]\n";

/// A writer that passes on the first `left` bytes, notes once that it dropped the rest, and
/// drops the rest.
struct Capped<W> {
    inner: W,
    left: u64,
    noted: bool,
}

impl<W: Write> Capped<W> {
    fn new(inner: W, max: u64) -> Self {
        Self {
            inner,
            left: max,
            noted: false,
        }
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            if !self.noted {
                self.noted = true;
                self.inner.write_all(CONSOLE_LOG_CUT)?;
                self.inner.flush()?;
            }
            return Ok(buf.len());
        }
        let take = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let written = self.inner.write(&buf[..take])?;
        self.left -= written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod capped_tests {
    use super::*;

    #[test]
    fn a_flooded_console_log_stops_at_its_cap_and_says_so_once() {
        let mut log = Capped::new(Vec::new(), 1000);
        for _ in 0..100 {
            log.write_all(&[b'x'; 64]).unwrap();
        }
        log.flush().unwrap();
        let text = String::from_utf8(log.inner).unwrap();
        assert_eq!(text.matches('x').count(), 1000);
        assert_eq!(text.matches("console log cap reached").count(), 1);
        assert!(text.len() < 1100, "{}", text.len());
    }
}
