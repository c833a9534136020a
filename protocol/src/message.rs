//! The messages and their encoding (see the crate documentation for the format).

use crate::privileges::{Privileges, Ulimit, RESOURCE_LIMITS};
use crate::wire::{self, Reader};
use crate::{ProtocolError, LEN_SIZE, MAX_CHUNK, MAX_FRAME, VERSION};

/// Message type codes (the byte after the version).
mod ty {
    pub const HELLO: u8 = 1;
    pub const EXEC: u8 = 2;
    pub const STDIN: u8 = 3;
    pub const STDIN_CLOSE: u8 = 4;
    pub const OUTPUT: u8 = 5;
    pub const EXITED: u8 = 6;
    pub const SIGNAL: u8 = 7;
    pub const ERROR: u8 = 8;
    pub const SHUTDOWN: u8 = 9;
    pub const RUN_CONTAINER: u8 = 10;
    pub const STOP: u8 = 11;
    pub const STARTED: u8 = 12;
}

/// Which output stream of a command an [`Message::Output`] chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output (encoded as 1).
    Stdout,
    /// Standard error (encoded as 2).
    Stderr,
}

impl Stream {
    /// The wire value: 1 for stdout, 2 for stderr.
    pub fn code(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }

    /// The stream of a wire value, if valid.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this status (encoded as tag 0).
    Code(i32),
    /// It was killed by this signal (encoded as tag 1).
    Signal(i32),
}

/// What a container task runs: the image and scratch disks guest-init builds the root from, and
/// the process, already merged from the image config and the task's overrides by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The read-only image disk (a Skiff image disk: layer blobs and config), e.g. `/dev/vda`.
    pub image_device: String,
    /// The writable scratch disk (ext4) the root filesystem is unpacked onto, e.g. `/dev/vdb`.
    pub scratch_device: String,
    /// Program and arguments (Entrypoint + Cmd); must not be empty. A program without a `/` is
    /// looked up in the container's `PATH`.
    pub argv: Vec<String>,
    /// The environment, `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// The working directory inside the container (created if missing); empty means `/`.
    pub cwd: String,
    /// `uid`, `uid:gid`, `name` or `name:group` (names resolved through the image's `/etc/passwd`
    /// and `/etc/group`); empty means root.
    pub user: String,
    /// The container's hostname; empty means guest-init's own.
    pub hostname: String,
    /// How long a stop request waits after SIGTERM before SIGKILL, in milliseconds.
    pub stop_timeout_ms: u32,
    /// Its capabilities, `no_new_privs` and resource limits.
    pub privileges: Privileges,
    /// Whether an init process of guest-init's runs the program as its child (PID 1 of the
    /// container forwards signals and reaps orphans), as `docker run --init` and ECS's
    /// `initProcessEnabled`; otherwise the program is PID 1 itself.
    pub init_process: bool,
}

