//! OCI image layouts (image-spec `oci-layout` directories): importing one into the store, every
//! blob verified against its digest and size. Manifests in OCI and Docker v2 media types; an
//! index (or Docker manifest list) resolves to its linux/amd64 manifest.
//!
//! That resolution (index → manifest → config → layers, each checked) is `fetch_image`, shared
//! with registry pulls (`registry`): it reads blobs through a `BlobSource`, here the layout's
//! `blobs/` directory.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{read_limited_file, Digest, ImageRecord, Layer, Store, StoreError, Stored};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// An uncompressed Docker layer (what `skopeo copy --format v2s2` makes of a plain OCI one).
pub const MEDIA_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Layer media types guest-init can unpack.
const LAYER_TYPES: &[&str] = &[
    MEDIA_LAYER_TAR,
    MEDIA_LAYER_GZIP,
    MEDIA_LAYER_ZSTD,
    MEDIA_DOCKER_LAYER,
    MEDIA_DOCKER_LAYER_TAR,
];

/// Errors importing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid JSON for its kind: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0} is not an OCI image layout (its oci-layout file says imageLayoutVersion {1:?})")]
    NotALayout(PathBuf, String),
    #[error("the image index lists {0} images and none for linux/amd64 (or names none): pick one")]
    NoManifest(usize),
    #[error("unsupported media type {media_type:?} for {what}")]
    MediaType { what: String, media_type: String },
    #[error("the image is for {os}/{architecture}, not linux/amd64")]
    Platform { os: String, architecture: String },
    #[error("docker save archive: {0}")]
    Archive(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config a task uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

pub(crate) fn parse<'a, T: Deserialize<'a>>(what: &str, data: &'a [u8]) -> Result<T, ImportError> {
    serde_json::from_slice(data).map_err(|source| ImportError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Imports the OCI image layout at `dir` as `name`. On failure nothing new stays in the store
/// and no image is named.
pub fn import_layout(store: &Store, dir: &Path, name: &str) -> Result<ImageRecord, ImportError> {
    // Checked again where it is stored; here so that a bad name fails before any work.
    super::check_name(name).map_err(StoreError::from)?;
    store.all_or_nothing(|added| import(store, dir, name, added))
}

fn import(
    store: &Store,
    dir: &Path,
    name: &str,
    added: &mut Vec<Digest>,
) -> Result<ImageRecord, ImportError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LayoutFile {
        image_layout_version: String,
    }
    let layout_path = dir.join("oci-layout");
    let layout: LayoutFile = parse(
        &layout_path.display().to_string(),
        &read_file(&layout_path)?,
    )?;
    if layout.image_layout_version != "1.0.0" {
        return Err(ImportError::NotALayout(
            dir.to_owned(),
            layout.image_layout_version,
        ));
    }
    let index_path = dir.join("index.json");
    let index: Index = parse("index.json", &read_file(&index_path)?)?;
    let desc = choose(&index.manifests, name)?.clone();
    let record = fetch_image(store, &mut LayoutSource(dir), desc, name, added)?;
    store.tag(name, record.clone())?;
    Ok(record)
}

/// Where an image's blobs come from: an OCI layout directory, a registry.
pub(crate) trait BlobSource {
    type Error: From<ImportError> + From<StoreError>;

    /// Puts blob `desc` into the store, verified against its digest and size, and lists it in
    /// `added` when it is new. A blob already stored is not read again.
    fn fetch(
        &mut self,
        store: &Store,
        desc: &Descriptor,
        added: &mut Vec<Digest>,
    ) -> Result<(), Self::Error>;
}

/// The blobs of the OCI layout in a directory.
struct LayoutSource<'a>(&'a Path);

impl BlobSource for LayoutSource<'_> {
    type Error = ImportError;

    fn fetch(
        &mut self,
        store: &Store,
        desc: &Descriptor,
        added: &mut Vec<Digest>,
    ) -> Result<(), ImportError> {
        let path = self.0.join("blobs/sha256").join(desc.digest.hex());
        let mut file = File::open(&path).map_err(|source| ImportError::Read {
            path: path.clone(),
            source,
        })?;
        if store.put_blob(&desc.digest, Some(desc.size), &mut file)? == Stored::New {
            added.push(desc.digest);
        }
        Ok(())
    }
}

/// Whether `media_type` is that of an index (OCI) or manifest list (Docker).
pub(crate) fn is_index(media_type: &str) -> bool {
    matches!(media_type, MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST)
}

