//! The Skiff host<->guest control protocol.
//!
//! guest-init (PID 1 inside every microVM) and the host (`skiff-vmm` / `skiffd`) talk over one
//! virtio-vsock stream connection. At boot guest-init connects to the host, CID [`HOST_CID`] (2),
//! port [`GUEST_CONTROL_PORT`] (1024), and sends [`Message::Hello`]; from then on the host sends
//! requests ([`Message::Exec`], [`Message::Stdin`], [`Message::Signal`], [`Message::Shutdown`], …)
//! and the guest answers with [`Message::Output`], [`Message::Exited`] and [`Message::Error`].
//! The encoding is hand-written (no serde) to keep the static guest binary small.
//!
//! # Frames
//!
//! Every message travels in one frame:
//!
//! ```text
//! +----------------+------------+------------+----------------------+
//! | length: u32 LE | version:u8 | type: u8   | body (type-specific) |
//! +----------------+------------+------------+----------------------+
//!                  |<-------------------- length bytes ------------->|
//! ```
//!
//! * `length` counts the bytes after itself (version + type + body): at least 2 and at most
//!   [`MAX_FRAME`] (1 MiB + 64). A longer length is rejected ([`ProtocolError::FrameTooLong`])
//!   before anything of that size is allocated; after that error the stream is out of sync and
//!   the connection must be closed.
//! * `version` is the protocol version the frame is encoded in, [`VERSION`] (1). A frame of any
//!   other version is rejected ([`ProtocolError::UnsupportedVersion`]).
//! * `type` selects the message (table below); an unknown type is
//!   [`ProtocolError::UnknownType`]. Since the frame length is known, a reader can skip such a
//!   frame and carry on ([`FrameReader`] does).
//! * The body must be consumed exactly: bytes left over after the last field are an error
//!   ([`ProtocolError::TrailingBytes`]), as is a body that ends inside a field
//!   ([`ProtocolError::Truncated`]).
//!
//! # Field encodings
//!
//! All integers are little-endian.
//!
//! | field type | encoding |
//! |---|---|
//! | `u8`, `u16`, `u32`, `u64`, `i32` | 1, 2, 4, 8, 4 bytes, little-endian (`i32` two's complement) |
//! | bytes | `u32` length, then that many bytes |
//! | string | bytes that must be valid UTF-8 |
//! | string list | `u32` count, then that many strings |
//! | stream | `u8`: 1 = stdout, 2 = stderr |
//! | exit status | `u8` tag then `i32`: tag 0 = exit code, tag 1 = killed by that signal |
//!
//! # Messages
//!
//! | type | message | direction | body |
//! |---:|---|---|---|
//! | 1 | [`Hello`](Message::Hello) | guest -> host | `version: u8`, `boot_ms: u64`, `kernel: string` |
//! | 2 | [`Exec`](Message::Exec) | host -> guest | `id: u32`, `argv: string list`, `env: string list`, `cwd: string` |
//! | 3 | [`Stdin`](Message::Stdin) | host -> guest | `id: u32`, `data: bytes` |
//! | 4 | [`StdinClose`](Message::StdinClose) | host -> guest | `id: u32` |
//! | 5 | [`Output`](Message::Output) | guest -> host | `id: u32`, `stream`, `data: bytes` |
//! | 6 | [`Exited`](Message::Exited) | guest -> host | `id: u32`, `exit status` |
//! | 7 | [`Signal`](Message::Signal) | host -> guest | `id: u32`, `signal: i32` |
//! | 8 | [`Error`](Message::Error) | either | `id: u32`, `message: string` |
//! | 9 | [`Shutdown`](Message::Shutdown) | host -> guest | (empty) |
//! | 10 | [`RunContainer`](Message::RunContainer) | host -> guest | `id: u32`, `image_device: string`, `scratch_device: string`, `argv: string list`, `env: string list`, `cwd: string`, `user: string`, `hostname: string`, `stop_timeout_ms: u32`, `capabilities: u64`, `no_new_privileges: u8` (0 or 1), `ulimits: u32 count, then per limit resource: u32, soft: u64, hard: u64`, `init_process: u8` (0 or 1) |
//! | 11 | [`Stop`](Message::Stop) | host -> guest | `id: u32` |
//! | 12 | [`Started`](Message::Started) | guest -> host | `id: u32`, `boot_ms: u64` |
//!
//! Validation beyond the encoding: `Exec.argv` and `RunContainer.argv` must not be empty ([`ProtocolError::EmptyArgv`])
//! and `Stdin`/`Output` data chunks are at most [`MAX_CHUNK`] (1 MiB,
//! [`ProtocolError::ChunkTooLarge`]); larger data is sent as several chunks.
//!
//! Command ids are chosen by the host, unique per connection, starting at 1; every message about
//! a command carries its id. `Error` with id 0 concerns the connection rather than one command.
//!
//! # Use
//!
//! * Blocking streams: [`write_message`] and [`read_message`].
//! * Non-blocking streams (an epoll loop): feed received bytes to a [`FrameReader`] and take
//!   complete messages out with [`FrameReader::next_message`].
//! * Raw frames: [`Message::encode`] / [`Message::encode_into`] build a whole frame;
//!   [`Message::decode`] parses what follows the length.
//!
//! ```
//! use skiff_protocol::{read_message, write_message, Message};
//!
//! let mut wire = Vec::new();
//! let hello = Message::Hello { version: 1, boot_ms: 42, kernel: "6.1.0".into() };
//! write_message(&mut wire, &hello).unwrap();
//! let mut stream = wire.as_slice();
//! assert_eq!(read_message(&mut stream).unwrap(), Some(hello));
//! assert_eq!(read_message(&mut stream).unwrap(), None); // clean end of stream
//! ```
//!
//! No input makes any function here panic; every malformed input is a [`ProtocolError`].

