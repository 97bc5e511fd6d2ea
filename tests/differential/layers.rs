//! Layer stacks: a description of each layer's entries, a seeded generator
//! of such descriptions, and the code that builds a description on disk in
//! overlay format or in AUFS `.wh.` format.
//!
//! A description is text, one entry a line, so that a failure prints a
//! stack that a regression test can paste:
//!
//! ```text
//! dir PATH MODE UID:GID [user.NAME=VALUE ...]
//! file PATH MODE UID:GID SIZE SEED EXTENTS [user.NAME=VALUE ...]
//! symlink PATH TARGET
//! link PATH EXISTING
//! fifo PATH MODE UID:GID
//! whiteout PATH
//! opaque PATH
//! ```
//!
//! EXTENTS is `full` or a comma-separated list of `OFFSET+LENGTH` ranges
//! holding data; the rest of the file up to SIZE is a hole.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::seq::SliceRandom;

use crate::sys;

/// Names drawn by the generators. A small pool makes layers collide and
/// operations hit existing names. No name starts with `.wh.`: unionfs
/// reserves those names (README, "Layer formats") and kernel overlayfs does
/// not.
pub const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "dir", "sub", "x", "y"];

/// The mtime of layer entries, plus a per-path offset: old enough that the
/// snapshot compares it exactly.
pub const LAYER_TIME: i64 = 1_577_836_800; // 2020-01-01T00:00:00Z

pub const MODES_FILE: &[u32] = &[0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755, 0o640];
pub const MODES_DIR: &[u32] = &[0o755, 0o700, 0o555, 0o1777, 0o2775];
pub const OWNERS: &[(u32, u32)] = &[(0, 0), (1000, 1000), (65534, 65534), (1000, 0)];

/// How whiteouts and opaque directories are written in a lower layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A 0/0 character device; `trusted.overlay.opaque=y`.
    Overlay,
    /// A `.wh.NAME` file; a `.wh..wh..opq` file inside the directory.
    Aufs,
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Dir {
        path: String,
        mode: u32,
        owner: (u32, u32),
        xattrs: Vec<(String, String)>,
    },
    File {
        path: String,
        mode: u32,
        owner: (u32, u32),
        size: u64,
        seed: u64,
        /// Ranges holding data; `None` for the whole file.
        extents: Option<Vec<(u64, u64)>>,
        xattrs: Vec<(String, String)>,
    },
    Symlink {
        path: String,
        target: String,
    },
    HardLink {
        path: String,
        existing: String,
    },
    Fifo {
        path: String,
        mode: u32,
        owner: (u32, u32),
    },
    Whiteout {
        path: String,
    },
    Opaque {
        path: String,
    },
}

impl Item {
    pub fn path(&self) -> &str {
        match self {
            Item::Dir { path, .. }
            | Item::File { path, .. }
            | Item::Symlink { path, .. }
            | Item::HardLink { path, .. }
            | Item::Fifo { path, .. }
            | Item::Whiteout { path }
            | Item::Opaque { path } => path,
        }
    }
}

fn write_xattrs(f: &mut fmt::Formatter<'_>, xattrs: &[(String, String)]) -> fmt::Result {
    for (name, value) in xattrs {
        write!(f, " {name}={value}")?;
    }
    Ok(())
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Dir {
                path,
                mode,
                owner,
                xattrs,
            } => {
                write!(f, "dir {path} {mode:04o} {}:{}", owner.0, owner.1)?;
                write_xattrs(f, xattrs)
            }
            Item::File {
                path,
                mode,
                owner,
                size,
                seed,
                extents,
                xattrs,
            } => {
                let extents = match extents {
                    None => "full".to_string(),
                    Some(list) if list.is_empty() => "none".to_string(),
                    Some(list) => list
                        .iter()
                        .map(|(offset, length)| format!("{offset}+{length}"))
                        .collect::<Vec<_>>()
                        .join(","),
                };
                write!(
                    f,
                    "file {path} {mode:04o} {}:{} {size} {seed} {extents}",
                    owner.0, owner.1
                )?;
                write_xattrs(f, xattrs)
            }
            Item::Symlink { path, target } => write!(f, "symlink {path} {target}"),
            Item::HardLink { path, existing } => write!(f, "link {path} {existing}"),
            Item::Fifo { path, mode, owner } => {
                write!(f, "fifo {path} {mode:04o} {}:{}", owner.0, owner.1)
            }
            Item::Whiteout { path } => write!(f, "whiteout {path}"),
            Item::Opaque { path } => write!(f, "opaque {path}"),
        }
    }
}

pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8).map_err(|_| format!("invalid octal mode {text:?}"))
}

fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| format!("invalid owner {text:?}: expected UID:GID"))?;
    let number = |value: &str| {
        value
            .parse::<u32>()
            .map_err(|_| format!("invalid owner {text:?}"))
    };
    Ok((number(uid)?, number(gid)?))
}

fn parse_xattrs(words: &[&str]) -> Result<Vec<(String, String)>, String> {
    words
        .iter()
        .map(|word| {
            word.split_once('=')
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .ok_or_else(|| format!("invalid xattr {word:?}: expected NAME=VALUE"))
        })
        .collect()
}

fn parse_number(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("invalid number {text:?}"))
}

/// Parses one line written by `Item`'s `Display`.
pub fn parse_item(line: &str) -> Result<Item, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |index: usize| {
        words
            .get(index)
            .copied()
            .ok_or_else(|| format!("layer entry {line:?} has too few fields"))
    };
    let path = field(1)?.to_string();
    Ok(match field(0)? {
        "dir" => Item::Dir {
            path,
            mode: parse_mode(field(2)?)?,
            owner: parse_owner(field(3)?)?,
            xattrs: parse_xattrs(&words[4..])?,
        },
        "file" => {
            let extents = match field(6)? {
                "full" => None,
                "none" => Some(Vec::new()),
                list => Some(
                    list.split(',')
                        .map(|range| {
                            let (offset, length) = range
                                .split_once('+')
                                .ok_or_else(|| format!("invalid extent {range:?}"))?;
                            Ok((parse_number(offset)?, parse_number(length)?))
                        })
                        .collect::<Result<Vec<_>, String>>()?,
                ),
            };
            Item::File {
                path,
                mode: parse_mode(field(2)?)?,
                owner: parse_owner(field(3)?)?,
                size: parse_number(field(4)?)?,
                seed: parse_number(field(5)?)?,
                extents,
                xattrs: parse_xattrs(&words[7..])?,
            }
        }
        "symlink" => Item::Symlink {
            path,
            target: field(2)?.to_string(),
        },
        "link" => Item::HardLink {
            path,
            existing: field(2)?.to_string(),
        },
        "fifo" => Item::Fifo {
            path,
            mode: parse_mode(field(2)?)?,
            owner: parse_owner(field(3)?)?,
        },
        "whiteout" => Item::Whiteout { path },
        "opaque" => Item::Opaque { path },
        other => return Err(format!("unknown layer entry {other:?} in {line:?}")),
    })
}

/// Returns `length` bytes of the data pattern `seed` starting at `offset`;
/// equal arguments give equal bytes.
pub fn pattern(seed: u64, offset: u64, length: usize) -> Vec<u8> {
    (0..length as u64)
        .map(|index| {
            let position = offset + index;
            let mixed = (position / 3)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(seed.wrapping_mul(0xD6E8_FEB8_6659_FD93));
            (mixed >> 56) as u8
        })
        .collect()
}

/// Creates the parent directories of `path` (mode 0755, root-owned).
fn make_parents(root: &Path, path: &str) {
    if let Some(parent) = Path::new(path).parent() {
        let _ = std::fs::create_dir_all(root.join(parent));
    }
}

fn apply_owner_and_xattrs(full: &Path, owner: (u32, u32), xattrs: &[(String, String)]) {
    let _ = sys::lchown(full, owner.0, owner.1);
    for (name, value) in xattrs {
        let _ = sys::lsetxattr(full, name, value.as_bytes(), 0);
    }
}

