//! skiff-probe: exercises a Skiff microVM's vsock device, control channel and network from both
//! ends. Built static, the same binary runs in the (nested) host and inside the guest.
//!
//! Host side:
//!   skiff-probe control UDS STEP...   wait for guest-init on UDS_1024, run the steps, shut down
//!     exec=CMD             run `sh -c CMD` in the guest; fails unless it exits 0
//!     expect=CMD=>TEXT     run CMD; fails unless it exits 0 and its stdout is TEXT
//!     status=CMD=>CODE     run CMD; fails unless it exits with CODE
//!     host-echo=PORT       serve an echo on UDS_PORT (for guest-initiated streams)
//!     streams=PORT:N:BYTES N concurrent host-initiated streams to guest PORT, BYTES each, echoed
//!     refused=PORT         CONNECT to a guest port nobody listens on: must fail cleanly
//!     garbage              write junk to UDS: the VMM must drop it and keep serving
//!     abrupt=PORT          connect, send part of a stream, close without reading
//!     host=CMD             run `sh -c CMD` on the host; fails unless it exits 0
//! Guest side:
//!   skiff-probe guest-echo PORT       echo every connection on vsock PORT
//!   skiff-probe guest-streams PORT N BYTES   N concurrent streams to host PORT, echoed, checked
//! Host side, for benchmarks (hybrid vsock through the VMM's socket, or kernel AF_VSOCK):
//!   skiff-probe uds-streams UDS PORT N BYTES  N concurrent streams to guest PORT, echoed, checked
//!   skiff-probe uds-connects UDS PORT N       N connections in turn, one byte echoed each: latency
//!   skiff-probe vsock-streams CID PORT N BYTES / vsock-connects CID PORT N   the same over AF_VSOCK
//! Either side (TCP over the guest's network):
//!   skiff-probe tcp-echo PORT                 echo every TCP connection on PORT
//!   skiff-probe tcp-streams ADDR PORT N BYTES N concurrent TCP streams, echoed, checked
//!   skiff-probe tap-add NAME [UID]            create the persistent tap NAME owned by UID (host)

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use api::executor::guest_control::{CommandOutput, ControlListener};
use skiff_protocol::vsock::{VsockListener, VsockStream};
use skiff_protocol::ExitStatus;

/// Deterministic bytes for stream `seed`, so both ends can check them without a copy.
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Sends `bytes` of stream `seed` on `tx` while reading them back from `rx`; errors on a mismatch.
fn echo_check(
    mut tx: impl Write + Send + 'static,
    mut rx: impl Read,
    seed: u64,
    bytes: usize,
) -> Result<()> {
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 64 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len()) & !7;
            let n = if n == 0 { left } else { n };
            p.fill(&mut buf[..n]);
            tx.write_all(&buf[..n])?;
            left -= n;
        }
        Ok(())
    });
    let mut expected = Pattern::new(seed);
    let mut want = vec![0u8; 64 << 10];
    let mut got = vec![0u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(got.len()) & !7;
        let n = if n == 0 { left } else { n };
        rx.read_exact(&mut got[..n]).with_context(|| {
            format!("stream {seed}: {} of {bytes} bytes came back", bytes - left)
        })?;
        expected.fill(&mut want[..n]);
        if got[..n] != want[..n] {
            bail!("stream {seed}: corrupted data at byte {}", bytes - left);
        }
        left -= n;
    }
    writer
        .join()
        .map_err(|_| anyhow!("stream {seed}: writer panicked"))?
        .with_context(|| format!("stream {seed}: write failed"))?;
    Ok(())
}

