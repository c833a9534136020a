//! skiff-mkimage: writes an OCI image layout (test images) from directory trees on disk, one tree
//! per layer, with no container tooling.
//!
//!   skiff-mkimage --out DIR [--ref NAME] [--config JSON|FILE] [--mtime SECS] --layer SPEC...
//!
//! `--out DIR`       the layout to write (must not exist; written beside it, then renamed)
//! `--ref NAME`      the `org.opencontainers.image.ref.name` annotation in index.json (`latest`)
//! `--config X`      the image config's `config` object: {Env, Entrypoint, Cmd, WorkingDir, User,
//!                   ExposedPorts, ...}, inline when X starts with `{`, else read from file X
//! `--mtime SECS`    every entry's mtime (reproducible blobs); default: the files' own
//! `--layer SPEC`    a layer, bottom first; SPEC is `COMPRESSION:[DIR][,OPTION]...` with
//!     COMPRESSION   `gzip`, `zstd` or `none` (media type `...layer.v1.tar+gzip`, `+zstd`, `.tar`)
//!     DIR           the tree to archive, walked in sorted order (regular files, directories,
//!                   symlinks; hard links, found by (dev, inode), become tar hard-link entries to
//!                   the first path); whiteouts (`.wh.NAME`, `.wh..wh..opq`) are ordinary empty
//!                   files in the tree and go in as such; modes, owners and mtimes are the files'
//!     owner=UID:GID           every entry's owner instead of the files'
//!     chown=PATH:UID:GID      the owner of PATH (relative to DIR), over `owner=`
//!     xattr=PATH:NAME:HEX     an extended attribute of PATH (a PAX `SCHILY.xattr.NAME` record,
//!                             as GNU tar and Docker write them), its value in hex
//!     raw=NAME                after the tree, a regular file (0644, content "escaped\n") whose
//!                             tar header names NAME byte for byte, even `../x` or `/../x`
//!     random=PATH:BYTES:SEED  after the tree, a regular file (0644) of BYTES pseudo-random
//!                             (incompressible, reproducible) bytes from SEED
//!
//! Example: `skiff-mkimage --out img --config '{"Cmd":["sh"]}' --layer gzip:base,owner=0:0
//! --layer zstd:top,chown=data/f:1000:1000 --layer none:,raw=../escaped`.
//!
//! The image config has architecture amd64, os linux and rootfs.diff_ids (the sha256 of each
//! uncompressed layer tar); the manifest is `application/vnd.oci.image.manifest.v1+json`. Layers
//! are built in parallel and streamed through temporary files, so large ones cost no memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use images::store::oci::{
    MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR, MEDIA_LAYER_ZSTD, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use images::store::{Digest, Hasher};
use serde_json::{json, Value};

const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// What a `raw=` entry holds.
const RAW_CONTENT: &[u8] = b"escaped\n";

#[derive(Debug, Parser)]
#[command(
    name = "skiff-mkimage",
    about = "Writes an OCI image layout from directory trees"
)]
struct Args {
    /// The layout directory to write (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// The ref.name annotation of the image in index.json.
    #[arg(long = "ref", default_value = "latest")]
    reference: String,
    /// The config's `config` object: inline JSON (starting with `{`) or a JSON file.
    #[arg(long)]
    config: Option<String>,
    /// Every entry's mtime, in seconds since the epoch (default: the files' own).
    #[arg(long)]
    mtime: Option<u64>,
    /// A layer, bottom first: `gzip|zstd|none:[DIR][,owner=U:G][,chown=P:U:G][,raw=N][,random=P:B:S]`.
    #[arg(long = "layer", required = true)]
    layers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => MEDIA_LAYER_GZIP,
            Compression::Zstd => MEDIA_LAYER_ZSTD,
            Compression::None => MEDIA_LAYER_TAR,
        }
    }
}

/// One layer, as `--layer` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LayerSpec {
    compression: Compression,
    dir: Option<PathBuf>,
    owner: Option<(u64, u64)>,
    chown: BTreeMap<PathBuf, (u64, u64)>,
    xattrs: BTreeMap<PathBuf, Vec<(String, Vec<u8>)>>,
    raw: Vec<Vec<u8>>,
    random: Vec<(String, u64, u64)>,
}

