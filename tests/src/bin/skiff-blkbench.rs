//! `skiff-blkbench`: runs inside a guest. Measures a block device with O_DIRECT I/O (no guest page
//! cache): sequential write and read in 1 MiB requests, and 4 KiB random reads at one request in
//! flight. Prints one line: `blkbench: seq-write-mibs=.. seq-read-mibs=.. rand-read-iops=..`.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::CString;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "skiff-blkbench")]
struct Args {
    /// The block device (or file) to measure; its content is overwritten.
    device: String,
    /// MiB moved by each sequential pass.
    #[arg(long, default_value_t = 64)]
    seq_mib: usize,
    /// Number of random 4 KiB reads.
    #[arg(long, default_value_t = 4000)]
    rand_ops: usize,
}

/// A page-aligned buffer, as O_DIRECT requires.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> anyhow::Result<Self> {
        let layout = Layout::from_size_align(len, 4096).context("buffer layout")?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            bail!("out of memory");
        }
        Ok(Self { ptr, layout })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

struct Device(libc::c_int);

impl Device {
    fn open(path: &str) -> anyhow::Result<Self> {
        let c = CString::new(path)?;
        // SAFETY: `c` is a valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_DIRECT) };
        if fd < 0 {
            bail!("open {path}: {}", std::io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn io(&self, buf: &AlignedBuf, len: usize, offset: u64, write: bool) -> anyhow::Result<()> {
        // SAFETY: `buf` holds at least `len` bytes (callers pass lengths within the buffer) and
        // stays alive across the call.
        let n = unsafe {
            if write {
                libc::pwrite(self.0, buf.ptr.cast(), len, offset as libc::off_t)
            } else {
                libc::pread(self.0, buf.ptr.cast(), len, offset as libc::off_t)
            }
        };
        if n != len as isize {
            bail!(
                "I/O at {offset} returned {n}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { libc::close(self.0) };
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    const MIB: usize = 1 << 20;
    let dev = Device::open(&args.device)?;
    let buf = AlignedBuf::new(MIB)?;
    // SAFETY: the buffer is MIB bytes long.
    unsafe { std::ptr::write_bytes(buf.ptr, 0x5a, MIB) };

    let start = Instant::now();
    for i in 0..args.seq_mib {
        dev.io(&buf, MIB, (i * MIB) as u64, true)?;
    }
    // SAFETY: fsync on an fd we own.
    unsafe { libc::fsync(dev.0) };
    let write_mibs = args.seq_mib as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    for i in 0..args.seq_mib {
        dev.io(&buf, MIB, (i * MIB) as u64, false)?;
    }
    let read_mibs = args.seq_mib as f64 / start.elapsed().as_secs_f64();

    let blocks = (args.seq_mib * MIB / 4096) as u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    for _ in 0..args.rand_ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        dev.io(&buf, 4096, (x % blocks) * 4096, false)?;
    }
    let iops = args.rand_ops as f64 / start.elapsed().as_secs_f64();
    println!("blkbench: seq-write-mibs={write_mibs:.1} seq-read-mibs={read_mibs:.1} rand-read-iops={iops:.0}");
    Ok(())
}
