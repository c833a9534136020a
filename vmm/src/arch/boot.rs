//! Loading a Linux guest for the 64-bit boot protocol: the ELF `vmlinux`, the initrd at the top of
//! low RAM, the command line, and the zero page (`boot_params`) with the e820 map.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PAGE_SIZE, ZERO_PAGE_START};
use super::memory::e820_map;

/// Errors loading the guest's kernel, initrd or command line.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path} is not a loadable x86_64 ELF vmlinux: {source}")]
    KernelFormat {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path} ends at {end:#x}, beyond the guest's {mem_mib} MiB of memory")]
    KernelTooLarge {
        path: PathBuf,
        end: u64,
        mem_mib: u64,
    },
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("cannot read initrd {path} into guest memory: {source}")]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line contains {0:?}: only printable ASCII is allowed")]
    CmdlineChar(char),
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line: {0}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("too many e820 entries ({0})")]
    E820Overflow(usize),
    #[error("cannot write boot parameters to guest memory: {0}")]
    WriteBootParams(#[source] vm_memory::GuestMemoryError),
}

/// Where the guest's initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Where the loaded kernel lies and where it starts executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    pub entry: u64,
    pub end: u64,
}

fn mem_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Loads an ELF `vmlinux` at its physical addresses (at or above 1 MiB).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let result =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::KernelFormat {
                path: path.to_owned(),
                source,
            }
        })?;
    // The segments' file parts were written (so they fit); their zero-filled tails must fit too.
    let end = result.kernel_end;
    if mem
        .check_address(GuestAddress(end.saturating_sub(1)))
        .is_none()
    {
        return Err(BootError::KernelTooLarge {
            path: path.to_owned(),
            end,
            mem_mib: mem_size(mem) >> 20,
        });
    }
    Ok(LoadedKernel {
        entry: result.kernel_load.0,
        end,
    })
}

/// Picks the initrd's address: page aligned, as high as possible in the first RAM region, above
/// the kernel.
pub fn initrd_address(low_ram_end: u64, kernel_end: u64, size: u64) -> Option<u64> {
    let addr = low_ram_end.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Reads the initrd from `path` into the top of low RAM.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdPlacement, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_owned(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::OpenInitrd {
            path: path.to_owned(),
            source,
        })?
        .len();
    let low_ram_end = mem.iter().next().map_or(0, |r| r.start_addr().0 + r.len());
    let addr =
        initrd_address(low_ram_end, kernel_end, size).ok_or_else(|| BootError::InitrdTooLarge {
            path: path.to_owned(),
            size,
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::ReadInitrd {
            path: path.to_owned(),
            source,
        })?;
    Ok(InitrdPlacement { addr, size })
}

/// Parses and checks a kernel command line: printable ASCII that fits the kernel's buffer.
pub fn parse_cmdline(text: &str) -> Result<Cmdline, BootError> {
    if let Some(bad) = text.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(BootError::CmdlineChar(bad));
    }
    Cmdline::try_from(text, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)
}

/// Writes the command line where the zero page will point to.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BootError::WriteCmdline)
}

/// Builds the zero page for a guest of `mem_size` bytes.
pub fn build_boot_params(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = 0xff; // undefined boot loader
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.kernel_alignment = 0x0100_0000;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(BootError::E820Overflow(map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page.
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::WriteBootParams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::memory::create_guest_memory;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    #[test]
    fn boot_params_carry_header_cmdline_initrd_and_e820() {
        let initrd = InitrdPlacement {
            addr: 0x7f0_0000,
            size: 0x10_0123,
        };
        let p = build_boot_params(128 * MIB, 42, Some(initrd)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x7f0_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x10_0123);
        assert_eq!(p.e820_entries, 2);
        let last = p.e820_table[1];
        assert_eq!({ last.addr } + { last.size }, 128 * MIB);
        assert_eq!({ last.r#type }, 1);
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram_page_aligned() {
        assert_eq!(
            initrd_address(128 * MIB, 20 * MIB, 0x1800),
            Some(128 * MIB - 0x2000)
        );
        assert_eq!(
            initrd_address(128 * MIB, 120 * MIB, 16 * MIB),
            None,
            "overlaps the kernel"
        );
        assert_eq!(initrd_address(4 * MIB, 0, 8 * MIB), None, "larger than RAM");
    }

    #[test]
    fn non_elf_kernel_is_a_clear_error() {
        let mem = create_guest_memory(32 * MIB).unwrap();
        let mut f = tempfile();
        f.1.write_all(b"this is not an ELF file at all, just text.......................")
            .unwrap();
        let err = load_kernel(&mem, &f.0).unwrap_err();
        assert!(matches!(err, BootError::KernelFormat { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("not a loadable x86_64 ELF vmlinux"));
        std::fs::remove_file(&f.0).unwrap();
    }

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let mem = create_guest_memory(32 * MIB).unwrap();
        let err = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err
            .to_string()
            .contains("cannot open kernel /nonexistent/vmlinux"));
    }

    #[test]
    fn initrd_is_read_into_guest_memory() {
        let mem = create_guest_memory(32 * MIB).unwrap();
        let mut f = tempfile();
        f.1.write_all(b"070701initrd-bytes").unwrap();
        let placed = load_initrd(&mem, &f.0, 20 * MIB).unwrap();
        assert_eq!(placed.size, 18);
        assert_eq!(placed.addr % PAGE_SIZE, 0);
        let mut buf = [0u8; 18];
        mem.read_slice(&mut buf, GuestAddress(placed.addr)).unwrap();
        assert_eq!(&buf, b"070701initrd-bytes");
        std::fs::remove_file(&f.0).unwrap();
    }

    #[test]
    fn cmdline_rejects_what_the_kernel_cannot_take() {
        assert!(parse_cmdline("console=ttyS0 quiet").is_ok());
        assert!(parse_cmdline(&"x".repeat(CMDLINE_MAX_SIZE + 1)).is_err());
        assert!(parse_cmdline("bad\u{7}char").is_err());
    }

    fn tempfile() -> (PathBuf, File) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "skiff-boot-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&path).unwrap();
        (path, file)
    }
}
