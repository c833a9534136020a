//! `docker save` archives: importing one into the store without unpacking it on the host.
//!
//! The archive's `manifest.json` names the config and the layers by path inside the tar — either
//! `blobs/sha256/<hex>` (Docker 25 and later, an OCI layout inside) or the older
//! `<hex>.json` / `<id>/layer.tar`. Every blob is verified: a config against the digest in its
//! name or its own hash, a layer against its `blobs/` name or the config's `rootfs.diff_ids`.
//! The tar is read as a stream three times (`manifest.json`, the config, then the layers), so
//! memory holds at most those two small files whatever the archive carries; nothing from it is
//! written anywhere but the store's `tmp/`. The archive has no manifest blob, so one (OCI) is
//! written for it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use super::oci::{
    ImportError, MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR, MEDIA_LAYER_ZSTD, MEDIA_OCI_MANIFEST,
};
use super::{Digest, ImageRecord, Layer, Store, StoreError, Stored, MAX_JSON_BLOB};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigRootfs {
    #[serde(default)]
    rootfs: Option<Rootfs>,
}

#[derive(Debug, Deserialize)]
struct Rootfs {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

fn bad(what: &str, message: impl Into<String>) -> ImportError {
    ImportError::Archive(format!("{what}: {}", message.into()))
}

/// A tar member's path without a leading `./`.
fn member_path(entry: &tar::Entry<'_, File>) -> Option<String> {
    let path = entry.path().ok()?;
    let s = path.to_str()?;
    Some(s.strip_prefix("./").unwrap_or(s).to_owned())
}

fn open_tar(path: &Path) -> Result<tar::Archive<File>, ImportError> {
    let file = File::open(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(tar::Archive::new(file))
}

/// The digest a `blobs/sha256/<hex>` path names, if it is one.
/// The first regular-file member named `name`, if it is at most [`MAX_JSON_BLOB`] bytes.
fn read_member(path: &Path, name: &str) -> Result<Option<Vec<u8>>, ImportError> {
    let read_err = |source| ImportError::Read {
        path: path.to_owned(),
        source,
    };
    for entry in open_tar(path)?.entries().map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if !entry.header().entry_type().is_file() || member_path(&entry).as_deref() != Some(name) {
            continue;
        }
        if entry.size() > MAX_JSON_BLOB {
            return Err(bad(
                name,
                format!(
                    "{} bytes, more than the {MAX_JSON_BLOB} a JSON file may have",
                    entry.size()
                ),
            ));
        }
        let mut data = Vec::new();
        entry
            .take(MAX_JSON_BLOB)
            .read_to_end(&mut data)
            .map_err(read_err)?;
        return Ok(Some(data));
    }
    Ok(None)
}

fn blob_path_digest(path: &str) -> Option<Digest> {
    path.strip_prefix("blobs/sha256/")
        .and_then(|hex| format!("sha256:{hex}").parse().ok())
}

/// Imports the `docker save` archive at `path` as `name` (or, when `name` is None, under the
/// first tag the archive names). On failure nothing new stays in the store.
pub fn import_archive(
    store: &Store,
    path: &Path,
    name: Option<&str>,
) -> Result<(String, ImageRecord), ImportError> {
    // Checked again where it is stored (with a name from the archive too); here so that a bad
    // name fails before any work.
    if let Some(name) = name {
        super::check_name(name).map_err(StoreError::from)?;
    }
    store.all_or_nothing(|added| import(store, path, name, added))
}

fn import(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    added: &mut Vec<Digest>,
) -> Result<(String, ImageRecord), ImportError> {
    let read_err = |source| ImportError::Read {
        path: path.to_owned(),
        source,
    };
    // Pass 1: manifest.json. Pass 2: the config it names. Only these two members (at most
    // MAX_JSON_BLOB each) are ever held in memory, however many small files the archive has.
    let manifest = read_member(path, "manifest.json")?
        .ok_or_else(|| bad("archive", "no manifest.json: not a docker save archive"))?;
    let images: Vec<ArchiveImage> =
        serde_json::from_slice(&manifest).map_err(|e| bad("manifest.json", e.to_string()))?;
    let image = match images.as_slice() {
        [one] => one,
        _ => {
            return Err(bad(
                "manifest.json",
                format!(
                    "{} images in one archive; import one at a time",
                    images.len()
                ),
            ))
        }
    };
    let name = match name {
        Some(n) => n.to_owned(),
        None => image
            .repo_tags
            .as_ref()
            .and_then(|t| t.first().cloned())
            .ok_or_else(|| bad("manifest.json", "no RepoTags: give the image a name"))?,
    };

    // The config: verified against the digest its path names (both forms do), then stored.
    let config_data = &read_member(path, &image.config)?
        .ok_or_else(|| bad("archive", format!("config {} is missing", image.config)))?;
    let named = blob_path_digest(&image.config).or_else(|| {
        image
            .config
            .strip_suffix(".json")
            .and_then(|hex| format!("sha256:{hex}").parse().ok())
    });
    let config_digest = Digest::of(config_data);
    if let Some(named) = named {
        if named != config_digest {
            return Err(StoreError::DigestMismatch {
                expected: named,
                actual: config_digest,
            }
            .into());
        }
    }
    if store.put_blob(
        &config_digest,
        Some(config_data.len() as u64),
        &mut &config_data[..],
    )? == Stored::New
    {
        added.push(config_digest);
    }
    let config: super::oci::ImageConfig = serde_json::from_slice(config_data)
        .map_err(|e| bad(&format!("config {}", image.config), e.to_string()))?;
    if config.os != "linux" || config.architecture != "amd64" {
        return Err(ImportError::Platform {
            os: config.os,
            architecture: config.architecture,
        });
    }
    let diff_ids = serde_json::from_slice::<ConfigRootfs>(config_data)
        .ok()
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids)
        .unwrap_or_default();

