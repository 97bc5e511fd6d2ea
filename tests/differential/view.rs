//! Snapshots of a merged view or a layer directory, taken without panicking
//! so that a broken mount shows up as a difference and not as a harness
//! crash: names, types, modes, owners, sizes, link counts, content hashes,
//! sparse-ness, link targets, xattrs, mtimes, and which names share an inode.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sys;

/// A tree: relative path to entry, in sorted order.
pub type Tree = BTreeMap<PathBuf, Entry>;

/// An mtime: exact when it predates the run, else only "set during the run",
/// because the two filesystems apply the same change a few microseconds
/// apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stamp {
    Before(i64, i64),
    During,
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
    /// Hash of a regular file's data, or the errno reading it failed with.
    pub content: Option<Result<u64, String>>,
    /// True for a regular file with fewer blocks allocated than its size.
    /// Compared one way only: see `matches`.
    pub sparse: bool,
    pub target: Option<OsString>,
    pub rdev: Option<u64>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    pub mtime: Stamp,
    /// The first path (in sorted order) with the same st_ino; st_ino values
    /// themselves differ between the two filesystems.
    pub same_inode_as: PathBuf,
    /// The errno that listing this directory or reading its metadata failed
    /// with.
    pub error: Option<String>,
}

/// Snapshots a merged view.
pub fn tree(root: &Path, started: SystemTime) -> Tree {
    walk(root, started, false)
}

/// Snapshots a layer: overlay whiteouts show as kind `w`, and the
/// `trusted.overlay.opaque` marker is kept.
pub fn layer(root: &Path, started: SystemTime) -> Tree {
    walk(root, started, true)
}

fn kind_of(meta: &std::fs::Metadata, in_layer: bool) -> char {
    let kind = meta.file_type();
    if kind.is_dir() {
        'd'
    } else if kind.is_file() {
        'f'
    } else if kind.is_symlink() {
        'l'
    } else if kind.is_char_device() && in_layer && meta.rdev() == 0 {
        'w'
    } else if kind.is_char_device() {
        'c'
    } else if kind.is_block_device() {
        'b'
    } else if kind.is_fifo() {
        'p'
    } else {
        's'
    }
}

fn stamp(seconds: i64, nanoseconds: i64, started: SystemTime) -> Stamp {
    let at = if seconds >= 0 {
        UNIX_EPOCH + Duration::new(seconds as u64, nanoseconds as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    };
    if at < started {
        Stamp::Before(seconds, nanoseconds)
    } else {
        Stamp::During
    }
}

/// Returns whether a snapshot records xattr `name`: user and trusted
/// xattrs and file capabilities, but no overlay metadata, except the opaque
/// marker in a layer.
fn kept_xattr(name: &[u8], in_layer: bool) -> bool {
    let overlay = name.starts_with(b"user.overlay.") || name.starts_with(b"trusted.overlay.");
    ((name.starts_with(b"user.") || name.starts_with(b"trusted.")) && !overlay)
        || name == b"security.capability"
        || (in_layer && name == b"trusted.overlay.opaque")
}

fn xattrs(path: &Path, in_layer: bool) -> BTreeMap<OsString, Vec<u8>> {
    let Ok(names) = sys::llistxattr(path) else {
        return BTreeMap::new();
    };
    names
        .into_iter()
        .filter(|name| kept_xattr(name, in_layer))
        .map(|name| {
            let value = sys::lgetxattr(path, &name)
                .unwrap_or_else(|errno| format!("<{}>", sys::errno_name(errno)).into_bytes());
            (sys::as_os_str(&name).to_os_string(), value)
        })
        .collect()
}

fn content_hash(path: &Path) -> Result<u64, String> {
    let data = std::fs::read(path).map_err(|err| err.to_string())?;
    let mut hasher = DefaultHasher::new();
    data.hash(&mut hasher);
    Ok(hasher.finish())
}

fn error_name(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => sys::errno_name(code),
        None => err.to_string(),
    }
}

fn walk(root: &Path, started: SystemTime, in_layer: bool) -> Tree {
    let mut tree = Tree::new();
    let mut first_with_ino: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let path = root.join(&relative);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) => {
                tree.insert(relative, failed_entry(error_name(&err)));
                continue;
            }
        };
        let mut entry = describe(&path, &relative, &meta, started, in_layer);
        // Kernel overlayfs hard-links its whiteouts to one shared inode; how
        // many whiteouts share an inode is a layout detail, not a result.
        entry.same_inode_as = if entry.kind == 'w' {
            relative.clone()
        } else {
            first_with_ino
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| relative.clone())
                .clone()
        };
        if entry.kind == 'd' {
            match std::fs::read_dir(&path) {
                Ok(children) => {
                    for child in children {
                        match child {
                            Ok(child) => pending.push(relative.join(child.file_name())),
                            Err(err) => entry.error = Some(error_name(&err)),
                        }
                    }
                }
                Err(err) => entry.error = Some(error_name(&err)),
            }
        }
        tree.insert(relative, entry);
    }
    // Inode sharing must not depend on the walk order: recompute it in
    // sorted order.
    let mut first_in_order: HashMap<PathBuf, PathBuf> = HashMap::new();
    for (path, entry) in tree.iter_mut() {
        let first = first_in_order
            .entry(entry.same_inode_as.clone())
            .or_insert_with(|| path.clone());
        entry.same_inode_as = first.clone();
    }
    tree
}

