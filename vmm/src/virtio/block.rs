//! virtio-blk backed by a host file: reads, writes, flushes and the device id. A read-only disk's
//! file is never opened writable and every write request to it fails with an error status.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};

use super::block_request::{
    find_status, parse, Desc, Request, RequestError, RequestKind, ID_BYTES, MAX_SEGMENTS,
    SECTOR_SIZE,
};
use super::{read_config_bytes, Round, VirtioDevice, TYPE_BLOCK};
use crate::seccomp::{self, ThreadKind};

const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk {path} is not a regular file or block device")]
    NotAFile { path: PathBuf },
    #[error("cannot start the block I/O helper thread: {0}")]
    Helper(#[source] std::io::Error),
    #[error("disk id {0:?} is longer than {ID_BYTES} bytes or not printable ASCII")]
    BadId(String),
}

/// A virtio block device.
pub struct Block {
    file: Arc<File>,
    read_only: bool,
    /// Size in sectors.
    capacity: u64,
    id: [u8; ID_BYTES],
    config: Vec<u8>,
    /// Serves half of a batch's transfers (see [`Block::with_io_helper`]).
    helper: Option<IoHelper>,
}

/// A transfer handed to the I/O helper: (index in the batch, the request, direction).
type Job = (usize, Request, bool);

/// A thread that performs some of a batch's transfers while the VMM thread performs the others,
/// so that requests the guest has in flight together use two host CPUs. It has its own handle on
/// guest memory and the disk file; no pointers cross threads.
struct IoHelper {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<(usize, bool)>,
}

impl IoHelper {
    fn spawn(file: Arc<File>, mem: GuestMemoryMmap) -> std::io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("blk-io".into())
            .spawn(move || {
                // Without its filter the helper must not run: dropping the receiver makes every
                // job fall back to the VMM thread.
                if let Err(e) = seccomp::enter(ThreadKind::BlockIo) {
                    eprintln!("skiff-vmm: block I/O helper not started: {e}");
                    return;
                }
                // Ends when the device (and with it the job sender) is dropped.
                for (index, request, to_disk) in job_rx {
                    let ok = transfer(&file, &mem, &request, to_disk);
                    if done_tx.send((index, ok)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self { jobs, done })
    }
}

impl Block {
    /// Opens `path` (read-only when `read_only`); `id` is what GET_ID returns.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        if id.len() > ID_BYTES || !id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(BlockError::BadId(id.to_owned()));
        }
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let kind = file.metadata().map_err(open_err)?.file_type();
        use std::os::unix::fs::FileTypeExt;
        if !kind.is_file() && !kind.is_block_device() {
            return Err(BlockError::NotAFile {
                path: path.to_owned(),
            });
        }
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let capacity = size / SECTOR_SIZE;
        let mut id_bytes = [0u8; ID_BYTES];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        // Config space: capacity (le64), size_max (le32, unused), seg_max (le32).
        let mut config = Vec::with_capacity(16);
        config.extend_from_slice(&capacity.to_le_bytes());
        config.extend_from_slice(&0u32.to_le_bytes());
        config.extend_from_slice(&(MAX_SEGMENTS as u32).to_le_bytes());
        Ok(Self {
            file: Arc::new(file),
            read_only,
            capacity,
            id: id_bytes,
            config,
            helper: None,
        })
    }

    /// Starts the I/O helper thread that serves half of a batch's transfers in parallel. Without
    /// it every transfer runs on the VMM thread.
    pub fn with_io_helper(mut self, mem: &GuestMemoryMmap) -> Result<Self, BlockError> {
        let helper = IoHelper::spawn(self.file.clone(), mem.clone()).map_err(BlockError::Helper)?;
        self.helper = Some(helper);
        Ok(self)
    }

    /// Disk size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether `req` moves data between guest memory and the file.
    fn is_transfer(&self, req: &Request) -> bool {
        req.kind == RequestKind::In || (req.kind == RequestKind::Out && !self.read_only)
    }

