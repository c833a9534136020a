//! skiff-vmm: the per-task KVM virtual machine monitor. One process runs one microVM: guest memory,
//! a Linux kernel loaded for the 64-bit boot protocol, legacy devices, one thread per vCPU.

pub mod arch;
pub mod bus;
pub mod config;
pub mod devices;
pub mod exit;
pub mod jailer;
pub mod microvm;
pub mod seccomp;
pub mod stop_signals;
pub mod vcpu;
pub mod virtio;
pub mod vm;