fn number(s: &str, what: &str) -> Result<u64> {
    s.parse()
        .with_context(|| format!("{what} {s:?} is not a number"))
}

fn owner(uid: &str, gid: &str) -> Result<(u64, u64)> {
    Ok((number(uid, "uid")?, number(gid, "gid")?))
}

impl LayerSpec {
    fn parse(spec: &str) -> Result<Self> {
        let (compression, rest) = spec
            .split_once(':')
            .ok_or_else(|| anyhow!("layer {spec:?}: expected COMPRESSION:[DIR][,OPTION]..."))?;
        let compression = match compression {
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            "none" => Compression::None,
            other => bail!("layer {spec:?}: compression {other:?} is not gzip, zstd or none"),
        };
        let mut parts = rest.split(',');
        let dir = parts.next().filter(|d| !d.is_empty()).map(PathBuf::from);
        let mut layer = LayerSpec {
            compression,
            dir,
            owner: None,
            chown: BTreeMap::new(),
            xattrs: BTreeMap::new(),
            raw: Vec::new(),
            random: Vec::new(),
        };
        for option in parts {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let fields: Vec<&str> = value.split(':').collect();
            match (key, fields.as_slice()) {
                ("owner", [uid, gid]) => layer.owner = Some(owner(uid, gid)?),
                ("chown", [path, uid, gid]) => {
                    layer.chown.insert(PathBuf::from(path), owner(uid, gid)?);
                }
                ("xattr", [path, name, hex]) => {
                    let value = hex_bytes(hex)
                        .with_context(|| format!("layer {spec:?}: xattr value {hex:?}"))?;
                    layer
                        .xattrs
                        .entry(PathBuf::from(path))
                        .or_default()
                        .push(((*name).to_owned(), value));
                }
                ("raw", _) if !value.is_empty() => layer.raw.push(value.as_bytes().to_vec()),
                ("random", [path, bytes, seed]) => layer.random.push((
                    (*path).to_owned(),
                    number(bytes, "size")?,
                    number(seed, "seed")?,
                )),
                _ => bail!(
                    "layer {spec:?}: bad option {option:?} (owner=UID:GID, chown=PATH:UID:GID, \
                     xattr=PATH:NAME:HEX, raw=NAME, random=PATH:BYTES:SEED)"
                ),
            }
        }
        ensure!(
            layer.dir.is_some() || !layer.raw.is_empty() || !layer.random.is_empty(),
            "layer {spec:?} has no entries: give a DIR, raw= or random="
        );
        Ok(layer)
    }
}

/// Bytes from hex digits.
fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    ensure!(hex.len() % 2 == 0, "an odd number of hex digits");
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| anyhow!("not hex"))
        })
        .collect()
}

/// Counts and hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
    size: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::default(),
            size: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reproducible incompressible bytes: byte `p` is byte `p % 8` of splitmix64's output for
/// block `p / 8`, the same however the reads are cut.
struct Random {
    seed: u64,
    pos: u64,
    len: u64,
}

impl Random {
    fn new(seed: u64, len: u64) -> Self {
        Self { seed, pos: 0, len }
    }

    fn block(&self, k: u64) -> [u8; 8] {
        let mut z = self
            .seed
            .wrapping_add(k.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl Read for Random {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.len - self.pos).unwrap_or(usize::MAX));
        let mut block = self.block(self.pos / 8);
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            let p = self.pos + i as u64;
            if p % 8 == 0 {
                block = self.block(p / 8);
            }
            *byte = block[(p % 8) as usize];
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes one layer's uncompressed tar.
struct TarWriter<'a, W: Write> {
    builder: tar::Builder<W>,
    spec: &'a LayerSpec,
    mtime: Option<u64>,
    /// First path of each multiply-linked file, by (dev, inode).
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> TarWriter<'_, W> {
    fn header(&self, rel: &Path, meta: Option<&fs::Metadata>) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        let from_file = meta.map_or((0, 0), |m| (u64::from(m.uid()), u64::from(m.gid())));
        let (uid, gid) = self
            .spec
            .chown
            .get(rel)
            .copied()
            .or(self.spec.owner)
            .unwrap_or(from_file);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mode(meta.map_or(0o644, |m| m.mode() & 0o7777));
        let file_mtime = meta.map_or(0, |m| u64::try_from(m.mtime()).unwrap_or(0));
        h.set_mtime(self.mtime.unwrap_or(file_mtime));
        h.set_size(0);
        h
    }

