//! `unionfs run --image`: an OCI image layout built here from the busybox
//! root, its layer cache, and corrupt or invalid layouts.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

use crate::fixture::Scratch;
use crate::support::*;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// An OCI image layout in a directory, with the digests it holds.
pub struct Layout {
    pub dir: PathBuf,
    /// Blob digests of the layers, base first.
    pub layers: Vec<String>,
}

/// Writes `data` as a blob of `layout`; returns its descriptor fields.
fn put_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let digest = unionfs::layer::digest::of_bytes(data);
    let hex = digest.strip_prefix("sha256:").unwrap();
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(hex), data).unwrap();
    (digest, data.len() as u64)
}

/// Returns the second layer: a file, a whiteout and an opaque directory.
pub fn second_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc/")
        .file("etc/motd", "from the image\n")
        .file("bin/.wh.vi", "")
        .dir("root/")
        .file("root/.wh..wh..opq", "")
        .file("root/profile", "export PS1='$ '\n")
        .finish()
}

/// Builds a two-layer image: the busybox root exported by unionfs (gzip),
/// then [`second_layer`] as a plain tar. `diff_ids` replaces the config's
/// diff_ids when given.
pub fn build_layout(dir: &Path, diff_ids: Option<Vec<String>>) -> Layout {
    std::fs::create_dir_all(dir).unwrap();
    let staging = dir.join("base.tar.gz");
    export(busybox(), &staging, &[], &[]);
    let base = std::fs::read(&staging).unwrap();
    std::fs::remove_file(&staging).unwrap();
    let base_diff_id = unionfs::layer::digest::of_bytes(&decompress(&base));
    let second = second_layer();
    let second_diff_id = unionfs::layer::digest::of_bytes(&second);
    let (base_digest, base_size) = put_blob(dir, &base);
    let (second_digest, second_size) = put_blob(dir, &second);

    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin:/usr/bin:/sbin", "GREETING=hello from the config"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo $GREETING; cat /etc/motd; pwd; id -u; ls -A /root; test -e /bin/vi || echo vi-removed"],
            "WorkingDir": "/srv",
            "User": "65534:65534"
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids.unwrap_or(vec![base_diff_id, second_diff_id])
        }
    });
    let (config_digest, config_size) = put_blob(dir, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": base_digest, "size": base_size},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": second_digest, "size": second_size}
        ]
    });
    let (manifest_digest, manifest_size) = put_blob(dir, manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "test"}
        }]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Layout {
        dir: dir.to_path_buf(),
        layers: vec![base_digest, second_digest],
    }
}

fn decompress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).unwrap();
    out
}

/// Runs `unionfs run --image LAYOUT --image-cache CACHE --rm CONTAINER [ARGS]`.
fn run_image(scratch: &Scratch, layout: &Path, extra: &[&str]) -> Output {
    let name = format!("eco-{}-{}", std::process::id(), rand_suffix());
    Command::new(unionfs_bin())
        .arg("run")
        .arg("--name")
        .arg(&name)
        .arg("--image")
        .arg(layout)
        .arg("--image-cache")
        .arg(scratch.dir.path().join("cache"))
        .arg("--rm")
        .args(extra)
        .output()
        .unwrap()
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed).to_string()
}

fn cached(scratch: &Scratch, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    scratch.dir.path().join("cache/sha256").join(hex)
}

#[test]
fn run_image_config_defaults() {
    let scratch = Scratch::new();
    let layout = build_layout(&scratch.dir.path().join("layout"), None);
    let container = scratch.dir.path().join("container");
    let output = run_image(&scratch, &layout.dir, &[container.to_str().unwrap()]);
    assert_success(&output, "unionfs run --image");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "hello from the config",
            "from the image",
            "/srv",
            "65534",
            "profile",
            "vi-removed"
        ],
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for digest in &layout.layers {
        assert!(
            cached(&scratch, digest).is_dir(),
            "layer {digest} not cached"
        );
    }
    assert!(!container.exists(), "--rm left the container layer");
}

#[test]
fn run_image_command_line_overrides() {
    let scratch = Scratch::new();
    let layout = build_layout(&scratch.dir.path().join("layout"), None);
    let container = scratch.dir.path().join("container");
    let output = run_image(
        &scratch,
        &layout.dir,
        &[
            "-e",
            "GREETING=from the command line",
            "-w",
            "/tmp",
            "-u",
            "0",
            container.to_str().unwrap(),
            "echo $GREETING; pwd; id -u",
        ],
    );
    assert_success(&output, "unionfs run --image with a command");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["from the command line", "/tmp", "0"]
    );
}

