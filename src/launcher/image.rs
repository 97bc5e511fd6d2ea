//! `unionfs run --image DIR`: running on an OCI image layout.
//!
//! The layout (OCI image spec v1.1, `image-layout.md`) contains `oci-layout`,
//! `index.json` and content-addressed blobs under `blobs/sha256/`. The
//! index names a manifest (through nested indexes, if any), the manifest
//! names the config and the layers, base layer first.
//!
//! Each layer is unpacked once into a cache directory named after its
//! blob digest, `CACHE/sha256/HEX`. Before unpacking, the blob's size and
//! SHA-256 must match its descriptor. While unpacking, the uncompressed
//! tar's SHA-256 must match the config's `rootfs.diff_ids` entry. A layer
//! that fails either check is removed, and the run stops. A cached layer
//! appears in one rename, so a directory there is always complete.
//!
//! The layers go under the layers given on the command line, the last
//! manifest layer topmost. The config's `Entrypoint`, `Cmd`, `Env`,
//! `WorkingDir` and `User` become defaults that the command line
//! overrides, as `docker run` treats them.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::args::RunArgs;
use crate::layer::digest::{self, HashingReader};
use crate::layer::{Compression, ImportOptions, import};

/// Default directory for unpacked image layers.
pub const DEFAULT_CACHE: &str = "/var/lib/unionfs/layers";

/// Largest manifest, index or config blob read, in bytes. Real ones are a
/// few kilobytes; the bound keeps a hostile layout from exhausting memory.
const MAX_JSON_BLOB: u64 = 4 << 20;

/// Maximum depth of nested image indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

const MANIFEST_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Layer media types accepted; the compression is detected from the
/// blob's first bytes, so gzip and plain tar both work under each.
const LAYER_MEDIA_TYPES: [&str; 8] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
];

/// The `oci-layout` file.
#[derive(Debug, Deserialize)]
struct LayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(Clone, Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ContainerConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The run defaults of an image config.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// An image resolved to unpacked layers.
#[derive(Debug)]
pub struct Image {
    /// Unpacked layer directories, topmost first.
    pub layers: Vec<PathBuf>,
    pub config: ContainerConfig,
}

/// Resolves `--image` in `args`, if given: unpacks the layers, puts them
/// under `args.layers` and fills in the defaults from the image config.
pub fn apply(mut args: RunArgs) -> Result<RunArgs, String> {
    let Some(dir) = args.image.clone() else {
        return Ok(args);
    };
    let cache = args
        .image_cache
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
    let image = open(&dir, &cache)?;
    let lowers: Vec<String> = image.layers.iter().map(|path| escape_layer(path)).collect();
    args.layers = format!("{}:{}", args.layers, lowers.join(":"));
    apply_config(&mut args, &image.config)?;
    Ok(args)
}

/// Applies the config's defaults where the command line left them unset.
pub fn apply_config(args: &mut RunArgs, config: &ContainerConfig) -> Result<(), String> {
    let entrypoint = config.entrypoint.clone().unwrap_or_default();
    let arguments: Vec<OsString> = if args.command.is_empty() {
        config
            .cmd
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(OsString::from)
            .collect()
    } else {
        std::mem::take(&mut args.command)
    };
    args.command = entrypoint
        .into_iter()
        .map(OsString::from)
        .chain(arguments)
        .collect();
    if args.command.is_empty() {
        return Err(
            "the image config sets no Entrypoint or Cmd: give COMMAND after the layers".to_string(),
        );
    }

    // The image's variables go first, so -e on the command line wins.
    let mut env = Vec::new();
    for entry in config.env.iter().flatten() {
        if !entry.contains('=') || entry.starts_with('=') {
            return Err(format!(
                "invalid Env entry {entry:?} in the image config: expected KEY=VALUE"
            ));
        }
        env.push(entry.clone());
    }
    env.append(&mut args.env);
    args.env = env;

    if args.workdir.is_none() {
        if let Some(dir) = config.working_dir.as_ref().filter(|dir| !dir.is_empty()) {
            args.workdir = Some(PathBuf::from(dir));
        }
    }
    if args.user.is_none() {
        if let Some(user) = config.user.as_ref().filter(|user| !user.is_empty()) {
            args.user = Some(user.clone());
        }
    }
    Ok(())
}

/// Escapes a path for a LAYERS list, whose separators are `:` and `=`.
fn escape_layer(path: &Path) -> String {
    let mut escaped = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | '=' | ',') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Opens the image layout `dir` and unpacks its layers into `cache`.
pub fn open(dir: &Path, cache: &Path) -> Result<Image, String> {
    let layout = LayoutDir::open(dir)?;
    let manifest = layout.manifest()?;
    let config: ImageConfig = layout.read_json(&manifest.config, "config")?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(format!(
            "invalid image {}: the manifest lists {} layers but the config lists {} diff_ids",
            dir.display(),
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        ));
    }
    let mut layers = Vec::new();
    for (descriptor, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        layers.push(layout.unpack_layer(descriptor, diff_id, cache)?);
    }
    layers.reverse();
    Ok(Image {
        layers,
        config: config.config.unwrap_or_default(),
    })
}

