//! The seeded generator: a random layer stack, then one operation at a time
//! chosen from the current merged view, so that operations mostly hit
//! existing names, names only in lower layers and names behind whiteouts.

use std::path::PathBuf;

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::case::Case;
use crate::layers::{self, Format, MODES_DIR, MODES_FILE, NAMES, OWNERS};
use crate::ops::{FallocateMode, HoldMode, Op, OpenMode, RenameMode, XattrMode};
use crate::sys::Time;
use crate::view::Tree;

/// Descriptor slots that `hold` and the `*-held` operations use.
const SLOTS: u8 = 3;

/// Generates the layer stack of a case: 1 to 5 lower layers and, in a
/// third of the cases, an upper layer that already has entries.
pub fn random_stack(rng: &mut ChaCha8Rng, format: Format) -> Case {
    let lower_count = rng.gen_range(1..=5);
    let mut known = Default::default();
    let mut bottom_up = Vec::new();
    for _ in 0..lower_count {
        let layer = layers::random_layer(rng, &known);
        layers::cover(&mut known, &layer);
        bottom_up.push(layer);
    }
    let upper = if rng.gen_bool(0.33) {
        layers::random_layer(rng, &known)
    } else {
        Vec::new()
    };
    bottom_up.reverse();
    Case {
        format,
        lowers: bottom_up,
        upper,
        ops: Vec::new(),
    }
}

/// Chooses operations for one case.
pub struct Generator {
    /// Paths named anywhere in the layers, visible or not.
    layer_paths: Vec<String>,
}

fn text(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        ".".to_string()
    } else {
        path.to_string_lossy().into_owned()
    }
}

