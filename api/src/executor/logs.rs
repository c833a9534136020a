//! A task's container log: written by its monitor, read by skiffd. The format is the CRI log
//! format kubelet uses (`<RFC 3339 time> <stdout|stderr> <F|P> <text>`, one line per line of
//! output; `P` marks a piece of a line longer than [`MAX_LINE_PIECE`] or cut at the end), so
//! standard log tools read it too. The file is rotated at a size cap; one rotated file is kept.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use skiff_protocol::Stream;

use crate::service::model::{rfc3339, Millis};

/// A line longer than this is written in pieces.
pub const MAX_LINE_PIECE: usize = 16 << 10;

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// Writes a container log, rotating it at a size cap.
pub struct LogWriter {
    path: PathBuf,
    rotated: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    /// An unfinished line per stream (stdout, stderr).
    pending: [Vec<u8>; 2],
}

fn stream_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

impl LogWriter {
    /// Opens (appending to) `path`; `rotated` takes it over when it reaches `max_bytes`.
    pub fn open(path: &Path, rotated: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            rotated: rotated.to_owned(),
            file,
            written,
            max_bytes: max_bytes.max(4096),
            pending: [Vec::new(), Vec::new()],
        })
    }

    fn emit(&mut self, stream: Stream, full: bool, text: &[u8], at: Millis) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(rfc3339::format(at).as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream_name(stream).as_bytes());
        line.extend_from_slice(if full { b" F " } else { b" P " });
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.written + line.len() as u64 > self.max_bytes && self.written > 0 {
            std::fs::rename(&self.path, &self.rotated)?;
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = 0;
        }
        // One write per line: a reader sees whole lines (it leaves an unterminated tail alone).
        self.file.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    /// Adds output of `stream` received at `at`.
    pub fn write(&mut self, stream: Stream, mut data: &[u8], at: Millis) -> std::io::Result<()> {
        let i = stream_index(stream);
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(n) => {
                    let mut text = std::mem::take(&mut self.pending[i]);
                    text.extend_from_slice(&data[..n]);
                    let mut rest = &text[..];
                    while rest.len() > MAX_LINE_PIECE {
                        self.emit(stream, false, &rest[..MAX_LINE_PIECE], at)?;
                        rest = &rest[MAX_LINE_PIECE..];
                    }
                    self.emit(stream, true, rest, at)?;
                    data = &data[n + 1..];
                }
                None => {
                    self.pending[i].extend_from_slice(data);
                    while self.pending[i].len() >= MAX_LINE_PIECE {
                        let piece: Vec<u8> = self.pending[i].drain(..MAX_LINE_PIECE).collect();
                        self.emit(stream, false, &piece, at)?;
                    }
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// Writes what is left of unfinished lines (the output ended without a newline).
    pub fn finish(&mut self, at: Millis) -> std::io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let text = std::mem::take(&mut self.pending[stream_index(stream)]);
            if !text.is_empty() {
                self.emit(stream, false, &text, at)?;
            }
        }
        self.file.sync_data()
    }
}

/// One entry of a container log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// RFC 3339.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, without its newline (invalid UTF-8 replaced).
    pub message: String,
    /// This is a piece of a longer line, continued by the next entry of the stream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    #[serde(skip)]
    pub at: Millis,
}

/// Parses one log line (without its newline); None for a line not in the format.
pub fn parse_line(line: &[u8]) -> Option<LogEntry> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(4, ' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let message = parts.next().unwrap_or("");
    if !matches!(stream, "stdout" | "stderr") || !matches!(tag, "F" | "P") {
        return None;
    }
    Some(LogEntry {
        time: time.to_owned(),
        stream: stream.to_owned(),
        message: message.to_owned(),
        partial: tag == "P",
        at: rfc3339::parse(time).unwrap_or(0),
    })
}

/// Where a reader is in a task's log: the current file's inode and the offset read to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogPosition {
    inode: u64,
    offset: u64,
}

/// Reads what was added to the log since `pos` (the rotated file first when the log was rotated
/// meanwhile), at most `max_bytes`; returns the complete lines and the new position.
pub fn read_since(
    current: &Path,
    rotated: &Path,
    pos: LogPosition,
    max_bytes: usize,
) -> std::io::Result<(Vec<LogEntry>, LogPosition)> {
    let mut entries = Vec::new();
    let open = |p: &Path| match File::open(p) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let Some(mut file) = open(current)? else {
        return Ok((entries, pos));
    };
    let inode = file.metadata()?.ino();
    let mut start = pos.offset;
    if pos.inode != inode {
        // A first read (the rotated file is older output), or the log was rotated since the
        // last one: the rotated file first, to its end, a step at a time.
        let old = match open(rotated)? {
            Some(old) if pos.inode == 0 || old.metadata()?.ino() == pos.inode => Some(old),
            _ => None,
        };
        if let Some(mut old) = old {
            let (old_inode, old_len) = {
                let m = old.metadata()?;
                (m.ino(), m.len())
            };
            let from = if pos.inode == 0 { 0 } else { pos.offset };
            let end = read_lines(&mut old, from, max_bytes, &mut entries)?;
            // More left (and progress made: a torn last line is not waited for).
            if end < old_len && end > from {
                return Ok((
                    entries,
                    LogPosition {
                        inode: old_inode,
                        offset: end,
                    },
                ));
            }
        }
        start = 0;
    }
    let end = read_lines(&mut file, start, max_bytes, &mut entries)?;
    Ok((entries, LogPosition { inode, offset: end }))
}

