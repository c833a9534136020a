//! Emulated devices.

pub mod guest_report;
pub mod i8042;
pub mod serial;
