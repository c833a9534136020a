//! Harnesses for Skiff's verification ladder: artefact lookup (and the skip policy), running
//! processes with deadlines, QEMU TCG runs of the guest, and the nested test host.

pub mod artefacts;
pub mod containers;
pub mod guest_console;
pub mod guest_image;
pub mod jail_run;
pub mod nested;
pub mod nested_live;
pub mod process;
pub mod qemu;
pub mod skiffd;