/// An image layout directory.
struct LayoutDir {
    root: PathBuf,
}

impl LayoutDir {
    fn open(dir: &Path) -> Result<LayoutDir, String> {
        let marker = dir.join("oci-layout");
        let text = std::fs::read_to_string(&marker).map_err(|err| {
            format!(
                "{} is not an OCI image layout: cannot read {}: {err}",
                dir.display(),
                marker.display()
            )
        })?;
        let layout: LayoutFile = serde_json::from_str(&text)
            .map_err(|err| format!("invalid {}: {err}", marker.display()))?;
        if !layout.version.starts_with("1.") {
            return Err(format!(
                "unsupported imageLayoutVersion {:?} in {}: expected 1.x",
                layout.version,
                marker.display()
            ));
        }
        Ok(LayoutDir {
            root: dir.to_path_buf(),
        })
    }

    /// Finds the image manifest through `index.json` and nested indexes.
    fn manifest(&self) -> Result<Manifest, String> {
        let path = self.root.join("index.json");
        let text =
            std::fs::read(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let mut index: Index = serde_json::from_slice(&text)
            .map_err(|err| format!("invalid {}: {err}", path.display()))?;
        for _ in 0..MAX_INDEX_DEPTH {
            let descriptor = choose(&index.manifests)?;
            if INDEX_MEDIA_TYPES.contains(&descriptor.media_type.as_str()) {
                index = self.read_json(&descriptor, "image index")?;
                continue;
            }
            if !MANIFEST_MEDIA_TYPES.contains(&descriptor.media_type.as_str()) {
                return Err(format!(
                    "unsupported manifest media type {:?} for {}",
                    descriptor.media_type, descriptor.digest
                ));
            }
            return self.read_json(&descriptor, "manifest");
        }
        Err(format!(
            "image indexes nest more than {MAX_INDEX_DEPTH} deep in {}",
            self.root.display()
        ))
    }

    /// Returns the path of the blob `descriptor` names.
    fn blob_path(&self, descriptor: &Descriptor) -> Result<PathBuf, String> {
        let hex = digest::sha256_hex(&descriptor.digest)?;
        Ok(self.root.join("blobs").join("sha256").join(hex))
    }

    /// Reads a JSON blob after checking its size and digest.
    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        descriptor: &Descriptor,
        what: &str,
    ) -> Result<T, String> {
        if descriptor.size > MAX_JSON_BLOB {
            return Err(format!(
                "the {what} {} is {} bytes, more than the {MAX_JSON_BLOB} read",
                descriptor.digest, descriptor.size
            ));
        }
        let path = self.blob_path(descriptor)?;
        let data = std::fs::read(&path)
            .map_err(|err| format!("cannot read the {what} {}: {err}", path.display()))?;
        check_blob(
            descriptor,
            data.len() as u64,
            &digest::of_bytes(&data),
            what,
        )?;
        serde_json::from_slice(&data)
            .map_err(|err| format!("invalid {what} {}: {err}", descriptor.digest))
    }