/// Reads complete lines from `offset` (up to about `max_bytes`); returns the offset after the
/// last complete line.
fn read_lines(
    file: &mut File,
    offset: u64,
    max_bytes: usize,
    entries: &mut Vec<LogEntry>,
) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    file.take(max_bytes as u64).read_to_end(&mut data)?;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |n| n + 1);
    for line in data[..complete].split(|&b| b == b'\n') {
        if let Some(entry) = parse_line(line) {
            entries.push(entry);
        }
    }
    Ok(offset + complete as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lines_are_split_per_stream_with_partial_pieces() {
        let dir = temp("split");
        let (log, old) = (dir.join("c.log"), dir.join("c.log.1"));
        let mut w = LogWriter::open(&log, &old, 1 << 20).unwrap();
        w.write(Stream::Stdout, b"hel", 1000).unwrap();
        w.write(Stream::Stderr, b"oops\n", 1001).unwrap();
        w.write(Stream::Stdout, b"lo\nworld\n\ntail", 1002).unwrap();
        w.write(Stream::Stdout, &vec![b'x'; MAX_LINE_PIECE + 5], 1003)
            .unwrap();
        w.finish(1004).unwrap();
        let (entries, pos) = read_since(&log, &old, LogPosition::default(), 1 << 20).unwrap();
        let got: Vec<(String, String, bool)> = entries
            .iter()
            .map(|e| {
                (
                    e.stream.clone(),
                    e.message.chars().take(8).collect(),
                    e.partial,
                )
            })
            .collect();
        let want = [
            ("stderr", "oops", false),
            ("stdout", "hello", false),
            ("stdout", "world", false),
            ("stdout", "", false),
            ("stdout", "tailxxxx", true),
            ("stdout", "xxxxxxxx", true),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1.as_str(), g.2), w);
        }
        assert_eq!(entries[0].at, 1001);
        // Nothing new: nothing read, same position.
        let (none, pos2) = read_since(&log, &old, pos, 1 << 20).unwrap();
        assert!(none.is_empty());
        assert_eq!(pos, pos2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotation_keeps_one_old_file_and_a_follower_reads_across_it() {
        let dir = temp("rotate");
        let (log, old) = (dir.join("c.log"), dir.join("c.log.1"));
        let mut w = LogWriter::open(&log, &old, 4096).unwrap();
        let mut pos = LogPosition::default();
        let mut seen = Vec::new();
        for i in 0..400 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes(), i)
                .unwrap();
            if i % 50 == 0 {
                let (entries, p) = read_since(&log, &old, pos, 1 << 20).unwrap();
                pos = p;
                seen.extend(entries.into_iter().map(|e| e.message));
            }
        }
        let (entries, _) = read_since(&log, &old, pos, 1 << 20).unwrap();
        seen.extend(entries.into_iter().map(|e| e.message));
        let want: Vec<String> = (0..400).map(|i| format!("line {i}")).collect();
        assert_eq!(
            seen, want,
            "a follower reading often enough sees every line in order"
        );
        let total = std::fs::metadata(&log).unwrap().len() + std::fs::metadata(&old).unwrap().len();
        assert!(total <= 2 * 4096, "the log is capped: {total} bytes");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_first_read_gets_all_of_the_rotated_file_in_steps() {
        let dir = temp("steps");
        let (log, old) = (dir.join("c.log"), dir.join("c.log.1"));
        let mut w = LogWriter::open(&log, &old, 64 << 10).unwrap();
        for i in 0..3000 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes(), i)
                .unwrap();
        }
        let mut pos = LogPosition::default();
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let (entries, next) = read_since(&log, &old, pos, 4096).unwrap();
            if entries.is_empty() && next == pos {
                break;
            }
            pos = next;
            seen.extend(entries.into_iter().map(|e| e.message));
        }
        let first: usize = seen[0].trim_start_matches("line ").parse().unwrap();
        let want: Vec<String> = (first..3000).map(|i| format!("line {i}")).collect();
        assert_eq!(
            seen, want,
            "everything still kept, in order, in small steps"
        );
        assert!(
            first < 3000 - 2000,
            "the rotated file was read too: {first}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn foreign_lines_are_skipped() {
        assert!(parse_line(b"garbage").is_none());
        assert!(parse_line(b"2026-01-01T00:00:00Z stdin F x").is_none());
        let e = parse_line(b"2026-01-01T00:00:00Z stderr F a b c").unwrap();
        assert_eq!((e.stream.as_str(), e.message.as_str()), ("stderr", "a b c"));
    }
}
