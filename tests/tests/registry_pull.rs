//! `skiff-image pull` against a real registry: Debian's `docker-registry` on 127.0.0.1 (a free
//! port, a temporary storage directory), fed by `skopeo copy` from an OCI layout this test writes
//! (a plain tar layer and a gzip one, plus an arm64 variant behind an index), pulled by the
//! release `skiff-image` over plain HTTP and over HTTPS with a CA made by `openssl req -x509`.
//! Each pull is checked with `inspect`, then repeated: the second one downloads no blob.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use images::store::Digest;
use skiff_tests::artefacts::{require, Artefact, Need};
use skiff_tests::process::run_with_timeout;

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn ready(test: &str) -> bool {
    require(
        test,
        &[
            Need::Artefact(Artefact::SkiffImage),
            Need::Program("docker-registry"),
            Need::Program("skopeo"),
            Need::Program("openssl"),
            Need::Program("tar"),
            Need::Program("gzip"),
        ],
    )
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("skiff-registry-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` (two minutes at most) and returns its standard output; panics with its output
/// unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let done = run_with_timeout(cmd, Duration::from_secs(120)).unwrap();
    assert!(
        done.code == Some(0),
        "{what} failed ({:?}, timed out: {}):\n{}\n{}",
        done.code,
        done.timed_out,
        done.stdout,
        done.stderr
    );
    done.stdout
}

/// Like [`run`], but expects failure and returns standard error.
fn run_failing(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let done = run_with_timeout(cmd, Duration::from_secs(120)).unwrap();
    assert!(
        done.code.is_some_and(|c| c != 0),
        "{what} should have failed:\n{}",
        done.stdout
    );
    done.stderr
}

/// A running `docker-registry`, stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    /// Starts one on 127.0.0.1 (a free port), storing under `dir`; with TLS when given a
    /// certificate and key.
    fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        let config_path = dir.join("registry.yml");
        fs::write(&config_path, config).unwrap();
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut registry = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = registry.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "docker-registry did not come up on 127.0.0.1:{port} ({exited:?}):\n{}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `data` as a blob of the layout in `dir`; returns its descriptor (JSON).
fn blob(dir: &Path, media_type: &str, data: &[u8], extra: &str) -> (Digest, String) {
    let digest = Digest::of(data);
    fs::write(dir.join("blobs/sha256").join(digest.hex()), data).unwrap();
    let desc = format!(
        r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{}{extra}}}"#,
        data.len()
    );
    (digest, desc)
}

/// A tar of the tree `root` (and its gzip when `gzip`), built with the system's tools.
fn layer(scratch: &Path, name: &str, files: &[(&str, &str)], gzip: bool) -> (Vec<u8>, Vec<u8>) {
    let root = scratch.join(name);
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    let tar = scratch.join(format!("{name}.tar"));
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
        ])
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg("."));
    let plain = fs::read(&tar).unwrap();
    let blob = if gzip {
        run(Command::new("gzip").arg("-n").arg("-k").arg(&tar));
        fs::read(scratch.join(format!("{name}.tar.gz"))).unwrap()
    } else {
        plain.clone()
    };
    (plain, blob)
}

/// An image manifest for `arch` with `layers` ((media type, uncompressed tar, blob)); returns
/// its digest and descriptor.
fn image(dir: &Path, arch: &str, layers: &[(&str, Vec<u8>, Vec<u8>)]) -> (Digest, String) {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|(_, tar, _)| format!("\"{}\"", Digest::of(tar)))
        .collect();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{"Cmd":["/bin/hello","{arch}"],"Env":["PATH=/bin"],"WorkingDir":"/data"}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let (_, config_desc) = blob(dir, MEDIA_CONFIG, config.as_bytes(), "");
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|(media_type, _, data)| blob(dir, media_type, data, "").1)
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_MANIFEST}","config":{config_desc},"layers":[{}]}}"#,
        layer_descs.join(",")
    );
    let platform = format!(r#","platform":{{"architecture":"{arch}","os":"linux"}}"#);
    blob(dir, MEDIA_MANIFEST, manifest.as_bytes(), &platform)
}