/// Splits `path` into its parent and its last name.
pub fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// Builds the entries `items` in the empty directory `root`, writing
/// whiteouts and opaque markers in `format`. An entry that cannot be made
/// (its parent is not a directory, its name is taken) is skipped, and the
/// same entries are skipped in both formats.
pub fn build(root: &Path, items: &[Item], format: Format) {
    for item in items {
        let path = item.path();
        make_parents(root, path);
        let full = root.join(path);
        // Both formats must skip the same entries, and an AUFS whiteout
        // does not occupy its own name: check the name first.
        if !matches!(item, Item::Opaque { .. }) && std::fs::symlink_metadata(&full).is_ok() {
            continue;
        }
        match item {
            Item::Dir {
                mode,
                owner,
                xattrs,
                ..
            } => {
                if sys::mkdir(&full, 0o700).is_ok() {
                    apply_owner_and_xattrs(&full, *owner, xattrs);
                    let _ = sys::chmod(&full, *mode);
                }
            }
            Item::File {
                mode,
                owner,
                size,
                seed,
                extents,
                xattrs,
                ..
            } => {
                let Ok(fd) = sys::open(&full, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600)
                else {
                    continue;
                };
                let ranges = extents.clone().unwrap_or_else(|| vec![(0, *size)]);
                for (offset, length) in ranges {
                    let length = length.min(size.saturating_sub(offset));
                    let _ = sys::pwrite(fd, &pattern(*seed, offset, length as usize), offset);
                }
                let _ = sys::ftruncate(fd, *size);
                sys::close(fd);
                apply_owner_and_xattrs(&full, *owner, xattrs);
                let _ = sys::chmod(&full, *mode);
            }
            Item::Symlink { target, .. } => {
                let _ = sys::symlink(target, &full);
            }
            Item::HardLink { existing, .. } => {
                let existing = root.join(existing);
                // Only regular files get hard links, so both formats agree.
                if std::fs::symlink_metadata(&existing).is_ok_and(|meta| meta.is_file()) {
                    let _ = sys::link(&existing, &full);
                }
            }
            Item::Fifo { mode, owner, .. } => {
                if sys::mknod(&full, libc::S_IFIFO | 0o600, 0).is_ok() {
                    apply_owner_and_xattrs(&full, *owner, &[]);
                    let _ = sys::chmod(&full, *mode);
                }
            }
            Item::Whiteout { .. } => {
                let (parent, name) = split(path);
                if !root.join(parent).is_dir() {
                    continue;
                }
                match format {
                    Format::Overlay => {
                        let _ = sys::mknod(&full, libc::S_IFCHR, 0);
                    }
                    Format::Aufs => {
                        let marker = root.join(join(parent, &format!(".wh.{name}")));
                        let _ = sys::open(&marker, libc::O_CREAT | libc::O_WRONLY, 0o444)
                            .map(sys::close);
                    }
                }
            }
            Item::Opaque { .. } => {
                if std::fs::symlink_metadata(&full).is_err() {
                    let _ = sys::mkdir(&full, 0o755);
                }
                if !full.symlink_metadata().is_ok_and(|meta| meta.is_dir()) {
                    continue;
                }
                match format {
                    Format::Overlay => {
                        let _ = sys::lsetxattr(&full, "trusted.overlay.opaque", b"y", 0);
                    }
                    Format::Aufs => {
                        let _ = sys::open(
                            &full.join(".wh..wh..opq"),
                            libc::O_CREAT | libc::O_WRONLY,
                            0o444,
                        )
                        .map(sys::close);
                    }
                }
            }
        }
    }
    set_times(root);
}

/// Returns the mtime that layer entry `relative` gets: distinct per path,
/// with nanoseconds, and the same on every copy of the layer.
pub fn layer_time(relative: &Path) -> (i64, i64) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in relative.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (
        LAYER_TIME + (hash % 1_000_000) as i64,
        ((hash >> 20) % 1_000_000_000) as i64,
    )
}

/// Sets the times of everything under `root` (itself included) to their
/// `layer_time`, without following symlinks, children before parents.
fn set_times(root: &Path) {
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .map(|entry| entry.into_path())
        .collect();
    paths.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for path in paths {
        let relative = path.strip_prefix(root).unwrap();
        let (seconds, nanoseconds) = layer_time(relative);
        let time = sys::Time::At(seconds, nanoseconds);
        let _ = sys::lutimens(&path, time, time);
    }
}

/// The generator's record of the layers built so far: each visible path
/// and its kind ('d' for directories, 'f' for the rest).
type Known = BTreeMap<String, char>;

fn xattr_list(rng: &mut impl Rng) -> Vec<(String, String)> {
    let mut xattrs = Vec::new();
    for name in ["user.a", "user.b"] {
        if rng.gen_bool(0.2) {
            xattrs.push((name.to_string(), format!("v{}", rng.gen_range(0..100))));
        }
    }
    xattrs
}

fn random_file(rng: &mut impl Rng, path: String) -> Item {
    let sparse = rng.gen_bool(0.25);
    let (size, extents) = if sparse {
        let size = rng.gen_range(1..40) * 4096 + rng.gen_range(0..4096);
        let mut extents = Vec::new();
        for _ in 0..rng.gen_range(0..3) {
            let offset = rng.gen_range(0..size / 4096) * 4096;
            extents.push((offset, rng.gen_range(1..6000)));
        }
        extents.sort();
        (size, Some(extents))
    } else {
        let size = *[0, 1, 17, 100, 4096, 5000, 12345].choose(rng).unwrap();
        (size, None)
    };
    Item::File {
        path,
        mode: *MODES_FILE.choose(rng).unwrap(),
        owner: *OWNERS.choose(rng).unwrap(),
        size,
        seed: rng.gen_range(0..1000),
        extents,
        xattrs: xattr_list(rng),
    }
}