    /// The tree under `dir` (`rel` inside the layer), sorted by name.
    fn tree(&mut self, dir: &Path, rel: &Path) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut h = self.header(&rel, Some(&meta));
            let kind = meta.file_type();
            let what = || format!("archiving {}", path.display());
            if let Some(xattrs) = self.spec.xattrs.get(&rel) {
                let records: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.as_slice()))
                    .collect();
                self.builder
                    .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                    .with_context(what)?;
            }
            if kind.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                self.builder
                    .append_data(&mut h, &rel, io::empty())
                    .with_context(what)?;
                self.tree(&path, &rel)?;
            } else if kind.is_symlink() {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = fs::read_link(&path).with_context(what)?;
                self.builder
                    .append_link(&mut h, &rel, target)
                    .with_context(what)?;
            } else if kind.is_file() {
                let key = (meta.dev(), meta.ino());
                let first = if meta.nlink() > 1 {
                    self.links.get(&key).cloned()
                } else {
                    None
                };
                if let Some(first) = first {
                    h.set_entry_type(tar::EntryType::Link);
                    self.builder
                        .append_link(&mut h, &rel, first)
                        .with_context(what)?;
                } else {
                    if meta.nlink() > 1 {
                        self.links.insert(key, rel.clone());
                    }
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(meta.len());
                    let file = File::open(&path).with_context(what)?;
                    self.builder
                        .append_data(&mut h, &rel, file.take(meta.len()))
                        .with_context(what)?;
                }
            } else {
                bail!(
                    "{}: only regular files, directories and symlinks go in layers",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// A regular file whose header names `name` exactly (the tar crate refuses `..` itself).
    fn raw(&mut self, name: &[u8]) -> Result<()> {
        let mut h = self.header(Path::new(""), None);
        let field = &mut h.as_old_mut().name;
        ensure!(
            name.len() <= field.len(),
            "raw entry name longer than {} bytes",
            field.len()
        );
        field[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(RAW_CONTENT.len() as u64);
        h.set_cksum();
        self.builder.append(&h, RAW_CONTENT)?;
        Ok(())
    }

    fn write(mut self) -> Result<W> {
        if let Some(dir) = &self.spec.dir {
            self.tree(dir, Path::new(""))?;
        }
        for name in &self.spec.raw {
            self.raw(name)?;
        }
        for (path, bytes, seed) in &self.spec.random {
            let mut h = self.header(Path::new(path), None);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(*bytes);
            let data = Random::new(*seed, *bytes);
            self.builder
                .append_data(&mut h, path, data)
                .with_context(|| format!("archiving random file {path}"))?;
        }
        Ok(self.builder.into_inner()?)
    }
}

/// Writes one layer's uncompressed tar to `out`.
fn write_tar<W: Write>(spec: &LayerSpec, mtime: Option<u64>, out: W) -> Result<W> {
    TarWriter {
        builder: tar::Builder::new(out),
        spec,
        mtime,
        links: HashMap::new(),
    }
    .write()
}

/// A written blob's descriptor fields.
#[derive(Debug, Clone)]
struct Blob {
    media_type: &'static str,
    digest: Digest,
    size: u64,
}

impl Blob {
    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest.to_string(), "size": self.size})
    }
}

/// Moves the finished temporary file `tmp` to its digest's name in `blobs`.
fn store_blob(blobs: &Path, tmp: &Path, digest: Digest) -> Result<()> {
    fs::rename(tmp, blobs.join(digest.hex()))
        .with_context(|| format!("storing blob {}", tmp.display()))
}

fn write_json_blob(blobs: &Path, media_type: &'static str, value: &Value) -> Result<Blob> {
    let data = serde_json::to_vec(value)?;
    let digest = Digest::of(&data);
    fs::write(blobs.join(digest.hex()), &data)?;
    Ok(Blob {
        media_type,
        digest,
        size: data.len() as u64,
    })
}