/// The OCI layout: `single` names the amd64 image, `multi` an index of an arm64 and the amd64
/// image. Returns the layout and the amd64 manifest's digest.
fn layout(scratch: &Path) -> (PathBuf, Digest) {
    let dir = scratch.join("layout");
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let (tar1, blob1) = layer(
        scratch,
        "base",
        &[("bin/hello", "#!/bin/sh\necho hello\n")],
        false,
    );
    let (tar2, blob2) = layer(
        scratch,
        "top",
        &[("data/greeting", "hi from a layer\n")],
        true,
    );
    let (tar3, blob3) = layer(scratch, "arm", &[("bin/hello", "arm\n")], true);
    let (amd, amd_desc) = image(
        &dir,
        "amd64",
        &[(MEDIA_TAR, tar1, blob1), (MEDIA_GZIP, tar2, blob2)],
    );
    let (_, arm_desc) = image(&dir, "arm64", &[(MEDIA_GZIP, tar3, blob3)]);
    let inner = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{arm_desc},{amd_desc}]}}"#
    );
    let (_, inner_desc) = blob(&dir, MEDIA_INDEX, inner.as_bytes(), "");
    let named = |desc: &str, name: &str| {
        format!(
            r#"{},"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}"#,
            desc.strip_suffix('}').unwrap()
        )
    };
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{},{}]}}"#,
        named(&amd_desc, "single"),
        named(&inner_desc, "multi")
    );
    fs::write(dir.join("index.json"), index).unwrap();
    (dir, amd)
}

/// Pushes the layout's `single` and `multi` images as they are (digests preserved) as
/// `skiff/hello:single` and `:multi`, and `single` converted to Docker v2 media types (its plain
/// layer gzipped) as `:docker`.
fn push(layout: &Path, registry: &Registry) {
    for (name, tag, how) in [
        ("single", "single", "--preserve-digests"),
        ("multi", "multi", "--all"),
        ("single", "docker", "--format=v2s2"),
    ] {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false", how]);
        if how == "--all" {
            cmd.arg("--preserve-digests");
        }
        cmd.arg(format!("oci:{}:{name}", layout.display()))
            .arg(format!("docker://{}/skiff/hello:{tag}", registry.host()));
        run(&mut cmd);
    }
}

fn skiff_image(store: &Path) -> Command {
    let mut cmd = Command::new(Artefact::SkiffImage.path());
    cmd.arg("--store").arg(store);
    cmd
}

/// The number before `what` in the pull report line (`… 3 blobs downloaded …`).
fn count(report: &str, what: &str) -> u64 {
    let before = report
        .split_once(what)
        .unwrap_or_else(|| panic!("no {what:?} in {report:?}"))
        .0;
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {report:?}"))
}

