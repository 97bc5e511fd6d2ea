//! Snapshots of a directory tree, for comparing a unionfs mount with kernel
//! overlayfs: names, types, modes, owners, sizes, link counts, content
//! hashes, link targets, xattrs, timestamps, and which names share an inode.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A tree: relative path to entry.
pub type Tree = BTreeMap<PathBuf, Entry>;

/// A timestamp: exact when it predates the test, else only "set by the test".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stamp {
    Before(SystemTime),
    DuringTest,
}

/// One name of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// d, f, l, c, b, p, s; in a layer, w for an overlay whiteout.
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub nlink: u64,
    pub content: Option<u64>,
    /// True for a regular file with unallocated ranges.
    pub sparse: bool,
    pub target: Option<OsString>,
    pub rdev: Option<u64>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub mtime: Stamp,
    /// The first path (in sorted order) with the same inode number.
    pub same_inode_as: PathBuf,
}

/// Snapshots a merged view.
pub fn tree(root: &Path, started: SystemTime) -> Tree {
    walk(root, started, false)
}

/// Snapshots a layer directory: overlay whiteouts show as kind `w`, and the
/// opaque marker xattr is kept.
pub fn layer(root: &Path, started: SystemTime) -> Tree {
    walk(root, started, true)
}

fn kind_of(meta: &std::fs::Metadata, in_layer: bool) -> char {
    let kind = meta.file_type();
    match () {
        _ if kind.is_dir() => 'd',
        _ if kind.is_file() => 'f',
        _ if kind.is_symlink() => 'l',
        _ if kind.is_char_device() && in_layer && meta.rdev() == 0 => 'w',
        _ if kind.is_char_device() => 'c',
        _ if kind.is_block_device() => 'b',
        _ if kind.is_fifo() => 'p',
        _ => 's',
    }
}

fn stamp(secs: i64, nsecs: i64, started: SystemTime) -> Stamp {
    let at = if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    if at < started {
        Stamp::Before(at)
    } else {
        Stamp::DuringTest
    }
}

fn wanted_xattr(name: &OsString, in_layer: bool) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("user.") && !name.starts_with("user.overlay.")
        || name == "security.capability"
        || (in_layer && name == "trusted.overlay.opaque")
}

fn xattrs(path: &Path, in_layer: bool) -> BTreeMap<OsString, Vec<u8>> {
    let Ok(names) = xattr::list(path) else {
        return BTreeMap::new();
    };
    names
        .filter(|name| wanted_xattr(name, in_layer))
        .filter_map(|name| {
            xattr::get(path, &name)
                .ok()
                .flatten()
                .map(|value| (name, value))
        })
        .collect()
}

/// Hashes a file's data without touching its access time, so a snapshot
/// leaves the tree as it found it.
fn content_hash(path: &Path) -> u64 {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut data = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
        .and_then(|mut file| file.read_to_end(&mut data))
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut hasher);
    hasher.finish()
}

fn walk(root: &Path, started: SystemTime, in_layer: bool) -> Tree {
    let mut tree = Tree::new();
    let mut first_with_ino: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.unwrap_or_else(|err| panic!("cannot walk {}: {err}", root.display()));
        let path = item.path();
        let relative = path.strip_prefix(root).unwrap().to_path_buf();
        let meta = std::fs::symlink_metadata(path).unwrap();
        let kind = kind_of(&meta, in_layer);
        // Kernel overlayfs hard-links its whiteouts to one shared inode; how
        // many whiteouts share an inode is a layout detail, not a result.
        let same_inode_as = if kind == 'w' {
            relative.clone()
        } else {
            first_with_ino
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| relative.clone())
                .clone()
        };
        let entry = Entry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: matches!(kind, 'f' | 'l').then_some(meta.size()),
            nlink: if kind == 'w' { 1 } else { meta.nlink() },
            content: (kind == 'f').then(|| content_hash(path)),
            sparse: kind == 'f' && meta.blocks() * 512 < meta.size(),
            target: (kind == 'l').then(|| std::fs::read_link(path).unwrap().into_os_string()),
            rdev: matches!(kind, 'c' | 'b').then_some(meta.rdev()),
            xattrs: if kind == 'l' {
                BTreeMap::new()
            } else {
                xattrs(path, in_layer)
            },
            mtime: if kind == 'd' && relative.as_os_str().is_empty() {
                Stamp::DuringTest
            } else {
                stamp(meta.mtime(), meta.mtime_nsec(), started)
            },
            same_inode_as,
        };
        tree.insert(relative, entry);
    }
    tree
}

/// Asserts two trees are equal, printing each difference on its own line.
pub fn assert_same(got: &Tree, expected: &Tree, what: &str) {
    let mut differences = Vec::new();
    for (path, expected_entry) in expected {
        match got.get(path) {
            None => differences.push(format!(
                "missing {}: expected {expected_entry:?}",
                path.display()
            )),
            Some(entry) if entry != expected_entry => differences.push(format!(
                "differs {}:\n    unionfs: {entry:?}\n    kernel:  {expected_entry:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for (path, entry) in got {
        if !expected.contains_key(path) {
            differences.push(format!("extra {}: {entry:?}", path.display()));
        }
    }
    assert!(
        differences.is_empty(),
        "{what} differs from kernel overlayfs:\n{}",
        differences.join("\n")
    );
}
