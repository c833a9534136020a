//! The Intel MultiProcessor Specification 1.4 table through which a guest without ACPI finds its
//! CPUs, its IOAPIC and how ISA interrupts are routed.
//!
//! Layout written at the start of the EBDA: the 16-byte floating pointer structure, then the
//! configuration table (header, one processor entry per vCPU, the ISA bus, the IOAPIC, one I/O
//! interrupt entry per IOAPIC pin, and the two local interrupt entries).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_END, EBDA_START, IOAPIC_PINS, IOAPIC_START, MAX_VCPUS};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table supports 1 to {MAX_VCPUS} vCPUs, not {0}")]
    VcpuCount(u8),
    #[error("the MP table for {0} vCPUs does not fit in the EBDA")]
    TooLarge(u8),
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const SPEC_REVISION: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6, as KVM's default CPU models report.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const HEADER_SIZE: usize = 44;
const FLOATING_POINTER_SIZE: usize = 16;

/// Size in bytes of the complete MP table (floating pointer + configuration table) for `vcpus`.
pub fn table_size(vcpus: u8) -> usize {
    FLOATING_POINTER_SIZE
        + HEADER_SIZE
        + 20 * usize::from(vcpus)
        + 8 // bus
        + 8 // IOAPIC
        + 8 * usize::from(IOAPIC_PINS)
        + 8 * 2 // local interrupts
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the MP table for `vcpus` CPUs (APIC ids 0..vcpus) to be placed at `base`.
pub fn build(vcpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::VcpuCount(vcpus));
    }
    let ioapic_id = vcpus; // the first id after the CPUs'
    let config_addr = base + FLOATING_POINTER_SIZE as u64;

    let mut entries: Vec<u8> = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry_count += 1;
    for pin in 0..IOAPIC_PINS {
        // ISA IRQ n arrives on IOAPIC pin n (KVM's default routing), default polarity/trigger.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
        entry_count += 1;
    }
    // The 8259 PIC's output on LINT0 of the boot CPU, NMI on LINT1 of every CPU.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entry_count += 2;

    let table_len = HEADER_SIZE + entries.len();
    let mut config = Vec::with_capacity(table_len);
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&(table_len as u16).to_le_bytes());
    config.push(SPEC_REVISION);
    config.push(0); // checksum, below
    config.extend_from_slice(b"SKIFF   ");
    config.extend_from_slice(b"MICROVM     ");
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&entry_count.to_le_bytes());
    config.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    config.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    config.push(0); // extended table checksum
    config.push(0); // reserved
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut table = Vec::with_capacity(FLOATING_POINTER_SIZE + config.len());
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&(config_addr as u32).to_le_bytes());
    table.push(1); // length in 16-byte units
    table.push(SPEC_REVISION);
    table.push(0); // checksum, below
    table.extend_from_slice(&[0; 5]); // feature bytes: configuration table present, virtual wire
    table[10] = checksum(&table[..FLOATING_POINTER_SIZE]);
    table.extend_from_slice(&config);
    debug_assert_eq!(table.len(), table_size(vcpus));
    Ok(table)
}

/// Writes the MP table for `vcpus` CPUs at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let table = build(vcpus, EBDA_START)?;
    if EBDA_START + table.len() as u64 > EBDA_END {
        return Err(MptableError::TooLarge(vcpus));
    }
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_valid() {
        for vcpus in [1, 2, 7, MAX_VCPUS] {
            let t = build(vcpus, EBDA_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let pointer = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(pointer, EBDA_START + 16);
            let config = &t[16..];
            assert_eq!(&config[0..4], b"PCMP");
            let len = u16::from_le_bytes(config[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, config.len());
            assert_eq!(sum(config), 0);
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_with_one_bootstrap_cpu() {
        let t = build(4, EBDA_START).unwrap();
        let config = &t[16..];
        let count = u16::from_le_bytes(config[34..36].try_into().unwrap());
        assert_eq!(count, 4 + 1 + 1 + u16::from(IOAPIC_PINS) + 2);
        let cpus: Vec<&[u8]> = config[HEADER_SIZE..HEADER_SIZE + 4 * 20]
            .chunks(20)
            .collect();
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu[0], ENTRY_PROCESSOR);
            assert_eq!(cpu[1], i as u8, "APIC id");
            assert_eq!(cpu[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(cpu[3] & CPU_BOOTSTRAP != 0, i == 0);
        }
        // The IOAPIC follows the bus entry and takes the first free APIC id.
        let ioapic = &config[HEADER_SIZE + 4 * 20 + 8..][..8];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 4));
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()) as u64,
            IOAPIC_START
        );
    }

    #[test]
    fn largest_table_fits_in_the_ebda() {
        assert!(EBDA_START + table_size(MAX_VCPUS) as u64 <= EBDA_END);
    }

    #[test]
    fn rejects_zero_and_too_many_vcpus() {
        assert!(matches!(
            build(0, EBDA_START),
            Err(MptableError::VcpuCount(0))
        ));
        assert!(matches!(
            build(MAX_VCPUS + 1, EBDA_START),
            Err(MptableError::VcpuCount(_))
        ));
    }

    #[test]
    fn written_table_is_in_guest_memory() {
        let mem = crate::arch::memory::create_guest_memory(32 << 20).unwrap();
        write(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