/// Writes layer `n` into `blobs`: returns its blob and its diff_id.
fn write_layer(
    blobs: &Path,
    n: usize,
    spec: &LayerSpec,
    mtime: Option<u64>,
) -> Result<(Blob, Digest)> {
    let tar_path = blobs.join(format!(".layer-{n}.tar"));
    let tar = write_tar(
        spec,
        mtime,
        Hashing::new(BufWriter::new(File::create(&tar_path)?)),
    )?;
    let diff_id = tar.hasher.finish();
    let tar_size = tar.size;
    tar.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    if spec.compression == Compression::None {
        store_blob(blobs, &tar_path, diff_id)?;
        let blob = Blob {
            media_type: MEDIA_LAYER_TAR,
            digest: diff_id,
            size: tar_size,
        };
        return Ok((blob, diff_id));
    }
    let packed_path = blobs.join(format!(".layer-{n}.packed"));
    let mut source = BufReader::new(File::open(&tar_path)?);
    let mut packed = Hashing::new(BufWriter::new(File::create(&packed_path)?));
    if spec.compression == Compression::Gzip {
        let mut gz = flate2::write::GzEncoder::new(&mut packed, flate2::Compression::default());
        io::copy(&mut source, &mut gz)?;
        gz.finish()?;
    } else {
        ruzstd::encoding::compress(
            source,
            &mut packed,
            ruzstd::encoding::CompressionLevel::Fastest,
        );
    }
    packed.flush()?;
    fs::remove_file(&tar_path)?;
    let digest = packed.hasher.finish();
    store_blob(blobs, &packed_path, digest)?;
    let blob = Blob {
        media_type: spec.compression.media_type(),
        digest,
        size: packed.size,
    };
    Ok((blob, diff_id))
}

/// What a layout holds, for the summary.
#[derive(Debug)]
struct Written {
    manifest: Blob,
    config: Blob,
    layers: Vec<(Blob, Digest)>,
}