/// Stores the image `desc` names, from `source`: an index (or manifest list) resolves to its
/// linux/amd64 manifest (see [`choose`]; `name`'s tag may pick one by its `ref.name`), then the
/// manifest, its config (which must be linux/amd64) and its layers, every one verified. Returns
/// the image without naming it.
pub(crate) fn fetch_image<S: BlobSource>(
    store: &Store,
    source: &mut S,
    mut desc: Descriptor,
    name: &str,
    added: &mut Vec<Digest>,
) -> Result<ImageRecord, S::Error> {
    // An index: resolve it (an index inside once more at most) to the linux/amd64 manifest.
    for _ in 0..2 {
        if !is_index(&desc.media_type) {
            break;
        }
        let data = json_blob(store, source, &desc, added)?;
        let inner: Index = parse(&format!("index {}", desc.digest), &data)?;
        let _ = inner.media_type;
        desc = choose(&inner.manifests, name)?.clone();
    }
    if !matches!(
        desc.media_type.as_str(),
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST | ""
    ) {
        return Err(ImportError::MediaType {
            what: format!("manifest {}", desc.digest),
            media_type: desc.media_type,
        }
        .into());
    }
    let data = json_blob(store, source, &desc, added)?;
    let manifest: Manifest = parse(&format!("manifest {}", desc.digest), &data)?;
    let config_data = json_blob(store, source, &manifest.config, added)?;
    let config: ImageConfig = parse(
        &format!("image config {}", manifest.config.digest),
        &config_data,
    )?;
    if config.os != "linux" || config.architecture != "amd64" {
        return Err(ImportError::Platform {
            os: config.os,
            architecture: config.architecture,
        }
        .into());
    }
    let mut layers = Vec::new();
    for layer in &manifest.layers {
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(ImportError::MediaType {
                what: format!("layer {}", layer.digest),
                media_type: layer.media_type.clone(),
            }
            .into());
        }
        source.fetch(store, layer, added)?;
        layers.push(Layer {
            digest: layer.digest,
            media_type: layer.media_type.clone(),
            size: layer.size,
        });
    }
    Ok(ImageRecord {
        manifest: desc.digest,
        config: manifest.config.digest,
        layers,
    })
}

/// The manifest to import: the only one, the one whose `ref.name` annotation is `name`'s tag, or
/// the linux/amd64 one.
pub(crate) fn choose<'a>(
    manifests: &'a [Descriptor],
    name: &str,
) -> Result<&'a Descriptor, ImportError> {
    if let [only] = manifests {
        return Ok(only);
    }
    let tag = name.rsplit_once(':').map_or(name, |(_, t)| t);
    manifests
        .iter()
        .find(|d| {
            d.annotations
                .get("org.opencontainers.image.ref.name")
                .is_some_and(|r| r == tag || r == name)
        })
        .or_else(|| {
            manifests.iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
        })
        .ok_or(ImportError::NoManifest(manifests.len()))
}

