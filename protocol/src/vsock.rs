//! AF_VSOCK stream sockets for the guest side (std has none): connect to the host, listen for it.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A connected vsock stream.
pub struct VsockStream(OwnedFd);

/// A listening vsock socket.
pub struct VsockListener(OwnedFd);

fn socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket() has no memory arguments.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket() returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Retries `f` while it fails with EINTR.
fn retry(mut f: impl FnMut() -> libc::c_int) -> std::io::Result<libc::c_int> {
    loop {
        let rc = f();
        if rc >= 0 {
            return Ok(rc);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl VsockStream {
    /// Connects to `port` of context `cid` (2 is the host).
    pub fn connect(cid: u32, port: u32) -> std::io::Result<Self> {
        let fd = socket()?;
        let addr = address(cid, port);
        // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
        retry(|| unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                ADDR_LEN,
            )
        })?;
        Ok(Self(fd))
    }

    /// Another handle to the same connection (e.g. one thread writes while another reads).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self(self.0.try_clone()?))
    }

    /// Shuts down the writing half: the peer reads end-of-file.
    pub fn shutdown_write(&self) -> std::io::Result<()> {
        // SAFETY: shutdown has no memory arguments.
        retry(|| unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) }).map(|_| ())
    }
}

impl VsockListener {
    /// Listens on `port` for connections from any context.
    pub fn bind(port: u32) -> std::io::Result<Self> {
        let fd = socket()?;
        let addr = address(libc::VMADDR_CID_ANY, port);
        // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
        retry(|| unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                ADDR_LEN,
            )
        })?;
        // SAFETY: listen has no memory arguments.
        retry(|| unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(Self(fd))
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> std::io::Result<VsockStream> {
        // SAFETY: accept4 with null address arguments only returns a new descriptor.
        let fd = retry(|| unsafe {
            libc::accept4(
                self.0.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        Ok(VsockStream(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
            let n = unsafe { libc::write(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for VsockStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
