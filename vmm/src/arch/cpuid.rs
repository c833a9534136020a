//! CPUID normalisation: KVM reports what the host can virtualise; each vCPU must also see its own
//! APIC id and a topology matching the guest (one socket of `count` single-threaded cores), and
//! must know it runs under a hypervisor.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_ADDRESS_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_APIC_ID: u32 = 0x8000_001e;

/// Leaf 1 EDX: hyper-threading / multi-core package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CLFLUSH line size in 8-byte units (64 bytes).
const CLFLUSH_LINE_QWORDS: u32 = 8;

/// Topology level types of leaves 0xb/0x1f.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Number of bits an APIC id needs to number `count` CPUs.
fn id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Rewrites the supported-CPUID list for vCPU `index` (its APIC id) of `count`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count = u32::from(count.max(1));
    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0xff)
                    | (CLFLUSH_LINE_QWORDS << 8)
                    | ((count & 0xff) << 16)
                    | (apic_id << 24);
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
                entry.ecx |= ECX_HYPERVISOR;
            }
            LEAF_CACHE_PARAMS => {
                let cache_type = entry.eax & 0x1f;
                if cache_type != 0 {
                    let level = (entry.eax >> 5) & 0x7;
                    // L1 and L2 are per core; L3 is shared by the package.
                    let sharing = if level >= 3 { count - 1 } else { 0 };
                    entry.eax =
                        (entry.eax & 0x3ff) | ((sharing & 0xfff) << 14) | ((count - 1) << 26);
                }
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                let (eax, ebx, level_type) = match entry.index {
                    0 => (0, 1, LEVEL_TYPE_SMT),
                    1 => (id_bits(count as u8), count, LEVEL_TYPE_CORE),
                    _ => (0, 0, 0),
                };
                entry.eax = eax;
                entry.ebx = ebx;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
                entry.edx = apic_id;
            }
            LEAF_EXT_ADDRESS_SIZES => {
                entry.ecx = (entry.ecx & !0xf0ff) | (count - 1) | (id_bits(count as u8) << 12);
            }
            LEAF_EXT_APIC_ID => {
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff; // core id; one thread per core
                entry.ecx = 0; // one node
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn host_like() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, 0x1f, 0, 0, 0),
            entry(1, 0, 0x806f8, 0xff80_0800, 0x7ffa_3203, 0x178b_fbff),
            entry(4, 0, 0x121, 0, 0, 0), // L1d
            entry(4, 1, 0x163, 0, 0, 0), // L3
            entry(4, 2, 0, 0, 0, 0),     // no more caches
            entry(0xb, 0, 1, 2, 0x100, 7),
            entry(0xb, 1, 4, 16, 0x201, 7),
            entry(0xb, 2, 0, 0, 2, 7),
            entry(0x8000_0008, 0, 0x3030, 0, 0x7007, 0),
            entry(0x8000_001e, 0, 9, 0x105, 3, 0),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
        ]
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = host_like();
        normalize(&mut e, 3, 4);
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!((l1.ebx >> 8) & 0xff, 8);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);

        let mut single = host_like();
        normalize(&mut single, 0, 1);
        assert_eq!(find(&single, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_one_package_of_single_thread_cores() {
        let mut e = host_like();
        normalize(&mut e, 2, 3);
        let smt = find(&e, 0xb, 0);
        assert_eq!(
            (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx),
            (0, 1, LEVEL_TYPE_SMT, 2)
        );
        let core = find(&e, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8, core.edx),
            (2, 3, LEVEL_TYPE_CORE, 2)
        );
        let end = find(&e, 0xb, 2);
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
    }

    #[test]
    fn cache_and_amd_leaves_follow_the_cpu_count() {
        let mut e = host_like();
        normalize(&mut e, 1, 2);
        assert_eq!(find(&e, 4, 0).eax >> 26, 1);
        assert_eq!((find(&e, 4, 0).eax >> 14) & 0xfff, 0, "L1 is per core");
        assert_eq!((find(&e, 4, 1).eax >> 14) & 0xfff, 1, "L3 is shared");
        assert_eq!(find(&e, 4, 2).eax, 0, "terminator untouched");
        assert_eq!(find(&e, 0x8000_0008, 0).ecx & 0xff, 1);
        assert_eq!(find(&e, 0x8000_001e, 0).eax, 1);
        // Leaves we do not own are left as KVM reported them.
        assert_eq!(find(&e, 0x4000_0000, 0).ebx, 0x4b4d_564b);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(id_bits), [0, 1, 2, 2, 3, 5]);
    }
}
