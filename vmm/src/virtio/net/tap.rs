//! Host tap devices: opening one for a VMM (`/dev/net/tun` with a virtio-net header on every
//! frame), setting its offloads, and creating or deleting persistent taps for a task.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::header::NET_HDR_LEN;

// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
/// `TUNSETOFFLOAD`: which offloaded frames the tap may hand us (what the guest can receive).
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// Errors opening or managing a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] std::io::Error),
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("tap {name}: {op} failed: {source}")]
    Ioctl {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// `struct ifreq` as the tun ioctls use it: a name and flags.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_short) -> Result<IfReq, TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(TapError::Name(name.to_owned()));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn open_tun() -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)
}

/// An open tap: frames carry a 12-byte virtio-net header.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the tap `name` (creating a transient one if it does not exist and we may).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let file = open_tun()?;
        let mut req = ifreq(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
        let tap = Self {
            file,
            name: name.to_owned(),
        };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as.
        unsafe {
            tap.ioctl(
                "TUNSETIFF",
                TUNSETIFF,
                &mut req as *mut IfReq as libc::c_ulong,
            )
        }?;
        let mut hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int.
        unsafe {
            tap.ioctl(
                "TUNSETVNETHDRSZ",
                TUNSETVNETHDRSZ,
                &mut hdr_len as *mut libc::c_int as libc::c_ulong,
            )
        }?;
        Ok(tap)
    }

    /// Sets which offloaded frames the tap may hand us (`TUN_F_*`).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        unsafe { self.ioctl("TUNSETOFFLOAD", TUNSETOFFLOAD, libc::c_ulong::from(flags)) }
    }

    /// # Safety
    /// `arg` must be what `request` expects (a value, or a pointer to a live object of its type).
    unsafe fn ioctl(
        &self,
        op: &'static str,
        request: libc::c_ulong,
        arg: libc::c_ulong,
    ) -> Result<(), TapError> {
        // SAFETY: the caller passes the argument `request` expects.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, arg) };
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                op,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the persistent tap `name`, usable by `owner` without privileges.
    pub fn create_persistent(name: &str, owner: Option<u32>) -> Result<(), TapError> {
        let tap = Self::open(name)?;
        if let Some(uid) = owner {
            // SAFETY: TUNSETOWNER takes the uid by value.
            unsafe { tap.ioctl("TUNSETOWNER", TUNSETOWNER, libc::c_ulong::from(uid)) }?;
        }
        // SAFETY: TUNSETPERSIST takes a flag by value.
        unsafe { tap.ioctl("TUNSETPERSIST", TUNSETPERSIST, 1) }
    }

    /// Deletes the persistent tap `name` (it disappears once no VMM holds it).
    pub fn delete_persistent(name: &str) -> Result<(), TapError> {
        let tap = Self::open(name)?;
        // SAFETY: TUNSETPERSIST takes a flag by value.
        unsafe { tap.ioctl("TUNSETPERSIST", TUNSETPERSIST, 0) }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_system_call() {
        assert!(matches!(Tap::open(""), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("a-name-that-is-too-long"),
            Err(TapError::Name(_))
        ));
        assert!(matches!(Tap::open("a\0b"), Err(TapError::Name(_))));
    }
}