    /// Returns the cached directory of a layer, unpacking it first when
    /// it is not cached.
    fn unpack_layer(
        &self,
        descriptor: &Descriptor,
        diff_id: &str,
        cache: &Path,
    ) -> Result<PathBuf, String> {
        if !LAYER_MEDIA_TYPES.contains(&descriptor.media_type.as_str()) {
            return Err(format!(
                "unsupported layer media type {:?} for {}",
                descriptor.media_type, descriptor.digest
            ));
        }
        let hex = digest::sha256_hex(&descriptor.digest)?;
        digest::sha256_hex(diff_id)
            .map_err(|err| format!("invalid diff_id in the image config: {err}"))?;
        let store = cache.join("sha256");
        let target = store.join(hex);
        if target.is_dir() {
            return Ok(target);
        }
        std::fs::create_dir_all(&store)
            .map_err(|err| format!("cannot create the layer cache {}: {err}", store.display()))?;

        let blob = self.blob_path(descriptor)?;
        let (actual, size) = hash_file(&blob)?;
        check_blob(descriptor, size, &actual, "layer")?;

        let staging = store.join(format!(".{hex}.{}", std::process::id()));
        let unpacked = unpack_verified(&blob, &staging, diff_id);
        if let Err(err) = unpacked {
            if staging.exists() {
                if let Err(remove_err) = std::fs::remove_dir_all(&staging) {
                    log::warn!("cannot remove {}: {remove_err}", staging.display());
                }
            }
            return Err(format!("cannot unpack layer {}: {err}", descriptor.digest));
        }
        match std::fs::rename(&staging, &target) {
            Ok(()) => Ok(target),
            // Another run cached the same layer first: use that one.
            Err(_) if target.is_dir() => {
                if let Err(err) = std::fs::remove_dir_all(&staging) {
                    log::warn!("cannot remove {}: {err}", staging.display());
                }
                Ok(target)
            }
            Err(err) => Err(format!(
                "cannot move the unpacked layer to {}: {err}",
                target.display()
            )),
        }
    }
}

/// Picks the manifest to run: the only one, or the one for this machine's
/// platform.
fn choose(manifests: &[Descriptor]) -> Result<Descriptor, String> {
    if let [only] = manifests {
        return Ok(only.clone());
    }
    if manifests.is_empty() {
        return Err("the image index lists no manifests".to_string());
    }
    let arch = oci_architecture();
    let matching: Vec<&Descriptor> = manifests
        .iter()
        .filter(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        _ => {
            let names: Vec<String> = manifests
                .iter()
                .map(|m| {
                    m.annotations
                        .get("org.opencontainers.image.ref.name")
                        .cloned()
                        .unwrap_or_else(|| m.digest.clone())
                })
                .collect();
            Err(format!(
                "the image index lists {} manifests and {} match linux/{arch}: {}; keep one manifest in index.json",
                manifests.len(),
                matching.len(),
                names.join(", ")
            ))
        }
    }
}

