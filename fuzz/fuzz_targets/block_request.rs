//! Fuzzes the virtio-blk request parser with arbitrary guest memory and descriptor chains, and
//! checks what an accepted request promises: every buffer and the status byte lie in guest
//! memory, buffers point the right way, and the sectors lie on the disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm::virtio::block_request::{parse, Desc, RequestKind, SECTOR_SIZE};

const MEM_SIZE: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    // Layout of the input: capacity (8 bytes), then 12-byte descriptors until a 0xff marker
    // byte, then the initial guest memory contents.
    if data.len() < 8 {
        return;
    }
    let capacity = u64::from_le_bytes(data[..8].try_into().unwrap_or_default()) % (1 << 40);
    let mut rest = &data[8..];
    let mut descs = Vec::new();
    while rest.len() >= 12 && rest[0] != 0xff {
        let addr = u64::from(u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()))
            | (u64::from(rest[11] & 0x80) << 56);
        let len = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
        descs.push(Desc {
            addr,
            len,
            write_only: rest[8] & 1 != 0,
            has_next: rest[8] & 2 != 0,
        });
        rest = &rest[12..];
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap_or_else(|_| std::process::abort());
    let init = &rest[..rest.len().min(MEM_SIZE)];
    let _ = mem.write_slice(init, GuestAddress(0));

    let Ok(req) = parse(descs.iter().copied(), &mem, capacity) else {
        return;
    };
    assert!(mem.check_range(req.status, 1));
    for seg in &req.data {
        assert!(seg.len > 0);
        assert!(mem.check_range(seg.addr, seg.len as usize));
    }
    if let RequestKind::In | RequestKind::Out = req.kind {
        let len = req.data_len();
        assert_eq!(len % SECTOR_SIZE, 0);
        assert!(req.sector + len / SECTOR_SIZE <= capacity);
    }
    let directions: Vec<bool> = descs[1..descs.len() - 1].iter().map(|d| d.write_only).collect();
    match req.kind {
        RequestKind::In | RequestKind::GetId => assert!(directions.iter().all(|w| *w)),
        RequestKind::Out => assert!(directions.iter().all(|w| !*w)),
        _ => {}
    }
});
