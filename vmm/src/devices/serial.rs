//! The 16550 UART at 0x3f8 (IRQ 4): the guest's console, emulated by `vm-superio`, written to the
//! host (stdout, a file, or nowhere) while its last few KiB are kept to explain a crash.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, BusDevice};

/// First I/O port of COM1.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// Number of ports a 16550 decodes.
pub const SERIAL_PORT_LEN: u64 = 8;
/// ISA interrupt line of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// How much of the console output is kept for crash diagnosis.
const TAIL_BYTES: usize = 4096;

/// Raises the serial interrupt through an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The last bytes the guest wrote to its console.
#[derive(Default)]
pub struct ConsoleTail(VecDeque<u8>);

impl ConsoleTail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend(bytes);
        let excess = self.0.len().saturating_sub(TAIL_BYTES);
        self.0.drain(..excess);
    }

    /// The kept output as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        let (a, b) = self.0.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).into_owned()
    }
}

/// Where console output goes, with a copy kept in a [`ConsoleTail`].
pub struct ConsoleWriter {
    out: Option<Box<dyn Write + Send>>,
    tail: Arc<Mutex<ConsoleTail>>,
}

impl ConsoleWriter {
    pub fn new(out: Option<Box<dyn Write + Send>>, tail: Arc<Mutex<ConsoleTail>>) -> Self {
        Self { out, tail }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.tail).push(buf);
        if let Some(out) = self.out.as_mut() {
            // A closed or full host output must not stop the guest: the bytes are dropped.
            if out.write_all(buf).is_err() {
                self.out = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
}

impl SerialDevice {
    pub fn new(irq: IrqTrigger, out: ConsoleWriter) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Flushes the host side of the console.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (&mut *data, u8::try_from(offset)) {
            *byte = self.uart.read(offset);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            // The only failure is raising the interrupt, which the next access retries.
            let _ = self.uart.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_host_and_the_tail() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(Mutex::new(ConsoleTail::default()));
        let writer = ConsoleWriter::new(Some(Box::new(Shared(out.clone()))), tail.clone());
        let mut dev = SerialDevice::new(IrqTrigger(EventFd::new(EFD_NONBLOCK).unwrap()), writer);
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*out.lock().unwrap(), b"hi\n");
        assert_eq!(tail.lock().unwrap().text(), "hi\n");
        // Multi-byte accesses are not a 16550's: ignored, reads all-ones.
        dev.write(0, &[1, 2]);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        assert_eq!(out.lock().unwrap().len(), 3);
    }

    #[test]
    fn tail_keeps_only_the_last_bytes() {
        let mut tail = ConsoleTail::default();
        tail.push(&vec![b'a'; TAIL_BYTES]);
        tail.push(b"end");
        let text = tail.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("aend"));
    }
}