/// Returns this machine's architecture as OCI platforms name it.
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn check_blob(descriptor: &Descriptor, size: u64, actual: &str, what: &str) -> Result<(), String> {
    if size != descriptor.size {
        return Err(format!(
            "the {what} blob {} is {size} bytes but its descriptor says {}: the image is corrupt",
            descriptor.digest, descriptor.size
        ));
    }
    if actual != descriptor.digest {
        return Err(format!(
            "the {what} blob {} has digest {actual}: the image is corrupt or was changed",
            descriptor.digest
        ));
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<(String, u64), String> {
    let file = File::open(path)
        .map_err(|err| format!("cannot read the blob {}: {err}", path.display()))?;
    HashingReader::new(BufReader::new(file))
        .finish()
        .map_err(|err| format!("cannot read the blob {}: {err}", path.display()))
}

/// Unpacks layer blob `blob` into the new directory `dir` and checks the
/// uncompressed tar's digest against `diff_id`.
fn unpack_verified(blob: &Path, dir: &Path, diff_id: &str) -> Result<(), String> {
    let mut file =
        File::open(blob).map_err(|err| format!("cannot read {}: {err}", blob.display()))?;
    let mut head = [0u8; 4];
    let read = file
        .read(&mut head)
        .map_err(|err| format!("cannot read {}: {err}", blob.display()))?;
    let reader = BufReader::new(std::io::Cursor::new(head[..read].to_vec()).chain(file));
    let compression = Compression::detect(&head[..read]);
    let stream: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            return Err(
                "zstd-compressed layers are not supported; recompress the image with gzip"
                    .to_string(),
            );
        }
    };
    let mut tar_stream = HashingReader::new(stream);
    import::import_into(&mut tar_stream, dir, ImportOptions::default())
        .map_err(|err| err.to_string())?;
    let (actual, _) = tar_stream
        .finish()
        .map_err(|err| format!("cannot read {}: {err}", blob.display()))?;
    if actual != diff_id {
        return Err(format!(
            "its uncompressed digest is {actual} but the config's diff_id is {diff_id}: the image is corrupt"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            user: Some("1000:1000".into()),
            env: Some(vec!["PATH=/opt/bin:/bin".into(), "A=image".into()]),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo default".into()]),
            working_dir: Some("/srv".into()),
        }
    }

    #[test]
    fn config_defaults_apply() {
        let mut args = RunArgs::default();
        apply_config(&mut args, &config()).unwrap();
        assert_eq!(args.command, ["/bin/sh", "-c", "echo default"]);
        assert_eq!(args.env, ["PATH=/opt/bin:/bin", "A=image"]);
        assert_eq!(args.workdir, Some(PathBuf::from("/srv")));
        assert_eq!(args.user.as_deref(), Some("1000:1000"));
    }

    #[test]
    fn command_line_overrides_config() {
        let mut args = RunArgs {
            command: vec!["echo mine".into()],
            env: vec!["A=cli".into()],
            workdir: Some("/tmp".into()),
            user: Some("0".into()),
            ..RunArgs::default()
        };
        apply_config(&mut args, &config()).unwrap();
        // Arguments replace Cmd but follow the Entrypoint, as in docker run.
        assert_eq!(args.command, ["/bin/sh", "-c", "echo mine"]);
        assert_eq!(args.env, ["PATH=/opt/bin:/bin", "A=image", "A=cli"]);
        assert_eq!(args.workdir, Some(PathBuf::from("/tmp")));
        assert_eq!(args.user.as_deref(), Some("0"));
    }

    #[test]
    fn config_without_command_rejected() {
        let mut args = RunArgs::default();
        let err = apply_config(&mut args, &ContainerConfig::default()).unwrap_err();
        assert!(err.contains("no Entrypoint or Cmd"), "{err}");
    }

    #[test]
    fn config_bad_env_rejected() {
        let mut args = RunArgs {
            command: vec!["true".into()],
            ..RunArgs::default()
        };
        let config = ContainerConfig {
            env: Some(vec!["NOVALUE".into()]),
            ..ContainerConfig::default()
        };
        assert!(
            apply_config(&mut args, &config)
                .unwrap_err()
                .contains("NOVALUE")
        );
    }

    #[test]
    fn layer_paths_escaped() {
        assert_eq!(
            escape_layer(Path::new("/c/a:b=c\\d,e")),
            "/c/a\\:b\\=c\\\\d\\,e"
        );
    }
}
