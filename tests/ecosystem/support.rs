// Shared helpers: each test file uses a different subset of them.
#![allow(dead_code)]

//! Layer tars built entry by entry, including entries that `tar::Builder`
//! refuses to write (`..`, absolute names), and the `unionfs layer`
//! command.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tar::{EntryType, Header};

pub use crate::fixture::unionfs_bin;

/// The modification time given to entries, 2021-01-01T00:00:00Z.
pub const ENTRY_TIME: u64 = 1_609_459_200;

/// A layer tar under construction.
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry with `name` written into the header as raw bytes,
    /// so names the builder would reject can be tested.
    pub fn raw(
        &mut self,
        name: &str,
        kind: EntryType,
        mode: u32,
        data: &[u8],
        link: Option<&str>,
    ) -> &mut Self {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(ENTRY_TIME);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, EntryType::Directory, 0o755, b"", None)
    }

    pub fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.raw(name, EntryType::Regular, 0o644, data.as_bytes(), None)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Symlink, 0o777, b"", Some(target))
    }

    pub fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Link, 0o644, b"", Some(target))
    }

    /// Appends a file with owner, mode, a nanosecond mtime and xattrs in
    /// PAX records.
    pub fn file_with(
        &mut self,
        name: &str,
        data: &str,
        uid: u64,
        gid: u64,
        mode: u32,
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut records: Vec<(String, Vec<u8>)> = vec![(
            "mtime".into(),
            format!("{ENTRY_TIME}.123456789").into_bytes(),
        )];
        for (attr, value) in xattrs {
            records.push((format!("SCHILY.xattr.{attr}"), value.to_vec()));
        }
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(ENTRY_TIME);
        header.set_size(data.len() as u64);
        self.builder
            .append_data(&mut header, name, data.as_bytes())
            .unwrap();
        self
    }

    pub fn device(&mut self, name: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o600);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(ENTRY_TIME);
        header.set_size(0);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.builder
            .append_data(&mut header, name, &b""[..])
            .unwrap();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }

    /// Writes the tar to `path`.
    pub fn write(&mut self, path: &Path) -> PathBuf {
        std::fs::write(path, self.finish()).unwrap();
        path.to_path_buf()
    }
}

/// Compresses `data` with gzip.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Runs `unionfs layer ARGS`.
pub fn layer(args: &[&Path]) -> Output {
    Command::new(unionfs_bin())
        .arg("layer")
        .args(args)
        .output()
        .unwrap()
}

/// Runs `unionfs layer import TAR DIR [EXTRA]` and asserts success.
pub fn import(tar: &Path, dir: &Path, extra: &[&str]) {
    let output = Command::new(unionfs_bin())
        .args(["layer", "import"])
        .arg(tar)
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    assert_success(&output, "unionfs layer import");
}

/// Runs `unionfs layer export DIR TAR [EXTRA]`; returns the digest line.
pub fn export(dir: &Path, tar: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(unionfs_bin());
    command
        .args(["layer", "export"])
        .arg(dir)
        .arg(tar)
        .args(extra);
    command.env_remove("SOURCE_DATE_EPOCH");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert_success(&output, "unionfs layer export");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("digest: "))
        .expect("digest line")
        .to_string()
}

pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Returns (name, type, mtime) of each entry of an uncompressed tar.
pub fn tar_entries(data: &[u8]) -> Vec<(String, EntryType, u64)> {
    let mut archive = tar::Archive::new(data);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            (
                name,
                entry.header().entry_type(),
                entry.header().mtime().unwrap(),
            )
        })
        .collect()
}

/// Returns the busybox root filesystem, building it on first use.
pub fn busybox() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rootfs.sh");
        let output = Command::new(script).arg("busybox").output().unwrap();
        assert_success(&output, "scripts/rootfs.sh busybox");
        let stdout = String::from_utf8_lossy(&output.stdout);
        PathBuf::from(stdout.lines().last().unwrap().trim())
    })
}

/// Returns true when `path` is a 0/0 character device (an overlay whiteout).
pub fn is_whiteout(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path)
        .map(|meta| meta.file_type().is_char_device() && meta.rdev() == 0)
        .unwrap_or(false)
}

/// Returns the value of xattr `name` of `path`, without following a symlink.
pub fn xattr_of(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).unwrap()
}

/// Writes `data` to a new file and returns its path.
pub fn write_file(path: &Path, data: &[u8]) -> PathBuf {
    let mut file = File::create(path).unwrap();
    file.write_all(data).unwrap();
    path.to_path_buf()
}