/// Writes the OCI image layout `out` (which must not exist).
fn write_layout(
    out: &Path,
    reference: &str,
    run_config: &Value,
    layers: &[LayerSpec],
    mtime: Option<u64>,
) -> Result<Written> {
    ensure!(run_config.is_object(), "the config must be a JSON object");
    ensure!(!out.exists(), "{} exists: remove it first", out.display());
    let mut partial = out.as_os_str().to_owned();
    partial.push(format!(".partial-{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let _ = fs::remove_dir_all(&partial);
    let blobs = partial.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let result = (|| {
        let written: Vec<(Blob, Digest)> = std::thread::scope(|s| {
            let handles: Vec<_> = layers
                .iter()
                .enumerate()
                .map(|(n, spec)| {
                    let blobs = &blobs;
                    s.spawn(move || write_layer(blobs, n, spec, mtime))
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(n, h)| {
                    h.join()
                        .map_err(|_| anyhow!("layer {n} panicked"))?
                        .with_context(|| format!("layer {n}"))
                })
                .collect::<Result<_>>()
        })?;
        let diff_ids: Vec<String> = written.iter().map(|(_, d)| d.to_string()).collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = write_json_blob(&blobs, MEDIA_OCI_CONFIG, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": written.iter().map(|(b, _)| b.descriptor()).collect::<Vec<_>>(),
        });
        let manifest = write_json_blob(&blobs, MEDIA_OCI_MANIFEST, &manifest)?;
        let mut entry = manifest.descriptor();
        entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
        entry["annotations"] = json!({ REF_NAME: reference });
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [entry]});
        fs::write(partial.join("index.json"), serde_json::to_vec(&index)?)?;
        fs::write(
            partial.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(Written {
            manifest,
            config,
            layers: written,
        })
    })();
    match result {
        Ok(written) => {
            fs::rename(&partial, out).with_context(|| format!("renaming to {}", out.display()))?;
            Ok(written)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let run_config: Value = match &args.config {
        None => json!({}),
        Some(inline) if inline.trim_start().starts_with('{') => {
            serde_json::from_str(inline).context("--config")?
        }
        Some(file) => serde_json::from_slice(&fs::read(file).with_context(|| file.clone())?)
            .with_context(|| file.clone())?,
    };
    let layers: Vec<LayerSpec> = args
        .layers
        .iter()
        .map(|s| LayerSpec::parse(s))
        .collect::<Result<_>>()?;
    let written = write_layout(&args.out, &args.reference, &run_config, &layers, args.mtime)?;
    for (n, (blob, diff_id)) in written.layers.iter().enumerate() {
        println!(
            "layer {n}: {} {} {} bytes (diff_id {diff_id})",
            blob.digest, blob.media_type, blob.size
        );
    }
    println!(
        "config: {} ({} bytes)",
        written.config.digest, written.config.size
    );
    println!(
        "{}:{} manifest {}",
        args.out.display(),
        args.reference,
        written.manifest.digest
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-mkimage-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    /// A blob named by its descriptor, checked against its digest and size.
    fn blob(layout: &Path, desc: &Value) -> Vec<u8> {
        let digest: Digest = desc["digest"].as_str().unwrap().parse().unwrap();
        let data = fs::read(layout.join("blobs/sha256").join(digest.hex())).unwrap();
        assert_eq!(Digest::of(&data), digest, "{desc}");
        assert_eq!(data.len() as u64, desc["size"].as_u64().unwrap(), "{desc}");
        data
    }

    fn uncompress(media_type: &str, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match media_type {
            MEDIA_LAYER_GZIP => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            MEDIA_LAYER_ZSTD => {
                ruzstd::decoding::StreamingDecoder::new(data)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
            MEDIA_LAYER_TAR => out = data.to_vec(),
            other => panic!("layer media type {other}"),
        }
        out
    }

    /// (raw name, entry type, link name, uid, gid, mode, content) of each entry.
    type Entry = (
        Vec<u8>,
        tar::EntryType,
        Option<Vec<u8>>,
        u64,
        u64,
        u32,
        Vec<u8>,
    );

    fn entries(tar_data: &[u8]) -> Vec<Entry> {
        let mut archive = tar::Archive::new(tar_data);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                let h = e.header();
                (
                    e.path_bytes().into_owned(),
                    h.entry_type(),
                    e.link_name_bytes().map(|l| l.into_owned()),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.mode().unwrap(),
                    data,
                )
            })
            .collect()
    }

    fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
        entries
            .iter()
            .find(|e| e.0 == name.as_bytes())
            .unwrap_or_else(|| panic!("no entry {name}"))
    }

    #[test]
    fn layer_specs_parse_and_bad_ones_are_named() {
        let spec = LayerSpec::parse(
            "zstd:/t/l2,owner=0:0,chown=data/owned:1000:1000,raw=../escaped,random=r:10:7",
        )
        .unwrap();
        assert_eq!(spec.compression, Compression::Zstd);
        assert_eq!(spec.dir, Some(PathBuf::from("/t/l2")));
        assert_eq!(spec.owner, Some((0, 0)));
        assert_eq!(spec.chown[Path::new("data/owned")], (1000, 1000));
        assert_eq!(spec.raw, vec![b"../escaped".to_vec()]);
        assert_eq!(spec.random, vec![("r".to_owned(), 10, 7)]);
        let raw_only = LayerSpec::parse("none:,raw=/../../escaped2").unwrap();
        assert_eq!(raw_only.dir, None);
        for bad in [
            "gzip",
            "lz4:/x",
            "gzip:",
            "gzip:/x,owner=0",
            "gzip:/x,bogus=1",
            "gzip:/x,random=a:b:c",
        ] {
            assert!(LayerSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xattrs_go_in_as_pax_records_before_their_entry() {
        let t = temp("xattr");
        fs::create_dir_all(t.join("bin")).unwrap();
        fs::write(t.join("bin/tool"), "#!").unwrap();
        let spec = LayerSpec::parse(&format!(
            "none:{},xattr=bin/tool:security.capability:0100000200200000,xattr=bin/tool:user.a:6869",
            t.display()
        ))
        .unwrap();
        assert!(
            LayerSpec::parse("none:/x,xattr=a:user.b:6").is_err(),
            "odd hex"
        );
        assert!(
            LayerSpec::parse("none:/x,xattr=a:user.b:zz").is_err(),
            "not hex"
        );
        let tar_data = write_tar(&spec, None, Vec::new()).unwrap();
        let mut archive = tar::Archive::new(tar_data.as_slice());
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            if let Some(records) = entry.pax_extensions().unwrap() {
                for record in records {
                    let record = record.unwrap();
                    found.push((
                        path.clone(),
                        record.key().unwrap().to_owned(),
                        record.value_bytes().to_vec(),
                    ));
                }
            }
        }
        assert_eq!(
            found,
            [
                (
                    PathBuf::from("bin/tool"),
                    "SCHILY.xattr.security.capability".to_owned(),
                    vec![1, 0, 0, 2, 0, 0x20, 0, 0]
                ),
                (
                    PathBuf::from("bin/tool"),
                    "SCHILY.xattr.user.a".to_owned(),
                    b"hi".to_vec()
                ),
            ]
        );
        fs::remove_dir_all(t).unwrap();
    }

    #[test]
    fn random_data_is_reproducible_and_incompressible() {
        let read = |seed, n| {
            let mut v = Vec::new();
            Random::new(seed, n).read_to_end(&mut v).unwrap();
            v
        };
        let a = read(1, 100_003);
        assert_eq!(a.len(), 100_003);
        assert_eq!(a, read(1, 100_003));
        assert_ne!(a, read(2, 100_003));
        // Cut into odd reads, the stream is the same.
        let mut r = Random::new(1, 100_003);
        let mut b = Vec::new();
        let mut buf = [0u8; 5];
        loop {
            let n = r.read(&mut buf[..(b.len() % 5) + 1]).unwrap();
            if n == 0 {
                break;
            }
            b.extend_from_slice(&buf[..n]);
        }
        assert_eq!(a, b);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&a).unwrap();
        assert!(gz.finish().unwrap().len() > 100_000);
    }

    #[test]
    fn layouts_have_verified_blobs_diff_ids_of_tars_links_whiteouts_and_raw_names() {
        let t = temp("layout");
        let base = t.join("base");
        fs::create_dir_all(base.join("data/dir")).unwrap();
        fs::write(base.join("data/keep"), "v1").unwrap();
        fs::write(base.join("data/dir/a"), "a").unwrap();
        fs::write(base.join("data/secret"), "s").unwrap();
        fs::set_permissions(base.join("data/secret"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(base.join("data/hl-src"), "same").unwrap();
        fs::hard_link(base.join("data/hl-src"), base.join("data/hl-dst")).unwrap();
        symlink("keep", base.join("data/sym")).unwrap();
        let top = t.join("top");
        fs::create_dir_all(top.join("data/dir")).unwrap();
        fs::write(top.join("data/.wh.keep"), "").unwrap();
        fs::write(top.join("data/dir/.wh..wh..opq"), "").unwrap();
        let specs = vec![
            LayerSpec::parse(&format!(
                "gzip:{},owner=0:0,chown=data/secret:1000:1001",
                base.display()
            ))
            .unwrap(),
            LayerSpec::parse(&format!("zstd:{},owner=5:6", top.display())).unwrap(),
            LayerSpec::parse("none:,raw=../escaped,raw=/../../escaped2,random=big:70000:3")
                .unwrap(),
        ];
        let out = t.join("image");
        let config = json!({"Cmd": ["sh"], "Env": ["FOO=bar"], "WorkingDir": "/data",
            "ExposedPorts": {"8080/tcp": {}}});
        let written = write_layout(&out, "v9", &config, &specs, Some(1_700_000_000)).unwrap();
        assert!(
            write_layout(&out, "v9", &config, &specs, None).is_err(),
            "out exists"
        );

        assert_eq!(
            read_json(&out.join("oci-layout"))["imageLayoutVersion"],
            "1.0.0"
        );
        let index = read_json(&out.join("index.json"));
        assert_eq!(index["mediaType"], MEDIA_OCI_INDEX);
        let entry = &index["manifests"][0];
        assert_eq!(entry["annotations"][REF_NAME], "v9");
        assert_eq!(entry["mediaType"], MEDIA_OCI_MANIFEST);
        assert_eq!(entry["digest"], written.manifest.digest.to_string());
        let manifest: Value = serde_json::from_slice(&blob(&out, entry)).unwrap();
        assert_eq!(manifest["config"]["mediaType"], MEDIA_OCI_CONFIG);
        let image_config: Value = serde_json::from_slice(&blob(&out, &manifest["config"])).unwrap();
        assert_eq!(image_config["architecture"], "amd64");
        assert_eq!(image_config["os"], "linux");
        assert_eq!(image_config["config"], config);
        let layers = manifest["layers"].as_array().unwrap();
        let types: Vec<&str> = layers
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(types, [MEDIA_LAYER_GZIP, MEDIA_LAYER_ZSTD, MEDIA_LAYER_TAR]);
        let tars: Vec<Vec<u8>> = layers
            .iter()
            .map(|l| uncompress(l["mediaType"].as_str().unwrap(), &blob(&out, l)))
            .collect();
        let diff_ids: Vec<String> = tars.iter().map(|t| Digest::of(t).to_string()).collect();
        assert_eq!(image_config["rootfs"]["diff_ids"], json!(diff_ids));
        assert_ne!(
            layers[0]["digest"].as_str().unwrap(),
            diff_ids[0],
            "gzip blob is not the tar"
        );

        let l1 = entries(&tars[0]);
        let names: Vec<&[u8]> = l1.iter().map(|e| e.0.as_slice()).collect();
        let want: [&[u8]; 8] = [
            b"data",
            b"data/dir",
            b"data/dir/a",
            b"data/hl-dst",
            b"data/hl-src",
            b"data/keep",
            b"data/secret",
            b"data/sym",
        ];
        assert_eq!(names, want, "sorted walk");
        let first = find(&l1, "data/hl-dst");
        assert_eq!(
            (first.1, first.6.as_slice()),
            (tar::EntryType::Regular, &b"same"[..])
        );
        let link = find(&l1, "data/hl-src");
        assert_eq!(
            (link.1, link.2.as_deref()),
            (tar::EntryType::Link, Some(&b"data/hl-dst"[..]))
        );
        let sym = find(&l1, "data/sym");
        assert_eq!(
            (sym.1, sym.2.as_deref()),
            (tar::EntryType::Symlink, Some(&b"keep"[..]))
        );
        let secret = find(&l1, "data/secret");
        assert_eq!((secret.3, secret.4, secret.5), (1000, 1001, 0o640));
        let keep = find(&l1, "data/keep");
        assert_eq!((keep.3, keep.4, keep.6.as_slice()), (0, 0, &b"v1"[..]));
        assert_eq!(find(&l1, "data").1, tar::EntryType::Directory);
        let mtimes: Vec<u64> = tar::Archive::new(&tars[0][..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().mtime().unwrap())
            .collect();
        assert!(mtimes.iter().all(|&m| m == 1_700_000_000), "{mtimes:?}");

        let l2 = entries(&tars[1]);
        for whiteout in ["data/.wh.keep", "data/dir/.wh..wh..opq"] {
            let w = find(&l2, whiteout);
            assert_eq!(
                (w.1, w.3, w.4, w.6.len()),
                (tar::EntryType::Regular, 5, 6, 0)
            );
        }

        let l3 = entries(&tars[2]);
        assert_eq!(find(&l3, "../escaped").6, RAW_CONTENT);
        assert_eq!(find(&l3, "/../../escaped2").6, RAW_CONTENT);
        let big = find(&l3, "big");
        let mut want_big = Vec::new();
        Random::new(3, 70_000).read_to_end(&mut want_big).unwrap();
        assert_eq!(big.6, want_big);

        // The repository's own importer takes it, every blob verified.
        let store = images::store::Store::open(&t.join("store")).unwrap();
        let record = images::store::oci::import_layout(&store, &out, "test:v9").unwrap();
        assert_eq!(record.layers.len(), 3);
        assert_eq!(record.manifest, written.manifest.digest);
        let _ = fs::remove_dir_all(&t);
    }

    #[test]
    fn a_failed_layout_leaves_nothing_behind() {
        let t = temp("fail");
        let out = t.join("image");
        let spec = LayerSpec::parse(&format!("gzip:{}", t.join("missing").display())).unwrap();
        assert!(write_layout(&out, "latest", &json!({}), &[spec], None).is_err());
        assert_eq!(
            fs::read_dir(&t).unwrap().count(),
            0,
            "no partial layout left"
        );
        let spec = LayerSpec::parse("none:,raw=x").unwrap();
        assert!(write_layout(&out, "latest", &json!(["not", "an object"]), &[spec], None).is_err());
        let _ = fs::remove_dir_all(&t);
    }
}