fn child(parent: &str, name: &str) -> String {
    if parent == "." {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

impl Generator {
    pub fn new(case: &Case) -> Generator {
        let mut layer_paths: Vec<String> = case
            .lowers
            .iter()
            .chain(std::iter::once(&case.upper))
            .flatten()
            .map(|item| item.path().to_string())
            .collect();
        layer_paths.sort();
        layer_paths.dedup();
        Generator { layer_paths }
    }

    fn existing(&self, rng: &mut ChaCha8Rng, view: &Tree, kinds: &str) -> Option<String> {
        let matching: Vec<&PathBuf> = view
            .iter()
            .filter(|(path, entry)| !path.as_os_str().is_empty() && kinds.contains(entry.kind))
            .map(|(path, _)| path)
            .collect();
        matching.choose(rng).map(|path| text(path))
    }

    fn directory(&self, rng: &mut ChaCha8Rng, view: &Tree) -> String {
        if rng.gen_bool(0.3) {
            return ".".to_string();
        }
        self.existing(rng, view, "d")
            .unwrap_or_else(|| ".".to_string())
    }

    /// Picks a name in an existing directory: often taken, sometimes new.
    fn fresh(&self, rng: &mut ChaCha8Rng, view: &Tree) -> String {
        let parent = self.directory(rng, view);
        child(&parent, NAMES.choose(rng).unwrap())
    }

    /// Picks any path: mostly from the merged view, else from the layers
    /// (maybe behind a whiteout) or a fresh name.
    fn path(&self, rng: &mut ChaCha8Rng, view: &Tree, kinds: &str) -> String {
        let roll = rng.gen_range(0..100);
        if roll < 65 {
            if let Some(path) = self.existing(rng, view, kinds) {
                return path;
            }
        }
        if roll < 85 {
            if let Some(path) = self.layer_paths.choose(rng) {
                return path.clone();
            }
        }
        self.fresh(rng, view)
    }

    /// Picks a path for a new entry: mostly fresh names, sometimes taken ones.
    fn target(&self, rng: &mut ChaCha8Rng, view: &Tree) -> String {
        if rng.gen_bool(0.25) {
            self.path(rng, view, "dflp")
        } else {
            self.fresh(rng, view)
        }
    }

    /// Chooses the next operation given the current merged view.
    pub fn next(&self, rng: &mut ChaCha8Rng, view: &Tree) -> Op {
        let offset = |rng: &mut ChaCha8Rng| -> u64 {
            match rng.gen_range(0..4) {
                0 => 0,
                1 => rng.gen_range(0..200),
                2 => rng.gen_range(0..40) * 4096,
                _ => rng.gen_range(0..140_000),
            }
        };
        let length = |rng: &mut ChaCha8Rng| -> u64 {
            *[0, 1, 10, 100, 4096, 5000, 9000, 20_000]
                .choose(rng)
                .unwrap()
        };
        let slot = |rng: &mut ChaCha8Rng| rng.gen_range(0..SLOTS);
        let time = |rng: &mut ChaCha8Rng| match rng.gen_range(0..4) {
            0 => Time::Now,
            1 => Time::Omit,
            _ => Time::At(
                1_600_000_000 + rng.gen_range(0..1_000_000),
                rng.gen_range(0..1_000_000_000),
            ),
        };
        let roll = rng.gen_range(0..100);
        match roll {
            0..=4 => Op::Create {
                path: self.target(rng, view),
                mode: *MODES_FILE.choose(rng).unwrap(),
                exclusive: rng.gen_bool(0.5),
            },
            5..=14 => Op::Write {
                path: self.path(rng, view, "f"),
                open: *[OpenMode::Plain, OpenMode::Trunc, OpenMode::Append]
                    .choose(rng)
                    .unwrap(),
                offset: offset(rng),
                length: length(rng),
                seed: rng.gen_range(0..1000),
            },
            15..=18 => Op::Truncate {
                path: self.path(rng, view, "f"),
                length: offset(rng),
            },
            19..=22 => Op::Fallocate {
                path: self.path(rng, view, "f"),
                mode: *[
                    FallocateMode::Allocate,
                    FallocateMode::KeepSize,
                    FallocateMode::PunchHole,
                    FallocateMode::ZeroRange,
                ]
                .choose(rng)
                .unwrap(),
                offset: offset(rng),
                length: length(rng).max(1),
            },
            23..=27 => {
                let path = self.path(rng, view, "dfp");
                let mode = if rng.gen_bool(0.5) {
                    *MODES_FILE.choose(rng).unwrap()
                } else {
                    *MODES_DIR.choose(rng).unwrap()
                };
                Op::Chmod { path, mode }
            }
            28..=31 => {
                let (uid, gid) = *OWNERS.choose(rng).unwrap();
                Op::Chown {
                    path: self.path(rng, view, "dflp"),
                    uid: if rng.gen_bool(0.2) { u32::MAX } else { uid },
                    gid: if rng.gen_bool(0.2) { u32::MAX } else { gid },
                }
            }
            32..=35 => Op::Utimes {
                path: self.path(rng, view, "dflp"),
                atime: time(rng),
                mtime: time(rng),
            },
            36..=40 => Op::SetXattr {
                path: self.path(rng, view, "dflp"),
                // No overlay xattr names. unionfs hides and rejects
                // `trusted.overlay.*` and `user.overlay.*` (README, "Layer
                // formats"), while kernel overlayfs 6.7 and later stores
                // `trusted.overlay.X` set through the mount escaped as
                // `trusted.overlay.overlay.X`, and without `userxattr`
                // keeps `user.overlay.*` as ordinary user xattrs.
                name: (*["user.a", "user.b", "user.c", "trusted.t"]
                    .choose(rng)
                    .unwrap())
                .to_string(),
                value: format!("v{}", rng.gen_range(0..100)),
                mode: *[
                    XattrMode::Any,
                    XattrMode::Any,
                    XattrMode::Create,
                    XattrMode::Replace,
                ]
                .choose(rng)
                .unwrap(),
            },
            41..=43 => Op::RemoveXattr {
                path: self.path(rng, view, "dflp"),
                name: (*["user.a", "user.b", "user.c", "trusted.t"]
                    .choose(rng)
                    .unwrap())
                .to_string(),
            },
            44..=47 => Op::Link {
                from: self.path(rng, view, "flp"),
                to: self.target(rng, view),
            },
            48..=50 => Op::Symlink {
                target: (*["a", "../b", "dir/x", "nowhere"].choose(rng).unwrap()).to_string(),
                path: self.target(rng, view),
            },
            51..=55 => Op::Mkdir {
                path: self.target(rng, view),
                mode: *MODES_DIR.choose(rng).unwrap(),
            },
            56..=60 => Op::Rmdir {
                path: self.path(rng, view, "d"),
            },
            61..=67 => Op::Unlink {
                path: self.path(rng, view, "flp"),
            },
            68..=79 => {
                let from = self.path(rng, view, "dflp");
                let to = if rng.gen_bool(0.5) {
                    self.path(rng, view, "dflp")
                } else {
                    self.fresh(rng, view)
                };
                let mode = match rng.gen_range(0..6) {
                    0 => RenameMode::NoReplace,
                    1 => RenameMode::Exchange,
                    _ => RenameMode::Plain,
                };
                Op::Rename { from, to, mode }
            }
            80..=81 => Op::Mkfifo {
                path: self.target(rng, view),
                mode: *[0o644, 0o600].choose(rng).unwrap(),
            },
            82..=84 => Op::Readdir {
                path: self.directory(rng, view),
                skip: rng.gen_range(0..8),
                back: rng.gen_range(0..8),
            },
            85..=86 => Op::ReaddirChanging {
                path: self.directory(rng, view),
                skip: rng.gen_range(0..8),
                back: rng.gen_range(0..8),
                add: format!("new{}", rng.gen_range(0..3)),
                remove: if rng.gen_bool(0.3) {
                    "-".to_string()
                } else {
                    (*NAMES.choose(rng).unwrap()).to_string()
                },
            },
            87..=88 => Op::Read {
                path: self.path(rng, view, "f"),
                offset: offset(rng),
                length: length(rng),
            },
            89..=91 => Op::Hold {
                slot: slot(rng),
                path: self.path(rng, view, "f"),
                mode: *[HoldMode::ReadOnly, HoldMode::ReadWrite]
                    .choose(rng)
                    .unwrap(),
            },
            92..=94 => Op::ReadHeld {
                slot: slot(rng),
                offset: offset(rng),
                length: length(rng),
            },
            95..=96 => Op::WriteHeld {
                slot: slot(rng),
                offset: offset(rng),
                length: length(rng),
                seed: rng.gen_range(0..1000),
            },
            97 => Op::TruncateHeld {
                slot: slot(rng),
                length: offset(rng),
            },
            98 => Op::StatHeld { slot: slot(rng) },
            _ => Op::Close { slot: slot(rng) },
        }
    }
}