/// Pulls the three tags (with `extra` flags) into a fresh store, checks them with `inspect`,
/// then pulls each again: only its manifest is fetched, no blob downloaded.
fn pull_and_check(store: &Path, registry: &Registry, extra: &[&str], amd: Digest) {
    // (tag, manifests fetched, blobs downloaded): `docker` first (its own manifest; the config
    // and layers, the same bytes, are those of the others), then `multi`, through its index to
    // the amd64 manifest, which `single` then shares.
    for (tag, manifests, blobs) in [("docker", 1, 3), ("multi", 2, 0), ("single", 1, 0)] {
        let reference = format!("{}/skiff/hello:{tag}", registry.host());
        let out = run(skiff_image(store).arg("pull").arg(&reference).args(extra));
        assert!(out.starts_with(&format!("{reference} sha256:")), "{out}");
        assert!(out.contains(" (2 layers)\n"), "{out}");
        assert_eq!(count(&out, "manifests fetched"), manifests, "{out}");
        assert_eq!(count(&out, "blobs downloaded"), blobs, "{out}");

        let shown = run(skiff_image(store).arg("inspect").arg(&reference));
        assert!(shown.contains("platform: linux/amd64"), "{shown}");
        assert!(shown.contains(r#"cmd: ["/bin/hello", "amd64"]"#), "{shown}");
        assert!(shown.contains("working dir: /data"), "{shown}");
        assert_eq!(shown.matches("layer: ").count(), 2, "{shown}");
        if tag == "docker" {
            let docker_layer = "application/vnd.docker.image.rootfs.diff.tar";
            assert!(shown.contains(&format!("{docker_layer} ")), "{shown}");
            assert!(shown.contains(&format!("{docker_layer}.gzip ")), "{shown}");
        } else {
            assert!(shown.contains(&format!("manifest: {amd}")), "{shown}");
            assert!(
                shown.contains(&format!("{MEDIA_TAR} ")) && shown.contains(MEDIA_GZIP),
                "{shown}"
            );
        }

        let again = run(skiff_image(store)
            .arg("pull")
            .arg(&reference)
            .args(["--name", "again"])
            .args(extra));
        assert!(again.starts_with("again sha256:"), "{again}");
        assert!(again.contains("0 blobs downloaded (0 bytes)"), "{again}");
        assert_eq!(count(&again, "manifests fetched"), 1, "{again}");
    }
    let listed = run(skiff_image(store).arg("list"));
    assert_eq!(listed.lines().count(), 4, "{listed}");
}

#[test]
fn pull_over_plain_http() {
    if !ready("pull_over_plain_http") {
        return;
    }
    let scratch = Scratch::new("http");
    let (layout, amd) = layout(&scratch.0);
    let registry = Registry::start(&scratch.0, None);
    push(&layout, &registry);
    let store = scratch.0.join("store");
    pull_and_check(&store, &registry, &["--plain-http"], amd);

    // HTTPS to a plain HTTP registry fails clearly and stores nothing.
    let reference = format!("{}/skiff/hello:single", registry.host());
    let fresh = scratch.0.join("fresh");
    let err = run_failing(skiff_image(&fresh).arg("pull").arg(&reference));
    assert!(
        err.contains(&format!(
            "https://{}/v2/skiff/hello/manifests/single",
            registry.host()
        )),
        "{err}"
    );
    let err = run_failing(
        skiff_image(&fresh)
            .args(["pull", "--plain-http"])
            .arg(format!("{}/skiff/absent:1", registry.host())),
    );
    assert!(err.contains("HTTP 404"), "{err}");
    assert_eq!(fs::read_dir(fresh.join("blobs/sha256")).unwrap().count(), 0);
}

#[test]
fn pull_over_https_with_a_ca_file() {
    if !ready("pull_over_https_with_a_ca_file") {
        return;
    }
    let scratch = Scratch::new("https");
    let dir = &scratch.0;
    let (layout, amd) = layout(dir);
    // A CA (openssl req -x509) and the registry's certificate for 127.0.0.1, signed by it.
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (cert, key, csr) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("cert.csr"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509", "-days", "1", "-subj", "/CN=skiff test CA"])
        .args(ec)
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args(["req", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("ext.cnf");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-set_serial", "2"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));

    let registry = Registry::start(dir, Some((&cert, &key)));
    push(&layout, &registry);
    let store = dir.join("store");
    let ca_arg = ca.to_str().unwrap();
    pull_and_check(&store, &registry, &["--ca-file", ca_arg], amd);

    // Without the CA the certificate is not trusted.
    let reference = format!("{}/skiff/hello:single", registry.host());
    let fresh = dir.join("fresh");
    let err = run_failing(skiff_image(&fresh).arg("pull").arg(&reference));
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(fs::read_dir(fresh.join("blobs/sha256")).unwrap().count(), 0);
}