/// One protocol message. See the crate documentation for directions and encodings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// guest -> host, first message of the connection: the guest is ready.
    Hello {
        /// The highest protocol version the guest speaks.
        version: u8,
        /// Milliseconds since the guest kernel booted (`CLOCK_BOOTTIME`) when guest-init sent this.
        boot_ms: u64,
        /// The guest kernel's release (`uname -r`).
        kernel: String,
    },
    /// host -> guest: run a command.
    Exec {
        /// The command's id, chosen by the host.
        id: u32,
        /// Program and arguments; must not be empty. `argv[0]` is the program (a path, or a name
        /// looked up in `PATH`, as guest-init decides).
        argv: Vec<String>,
        /// The environment, `KEY=VALUE` strings.
        env: Vec<String>,
        /// The working directory.
        cwd: String,
    },
    /// host -> guest: bytes for the command's standard input (at most [`MAX_CHUNK`]).
    Stdin {
        /// The command's id.
        id: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// host -> guest: close the command's standard input (end of file).
    StdinClose {
        /// The command's id.
        id: u32,
    },
    /// guest -> host: output of a command (at most [`MAX_CHUNK`] per message).
    Output {
        /// The command's id.
        id: u32,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// guest -> host: the command ended. Sent after all of its output.
    Exited {
        /// The command's id.
        id: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// host -> guest: send a signal to the command.
    Signal {
        /// The command's id.
        id: u32,
        /// The signal number (e.g. 15 for SIGTERM).
        signal: i32,
    },
    /// Either direction: a request failed (e.g. the program of an `Exec` does not exist).
    Error {
        /// The command's id, or 0 for the connection as a whole.
        id: u32,
        /// What went wrong, for people.
        message: String,
    },
    /// host -> guest: power the guest off.
    Shutdown,
    /// host -> guest: build the container's root from the image and run its process. guest-init
    /// answers with [`Message::Started`] once the process runs, its [`Message::Output`], and
    /// [`Message::Exited`]; a task that cannot start gets an [`Message::Error`] with the reason
    /// first, then `Exited` with 125 (set-up failed), 126 (not executable) or 127 (not found).
    RunContainer {
        /// The container's id, chosen by the host like a command's.
        id: u32,
        /// What to run.
        spec: ContainerSpec,
    },
    /// host -> guest: stop the container: SIGTERM, then SIGKILL after its stop timeout.
    Stop {
        /// The container's id.
        id: u32,
    },
    /// guest -> host: the container's process is running (its program was executed).
    Started {
        /// The container's id.
        id: u32,
        /// Milliseconds since the guest kernel booted (`CLOCK_BOOTTIME`) when it started.
        boot_ms: u64,
    },
}

impl Message {
    /// The message's type code on the wire.
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Hello { .. } => ty::HELLO,
            Message::Exec { .. } => ty::EXEC,
            Message::Stdin { .. } => ty::STDIN,
            Message::StdinClose { .. } => ty::STDIN_CLOSE,
            Message::Output { .. } => ty::OUTPUT,
            Message::Exited { .. } => ty::EXITED,
            Message::Signal { .. } => ty::SIGNAL,
            Message::Error { .. } => ty::ERROR,
            Message::Shutdown => ty::SHUTDOWN,
            Message::RunContainer { .. } => ty::RUN_CONTAINER,
            Message::Stop { .. } => ty::STOP,
            Message::Started { .. } => ty::STARTED,
        }
    }

    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Exec { .. } => "Exec",
            Message::Stdin { .. } => "Stdin",
            Message::StdinClose { .. } => "StdinClose",
            Message::Output { .. } => "Output",
            Message::Exited { .. } => "Exited",
            Message::Signal { .. } => "Signal",
            Message::Error { .. } => "Error",
            Message::Shutdown => "Shutdown",
            Message::RunContainer { .. } => "RunContainer",
            Message::Stop { .. } => "Stop",
            Message::Started { .. } => "Started",
        }
    }

    /// The value of this message's frame length field: version + type + body, in bytes.
    pub fn frame_len(&self) -> usize {
        let body = match self {
            Message::Hello { kernel, .. } => 1 + 8 + wire::bytes_len(kernel.as_bytes()),
            Message::Exec { argv, env, cwd, .. } => 4usize
                .saturating_add(wire::strs_len(argv))
                .saturating_add(wire::strs_len(env))
                .saturating_add(wire::bytes_len(cwd.as_bytes())),
            Message::Stdin { data, .. } => 4usize.saturating_add(wire::bytes_len(data)),
            Message::StdinClose { .. } => 4,
            Message::Output { data, .. } => 5usize.saturating_add(wire::bytes_len(data)),
            Message::Exited { .. } => 4 + 1 + 4,
            Message::Signal { .. } => 4 + 4,
            Message::Error { message, .. } => {
                4usize.saturating_add(wire::bytes_len(message.as_bytes()))
            }
            Message::Shutdown => 0,
            Message::RunContainer { spec, .. } => 4usize
                .saturating_add(wire::bytes_len(spec.image_device.as_bytes()))
                .saturating_add(wire::bytes_len(spec.scratch_device.as_bytes()))
                .saturating_add(wire::strs_len(&spec.argv))
                .saturating_add(wire::strs_len(&spec.env))
                .saturating_add(wire::bytes_len(spec.cwd.as_bytes()))
                .saturating_add(wire::bytes_len(spec.user.as_bytes()))
                .saturating_add(wire::bytes_len(spec.hostname.as_bytes()))
                .saturating_add(4 + 8 + 1 + 4)
                .saturating_add(spec.privileges.ulimits.len().saturating_mul(4 + 8 + 8))
                .saturating_add(1),
            Message::Stop { .. } => 4,
            Message::Started { .. } => 4 + 8,
        };
        body.saturating_add(2)
    }

    /// Checks what the encoding cannot express: a non-empty `Exec` argv, data chunks of at most
    /// [`MAX_CHUNK`], and a frame of at most [`MAX_FRAME`]. [`crate::write_message`] checks this
    /// before sending; [`Message::decode`] checks it on receipt.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Message::Exec { argv, .. } if argv.is_empty() => return Err(ProtocolError::EmptyArgv),
            Message::RunContainer { spec, .. } if spec.argv.is_empty() => {
                return Err(ProtocolError::EmptyArgv)
            }
            Message::Stdin { data, .. } | Message::Output { data, .. }
                if data.len() > MAX_CHUNK =>
            {
                return Err(ProtocolError::ChunkTooLarge {
                    len: data.len(),
                    max: MAX_CHUNK,
                })
            }
            _ => {}
        }
        let len = self.frame_len();
        if len > MAX_FRAME {
            return Err(ProtocolError::FrameTooLong {
                len,
                max: MAX_FRAME,
            });
        }
        Ok(())
    }

    /// The whole frame (length field included). This does not [validate](Message::validate):
    /// an invalid message gives a frame the peer rejects.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN_SIZE.saturating_add(self.frame_len()));
        self.encode_into(&mut out);
        out
    }

    /// Appends the whole frame (length field included) to `out`. Like [`Message::encode`], this
    /// does not validate.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        wire::put_u32(out, 0); // patched below
        wire::put_u8(out, VERSION);
        wire::put_u8(out, self.type_code());
        match self {
            Message::Hello {
                version,
                boot_ms,
                kernel,
            } => {
                wire::put_u8(out, *version);
                wire::put_u64(out, *boot_ms);
                wire::put_str(out, kernel);
            }
            Message::Exec { id, argv, env, cwd } => {
                wire::put_u32(out, *id);
                wire::put_strs(out, argv);
                wire::put_strs(out, env);
                wire::put_str(out, cwd);
            }
            Message::Stdin { id, data } => {
                wire::put_u32(out, *id);
                wire::put_bytes(out, data);
            }
            Message::StdinClose { id } => wire::put_u32(out, *id),
            Message::Output { id, stream, data } => {
                wire::put_u32(out, *id);
                wire::put_u8(out, stream.code());
                wire::put_bytes(out, data);
            }
            Message::Exited { id, status } => {
                wire::put_u32(out, *id);
                let (tag, value) = match status {
                    ExitStatus::Code(code) => (0, *code),
                    ExitStatus::Signal(signal) => (1, *signal),
                };
                wire::put_u8(out, tag);
                wire::put_i32(out, value);
            }
            Message::Signal { id, signal } => {
                wire::put_u32(out, *id);
                wire::put_i32(out, *signal);
            }
            Message::Error { id, message } => {
                wire::put_u32(out, *id);
                wire::put_str(out, message);
            }
            Message::Shutdown => {}
            Message::RunContainer { id, spec } => {
                wire::put_u32(out, *id);
                wire::put_str(out, &spec.image_device);
                wire::put_str(out, &spec.scratch_device);
                wire::put_strs(out, &spec.argv);
                wire::put_strs(out, &spec.env);
                wire::put_str(out, &spec.cwd);
                wire::put_str(out, &spec.user);
                wire::put_str(out, &spec.hostname);
                wire::put_u32(out, spec.stop_timeout_ms);
                wire::put_u64(out, spec.privileges.capabilities);
                wire::put_u8(out, u8::from(spec.privileges.no_new_privileges));
                wire::put_u32(out, spec.privileges.ulimits.len() as u32);
                for limit in &spec.privileges.ulimits {
                    wire::put_u32(out, limit.resource);
                    wire::put_u64(out, limit.soft);
                    wire::put_u64(out, limit.hard);
                }
                wire::put_u8(out, u8::from(spec.init_process));
            }
            Message::Stop { id } => wire::put_u32(out, *id),
            Message::Started { id, boot_ms } => {
                wire::put_u32(out, *id);
                wire::put_u64(out, *boot_ms);
            }
        }
        let len = out.len().saturating_sub(start).saturating_sub(LEN_SIZE);
        let len = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
        if let Some(field) = out.get_mut(start..start.saturating_add(LEN_SIZE)) {
            field.copy_from_slice(&len);
        }
    }

    /// Decodes a frame without its length field: version, type and body, which must be consumed
    /// exactly. The message is [validated](Message::validate).
    pub fn decode(frame_body: &[u8]) -> Result<Message, ProtocolError> {
        let mut r = Reader::new(frame_body);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let msg = match r.u8("message type")? {
            ty::HELLO => Message::Hello {
                version: r.u8("Hello.version")?,
                boot_ms: r.u64("Hello.boot_ms")?,
                kernel: r.string("Hello.kernel")?,
            },
            ty::EXEC => Message::Exec {
                id: r.u32("Exec.id")?,
                argv: r.strings("Exec.argv")?,
                env: r.strings("Exec.env")?,
                cwd: r.string("Exec.cwd")?,
            },
            ty::STDIN => Message::Stdin {
                id: r.u32("Stdin.id")?,
                data: r.bytes("Stdin.data")?.to_vec(),
            },
            ty::STDIN_CLOSE => Message::StdinClose {
                id: r.u32("StdinClose.id")?,
            },
            ty::OUTPUT => {
                let id = r.u32("Output.id")?;
                let code = r.u8("Output.stream")?;
                let stream = Stream::from_code(code).ok_or(ProtocolError::InvalidValue {
                    field: "Output.stream",
                    value: code.into(),
                })?;
                let data = r.bytes("Output.data")?.to_vec();
                Message::Output { id, stream, data }
            }
            ty::EXITED => {
                let id = r.u32("Exited.id")?;
                let tag = r.u8("Exited.status")?;
                let value = r.i32("Exited.status")?;
                let status = match tag {
                    0 => ExitStatus::Code(value),
                    1 => ExitStatus::Signal(value),
                    _ => {
                        return Err(ProtocolError::InvalidValue {
                            field: "Exited.status",
                            value: tag.into(),
                        })
                    }
                };
                Message::Exited { id, status }
            }
            ty::SIGNAL => Message::Signal {
                id: r.u32("Signal.id")?,
                signal: r.i32("Signal.signal")?,
            },
            ty::ERROR => Message::Error {
                id: r.u32("Error.id")?,
                message: r.string("Error.message")?,
            },
            ty::SHUTDOWN => Message::Shutdown,
            ty::RUN_CONTAINER => Message::RunContainer {
                id: r.u32("RunContainer.id")?,
                spec: ContainerSpec {
                    image_device: r.string("RunContainer.image_device")?,
                    scratch_device: r.string("RunContainer.scratch_device")?,
                    argv: r.strings("RunContainer.argv")?,
                    env: r.strings("RunContainer.env")?,
                    cwd: r.string("RunContainer.cwd")?,
                    user: r.string("RunContainer.user")?,
                    hostname: r.string("RunContainer.hostname")?,
                    stop_timeout_ms: r.u32("RunContainer.stop_timeout_ms")?,
                    privileges: read_privileges(&mut r)?,
                    init_process: read_flag(&mut r, "RunContainer.init_process")?,
                },
            },
            ty::STOP => Message::Stop {
                id: r.u32("Stop.id")?,
            },
            ty::STARTED => Message::Started {
                id: r.u32("Started.id")?,
                boot_ms: r.u64("Started.boot_ms")?,
            },
            other => return Err(ProtocolError::UnknownType(other)),
        };
        r.finish()?;
        msg.validate()?;
        Ok(msg)
    }
}