    /// Serves one valid request; returns its status and the bytes written to the guest.
    /// `transferred` is the outcome of its transfer when that already ran elsewhere.
    fn execute(
        &mut self,
        req: &Request,
        mem: &GuestMemoryMmap,
        transferred: Option<bool>,
    ) -> (u8, u32) {
        let transfer_now =
            |to_disk| transferred.unwrap_or_else(|| transfer(&self.file, mem, req, to_disk));
        match req.kind {
            RequestKind::In if transfer_now(false) => (VIRTIO_BLK_S_OK, req.data_len() as u32),
            RequestKind::Out if self.read_only => (VIRTIO_BLK_S_IOERR, 0),
            RequestKind::Out if transfer_now(true) => (VIRTIO_BLK_S_OK, 0),
            RequestKind::In | RequestKind::Out => (VIRTIO_BLK_S_IOERR, 0),
            RequestKind::Flush if self.read_only => (VIRTIO_BLK_S_OK, 0),
            RequestKind::Flush => match self.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            RequestKind::GetId => {
                let mut written = 0usize;
                for seg in &req.data {
                    let n = (seg.len as usize).min(ID_BYTES - written);
                    if mem
                        .write_slice(&self.id[written..written + n], seg.addr)
                        .is_err()
                    {
                        return (VIRTIO_BLK_S_IOERR, written as u32);
                    }
                    written += n;
                    if written == ID_BYTES {
                        break;
                    }
                }
                (VIRTIO_BLK_S_OK, written as u32)
            }
            RequestKind::Unsupported(_) => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// Completes one descriptor chain given its parse result; returns the used length to report.
    fn complete(
        &mut self,
        descs: &[Desc],
        parsed: Result<Request, RequestError>,
        transferred: Option<bool>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        match parsed {
            Ok(req) => {
                let (status, written) = self.execute(&req, mem, transferred);
                // The status address was validated by parse().
                let _ = mem.write_obj(status, req.status);
                written + 1
            }
            Err(e) if e.status_writable() => match find_status(descs.iter().copied(), mem) {
                Some(addr) if mem.write_obj(VIRTIO_BLK_S_IOERR, addr).is_ok() => 1,
                _ => 0,
            },
            // No place to put a status: the buffer is returned untouched.
            Err(_) => 0,
        }
    }

    /// Runs the transfers among `parsed` on the helper and this thread, half each; returns each
    /// request's transfer outcome (None for requests that are not transfers).
    fn run_transfers(
        &mut self,
        parsed: &[Result<Request, RequestError>],
        mem: &GuestMemoryMmap,
    ) -> Vec<Option<bool>> {
        let mut outcome = vec![None; parsed.len()];
        let transfers: Vec<(usize, &Request)> = parsed
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.as_ref()
                    .ok()
                    .filter(|r| self.is_transfer(r))
                    .map(|r| (i, r))
            })
            .collect();
        if transfers.len() < 2 {
            return outcome; // executed inline, in order
        }
        let mut sent = 0;
        if let Some(helper) = &self.helper {
            for (i, req) in transfers.iter().skip(1).step_by(2) {
                let job = (*i, (*req).clone(), req.kind == RequestKind::Out);
                if helper.jobs.send(job).is_ok() {
                    sent += 1;
                }
            }
        }
        for (i, req) in transfers.iter().step_by(if sent > 0 { 2 } else { 1 }) {
            outcome[*i] = Some(transfer(&self.file, mem, req, req.kind == RequestKind::Out));
        }
        if let Some(helper) = &self.helper {
            for _ in 0..sent {
                match helper.done.recv() {
                    Ok((i, ok)) => outcome[i] = Some(ok),
                    // The helper is gone: what it had not finished counts as failed.
                    Err(_) => break,
                }
            }
        }
        for (i, _) in &transfers {
            outcome[*i].get_or_insert(false);
        }
        outcome
    }
}