fn read_file(path: &Path) -> Result<Vec<u8>, ImportError> {
    read_limited_file(path, super::MAX_JSON_BLOB).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Stores a JSON blob (index, manifest, config) from `source`, verified, and returns its content.
fn json_blob<S: BlobSource>(
    store: &Store,
    source: &mut S,
    desc: &Descriptor,
    added: &mut Vec<Digest>,
) -> Result<Vec<u8>, S::Error> {
    if desc.size > super::MAX_JSON_BLOB {
        return Err(StoreError::TooLarge {
            digest: desc.digest,
            max: super::MAX_JSON_BLOB,
        }
        .into());
    }
    source.fetch(store, desc, added)?;
    Ok(store.read_json_blob(&desc.digest)?)
}

/// Parses the stored image config of `record`.
pub fn image_config(store: &Store, record: &ImageRecord) -> Result<ImageConfig, ImportError> {
    let data = store.read_json_blob(&record.config)?;
    parse(&format!("image config {}", record.config), &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;
    use serde_json::json;
    use std::fs;

    /// Writes an OCI layout with one image (the given layer bytes) and returns its directory.
    struct LayoutBuilder {
        dir: PathBuf,
    }

    impl LayoutBuilder {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("skiff-layout-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
            fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
            Self { dir }
        }

        fn blob(&self, data: &[u8]) -> serde_json::Value {
            let d = Digest::of(data);
            fs::write(self.dir.join("blobs/sha256").join(d.hex()), data).unwrap();
            json!({"digest": d.to_string(), "size": data.len()})
        }

        fn desc(&self, media_type: &str, data: &[u8]) -> serde_json::Value {
            let mut v = self.blob(data);
            v["mediaType"] = json!(media_type);
            v
        }

        /// A manifest with a config for `arch` and `layers`; returns its descriptor.
        fn image(&self, arch: &str, layers: &[&[u8]]) -> serde_json::Value {
            let config = json!({
                "architecture": arch, "os": "linux",
                "config": {"Cmd": ["/bin/sh", "-c", "echo hi"], "Env": ["A=1"], "User": "1000:1000"},
                "rootfs": {"type": "layers", "diff_ids": []}
            });
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": self.desc("application/vnd.oci.image.config.v1+json",
                    config.to_string().as_bytes()),
                "layers": layers.iter().map(|l| self.desc(MEDIA_LAYER_GZIP, l)).collect::<Vec<_>>(),
            });
            let mut d = self.desc(MEDIA_OCI_MANIFEST, manifest.to_string().as_bytes());
            d["platform"] = json!({"architecture": arch, "os": "linux"});
            d
        }

        fn index(&self, manifests: Vec<serde_json::Value>) {
            let index =
                json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": manifests});
            fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
        }
    }

    impl Drop for LayoutBuilder {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn stored_blobs(root: &Path) -> usize {
        fs::read_dir(root.join("blobs/sha256")).unwrap().count()
    }

    #[test]
    fn a_layout_is_imported_with_its_config_and_layers() {
        let (root, store) = temp_store("import");
        let layout = LayoutBuilder::new("import");
        let desc = layout.image("amd64", &[b"layer one", b"layer two"]);
        layout.index(vec![desc]);
        let record = import_layout(&store, &layout.dir, "busybox:latest").unwrap();
        assert_eq!(record.layers.len(), 2);
        assert_eq!(record.layers[0].digest, Digest::of(b"layer one"));
        assert_eq!(store.get("busybox:latest").unwrap(), record);
        let config = image_config(&store, &record).unwrap();
        let run = config.config.unwrap();
        assert_eq!(run.cmd.unwrap(), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(run.user.as_deref(), Some("1000:1000"));
        // Importing again stores nothing new.
        let before = stored_blobs(&root);
        import_layout(&store, &layout.dir, "busybox:again").unwrap();
        assert_eq!(stored_blobs(&root), before);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_index_resolves_to_the_linux_amd64_image() {
        let (root, store) = temp_store("multi");
        let layout = LayoutBuilder::new("multi");
        let arm = layout.image("arm64", &[b"arm layer"]);
        let amd = layout.image("amd64", &[b"amd layer"]);
        let inner =
            json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [arm, amd]});
        let inner_desc = layout.desc(MEDIA_OCI_INDEX, inner.to_string().as_bytes());
        layout.index(vec![inner_desc]);
        let record = import_layout(&store, &layout.dir, "multi:1").unwrap();
        assert_eq!(record.layers[0].digest, Digest::of(b"amd layer"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_tampered_layer_is_rejected_and_nothing_is_stored() {
        let (root, store) = temp_store("tamper");
        let layout = LayoutBuilder::new("tamper");
        let desc = layout.image("amd64", &[b"good layer", b"second layer"]);
        layout.index(vec![desc]);
        let second = Digest::of(b"second layer");
        fs::write(
            layout.dir.join("blobs/sha256").join(second.hex()),
            b"evil layer!!",
        )
        .unwrap();
        let err = import_layout(&store, &layout.dir, "bad:1").unwrap_err();
        assert!(
            matches!(&err, ImportError::Store(StoreError::DigestMismatch { expected, .. }) if *expected == second),
            "{err}"
        );
        assert_eq!(
            stored_blobs(&root),
            0,
            "the manifest, config and first layer are gone too"
        );
        assert!(store.list().unwrap().is_empty());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn wrong_platforms_media_types_and_layouts_are_clear_errors() {
        let (root, store) = temp_store("wrong");
        let layout = LayoutBuilder::new("wrong");
        let desc = layout.image("arm64", &[b"x"]);
        layout.index(vec![desc]);
        let err = import_layout(&store, &layout.dir, "arm:1").unwrap_err();
        assert!(
            err.to_string().contains("linux/arm64, not linux/amd64"),
            "{err}"
        );

        let weird = layout.desc("application/x-weird", b"{}");
        layout.index(vec![weird]);
        let err = import_layout(&store, &layout.dir, "weird:1").unwrap_err();
        assert!(err.to_string().contains("unsupported media type"), "{err}");

        fs::write(
            layout.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"9"}"#,
        )
        .unwrap();
        let err = import_layout(&store, &layout.dir, "x:1").unwrap_err();
        assert!(matches!(err, ImportError::NotALayout(..)), "{err}");
        fs::write(layout.dir.join("index.json"), b"not json").unwrap();
        fs::write(
            layout.dir.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let err = import_layout(&store, &layout.dir, "x:1").unwrap_err();
        assert!(
            err.to_string().contains("index.json is not valid JSON"),
            "{err}"
        );
        assert_eq!(stored_blobs(&root), 0);
        fs::remove_dir_all(root).unwrap();
    }
}