/// Runs `count` streams at once, each opened by `open(i)`; prints the throughput.
fn run_streams<S, F>(label: &str, count: usize, bytes: usize, open: F) -> Result<()>
where
    S: Read + Write + Send + 'static,
    F: Fn(usize) -> Result<(S, S)> + Send + Sync + 'static,
{
    let open = std::sync::Arc::new(open);
    let start = Instant::now();
    let handles: Vec<_> = (0..count)
        .map(|i| {
            let open = open.clone();
            std::thread::spawn(move || -> Result<()> {
                let (tx, rx) = open(i)?;
                echo_check(tx, rx, i as u64 + 1, bytes)
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow!("a stream thread panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let mib = (count * bytes) as f64 / (1 << 20) as f64;
    println!("{label}: {count} streams x {bytes} bytes echoed intact in {secs:.2} s ({:.1} MiB/s each way)", mib / secs);
    Ok(())
}

/// Opens `count` connections one after another, each echoing one byte before it is closed, and
/// prints the median and mean time per connection (connect, handshake, first round trip).
fn run_connects<S, F>(label: &str, count: usize, open: F) -> Result<()>
where
    S: Read + Write,
    F: Fn() -> Result<S>,
{
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let mut s = open()?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!("{label}: {count} connections, median {median:.0} us, mean {mean:.0} us");
    Ok(())
}

/// Connects to guest `port` through the VMM's socket; returns the stream and the OK line.
fn host_connect(uds: &Path, port: u32) -> Result<(UnixStream, String)> {
    let mut s = UnixStream::connect(uds).with_context(|| format!("connect {}", uds.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 {
        if b[0] == b'\n' {
            return Ok((s, String::from_utf8_lossy(&line).into_owned()));
        }
        line.push(b[0]);
    }
    bail!(
        "connection closed before OK (got {:?})",
        String::from_utf8_lossy(&line)
    )
}

fn with_port(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Echoes every connection `accept` yields, each on a thread of its own, until it fails.
fn serve_echo<S, A>(mut accept: A)
where
    S: Read + Write + Send + 'static,
    A: FnMut() -> std::io::Result<(S, S)>,
{
    while let Ok((mut rx, mut tx)) = accept() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut rx, &mut tx);
        });
    }
}

fn host_echo(uds: &Path, port: u32) -> Result<()> {
    let path = with_port(uds, port);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::thread::spawn(move || {
        serve_echo(|| {
            let (s, _) = listener.accept()?;
            Ok((s.try_clone()?, s))
        })
    });
    Ok(())
}

fn sh(cmd: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), cmd.into()]
}

fn describe(out: &CommandOutput) -> String {
    format!(
        "status {:?}{} stdout {:?} stderr {:?}",
        out.status,
        out.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn control(uds: &Path, steps: &[String]) -> Result<()> {
    let listener = ControlListener::bind(uds)?;
    let mut ctl = listener.accept(Duration::from_secs(300))?;
    println!(
        "control: guest-init says hello: kernel {} booted in {} ms",
        ctl.kernel, ctl.boot_ms
    );
    let mut failed = 0;
    for step in steps {
        let (kind, arg) = step.split_once('=').unwrap_or((step, ""));
        let result = match kind {
            "exec" => ctl
                .exec(&sh(arg))
                .map_err(anyhow::Error::from)
                .and_then(|out| {
                    println!("control: exec {arg:?}: {}", describe(&out));
                    match out.status {
                        ExitStatus::Code(0) => Ok(()),
                        _ => bail!("exited {:?}", out.status),
                    }
                }),
            "expect" => {
                let (cmd, text) = arg.split_once("=>").unwrap_or((arg, ""));
                ctl.exec(&sh(cmd))
                    .map_err(anyhow::Error::from)
                    .and_then(|out| {
                        let stdout = String::from_utf8_lossy(&out.stdout);
                        if out.status == ExitStatus::Code(0) && stdout.trim_end() == text {
                            Ok(())
                        } else {
                            bail!("{cmd:?}: {}", describe(&out))
                        }
                    })
            }
            "status" => {
                let (cmd, code) = arg.split_once("=>").unwrap_or((arg, ""));
                ctl.exec(&sh(cmd))
                    .map_err(anyhow::Error::from)
                    .and_then(|out| {
                        if format!("{:?}", out.status) == format!("Code({code})") {
                            Ok(())
                        } else {
                            bail!("{cmd:?}: {}", describe(&out))
                        }
                    })
            }
            "host-echo" => arg
                .parse()
                .map_err(anyhow::Error::from)
                .and_then(|p| host_echo(uds, p)),
            "streams" => {
                let parts: Vec<usize> = arg.split(':').filter_map(|p| p.parse().ok()).collect();
                match parts[..] {
                    [port, n, bytes] => {
                        let uds = uds.to_owned();
                        run_streams("host->guest", n, bytes, move |_| {
                            let (s, _) = host_connect(&uds, port as u32)?;
                            Ok((s.try_clone()?, s))
                        })
                    }
                    _ => Err(anyhow!("streams=PORT:N:BYTES")),
                }
            }
            "refused" => match host_connect(uds, arg.parse()?) {
                Ok((_, line)) => Err(anyhow!("connected to a port nobody listens on: {line}")),
                Err(e) => {
                    println!("control: refused as expected: {e:#}");
                    Ok(())
                }
            },
            "garbage" => (|| -> Result<()> {
                for junk in [
                    &b"\x00\xff\x13garbage\n"[..],
                    &[b'A'; 4096][..],
                    b"CONNECT x\n",
                ] {
                    let mut s = UnixStream::connect(uds)?;
                    s.write_all(junk)?;
                    let mut buf = [0u8; 16];
                    s.set_read_timeout(Some(Duration::from_secs(60)))?;
                    match s.read(&mut buf) {
                        Ok(0) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                        other => bail!("junk was not refused: {other:?}"),
                    }
                }
                println!("control: garbage dropped by the VMM");
                Ok(())
            })(),
            "abrupt" => (|| -> Result<()> {
                let (mut s, _) = host_connect(uds, arg.parse()?)?;
                s.write_all(&[0x5a; 64 << 10])?; // fits in the buffers on the way: no reader needed
                drop(s);
                println!("control: closed a stream abruptly");
                Ok(())
            })(),
            "host" => (|| -> Result<()> {
                let status = std::process::Command::new("/bin/sh")
                    .args(["-c", arg])
                    .status()?;
                if !status.success() {
                    bail!("host command {arg:?} failed: {status}");
                }
                Ok(())
            })(),
            other => Err(anyhow!("unknown step {other:?}")),
        };
        match result {
            Ok(()) => println!("control: step {step}: ok"),
            Err(e) => {
                failed += 1;
                println!("control: step {step}: FAILED: {e:#}");
            }
        }
    }
    ctl.shutdown(None)?;
    if failed > 0 {
        bail!("{failed} step(s) failed");
    }
    println!("control: all steps passed");
    Ok(())
}

/// `n` concurrent echoed streams to vsock `cid:port` (from a guest, cid 2 is its host).
fn vsock_streams(label: &str, cid: u32, port: u32, n: usize, bytes: usize) -> Result<()> {
    run_streams(label, n, bytes, move |_| {
        let s =
            VsockStream::connect(cid, port).with_context(|| format!("connect to {cid}:{port}"))?;
        Ok((s.try_clone()?, s))
    })
}

fn guest_echo(port: u32) -> Result<()> {
    let listener =
        VsockListener::bind(port).with_context(|| format!("listen on vsock port {port}"))?;
    serve_echo(|| {
        let s = listener.accept()?;
        Ok((s.try_clone()?, s))
    });
    bail!("guest-echo: accept failed")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> Result<usize> {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("argument {i} must be a number"))
    };
    match args.first().map(String::as_str) {
        Some("control") => {
            let uds = args.get(1).ok_or_else(|| anyhow!("control UDS STEP..."))?;
            control(Path::new(uds), &args[2..])
        }
        Some("guest-echo") => guest_echo(num(1)? as u32),
        Some("tcp-echo") => {
            let listener = std::net::TcpListener::bind(("0.0.0.0", num(1)? as u16))?;
            serve_echo(|| {
                let (s, _) = listener.accept()?;
                Ok((s.try_clone()?, s))
            });
            bail!("tcp-echo: accept failed")
        }
        Some("tcp-streams") => {
            let addr: std::net::IpAddr = args
                .get(1)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| anyhow!("tcp-streams ADDR PORT N BYTES"))?;
            let (port, n, bytes) = (num(2)? as u16, num(3)?, num(4)?);
            run_streams("tcp", n, bytes, move |_| {
                let s = std::net::TcpStream::connect((addr, port))
                    .with_context(|| format!("connect to {addr}:{port}"))?;
                // A peer that died (a crashed guest) fails the run instead of hanging it.
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                s.set_write_timeout(Some(Duration::from_secs(120)))?;
                Ok((s.try_clone()?, s))
            })
        }
        Some("tap-add") => {
            let name = args
                .get(1)
                .ok_or_else(|| anyhow!("tap-add NAME [OWNER_UID]"))?;
            let owner = match args.get(2) {
                Some(uid) => Some(uid.parse().context("the owner uid")?),
                None => None,
            };
            vmm::virtio::net::tap::Tap::create_persistent(name, owner)?;
            Ok(())
        }
        Some("guest-streams") => vsock_streams("guest->host", 2, num(1)? as u32, num(2)?, num(3)?),
        Some("vsock-streams") => {
            let cid = num(1)? as u32;
            vsock_streams("vsock", cid, num(2)? as u32, num(3)?, num(4)?)
        }
        Some("vsock-connects") => {
            let (cid, port) = (num(1)? as u32, num(2)? as u32);
            run_connects("vsock", num(3)?, || {
                VsockStream::connect(cid, port).with_context(|| format!("connect to {cid}:{port}"))
            })
        }
        Some("uds-streams") => {
            let uds = PathBuf::from(
                args.get(1)
                    .ok_or_else(|| anyhow!("uds-streams UDS PORT N BYTES"))?,
            );
            let (port, n, bytes) = (num(2)? as u32, num(3)?, num(4)?);
            run_streams("uds", n, bytes, move |_| {
                let (s, _) = host_connect(&uds, port)?;
                Ok((s.try_clone()?, s))
            })
        }
        Some("uds-connects") => {
            let uds = PathBuf::from(
                args.get(1)
                    .ok_or_else(|| anyhow!("uds-connects UDS PORT N"))?,
            );
            let port = num(2)? as u32;
            run_connects("uds", num(3)?, || Ok(host_connect(&uds, port)?.0))
        }
        _ => bail!(
            "usage: skiff-probe control UDS STEP... | guest-echo PORT | guest-streams PORT N BYTES"
        ),
    }
}