#[test]
fn run_image_unpacks_once() {
    let scratch = Scratch::new();
    let layout = build_layout(&scratch.dir.path().join("layout"), None);
    let container = scratch.dir.path().join("container");
    let first = run_image(
        &scratch,
        &layout.dir,
        &[container.to_str().unwrap(), "true"],
    );
    assert_success(&first, "first run");
    let inodes: Vec<u64> = layout
        .layers
        .iter()
        .map(|digest| std::fs::metadata(cached(&scratch, digest)).unwrap().ino())
        .collect();
    let second = run_image(
        &scratch,
        &layout.dir,
        &[container.to_str().unwrap(), "true"],
    );
    assert_success(&second, "second run");
    let again: Vec<u64> = layout
        .layers
        .iter()
        .map(|digest| std::fs::metadata(cached(&scratch, digest)).unwrap().ino())
        .collect();
    assert_eq!(inodes, again, "a cached layer was unpacked again");
    let entries = std::fs::read_dir(scratch.dir.path().join("cache/sha256"))
        .unwrap()
        .count();
    assert_eq!(entries, 2, "leftovers in the cache");
}

/// Asserts a run fails before starting, naming `fragment`, with nothing
/// left in the cache but the layers listed in `cached_ok`.
fn assert_run_fails(scratch: &Scratch, layout: &Path, fragment: &str) {
    let container = scratch.dir.path().join("container");
    let output = run_image(scratch, layout, &[container.to_str().unwrap(), "true"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains(fragment), "{fragment:?} not in {stderr:?}");
    let store = scratch.dir.path().join("cache/sha256");
    if let Ok(entries) = std::fs::read_dir(&store) {
        let names: Vec<_> = entries.map(|e| e.unwrap().file_name()).collect();
        assert!(
            names
                .iter()
                .all(|name| !name.to_string_lossy().starts_with('.')),
            "unfinished layers left in the cache: {names:?}"
        );
    }
}

#[test]
fn run_image_rejects_corrupt_blob() {
    let scratch = Scratch::new();
    let layout = build_layout(&scratch.dir.path().join("layout"), None);
    let hex = layout.layers[1].strip_prefix("sha256:").unwrap();
    let blob = layout.dir.join("blobs/sha256").join(hex);
    let mut data = std::fs::read(&blob).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    assert_run_fails(&scratch, &layout.dir, "the image is corrupt or was changed");
    assert!(
        !cached(&scratch, &layout.layers[1]).exists(),
        "a corrupt layer was cached"
    );
}

#[test]
fn run_image_rejects_wrong_diff_id() {
    let scratch = Scratch::new();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let right_base = {
        let probe = build_layout(&scratch.dir.path().join("probe"), None);
        let hex = probe.layers[0].strip_prefix("sha256:").unwrap();
        let base = std::fs::read(probe.dir.join("blobs/sha256").join(hex)).unwrap();
        unionfs::layer::digest::of_bytes(&decompress(&base))
    };
    let layout = build_layout(
        &scratch.dir.path().join("layout"),
        Some(vec![right_base, wrong]),
    );
    assert_run_fails(&scratch, &layout.dir, "diff_id");
    assert!(
        !cached(&scratch, &layout.layers[1]).exists(),
        "a layer with a wrong diff_id was cached"
    );
}

#[test]
fn run_image_rejects_bad_layouts() {
    let scratch = Scratch::new();
    let empty = scratch.path("empty");
    assert_run_fails(&scratch, &empty, "is not an OCI image layout");

    let layout = build_layout(&scratch.dir.path().join("layout"), None);
    let index = std::fs::read_to_string(layout.dir.join("index.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&index).unwrap();
    value["manifests"][0]["digest"] = json!("sha256:../../../../etc/passwd");
    std::fs::write(layout.dir.join("index.json"), value.to_string()).unwrap();
    assert_run_fails(&scratch, &layout.dir, "invalid digest");

    value["manifests"] = json!([]);
    std::fs::write(layout.dir.join("index.json"), value.to_string()).unwrap();
    assert_run_fails(&scratch, &layout.dir, "lists no manifests");

    std::fs::write(layout.dir.join("index.json"), "{not json").unwrap();
    assert_run_fails(&scratch, &layout.dir, "invalid");
}
