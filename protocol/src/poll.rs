//! poll(2) for the control channel's event loops, on both ends (guest-init and the host).

use std::os::fd::RawFd;
use std::time::Instant;

/// A pollfd waiting for `fd` to become readable.
pub fn readable(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `deadline` passes (no deadline: as long as it takes).
/// A wait interrupted by a signal returns as if nothing were ready, so the caller's loop simply
/// goes round again.
pub fn wait(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> std::io::Result<()> {
    let timeout = deadline.map_or(-1, |at| {
        let left = at.saturating_duration_since(Instant::now());
        libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        fds.iter_mut().for_each(|p| p.revents = 0);
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn waits_for_data_or_the_deadline() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut fds = [readable(b.as_raw_fd())];
        let start = Instant::now();
        wait(&mut fds, Some(start + Duration::from_millis(50))).unwrap();
        assert_eq!(fds[0].revents, 0);
        assert!(start.elapsed() >= Duration::from_millis(40));
        a.write_all(b"x").unwrap();
        wait(&mut fds, None).unwrap();
        assert_ne!(fds[0].revents & libc::POLLIN, 0);
    }
}