mod frame;
pub mod image_disk;
mod message;
pub mod names;
pub mod poll;
pub mod privileges;
pub mod vsock;
pub mod wire;

pub use frame::{read_message, write_message, FrameReader};
pub use message::{ContainerSpec, ExitStatus, Message, Stream};

/// The protocol version this crate speaks, carried in every frame.
pub const VERSION: u8 = 1;

/// Largest accepted value of a frame's length field (the bytes after it): 1 MiB of data plus room
/// for the message header and fields.
pub const MAX_FRAME: usize = 1024 * 1024 + 64;

/// Largest data chunk in one [`Message::Stdin`] or [`Message::Output`] (1 MiB).
pub const MAX_CHUNK: usize = 1024 * 1024;

/// Size of the length field in front of every frame.
pub const LEN_SIZE: usize = 4;

/// The vsock CID of the host (`VMADDR_CID_HOST`): guest-init connects to this CID.
pub const HOST_CID: u32 = 2;

/// The host-side vsock port of the control connection: at boot guest-init connects to
/// ([`HOST_CID`], `GUEST_CONTROL_PORT`) and sends [`Message::Hello`].
pub const GUEST_CONTROL_PORT: u32 = 1024;

/// Everything that can go wrong reading or writing the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The message body ended inside `field`.
    #[error("message truncated: it ends inside {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A frame's length field exceeds [`MAX_FRAME`] (or a message is too large to send).
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLong {
        /// The length claimed (or needed).
        len: usize,
        /// The limit, [`MAX_FRAME`].
        max: usize,
    },
    /// The frame's message type is not one this crate knows.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The frame is encoded in a protocol version other than [`VERSION`].
    #[error("unsupported protocol version {0} (this side speaks version {VERSION})")]
    UnsupportedVersion(u8),
    /// A string field is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A field holds a value outside its range (e.g. a stream other than 1 or 2).
    #[error("invalid {field}: {value}")]
    InvalidValue {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// Bytes left over after the last field of the message.
    #[error("{0} unexpected bytes after the end of the message")]
    TrailingBytes(usize),
    /// An `Exec` without a program.
    #[error("exec or run request with an empty argv")]
    EmptyArgv,
    /// A `Stdin` or `Output` data chunk larger than [`MAX_CHUNK`].
    #[error("data chunk of {len} bytes exceeds the maximum of {max} bytes")]
    ChunkTooLarge {
        /// The chunk's length.
        len: usize,
        /// The limit, [`MAX_CHUNK`].
        max: usize,
    },
    /// Reading or writing the stream failed.
    #[error("control connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({got} of {expected} bytes received)")]
    UnexpectedEof {
        /// Bytes of the frame received, counting its length field.
        got: usize,
        /// Bytes the frame needs (4 while its length field is incomplete).
        expected: usize,
    },
}
