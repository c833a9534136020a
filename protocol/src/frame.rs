//! Framing over byte streams: [`FrameReader`] for non-blocking streams, [`read_message`] and
//! [`write_message`] for blocking ones.

use std::io::{ErrorKind, Read, Write};

use crate::{Message, ProtocolError, LEN_SIZE, MAX_FRAME};

/// Reads a frame's length field; `None` if fewer than [`LEN_SIZE`] bytes are given.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let field: [u8; LEN_SIZE] = bytes.get(..LEN_SIZE)?.try_into().ok()?;
    Some(usize::try_from(u32::from_le_bytes(field)).unwrap_or(usize::MAX))
}

fn check_len(len: usize) -> Result<(), ProtocolError> {
    if len > MAX_FRAME {
        return Err(ProtocolError::FrameTooLong {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(())
}

/// Reassembles messages from bytes that arrive in arbitrary pieces (a non-blocking socket, a
/// virtio-vsock queue): [`push`](FrameReader::push) what arrived, then call
/// [`next_message`](FrameReader::next_message) until it returns `Ok(None)`.
///
/// Errors:
/// * [`ProtocolError::FrameTooLong`] is fatal: the stream cannot be resynchronised, so the frame
///   is left in place and every later call returns the same error. Close the connection.
/// * Any other error concerns one well-delimited frame (an unknown type, a bad field, ...): that
///   frame has been consumed and the caller may carry on with the next one, or close.
///
/// The reader buffers whatever is pushed; drain it with `next_message` after each push so it
/// holds at most one incomplete frame (at most [`LEN_SIZE`] + [`MAX_FRAME`] bytes plus one push).
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 {
            // Drop consumed frames here rather than per message, so a push holding many frames
            // is not moved once per frame.
            self.buf.drain(..self.pos.min(self.buf.len()));
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        let pending = self.buf.get(self.pos..).unwrap_or_default();
        let Some(len) = frame_len(pending) else {
            return Ok(None);
        };
        check_len(len)?;
        let end = LEN_SIZE.saturating_add(len);
        let Some(body) = pending.get(LEN_SIZE..end) else {
            return Ok(None);
        };
        let result = Message::decode(body);
        self.pos = self.pos.saturating_add(end);
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        result.map(Some)
    }

    /// Call when the stream has ended: an error if it ended inside a frame
    /// ([`ProtocolError::UnexpectedEof`]), `Ok` if at a frame boundary.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        let got = self.buffered();
        if got == 0 {
            return Ok(());
        }
        let pending = self.buf.get(self.pos..).unwrap_or_default();
        let expected = match frame_len(pending) {
            Some(len) => LEN_SIZE.saturating_add(len),
            None => LEN_SIZE,
        };
        Err(ProtocolError::UnexpectedEof { got, expected })
    }
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|rest| !rest.is_empty()) {
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n.min(rest.len()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Reads one message from a blocking stream: `Ok(None)` if the stream ends cleanly before a
/// frame, [`ProtocolError::UnexpectedEof`] if it ends inside one. Memory for the frame is only
/// reserved once its length has been checked against [`MAX_FRAME`].
///
/// A frame that fails to decode has been read entirely, so the caller may go on reading after a
/// decode error; after an I/O error, `UnexpectedEof` or `FrameTooLong` the stream is out of sync.
/// For non-blocking streams use [`FrameReader`] (a `WouldBlock` here loses the partial frame).
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Option<Message>, ProtocolError> {
    let mut field = [0u8; LEN_SIZE];
    let got = read_full(r, &mut field)?;
    if got == 0 {
        return Ok(None);
    }
    let len = match frame_len(&field) {
        Some(len) if got == LEN_SIZE => len,
        _ => {
            return Err(ProtocolError::UnexpectedEof {
                got,
                expected: LEN_SIZE,
            })
        }
    };
    check_len(len)?;
    let mut body = Vec::with_capacity(len);
    let got = Read::take(&mut *r, u64::try_from(len).unwrap_or(u64::MAX)).read_to_end(&mut body)?;
    if got < len {
        return Err(ProtocolError::UnexpectedEof {
            got: LEN_SIZE.saturating_add(got),
            expected: LEN_SIZE.saturating_add(len),
        });
    }
    Message::decode(&body).map(Some)
}

/// Validates `msg` ([`Message::validate`]), then writes its frame and flushes `w`. Nothing is
/// written if the message is invalid.
pub fn write_message<W: Write + ?Sized>(w: &mut W, msg: &Message) -> Result<(), ProtocolError> {
    msg.validate()?;
    w.write_all(&msg.encode())?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests::{samples, XorShift};
    use crate::{Stream, MAX_CHUNK};
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::io;

    /// Records the largest allocation made by the current thread, to prove that claimed lengths
    /// are never allocated before they are checked.
    struct TrackingAlloc;

    thread_local! {
        static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping only
    // touches a const-initialised thread-local `Cell`, which does not allocate.
    unsafe impl GlobalAlloc for TrackingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = LARGEST_ALLOC.try_with(|c| c.set(c.get().max(layout.size())));
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` with this layout (all allocations go there).
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = LARGEST_ALLOC.try_with(|c| c.set(c.get().max(new_size)));
            // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which we pass on.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOC: TrackingAlloc = TrackingAlloc;

    fn largest_alloc_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST_ALLOC.with(|c| c.set(0));
        let out = f();
        (out, LARGEST_ALLOC.with(Cell::get))
    }

    fn all_frames() -> Vec<u8> {
        let mut out = Vec::new();
        for msg in samples() {
            msg.encode_into(&mut out);
        }
        out
    }

    fn drain(reader: &mut FrameReader) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(msg) = reader.next_message().unwrap() {
            out.push(msg);
        }
        out
    }

    #[test]
    fn byte_at_a_time() {
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        for byte in all_frames() {
            reader.push(&[byte]);
            got.extend(drain(&mut reader));
        }
        assert_eq!(got, samples());
        assert_eq!(reader.buffered(), 0);
        reader.finish().unwrap();
    }

    #[test]
    fn many_frames_in_one_push() {
        let mut reader = FrameReader::new();
        reader.push(&all_frames());
        assert_eq!(drain(&mut reader), samples());
        reader.finish().unwrap();
    }

    #[test]
    fn random_splits() {
        let frames = all_frames();
        let mut rng = XorShift(42);
        for _ in 0..200 {
            let mut reader = FrameReader::new();
            let mut got = Vec::new();
            let mut rest = frames.as_slice();
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(rng.below(rest.len().min(40)) + 1);
                reader.push(piece);
                got.extend(drain(&mut reader));
                rest = tail;
            }
            assert_eq!(got, samples());
        }
    }

    #[test]
    fn partial_frame_waits_and_eof_inside_it_is_an_error() {
        let frame = Message::StdinClose { id: 9 }.encode();
        for cut in 1..frame.len() {
            let mut reader = FrameReader::new();
            reader.push(&frame[..cut]);
            assert_eq!(reader.next_message().unwrap(), None);
            let expected = if cut < LEN_SIZE {
                LEN_SIZE
            } else {
                frame.len()
            };
            assert!(
                matches!(reader.finish(), Err(ProtocolError::UnexpectedEof { got, expected: e })
                    if got == cut && e == expected),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn reader_skips_a_bad_frame_and_continues() {
        let mut bytes = vec![3, 0, 0, 0, crate::VERSION, 99, 0]; // unknown type 99
        bytes.extend([0, 0, 0, 0]); // empty frame: no version
        Message::Shutdown.encode_into(&mut bytes);
        let mut reader = FrameReader::new();
        reader.push(&bytes);
        assert!(matches!(
            reader.next_message(),
            Err(ProtocolError::UnknownType(99))
        ));
        assert!(matches!(
            reader.next_message(),
            Err(ProtocolError::Truncated { field: "version" })
        ));
        assert_eq!(reader.next_message().unwrap(), Some(Message::Shutdown));
        assert_eq!(reader.next_message().unwrap(), None);
    }

    #[test]
    fn allocation_tracker_works() {
        let (v, largest) = largest_alloc_during(|| Vec::<u8>::with_capacity(5000));
        assert!(v.capacity() >= 5000 && largest >= 5000);
    }

    #[test]
    fn reader_rejects_oversized_length_for_good() {
        let too_long = u32::try_from(MAX_FRAME + 1).unwrap();
        for len in [too_long, u32::MAX] {
            let mut reader = FrameReader::new();
            let (result, largest) = largest_alloc_during(|| {
                reader.push(&len.to_le_bytes());
                reader.next_message()
            });
            assert!(
                matches!(result, Err(ProtocolError::FrameTooLong { len: l, max: MAX_FRAME })
                    if l == len as usize)
            );
            assert!(largest < 1024, "allocated {largest} bytes");
            // Sticky: the stream cannot be resynchronised.
            reader.push(&Message::Shutdown.encode());
            assert!(matches!(
                reader.next_message(),
                Err(ProtocolError::FrameTooLong { .. })
            ));
        }
    }

    #[test]
    fn reader_accepts_a_maximum_frame() {
        let msg = Message::Stdin {
            id: 1,
            data: vec![1; MAX_CHUNK],
        };
        let frame = msg.encode();
        let mut reader = FrameReader::new();
        reader.push(&frame);
        assert_eq!(reader.next_message().unwrap(), Some(msg));

        // A frame of exactly MAX_FRAME passes the length check (and then fails to decode).
        let mut frame = u32::try_from(MAX_FRAME).unwrap().to_le_bytes().to_vec();
        frame.resize(LEN_SIZE + MAX_FRAME, 0);
        frame[LEN_SIZE] = crate::VERSION;
        frame[LEN_SIZE + 1] = 9; // Shutdown, followed by far too many bytes
        reader.push(&frame);
        assert!(matches!(
            reader.next_message(),
            Err(ProtocolError::TrailingBytes(n)) if n == MAX_FRAME - 2
        ));
    }

    #[test]
    fn garbage_through_the_reader_never_panics() {
        let mut rng = XorShift(0xfeed_f00d);
        for _ in 0..2_000 {
            let mut reader = FrameReader::new();
            for _ in 0..rng.below(8) {
                let mut piece: Vec<u8> = (0..rng.below(32)).map(|_| rng.next() as u8).collect();
                // Small plausible lengths now and then, so frames get delimited and decoded.
                if piece.len() >= 6 && rng.below(2) == 0 {
                    piece[..4].copy_from_slice(&(rng.below(24) as u32).to_le_bytes());
                    piece[4] = crate::VERSION;
                    piece[5] = rng.below(11) as u8;
                }
                reader.push(&piece);
                loop {
                    match reader.next_message() {
                        Ok(None) | Err(ProtocolError::FrameTooLong { .. }) => break,
                        Ok(Some(_)) | Err(_) => {}
                    }
                }
            }
            let _ = reader.finish();
        }
    }

    /// Yields its data one byte per read, with an `Interrupted` before each byte.
    struct Trickle<'a> {
        data: &'a [u8],
        interrupt: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(io::Error::from(ErrorKind::Interrupted));
            }
            match (self.data.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.data = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn write_then_read_blocking() {
        let mut wire = Vec::new();
        for msg in samples() {
            write_message(&mut wire, &msg).unwrap();
        }
        assert_eq!(wire, all_frames());

        let mut stream = wire.as_slice();
        let mut got = Vec::new();
        while let Some(msg) = read_message(&mut stream).unwrap() {
            got.push(msg);
        }
        assert_eq!(got, samples());

        let mut trickle = Trickle {
            data: &wire,
            interrupt: false,
        };
        let mut got = Vec::new();
        while let Some(msg) = read_message(&mut trickle).unwrap() {
            got.push(msg);
        }
        assert_eq!(got, samples());
    }

    #[test]
    fn read_clean_eof_vs_eof_inside_a_frame() {
        assert_eq!(read_message(&mut io::empty()).unwrap(), None);
        let frame = Message::Output {
            id: 1,
            stream: Stream::Stdout,
            data: b"abc".to_vec(),
        }
        .encode();
        for cut in 1..frame.len() {
            let expected = if cut < LEN_SIZE {
                LEN_SIZE
            } else {
                frame.len()
            };
            let result = read_message(&mut &frame[..cut]);
            assert!(
                matches!(result, Err(ProtocolError::UnexpectedEof { got, expected: e })
                    if got == cut && e == expected),
                "cut {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn read_rejects_oversized_length_without_allocating_or_reading_on() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend([0; 16]);
        let mut stream = bytes.as_slice();
        let (result, largest) = largest_alloc_during(|| read_message(&mut stream));
        assert!(matches!(
            result,
            Err(ProtocolError::FrameTooLong { len, max: MAX_FRAME }) if len == u32::MAX as usize
        ));
        assert!(largest < 1024, "allocated {largest} bytes");
        assert_eq!(stream.len(), 16, "read past the length field");
    }

    #[test]
    fn read_surfaces_io_errors() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from(ErrorKind::ConnectionReset))
            }
        }
        assert!(matches!(
            read_message(&mut Broken),
            Err(ProtocolError::Io(e)) if e.kind() == ErrorKind::ConnectionReset
        ));
    }

    #[test]
    fn write_refuses_invalid_messages_and_writes_nothing() {
        let mut wire = Vec::new();
        let bad = Message::Exec {
            id: 1,
            argv: vec![],
            env: vec![],
            cwd: "/".into(),
        };
        assert!(matches!(
            write_message(&mut wire, &bad),
            Err(ProtocolError::EmptyArgv)
        ));
        let bad = Message::Output {
            id: 1,
            stream: Stream::Stderr,
            data: vec![0; MAX_CHUNK + 1],
        };
        assert!(matches!(
            write_message(&mut wire, &bad),
            Err(ProtocolError::ChunkTooLarge { .. })
        ));
        assert!(wire.is_empty());
    }
}
