//! Guest RAM: which ranges of guest physical memory are RAM, and the e820 map describing them.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size_mib} MiB of guest memory: {source}")]
    Map {
        size_mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges `(start, length)` of a guest with `size` bytes of memory: one range below the
/// MMIO gap, and the remainder (if any) starting at 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Maps anonymous host memory for a guest of `size` bytes.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (start, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        size_mib: size >> 20,
        source,
    })
}

/// Type of an e820 entry the guest can use as RAM.
pub const E820_RAM: u32 = 1;

/// One entry of the BIOS e820 memory map handed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map of a guest with `size` bytes of RAM: low memory below the EBDA, then everything
/// from 1 MiB up (split around the MMIO gap).
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for (start, len) in ram_ranges(size) {
        let begin = start.0.max(HIMEM_START);
        let end = start.0 + len;
        if end > begin {
            map.push(E820Entry {
                addr: begin,
                size: end - begin,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(128 * MIB), vec![(GuestAddress(0), 128 * MIB)]);
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_gap() {
        let size = 4096 * MIB;
        let ranges = ram_ranges(size);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(ranges[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(ranges[0].1 + ranges[1].1, size);
    }

    #[test]
    fn e820_describes_all_ram_but_the_ebda_and_legacy_hole() {
        let map = e820_map(128 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: 128 * MIB - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
        let total: u64 = e820_map(5000 * MIB).iter().map(|e| e.size).sum();
        assert_eq!(total, 5000 * MIB - (HIMEM_START - EBDA_START));
        assert!(e820_map(5000 * MIB)
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
    }

    #[test]
    fn guest_memory_is_mapped_with_the_requested_size() {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let mem = create_guest_memory(64 * MIB).unwrap();
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 64 * MIB);
    }
}