/// A flag: 0 or 1.
fn read_flag(r: &mut Reader<'_>, field: &'static str) -> Result<bool, ProtocolError> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(ProtocolError::InvalidValue {
            field,
            value: u32::from(value),
        }),
    }
}

/// `RunContainer`'s privileges: a flag of 0 or 1, and at most one limit per known resource.
fn read_privileges(r: &mut Reader<'_>) -> Result<Privileges, ProtocolError> {
    let capabilities = r.u64("RunContainer.capabilities")?;
    let no_new_privileges = read_flag(r, "RunContainer.no_new_privileges")?;
    let count = r.u32("RunContainer.ulimits")?;
    if count as usize > RESOURCE_LIMITS.len() {
        return Err(ProtocolError::InvalidValue {
            field: "RunContainer.ulimits",
            value: count,
        });
    }
    let mut ulimits: Vec<Ulimit> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let resource = r.u32("RunContainer.ulimits.resource")?;
        let limit = Ulimit {
            resource,
            soft: r.u64("RunContainer.ulimits.soft")?,
            hard: r.u64("RunContainer.ulimits.hard")?,
        };
        let known = RESOURCE_LIMITS.iter().any(|(_, r)| *r == resource);
        if !known || ulimits.iter().any(|u| u.resource == resource) {
            return Err(ProtocolError::InvalidValue {
                field: "RunContainer.ulimits.resource",
                value: resource,
            });
        }
        ulimits.push(limit);
    }
    Ok(Privileges {
        capabilities,
        no_new_privileges,
        ulimits,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One or more samples of every variant, including edge values.
    pub(crate) fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                version: VERSION,
                boot_ms: 1234,
                kernel: "6.1.119-skiff".into(),
            },
            Message::Hello {
                version: 255,
                boot_ms: u64::MAX,
                kernel: String::new(),
            },
            Message::Exec {
                id: 1,
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hé && exit 3".into()],
                env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/root".into()],
                cwd: "/".into(),
            },
            Message::Exec {
                id: u32::MAX,
                argv: vec![String::new()],
                env: vec![],
                cwd: String::new(),
            },
            Message::Stdin {
                id: 2,
                data: b"line\n\x00\xff".to_vec(),
            },
            Message::Stdin {
                id: 2,
                data: vec![],
            },
            Message::StdinClose { id: 2 },
            Message::Output {
                id: 3,
                stream: Stream::Stdout,
                data: b"hello\n".to_vec(),
            },
            Message::Output {
                id: 3,
                stream: Stream::Stderr,
                data: vec![0xfe; 300],
            },
            Message::Exited {
                id: 3,
                status: ExitStatus::Code(0),
            },
            Message::Exited {
                id: 4,
                status: ExitStatus::Code(-1),
            },
            Message::Exited {
                id: 5,
                status: ExitStatus::Signal(9),
            },
            Message::Signal { id: 5, signal: 15 },
            Message::Error {
                id: 0,
                message: "exec /nope: no such file or directory".into(),
            },
            Message::Shutdown,
            Message::RunContainer {
                id: 9,
                spec: ContainerSpec {
                    image_device: "/dev/vda".into(),
                    scratch_device: "/dev/vdb".into(),
                    argv: vec!["sh".into(), "-c".into(), "id -u".into()],
                    env: vec!["PATH=/bin".into(), "FOO=bar".into()],
                    cwd: "/data".into(),
                    user: "1000:1000".into(),
                    hostname: "task-1".into(),
                    stop_timeout_ms: 10_000,
                    privileges: Privileges::default(),
                    init_process: false,
                },
            },
            Message::RunContainer {
                id: 1,
                spec: ContainerSpec {
                    image_device: String::new(),
                    scratch_device: String::new(),
                    argv: vec![String::new()],
                    env: vec![],
                    cwd: String::new(),
                    user: String::new(),
                    hostname: String::new(),
                    stop_timeout_ms: u32::MAX,
                    privileges: Privileges {
                        capabilities: u64::MAX,
                        no_new_privileges: false,
                        ulimits: vec![],
                    },
                    init_process: true,
                },
            },
            Message::Stop { id: 9 },
            Message::Started {
                id: 9,
                boot_ms: 812,
            },
        ]
    }

    fn body(frame: &[u8]) -> &[u8] {
        frame.get(LEN_SIZE..).unwrap()
    }

    #[test]
    fn every_variant_round_trips() {
        for msg in samples() {
            msg.validate().unwrap();
            let frame = msg.encode();
            assert_eq!(frame.len(), LEN_SIZE + msg.frame_len(), "{msg:?}");
            let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, msg.frame_len());
            assert_eq!(frame[4], VERSION);
            assert_eq!(frame[5], msg.type_code());
            assert_eq!(Message::decode(body(&frame)).unwrap(), msg);
        }
    }

    #[test]
    fn encode_into_appends() {
        let mut out = vec![0xaa];
        let a = Message::StdinClose { id: 7 };
        let b = Message::Shutdown;
        a.encode_into(&mut out);
        b.encode_into(&mut out);
        let mut expected = vec![0xaa];
        expected.extend(a.encode());
        expected.extend(b.encode());
        assert_eq!(out, expected);
    }

    #[test]
    fn known_bytes() {
        // Pin the format: a change here breaks old guests.
        let frame = Message::Exited {
            id: 0x0102_0304,
            status: ExitStatus::Signal(9),
        }
        .encode();
        assert_eq!(frame, [11, 0, 0, 0, 1, 6, 4, 3, 2, 1, 1, 9, 0, 0, 0]);
        let frame = Message::Error {
            id: 1,
            message: "x".into(),
        }
        .encode();
        assert_eq!(frame, [11, 0, 0, 0, 1, 8, 1, 0, 0, 0, 1, 0, 0, 0, b'x']);
        assert_eq!(Message::Shutdown.encode(), [2, 0, 0, 0, 1, 9]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for msg in samples() {
            let frame = msg.encode();
            let body = body(&frame);
            for cut in 0..body.len() {
                let err = Message::decode(&body[..cut]).unwrap_err();
                assert!(
                    matches!(err, ProtocolError::Truncated { .. }),
                    "{msg:?} cut at {cut}: {err}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for msg in samples() {
            let mut frame = msg.encode();
            frame.extend_from_slice(&[0, 0, 0]);
            assert!(
                matches!(
                    Message::decode(body(&frame)),
                    Err(ProtocolError::TrailingBytes(3))
                ),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn unknown_version_and_type_are_distinct() {
        assert!(matches!(
            Message::decode(&[2, ty::SHUTDOWN]),
            Err(ProtocolError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Message::decode(&[0]),
            Err(ProtocolError::UnsupportedVersion(0))
        ));
        assert!(matches!(
            Message::decode(&[VERSION, 0]),
            Err(ProtocolError::UnknownType(0))
        ));
        assert!(matches!(
            Message::decode(&[VERSION, 200, 1, 2, 3]),
            Err(ProtocolError::UnknownType(200))
        ));
        assert!(matches!(
            Message::decode(&[]),
            Err(ProtocolError::Truncated { field: "version" })
        ));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut frame = Message::Error {
            id: 1,
            message: "ab".into(),
        }
        .encode();
        let last = frame.len() - 1;
        frame[last] = 0xff;
        assert!(matches!(
            Message::decode(body(&frame)),
            Err(ProtocolError::InvalidUtf8 {
                field: "Error.message"
            })
        ));
    }

    #[test]
    fn invalid_enum_values_are_errors() {
        let mut frame = Message::Output {
            id: 1,
            stream: Stream::Stdout,
            data: vec![],
        }
        .encode();
        frame[10] = 3; // the stream byte
        assert!(matches!(
            Message::decode(body(&frame)),
            Err(ProtocolError::InvalidValue {
                field: "Output.stream",
                value: 3
            })
        ));
        let mut frame = Message::Exited {
            id: 1,
            status: ExitStatus::Code(1),
        }
        .encode();
        frame[10] = 2; // the status tag
        assert!(matches!(
            Message::decode(body(&frame)),
            Err(ProtocolError::InvalidValue {
                field: "Exited.status",
                value: 2
            })
        ));
    }

    #[test]
    fn empty_argv_is_refused_both_ways() {
        let msg = Message::Exec {
            id: 1,
            argv: vec![],
            env: vec![],
            cwd: "/".into(),
        };
        assert!(matches!(msg.validate(), Err(ProtocolError::EmptyArgv)));
        assert!(matches!(
            Message::decode(body(&msg.encode())),
            Err(ProtocolError::EmptyArgv)
        ));
    }

    #[test]
    fn chunk_limit() {
        let max = Message::Output {
            id: 1,
            stream: Stream::Stderr,
            data: vec![7; MAX_CHUNK],
        };
        max.validate().unwrap();
        assert_eq!(Message::decode(body(&max.encode())).unwrap(), max);

        for msg in [
            Message::Output {
                id: 1,
                stream: Stream::Stdout,
                data: vec![0; MAX_CHUNK + 1],
            },
            Message::Stdin {
                id: 1,
                data: vec![0; MAX_CHUNK + 1],
            },
        ] {
            let expected = |r: Result<_, ProtocolError>| {
                matches!(
                    r,
                    Err(ProtocolError::ChunkTooLarge {
                        len,
                        max: MAX_CHUNK
                    }) if len == MAX_CHUNK + 1
                )
            };
            assert!(expected(msg.validate()), "{msg:?}");
            assert!(expected(Message::decode(body(&msg.encode())).map(|_| ())));
        }
    }

    #[test]
    fn oversized_messages_are_refused_before_sending() {
        let msg = Message::Exec {
            id: 1,
            argv: vec!["x".repeat(MAX_FRAME)],
            env: vec![],
            cwd: "/".into(),
        };
        assert!(matches!(
            msg.validate(),
            Err(ProtocolError::FrameTooLong { len, max: MAX_FRAME }) if len == msg.frame_len()
        ));
    }

    /// xorshift64: deterministic pseudo-random numbers without a dependency.
    pub(crate) struct XorShift(pub u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x5eed_1234_abcd_0001);
        let mut buf = Vec::new();
        for _ in 0..10_000 {
            buf.clear();
            let len = rng.below(64);
            buf.extend((0..len).map(|_| rng.next() as u8));
            // Mostly plausible headers, so decoding gets past them into the bodies.
            if rng.below(4) != 0 {
                if let Some(b) = buf.get_mut(0) {
                    *b = VERSION;
                }
                if let Some(b) = buf.get_mut(1) {
                    *b = (rng.below(14)) as u8;
                }
            }
            let _ = Message::decode(&buf);
        }
    }

    #[test]
    fn mutated_frames_never_panic() {
        let mut rng = XorShift(0x0dd_ba11);
        let samples = samples();
        for _ in 0..10_000 {
            let msg = &samples[rng.below(samples.len())];
            let mut frame = msg.encode();
            for _ in 0..=rng.below(4) {
                let i = rng.below(frame.len());
                frame[i] = rng.next() as u8;
            }
            let cut = rng.below(frame.len() + 1);
            frame.truncate(cut);
            if let Some(body) = frame.get(LEN_SIZE..) {
                if let Ok(decoded) = Message::decode(body) {
                    // Whatever decodes must be valid and re-encode to the same body.
                    decoded.validate().unwrap();
                    assert_eq!(decoded.encode().get(LEN_SIZE..), Some(body));
                }
            }
        }
    }
}
