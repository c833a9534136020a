//! x86_64 machine definition: memory layout, boot protocol, vCPU state.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod paging;
pub mod regs;