/// Picks a directory for a new entry: the root, a directory of a lower
/// layer, or one made in this layer.
fn pick_parent(rng: &mut impl Rng, known: &Known, here: &Known) -> String {
    let dirs: Vec<&String> = known
        .iter()
        .chain(here.iter())
        .filter(|(_, kind)| **kind == 'd')
        .map(|(path, _)| path)
        .collect();
    if dirs.is_empty() || rng.gen_bool(0.3) {
        String::new()
    } else {
        (*dirs.choose(rng).unwrap()).clone()
    }
}

/// Generates one layer over the paths `below` (what lower layers show).
pub fn random_layer(rng: &mut impl Rng, below: &Known) -> Vec<Item> {
    let mut items = Vec::new();
    let mut here = Known::new();
    let count = rng.gen_range(2..10);
    for _ in 0..count {
        let use_below = !below.is_empty() && rng.gen_bool(0.4);
        let path = if use_below {
            below
                .keys()
                .nth(rng.gen_range(0..below.len()))
                .unwrap()
                .clone()
        } else {
            let parent = pick_parent(rng, below, &here);
            if parent.split('/').count() >= 3 {
                continue;
            }
            join(&parent, NAMES.choose(rng).unwrap())
        };
        if here.contains_key(&path)
            || here
                .keys()
                .any(|made| path.starts_with(&format!("{made}/")) && here[made] != 'd')
        {
            continue;
        }
        let below_kind = below.get(&path).copied();
        let roll = rng.gen_range(0..100);
        let item = if below_kind.is_some() && roll < 25 {
            Item::Whiteout { path: path.clone() }
        } else if below_kind == Some('d') && roll < 40 {
            Item::Opaque { path: path.clone() }
        } else if roll < 55 {
            Item::Dir {
                path: path.clone(),
                mode: *MODES_DIR.choose(rng).unwrap(),
                owner: *OWNERS.choose(rng).unwrap(),
                xattrs: xattr_list(rng),
            }
        } else if roll < 80 {
            random_file(rng, path.clone())
        } else if roll < 88 {
            let target = match rng.gen_range(0..3) {
                0 => NAMES.choose(rng).unwrap().to_string(),
                1 => format!("../{}", NAMES.choose(rng).unwrap()),
                _ => "dangling/target".to_string(),
            };
            Item::Symlink {
                path: path.clone(),
                target,
            }
        } else if roll < 95 {
            let files: Vec<&String> = items
                .iter()
                .filter_map(|item| match item {
                    Item::File { path, .. } => Some(path),
                    _ => None,
                })
                .collect();
            match files.choose(rng) {
                Some(existing) => Item::HardLink {
                    path: path.clone(),
                    existing: (*existing).clone(),
                },
                None => random_file(rng, path.clone()),
            }
        } else {
            Item::Fifo {
                path: path.clone(),
                mode: *[0o644, 0o600, 0o666].choose(rng).unwrap(),
                owner: *OWNERS.choose(rng).unwrap(),
            }
        };
        let kind = match item {
            Item::Dir { .. } | Item::Opaque { .. } => 'd',
            Item::Whiteout { .. } => 'w',
            _ => 'f',
        };
        here.insert(path, kind);
        items.push(item);
    }
    items
}

/// Updates `known` (the paths visible through the layers so far) with a
/// layer placed on top of them.
pub fn cover(known: &mut Known, items: &[Item]) {
    for item in items {
        let path = item.path().to_string();
        let prefix = format!("{path}/");
        match item {
            Item::Whiteout { .. } => {
                known.retain(|name, _| *name != path && !name.starts_with(&prefix));
            }
            Item::Opaque { .. } => {
                known.retain(|name, _| !name.starts_with(&prefix));
                known.insert(path, 'd');
            }
            Item::Dir { .. } => {
                if known.get(&path) != Some(&'d') {
                    known.retain(|name, _| !name.starts_with(&prefix));
                }
                known.insert(path, 'd');
            }
            _ => {
                known.retain(|name, _| !name.starts_with(&prefix));
                known.insert(path, 'f');
            }
        }
    }
    // Entries under a name that is no longer a directory are hidden.
    let dirs: Vec<String> = known
        .iter()
        .filter(|(_, kind)| **kind == 'd')
        .map(|(path, _)| path.clone())
        .collect();
    known.retain(|path, _| {
        let (parent, _) = split(path);
        parent.is_empty() || dirs.iter().any(|dir| dir == parent)
    });
}
