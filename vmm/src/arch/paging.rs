//! Identity page tables for 64-bit entry: the first 1 GiB mapped with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// Present and writable.
const PRESENT_RW: u64 = 0x3;
/// Present, writable, 2 MiB page.
const PRESENT_RW_HUGE: u64 = 0x83;
/// Entries in a page table.
const ENTRIES: u64 = 512;

/// Writes the boot page tables into guest memory; returns the value for CR3.
pub fn write_identity_page_tables(
    mem: &GuestMemoryMmap,
) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | PRESENT_RW, GuestAddress(PDPTE_START))?;
    for i in 0..ENTRIES {
        mem.write_obj((i << 21) | PRESENT_RW_HUGE, GuestAddress(PDE_START + i * 8))?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::memory::create_guest_memory;

    /// Walks the tables like the MMU would for a 2 MiB page and returns the physical address.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 0x1ff) * 8))
            .ok()?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8))
            .ok()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8))
            .ok()?;
        if pde & 1 == 0 || pde & 0x80 == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) + (va & 0x1f_ffff))
    }

    #[test]
    fn first_gigabyte_is_identity_mapped() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let cr3 = write_identity_page_tables(&mem).unwrap();
        for va in [0u64, 0x1000, 0x100_0000, 0x1234_5678, (1 << 30) - 1] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        // Nothing above 1 GiB is mapped.
        let pdpte1: u64 = mem.read_obj(GuestAddress(PDPTE_START + 8)).unwrap();
        assert_eq!(pdpte1, 0);
    }
}