fn failed_entry(error: String) -> Entry {
    Entry {
        kind: '?',
        mode: 0,
        uid: 0,
        gid: 0,
        size: None,
        nlink: 0,
        content: None,
        sparse: false,
        target: None,
        rdev: None,
        xattrs: BTreeMap::new(),
        mtime: Stamp::During,
        same_inode_as: PathBuf::new(),
        error: Some(error),
    }
}

fn describe(
    path: &Path,
    relative: &Path,
    meta: &std::fs::Metadata,
    started: SystemTime,
    in_layer: bool,
) -> Entry {
    let kind = kind_of(meta, in_layer);
    Entry {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: matches!(kind, 'f' | 'l').then_some(meta.size()),
        nlink: if kind == 'w' { 1 } else { meta.nlink() },
        content: (kind == 'f').then(|| content_hash(path)),
        sparse: kind == 'f' && meta.blocks() * 512 < meta.size(),
        target: (kind == 'l').then(|| {
            sys::readlink(path)
                .map(|target| sys::as_os_str(&target).to_os_string())
                .unwrap_or_else(|errno| format!("<{}>", sys::errno_name(errno)).into())
        }),
        rdev: matches!(kind, 'c' | 'b').then_some(meta.rdev()),
        xattrs: if kind == 'l' {
            BTreeMap::new()
        } else {
            xattrs(path, in_layer)
        },
        // The root's mtime changes with every entry added to it. A
        // whiteout's mtime is a layout detail: kernel overlayfs renaming
        // onto a whiteout exchanges the two, so the old whiteout, with its
        // old mtime, takes the source's place.
        mtime: if (kind == 'd' && relative.as_os_str().is_empty()) || kind == 'w' {
            Stamp::During
        } else {
            stamp(meta.mtime(), meta.mtime_nsec(), started)
        },
        same_inode_as: PathBuf::new(),
        error: None,
    }
}

/// Returns `tree` with every file's sparse-ness cleared, for comparisons
/// taken before writeback.
pub fn without_sparseness(mut tree: Tree) -> Tree {
    for entry in tree.values_mut() {
        entry.sparse = false;
    }
    tree
}

/// Returns whether unionfs's `union` entry shows what kernel overlayfs's
/// `kernel` entry does. All fields must be equal, except that a file may
/// be sparse on unionfs only, because unionfs keeps every hole on copy-up.
/// Kernel overlayfs copies data in 1 MiB chunks and skips a hole only where
/// a chunk starts (`ovl_copy_up_file` in fs/overlayfs/copy_up.c), so a file
/// under 1 MiB with data at offset 0 loses its holes there. A hole that the
/// kernel keeps must be kept by unionfs too.
pub fn matches(union: &Entry, kernel: &Entry) -> bool {
    let sparse_ok = union.sparse || !kernel.sparse;
    sparse_ok
        && Entry {
            sparse: kernel.sparse,
            ..union.clone()
        } == *kernel
}

/// Lists the differences between the unionfs tree `union` and the kernel
/// overlayfs tree `kernel`, one line each; empty when they are equal.
pub fn differences(union: &Tree, kernel: &Tree) -> Vec<String> {
    let mut found = Vec::new();
    for (path, expected) in kernel {
        match union.get(path) {
            None => found.push(format!(
                "missing /{}: kernel has {expected:?}",
                path.display()
            )),
            Some(entry) if !matches(entry, expected) => found.push(format!(
                "differs /{}:\n      unionfs: {entry:?}\n      kernel:  {expected:?}",
                path.display()
            )),
            Some(_) => {}
        }
    }
    for (path, entry) in union {
        if !kernel.contains_key(path) {
            found.push(format!("extra /{}: unionfs has {entry:?}", path.display()));
        }
    }
    found
}

/// Names the field that differs first between two entries, for grouping
/// failures by cause while minimizing.
pub fn differing_field(union: &Entry, kernel: &Entry) -> &'static str {
    if union.kind != kernel.kind {
        "kind"
    } else if union.error != kernel.error {
        "error"
    } else if union.mode != kernel.mode {
        "mode"
    } else if (union.uid, union.gid) != (kernel.uid, kernel.gid) {
        "owner"
    } else if union.size != kernel.size {
        "size"
    } else if union.nlink != kernel.nlink {
        "nlink"
    } else if union.content != kernel.content {
        "content"
    } else if union.sparse != kernel.sparse {
        "sparse"
    } else if union.target != kernel.target {
        "target"
    } else if union.rdev != kernel.rdev {
        "rdev"
    } else if union.xattrs != kernel.xattrs {
        "xattrs"
    } else if union.mtime != kernel.mtime {
        "mtime"
    } else {
        "same_inode_as"
    }
}

/// Returns a short summary of how two trees differ: which fields of which
/// kinds, without paths, so a minimized case can keep the same cause under
/// other names.
pub fn difference_kinds(union: &Tree, kernel: &Tree) -> Vec<String> {
    let mut kinds = Vec::new();
    for (path, expected) in kernel {
        match union.get(path) {
            None => kinds.push(format!("missing {}", expected.kind)),
            Some(entry) if !matches(entry, expected) => kinds.push(format!(
                "{} of {}",
                differing_field(entry, expected),
                expected.kind
            )),
            Some(_) => {}
        }
    }
    for entry in union
        .iter()
        .filter(|(path, _)| !kernel.contains_key(*path))
        .map(|(_, entry)| entry)
    {
        kinds.push(format!("extra {}", entry.kind));
    }
    kinds.sort();
    kinds.dedup();
    kinds
}
