//! virtio-rng: fills the guest's buffers with bytes from the host's `getrandom`.

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{serve_queue, Desc, Round, VirtioDevice, TYPE_RNG};

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes served per buffer chain, so one request cannot keep the VMM busy.
const MAX_BYTES_PER_CHAIN: usize = 64 << 10;
/// Most descriptors in one chain (Linux posts one buffer per request).
const MAX_CHAIN_DESCS: usize = 64;

/// The entropy device.
#[derive(Default)]
pub struct Rng;

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => return false,
        }
    }
    true
}

impl Rng {
    /// Fills the writable buffers of one chain; returns the bytes written.
    fn fill(&self, descs: &[Desc], mem: &GuestMemoryMmap) -> u32 {
        let mut written = 0usize;
        let mut buf = Vec::new();
        for d in descs.iter().filter(|d| d.write_only) {
            let n = (d.len as usize).min(MAX_BYTES_PER_CHAIN - written);
            if n == 0 {
                break;
            }
            buf.resize(n, 0);
            if !getrandom(&mut buf)
                || mem
                    .write_slice(&buf, vm_memory::GuestAddress(d.addr))
                    .is_err()
            {
                break;
            }
            written += n;
        }
        written as u32
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        round: &mut Round,
    ) -> bool {
        let Some(queue) = queues.get_mut(index) else {
            return false;
        };
        serve_queue(queue, mem, MAX_CHAIN_DESCS, round, |descs| {
            self.fill(descs, mem)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        q.build_desc_chain(&[
            RawDescriptor::from(SplitDescriptor::new(0x2000, 64, 2, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x3000, 64, 0, 0)), // read-only: skipped
        ])
        .unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert!(Rng.process_queue(0, std::slice::from_mut(&mut queue), &mem, &mut Round::new()));
        let used_len: u32 = mem.read_obj(q.used_addr().unchecked_add(8)).unwrap();
        assert_eq!(used_len, 64);
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x2000)).unwrap();
        assert!(buf.iter().any(|b| *b != 0));
        mem.read_slice(&mut buf, GuestAddress(0x3000)).unwrap();
        assert_eq!(buf, [0u8; 64]);
    }

    #[test]
    fn buffers_outside_memory_are_returned_empty() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        q.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
            0xfff00, 0x1000, 2, 0,
        ))])
        .unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert!(Rng.process_queue(0, std::slice::from_mut(&mut queue), &mem, &mut Round::new()));
        let used_len: u32 = mem.read_obj(q.used_addr().unchecked_add(8)).unwrap();
        assert_eq!(used_len, 0);
    }

    #[test]
    fn indirect_chains_are_returned_unfilled_and_the_next_is_served() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        // A writable buffer at 0x2000 behind an indirect table at 0x5000 (not negotiated).
        let inner = RawDescriptor::from(SplitDescriptor::new(0x2000, 64, 2, 0));
        mem.write_obj(inner, GuestAddress(0x5000)).unwrap();
        q.add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(0x5000, 16, 4, 0)),
                RawDescriptor::from(SplitDescriptor::new(0x3000, 64, 2, 0)),
            ],
            0,
        )
        .unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert!(Rng.process_queue(0, std::slice::from_mut(&mut queue), &mem, &mut Round::new()));
        let used = |i: u64| -> (u32, u32) {
            let elem = q.used_addr().unchecked_add(4 + 8 * i);
            (
                mem.read_obj(elem).unwrap(),
                mem.read_obj(elem.unchecked_add(4)).unwrap(),
            )
        };
        assert_eq!((used(0), used(1)), ((0, 0), (1, 64)));
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x2000)).unwrap();
        assert_eq!(buf, [0u8; 64]);
    }
}
