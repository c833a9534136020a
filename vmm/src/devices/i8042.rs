//! The i8042 keyboard controller, only so the guest can reset the machine (`reboot=k`): writing
//! 0xfe to the command port ends the VM.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};

/// First port of the controller (data port 0x60; command/status port 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports decoded, 0x60 to 0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// Turns the controller's CPU reset into a guest exit.
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.signal(GuestExit::Reset);
        Ok(())
    }
}

/// The controller as a bus device.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self(I8042Device::new(ResetTrigger(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (&mut *data, u8::try_from(offset)) {
            ([byte], Ok(offset)) => *byte = self.0.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            let _ = self.0.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(
            status,
            [0],
            "input buffer empty: the kernel may send commands"
        );
        dev.write(4, &[0x12]);
        assert_eq!(exit.get(), None);
        dev.write(4, &[0xfe]);
        assert_eq!(exit.get(), Some(GuestExit::Reset));
    }
}