    // What each layer path must hash to.
    let mut expected: BTreeMap<&str, Digest> = BTreeMap::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let digest = blob_path_digest(layer)
            .or_else(|| diff_ids.get(i).copied())
            .ok_or_else(|| bad("manifest.json", format!("layer {layer} has no digest")))?;
        expected.insert(layer.as_str(), digest);
    }

    // Pass 3: the layers, streamed into the store.
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for entry in open_tar(path)?.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let Some(member) = member_path(&entry) else {
            continue;
        };
        let Some((&key, digest)) = expected.get_key_value(member.as_str()) else {
            continue;
        };
        if sizes.contains_key(key) {
            continue; // the same member twice: the first one counts
        }
        let size = entry.size();
        if store.put_blob(digest, Some(size), &mut entry)? == Stored::New {
            added.push(*digest);
        }
        sizes.insert(key, size);
    }
    let mut layers = Vec::new();
    for layer in &image.layers {
        let (Some(digest), Some(size)) = (expected.get(layer.as_str()), sizes.get(layer.as_str()))
        else {
            return Err(bad("archive", format!("layer {layer} is missing")));
        };
        layers.push(Layer {
            digest: *digest,
            media_type: sniff_media_type(store, digest),
            size: *size,
        });
    }

    // The manifest the archive lacks.
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config_data.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_digest = store.put_bytes(manifest.to_string().as_bytes())?;
    added.push(manifest_digest);
    let record = ImageRecord {
        manifest: manifest_digest,
        config: config_digest,
        layers,
    };
    store.tag(&name, record.clone())?;
    Ok((name, record))
}

/// A layer's compression, from its first bytes: gzip, zstd, or a plain tar.
fn sniff_media_type(store: &Store, digest: &Digest) -> String {
    let mut magic = [0u8; 4];
    let n = File::open(store.blob_path(digest))
        .and_then(|mut f| f.read(&mut magic))
        .unwrap_or(0);
    match &magic[..n] {
        [0x1f, 0x8b, ..] => MEDIA_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => MEDIA_LAYER_ZSTD,
        _ => MEDIA_LAYER_TAR,
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;
    use std::fs;
    use std::path::PathBuf;

    fn add(builder: &mut tar::Builder<File>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    }

    /// A docker-save archive: `modern` puts blobs under blobs/sha256, else the legacy layout.
    fn archive(name: &str, modern: bool, layers: &[&[u8]], tamper: bool) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("skiff-save-{name}-{}.tar", std::process::id()));
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        let config = json!({"architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}})
        .to_string();
        let config_digest = Digest::of(config.as_bytes());
        let config_path = if modern {
            format!("blobs/sha256/{}", config_digest.hex())
        } else {
            format!("{}.json", config_digest.hex())
        };
        add(&mut b, &config_path, config.as_bytes());
        let mut layer_paths = vec![];
        for (i, l) in layers.iter().enumerate() {
            let p = if modern {
                format!("blobs/sha256/{}", Digest::of(l).hex())
            } else {
                format!("layer{i}/layer.tar")
            };
            let data: &[u8] = if tamper && i == layers.len() - 1 {
                b"evil"
            } else {
                l
            };
            add(&mut b, &p, data);
            layer_paths.push(p);
        }
        let manifest =
            json!([{"Config": config_path, "RepoTags": ["saved:1"], "Layers": layer_paths}]);
        add(&mut b, "manifest.json", manifest.to_string().as_bytes());
        b.finish().unwrap();
        path
    }

    #[test]
    fn docker_save_archives_of_both_layouts_are_imported_verified() {
        let (root, store) = temp_store("archive");
        for modern in [false, true] {
            let path = archive(
                &format!("ok-{modern}"),
                modern,
                &[b"first layer", b"\x1f\x8bgz"],
                false,
            );
            let (name, record) = import_archive(&store, &path, None).unwrap();
            assert_eq!(name, "saved:1");
            assert_eq!(record.layers.len(), 2);
            assert_eq!(record.layers[0].digest, Digest::of(b"first layer"));
            assert_eq!(record.layers[0].media_type, MEDIA_LAYER_TAR);
            assert_eq!(record.layers[1].media_type, MEDIA_LAYER_GZIP);
            let manifest = store.read_json_blob(&record.manifest).unwrap();
            assert!(String::from_utf8_lossy(&manifest).contains(&record.config.to_string()));
            fs::remove_file(path).unwrap();
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_tampered_archive_is_rejected_and_nothing_is_stored() {
        let (root, store) = temp_store("archive-bad");
        for modern in [false, true] {
            let path = archive(&format!("bad-{modern}"), modern, &[b"one", b"two"], true);
            let err = import_archive(&store, &path, Some("x:1")).unwrap_err();
            assert!(
                matches!(err, ImportError::Store(StoreError::DigestMismatch { .. })),
                "{err}"
            );
            assert_eq!(fs::read_dir(root.join("blobs/sha256")).unwrap().count(), 0);
            assert!(store.list().unwrap().is_empty());
            fs::remove_file(path).unwrap();
        }
        // Not an archive at all.
        let junk = root.join("junk.tar");
        fs::write(&junk, vec![0x42; 3000]).unwrap();
        assert!(import_archive(&store, &junk, Some("x:1")).is_err());
        fs::remove_dir_all(root).unwrap();
    }
}