/// Moves a request's data between guest memory and the file with one vectored system call (more
/// only on a short transfer). Returns whether it all moved.
fn transfer(file: &File, mem: &GuestMemoryMmap, req: &Request, to_disk: bool) -> bool {
    let access = if to_disk {
        Permissions::Read
    } else {
        Permissions::Write
    };
    let mut guards = Vec::with_capacity(req.data.len());
    let mut iovecs = Vec::with_capacity(req.data.len());
    for seg in &req.data {
        // parse() checked that each segment lies in guest memory.
        let Ok(slices) = GuestMemory::get_slices(mem, seg.addr, seg.len as usize, access) else {
            return false;
        };
        for slice in slices {
            let Ok(slice) = slice else { return false };
            let guard = slice.ptr_guard_mut();
            iovecs.push(libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: slice.len(),
            });
            guards.push(guard);
        }
    }
    // parse() checked that the range lies within the disk.
    let offset = req.sector * SECTOR_SIZE;
    transfer_vectored(file.as_raw_fd(), &mut iovecs, offset, to_disk).is_ok()
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    /// Takes every available request, runs their transfers (in parallel when there are several),
    /// then completes them in order: flushes and ids run after the batch's transfers. A chain
    /// refused unread (too long, indirect, broken) is returned as used with nothing written.
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
        let mut chains = Vec::new();
        let mut parsed = Vec::new();
        // A header, MAX_SEGMENTS data buffers and a status: at most as many descriptors as the
        // queue has, so each chain read holds at most QUEUE_SIZE descriptors.
        while let Some((head, descs)) = round.pop_chain(queue, mem, MAX_SEGMENTS + 2) {
            match descs {
                Ok(descs) => {
                    parsed.push(parse(descs.iter().copied(), mem, self.capacity));
                    chains.push((head, descs));
                }
                Err(e) => {
                    parsed.push(Err(RequestError::from(e)));
                    chains.push((head, Vec::new()));
                }
            }
        }
        let transferred = self.run_transfers(&parsed, mem);
        let mut used_any = false;
        for (((head, descs), parsed), transferred) in chains.iter().zip(parsed).zip(transferred) {
            let len = self.complete(descs, parsed, transferred, mem);
            if queue.add_used(mem, *head, len).is_err() {
                // The used ring is not in guest memory: nothing more can be returned.
                break;
            }
            used_any = true;
        }
        used_any
    }
}

