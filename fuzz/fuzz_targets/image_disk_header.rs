//! Fuzzes the image disk's header block as guest-init reads it from a disk the host built (and a
//! hostile host or a corrupted disk could have changed): whatever is accepted lies inside the
//! disk, aligned, in order and without overlap, and encodes back to an equivalent header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_protocol::image_disk::{DiskHeader, BLOCK};

fuzz_target!(|data: &[u8]| {
    // First 8 bytes: the disk's size; the rest: the header block (padded to a block).
    if data.len() < 8 {
        return;
    }
    let disk_size = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
    let mut block = data[8..].to_vec();
    if block.len() < BLOCK as usize {
        block.resize(BLOCK as usize, 0);
    }
    let Ok(header) = DiskHeader::decode(&block, disk_size) else {
        return;
    };
    let mut next_free = BLOCK + u64::from(header.toc_len);
    for layer in &header.layers {
        assert_eq!(layer.offset % BLOCK, 0);
        assert!(layer.offset >= next_free);
        let end = layer.offset.checked_add(layer.size).unwrap_or(u64::MAX);
        assert!(end <= disk_size);
        next_free = end;
    }
    let encoded = header.encode().unwrap_or_else(|e| panic!("{header:?}: {e}"));
    assert_eq!(DiskHeader::decode(&encoded, disk_size).as_ref(), Ok(&header));
});
