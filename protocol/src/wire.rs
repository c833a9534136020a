//! Field encoding primitives: `put_*` append a field to a buffer, [`Reader`] reads fields back
//! with every read bounds-checked (see the crate documentation for the encodings).

use crate::ProtocolError;

/// Appends a `u8`.
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

/// Appends a little-endian `u16`.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian two's complement `i32`.
pub fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `u32` length and the bytes. Data longer than `u32::MAX` cannot be represented; its
/// length is saturated, which makes the frame invalid (such a frame is far over [`crate::MAX_FRAME`]
/// and is refused by [`crate::Message::validate`] before sending).
pub fn put_bytes(out: &mut Vec<u8>, data: &[u8]) {
    put_u32(out, u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(data);
}

/// Appends a string (as bytes).
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Appends a `u32` count and the strings.
pub fn put_strs(out: &mut Vec<u8>, list: &[String]) {
    put_u32(out, u32::try_from(list.len()).unwrap_or(u32::MAX));
    for s in list {
        put_str(out, s);
    }
}

/// Encoded size of a bytes field.
pub(crate) fn bytes_len(data: &[u8]) -> usize {
    4usize.saturating_add(data.len())
}

/// Encoded size of a string list.
pub(crate) fn strs_len(list: &[String]) -> usize {
    list.iter()
        .fold(4usize, |acc, s| acc.saturating_add(bytes_len(s.as_bytes())))
}

/// Reads fields from a message body. Each read names its field so errors say what was cut off.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Succeeds if everything was read, else [`ProtocolError::TrailingBytes`].
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(ProtocolError::TrailingBytes(n)),
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or(ProtocolError::Truncated { field })?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        self.take(N, field)?
            .try_into()
            .map_err(|_| ProtocolError::Truncated { field })
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `i32`.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    /// Reads a bytes field (`u32` length, then the data), borrowing from the input.
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::Truncated { field })?;
        self.take(len, field)
    }

    /// Reads a string field; it must be UTF-8.
    pub fn string(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let bytes = self.bytes(field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::InvalidUtf8 { field })
    }

    /// Reads a string list (`u32` count, then the strings).
    pub fn strings(&mut self, field: &'static str) -> Result<Vec<String>, ProtocolError> {
        let count = self.u32(field)?;
        let count = usize::try_from(count).map_err(|_| ProtocolError::Truncated { field })?;
        // Each string takes at least its 4-byte length, so the count cannot honestly exceed
        // remaining / 4: never reserve more than that, whatever the count claims.
        let mut list = Vec::with_capacity(count.min(self.remaining() / 4));
        for _ in 0..count {
            list.push(self.string(field)?);
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_round_trip() {
        let mut out = Vec::new();
        put_u8(&mut out, 0xab);
        put_u16(&mut out, 0x1234);
        put_u32(&mut out, 0xdead_beef);
        put_u64(&mut out, u64::MAX - 1);
        put_i32(&mut out, -5);
        put_bytes(&mut out, b"\x00\xff");
        put_str(&mut out, "héllo");
        put_strs(&mut out, &["a".to_owned(), String::new(), "bc".to_owned()]);
        assert_eq!(&out[1..3], &[0x34, 0x12], "little-endian");

        let mut r = Reader::new(&out);
        assert_eq!(r.u8("a").unwrap(), 0xab);
        assert_eq!(r.u16("b").unwrap(), 0x1234);
        assert_eq!(r.u32("c").unwrap(), 0xdead_beef);
        assert_eq!(r.u64("d").unwrap(), u64::MAX - 1);
        assert_eq!(r.i32("e").unwrap(), -5);
        assert_eq!(r.bytes("f").unwrap(), b"\x00\xff");
        assert_eq!(r.string("g").unwrap(), "héllo");
        assert_eq!(r.strings("h").unwrap(), ["a", "", "bc"]);
        r.finish().unwrap();
    }

    #[test]
    fn short_reads_name_the_field() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert!(matches!(
            r.u32("id"),
            Err(ProtocolError::Truncated { field: "id" })
        ));
        // A failed read consumes nothing.
        assert_eq!(r.remaining(), 3);
        assert!(matches!(r.finish(), Err(ProtocolError::TrailingBytes(3))));
    }

    #[test]
    fn huge_lengths_and_counts_are_truncation_not_allocation() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, b'x']);
        assert!(matches!(
            r.bytes("data"),
            Err(ProtocolError::Truncated { field: "data" })
        ));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(matches!(
            r.strings("argv"),
            Err(ProtocolError::Truncated { field: "argv" })
        ));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let mut out = Vec::new();
        put_bytes(&mut out, &[0xc3, 0x28]);
        assert!(matches!(
            Reader::new(&out).string("cwd"),
            Err(ProtocolError::InvalidUtf8 { field: "cwd" })
        ));
    }

    #[test]
    fn encoded_sizes_match() {
        let list = vec!["ab".to_owned(), "".to_owned()];
        let mut out = Vec::new();
        put_strs(&mut out, &list);
        assert_eq!(out.len(), strs_len(&list));
        out.clear();
        put_bytes(&mut out, b"xyz");
        assert_eq!(out.len(), bytes_len(b"xyz"));
    }
}
