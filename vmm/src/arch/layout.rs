//! Guest physical memory layout of a Skiff microVM (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)          0x0000_0520  IDT (empty)
//! 0x0000_7000  zero page (boot_params)  0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4  0x0000_a000  PDPT  0x0000_b000  PD (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line (2 KiB)
//! 0x0009_fc00  MP table (extended BIOS data area, to 0xa_0000)
//! 0x0010_0000  high memory: the kernel is loaded here or above; the initrd at the top of RAM
//! 0xd000_0000  MMIO gap (virtio-mmio devices, then IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000) to 4 GiB
//! 0x1_0000_0000  RAM above the gap, when the guest has more than 3.25 GiB
//! ```

/// Global descriptor table.
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty: the kernel installs its own before enabling interrupts).
pub const IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 entries of 2 MiB: the first 1 GiB, identity mapped).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line the x86 Linux kernel accepts (`COMMAND_LINE_SIZE`), NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// End of the EBDA (start of the legacy VGA hole).
pub const EBDA_END: u64 = 0xa0000;
/// First address of "high" memory; the kernel must be loaded at or above it.
pub const HIMEM_START: u64 = 0x0010_0000;
/// Start of the 32-bit MMIO gap; RAM beyond this address continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where the IOAPIC's registers are.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Where the local APICs' registers are.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS just below the 4 GiB boundary (inside the MMIO gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Size of a page.
pub const PAGE_SIZE: u64 = 0x1000;
/// The guest size and vCPU limits, defined with the configuration they bound.
pub use skiff_vm_config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
/// Number of interrupt lines the IOAPIC routes.
pub const IOAPIC_PINS: u8 = 24;
/// First interrupt line for virtio devices (0-4 are the PIT, keyboard, cascade, COM2, COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// virtio-mmio devices take one interrupt line each, from `VIRTIO_IRQ_BASE` to the last pin
/// (the limit is defined with the configuration it bounds).
pub use skiff_vm_config::MAX_VIRTIO_DEVICES;
const _: () = assert!(MAX_VIRTIO_DEVICES == IOAPIC_PINS as usize - VIRTIO_IRQ_BASE as usize);
/// virtio-mmio devices sit at the start of the MMIO gap, one page each.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