/// `preadv`/`pwritev` of all of `iovecs` at `offset`, continuing after short transfers.
fn transfer_vectored(
    fd: std::os::fd::RawFd,
    mut iovecs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> std::io::Result<()> {
    while !iovecs.is_empty() {
        let count = iovecs.len().min(IOV_MAX);
        let offset_arg = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: each iovec describes a live range of guest memory (its PtrGuard is held by the
        // caller for the duration of the call) and `count` does not exceed the slice's length.
        let n = unsafe {
            if write {
                libc::pwritev(fd, iovecs.as_ptr(), count as libc::c_int, offset_arg)
            } else {
                libc::preadv(fd, iovecs.as_ptr(), count as libc::c_int, offset_arg)
            }
        };
        let done = match usize::try_from(n) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
        };
        offset += done as u64;
        iovecs = advance_iovecs(iovecs, done);
    }
    Ok(())
}

/// Drops the iovecs of which `done` bytes covered all, and trims the one covered in part.
fn advance_iovecs(mut iovecs: &mut [libc::iovec], mut done: usize) -> &mut [libc::iovec] {
    while let Some(first) = iovecs.first_mut() {
        if done >= first.iov_len {
            done -= first.iov_len;
            iovecs = &mut iovecs[1..];
        } else {
            // SAFETY: `done` < `iov_len`, so the new base stays inside the same range.
            first.iov_base = unsafe { first.iov_base.cast::<u8>().add(done) }.cast();
            first.iov_len -= done;
            break;
        }
    }
    iovecs
}

/// Most iovecs one `preadv`/`pwritev` accepts.
const IOV_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block_request::{
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use std::io::Write;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    struct Disk {
        path: PathBuf,
    }

    impl Disk {
        fn new(name: &str, bytes: &[u8]) -> Self {
            let path =
                std::env::temp_dir().join(format!("skiff-blk-{}-{name}", std::process::id()));
            File::create(&path).unwrap().write_all(bytes).unwrap();
            Self { path }
        }
        fn read(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    impl Drop for Disk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn put_header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(addr)).unwrap();
        mem.write_obj(sector, GuestAddress(addr + 8)).unwrap();
    }

    /// Runs the chain `descs` through the device; returns (used len, status byte).
    fn run(
        block: &mut Block,
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        status_at: u64,
    ) -> (u32, u8) {
        let q = MockSplitQueue::new(mem, 16);
        mem.write_obj(0xffu8, GuestAddress(status_at)).unwrap();
        q.build_desc_chain(descs).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert!(block.process_queue(0, std::slice::from_mut(&mut queue), mem, &mut Round::new()));
        let used_len: u32 = mem.read_obj(q.used_addr().unchecked_add(8)).unwrap();
        (used_len, mem.read_obj(GuestAddress(status_at)).unwrap())
    }

    #[test]
    fn reads_and_writes_reach_the_file() {
        let mut content = vec![0u8; 8 * 512];
        content[512..1024].fill(0x5a);
        let disk = Disk::new("rw", &content);
        let mut block = Block::open(&disk.path, false, "disk0").unwrap();
        assert_eq!(block.capacity(), 8);
        let m = mem();

        put_header(&m, 0x1000, VIRTIO_BLK_T_IN, 1);
        let (len, st) = run(
            &mut block,
            &m,
            &[
                desc(0x1000, 16, 0),
                desc(0x2000, 512, F_WRITE),
                desc(0x3000, 1, F_WRITE),
            ],
            0x3000,
        );
        assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));
        let mut buf = vec![0u8; 512];
        m.read_slice(&mut buf, GuestAddress(0x2000)).unwrap();
        assert!(buf.iter().all(|b| *b == 0x5a));

        m.write_slice(&[0xc3; 1024], GuestAddress(0x4000)).unwrap();
        put_header(&m, 0x1000, VIRTIO_BLK_T_OUT, 6);
        let (_, st) = run(
            &mut block,
            &m,
            &[
                desc(0x1000, 16, 0),
                desc(0x4000, 1024, 0),
                desc(0x3000, 1, F_WRITE),
            ],
            0x3000,
        );
        assert_eq!(st, VIRTIO_BLK_S_OK);
        put_header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let (_, st) = run(
            &mut block,
            &m,
            &[desc(0x1000, 16, 0), desc(0x3000, 1, F_WRITE)],
            0x3000,
        );
        assert_eq!(st, VIRTIO_BLK_S_OK);
        let file = disk.read();
        assert!(file[6 * 512..].iter().all(|b| *b == 0xc3));
        assert!(file[..512].iter().all(|b| *b == 0));
    }

    #[test]
    fn read_only_disk_refuses_writes_and_stays_unchanged() {
        let disk = Disk::new("ro", &[7u8; 4096]);
        let mut block = Block::open(&disk.path, true, "ro").unwrap();
        assert_ne!(block.features() & VIRTIO_BLK_F_RO, 0);
        let m = mem();
        put_header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
        let (len, st) = run(
            &mut block,
            &m,
            &[
                desc(0x1000, 16, 0),
                desc(0x4000, 512, 0),
                desc(0x3000, 1, F_WRITE),
            ],
            0x3000,
        );
        assert_eq!((len, st), (1, VIRTIO_BLK_S_IOERR));
        assert_eq!(disk.read(), vec![7u8; 4096]);
    }

    #[test]
    fn get_id_and_unsupported_requests() {
        let disk = Disk::new("id", &[0u8; 512]);
        let mut block = Block::open(&disk.path, true, "scratch-1").unwrap();
        let m = mem();
        put_header(&m, 0x1000, VIRTIO_BLK_T_GET_ID, 0);
        let (len, st) = run(
            &mut block,
            &m,
            &[
                desc(0x1000, 16, 0),
                desc(0x2000, 20, F_WRITE),
                desc(0x3000, 1, F_WRITE),
            ],
            0x3000,
        );
        assert_eq!((len, st), (21, VIRTIO_BLK_S_OK));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0x2000)).unwrap();
        assert_eq!(&id[..9], b"scratch-1");
        put_header(&m, 0x1000, 11, 0); // DISCARD: not offered
        let (_, st) = run(
            &mut block,
            &m,
            &[desc(0x1000, 16, 0), desc(0x3000, 1, F_WRITE)],
            0x3000,
        );
        assert_eq!(st, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn hostile_chains_get_an_error_or_are_dropped_and_the_next_request_is_served() {
        let disk = Disk::new("hostile", &[1u8; 8 * 512]);
        let mut block = Block::open(&disk.path, false, "h").unwrap();
        let m = mem();
        put_header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let w = F_WRITE;
        let cases: Vec<(&str, Vec<RawDescriptor>, (u32, u8))> = vec![
            (
                "data outside memory",
                vec![
                    desc(0x1000, 16, 0),
                    desc(0xff000, 0x2000, w),
                    desc(0x3000, 1, w),
                ],
                (1, VIRTIO_BLK_S_IOERR),
            ),
            (
                "zero-length data",
                vec![desc(0x1000, 16, 0), desc(0x2000, 0, w), desc(0x3000, 1, w)],
                (1, VIRTIO_BLK_S_IOERR),
            ),
            // A chain over 4 GiB is cut short by the queue: no status can be trusted, so dropped.
            (
                "oversized data",
                vec![
                    desc(0x1000, 16, 0),
                    desc(0x2000, u32::MAX, w),
                    desc(0x3000, 1, w),
                ],
                (0, 0xff),
            ),
            (
                "large data",
                vec![
                    desc(0x1000, 16, 0),
                    desc(0x2000, 1 << 30, w),
                    desc(0x3000, 1, w),
                ],
                (1, VIRTIO_BLK_S_IOERR),
            ),
            (
                "read-only status",
                vec![
                    desc(0x1000, 16, 0),
                    desc(0x2000, 512, w),
                    desc(0x3000, 1, 0),
                ],
                (0, 0xff),
            ),
            (
                "status outside memory",
                vec![
                    desc(0x1000, 16, 0),
                    desc(0x2000, 512, w),
                    desc(1 << 20, 1, w),
                ],
                (0, 0xff),
            ),
            (
                "past the end of the disk",
                vec![
                    desc(0x1000, 16, 0),
                    desc(0x2000, 8 * 512 + 512, w),
                    desc(0x3000, 1, w),
                ],
                (1, VIRTIO_BLK_S_IOERR),
            ),
        ];
        for (name, descs, expected) in cases {
            assert_eq!(run(&mut block, &m, &descs, 0x3000), expected, "{name}");
        }
        // And a valid request still works.
        let (len, st) = run(
            &mut block,
            &m,
            &[
                desc(0x1000, 16, 0),
                desc(0x2000, 512, w),
                desc(0x3000, 1, w),
            ],
            0x3000,
        );
        assert_eq!((len, st), (513, VIRTIO_BLK_S_OK));
    }

    #[test]
    fn a_batch_of_requests_is_served_in_parallel_and_completed_in_order() {
        let mut content = vec![0u8; 16 * 512];
        for (i, sector) in content.chunks_mut(512).enumerate() {
            sector.fill(i as u8);
        }
        let disk = Disk::new("batch", &content);
        let m = mem();
        let mut block = Block::open(&disk.path, false, "b")
            .unwrap()
            .with_io_helper(&m)
            .unwrap();
        let q = MockSplitQueue::new(&m, 32);
        // Four reads of sectors 1..=4 into four buffers, then a write of sector 9 and a flush.
        let mut descs = Vec::new();
        for i in 0..4u64 {
            put_header(&m, 0x1000 + 0x100 * i, VIRTIO_BLK_T_IN, i + 1);
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                0x1000 + 0x100 * i,
                16,
                F_NEXT,
                (descs.len() + 1) as u16,
            )));
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                0x8000 + 0x1000 * i,
                512,
                F_NEXT | F_WRITE,
                (descs.len() + 1) as u16,
            )));
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                0x7000 + i,
                1,
                F_WRITE,
                0,
            )));
        }
        m.write_slice(&[0xee; 512], GuestAddress(0xe000)).unwrap();
        put_header(&m, 0x1800, VIRTIO_BLK_T_OUT, 9);
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            0x1800, 16, F_NEXT, 13,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            0xe000, 512, F_NEXT, 14,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            0x7010, 1, F_WRITE, 0,
        )));
        put_header(&m, 0x1900, VIRTIO_BLK_T_FLUSH, 0);
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            0x1900, 16, F_NEXT, 16,
        )));
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            0x7011, 1, F_WRITE, 0,
        )));
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert!(block.process_queue(0, std::slice::from_mut(&mut queue), &m, &mut Round::new()));
        for i in 0..4u64 {
            let mut buf = [0u8; 512];
            m.read_slice(&mut buf, GuestAddress(0x8000 + 0x1000 * i))
                .unwrap();
            assert!(buf.iter().all(|b| *b == i as u8 + 1), "read {i}");
            assert_eq!(
                m.read_obj::<u8>(GuestAddress(0x7000 + i)).unwrap(),
                VIRTIO_BLK_S_OK
            );
        }
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x7010)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x7011)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        assert!(disk.read()[9 * 512..10 * 512].iter().all(|b| *b == 0xee));
        // Used ring: six entries, in the order the chains were made available.
        let used_idx: u16 = m.read_obj(q.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 6);
        let heads: Vec<u32> = (0..6)
            .map(|i| m.read_obj(q.used_addr().unchecked_add(4 + 8 * i)).unwrap())
            .collect();
        assert_eq!(heads, vec![0, 3, 6, 9, 12, 15]);
    }

    #[test]
    fn indirect_chains_are_refused_unread_and_the_next_request_is_served() {
        const F_INDIRECT: u16 = 4;
        let disk = Disk::new("indirect", &[3u8; 8 * 512]);
        let mut block = Block::open(&disk.path, false, "i").unwrap();
        let m = mem();
        put_header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        // An indirect table holding a valid read: header, data at 0x2000, status at 0x3000.
        let table = [
            SplitDescriptor::new(0x1000, 16, F_NEXT, 1),
            SplitDescriptor::new(0x2000, 512, F_NEXT | F_WRITE, 2),
            SplitDescriptor::new(0x3000, 1, F_WRITE, 0),
        ];
        for (i, d) in table.into_iter().enumerate() {
            m.write_obj(RawDescriptor::from(d), GuestAddress(0x5000 + 16 * i as u64))
                .unwrap();
        }
        m.write_obj(0xffu8, GuestAddress(0x3000)).unwrap();
        m.write_obj(0xffu8, GuestAddress(0x3001)).unwrap();
        let q = MockSplitQueue::new(&m, 16);
        let descs = [
            // Chain 0: the table, which the driver may not use (INDIRECT_DESC not negotiated).
            RawDescriptor::from(SplitDescriptor::new(0x5000, 48, F_INDIRECT, 0)),
            // Chain 1: the same read, direct, into 0x6000 with its status at 0x3001.
            RawDescriptor::from(SplitDescriptor::new(0x1000, 16, F_NEXT, 2)),
            RawDescriptor::from(SplitDescriptor::new(0x6000, 512, F_NEXT | F_WRITE, 3)),
            RawDescriptor::from(SplitDescriptor::new(0x3001, 1, F_WRITE, 0)),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert!(block.process_queue(0, std::slice::from_mut(&mut queue), &m, &mut Round::new()));
        let used: Vec<(u32, u32)> = (0..2)
            .map(|i| {
                let elem = q.used_addr().unchecked_add(4 + 8 * i);
                (
                    m.read_obj(elem).unwrap(),
                    m.read_obj(elem.unchecked_add(4)).unwrap(),
                )
            })
            .collect();
        assert_eq!(used, vec![(0, 0), (1, 513)]);
        // Nothing of the refused chain was served.
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 0xff);
        assert_eq!(m.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 0);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x3001)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x6000)).unwrap(), 3);
    }

    #[test]
    fn a_circular_chain_is_dropped() {
        let disk = Disk::new("loop", &[0u8; 4096]);
        let mut block = Block::open(&disk.path, false, "l").unwrap();
        let m = mem();
        put_header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&m, 16);
        // 0 -> 1 -> 0 -> ...
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x1000, 16, F_NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x2000, 512, F_NEXT | F_WRITE, 0)),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert!(block.process_queue(0, std::slice::from_mut(&mut queue), &m, &mut Round::new()));
        let used_len: u32 = m.read_obj(q.used_addr().unchecked_add(8)).unwrap();
        assert_eq!(used_len, 0);
    }

    #[test]
    fn short_transfers_resume_inside_the_right_iovec() {
        let (mut a, mut b) = ([0u8; 3], [0u8; 5]);
        let mut iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 3,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 5,
            },
        ];
        let b_base = b.as_mut_ptr() as usize;
        let rest = advance_iovecs(&mut iov, 4);
        assert_eq!(rest.len(), 1);
        assert_eq!(
            (rest[0].iov_base as usize, rest[0].iov_len),
            (b_base + 1, 4)
        );
        let rest = advance_iovecs(rest, 4);
        assert!(rest.is_empty());
        let mut iov = [libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: 3,
        }];
        assert_eq!(advance_iovecs(&mut iov, 0).len(), 1);
    }

    #[test]
    fn bad_ids_and_missing_files_are_clear_errors() {
        assert!(matches!(
            Block::open(Path::new("/nonexistent"), true, "x"),
            Err(BlockError::Open { .. })
        ));
        let disk = Disk::new("badid", &[0u8; 512]);
        assert!(matches!(
            Block::open(&disk.path, true, &"x".repeat(21)),
            Err(BlockError::BadId(_))
        ));
        assert!(matches!(
            Block::open(&disk.path, true, "a b"),
            Err(BlockError::BadId(_))
        ));
        assert!(matches!(
            Block::open(Path::new("/tmp"), true, "d"),
            Err(BlockError::NotAFile { .. }) | Err(BlockError::Open { .. })
        ));
    }
}
