//! A case: a layer stack and a list of operations, with a text form that a
//! failure prints and a regression test replays:
//!
//! ```text
//! format overlay|aufs
//! lower 0
//! <layer entries of the topmost lower layer>
//! lower 1
//! <layer entries>
//! upper
//! <entries the upper layer starts with>
//! ops
//! <operations, one a line>
//! ```
//!
//! Blank lines and lines starting with `#` are ignored.

use std::fmt;
use std::path::PathBuf;

use crate::layers::{self, Format, Item};
use crate::ops::{self, Op};
use crate::sys;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The format of unionfs's lower layers; kernel overlayfs always gets
    /// the overlay format.
    pub format: Format,
    /// Lower layers, topmost first.
    pub lowers: Vec<Vec<Item>>,
    pub upper: Vec<Item>,
    pub ops: Vec<Op>,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.format {
            Format::Overlay => "overlay",
            Format::Aufs => "aufs",
        };
        writeln!(f, "format {format}")?;
        for (index, layer) in self.lowers.iter().enumerate() {
            writeln!(f, "lower {index}")?;
            for item in layer {
                writeln!(f, "  {item}")?;
            }
        }
        writeln!(f, "upper")?;
        for item in &self.upper {
            writeln!(f, "  {item}")?;
        }
        writeln!(f, "ops")?;
        for op in &self.ops {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

impl Case {
    /// Parses the text form written by `Display`.
    pub fn parse(text: &str) -> Result<Case, String> {
        enum Section {
            Start,
            Lower,
            Upper,
            Ops,
        }
        let mut case = Case {
            format: Format::Overlay,
            lowers: Vec::new(),
            upper: Vec::new(),
            ops: Vec::new(),
        };
        let mut section = Section::Start;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_whitespace().next().unwrap() {
                "format" => {
                    case.format = match line.split_whitespace().nth(1) {
                        Some("overlay") => Format::Overlay,
                        Some("aufs") => Format::Aufs,
                        _ => {
                            return Err(format!(
                                "invalid format line {line:?}: expected overlay or aufs"
                            ));
                        }
                    };
                }
                "lower" => {
                    case.lowers.push(Vec::new());
                    section = Section::Lower;
                }
                "upper" => section = Section::Upper,
                "ops" => section = Section::Ops,
                _ => match section {
                    Section::Start => {
                        return Err(format!("line {line:?} comes before any section"));
                    }
                    Section::Lower => case
                        .lowers
                        .last_mut()
                        .unwrap()
                        .push(layers::parse_item(line)?),
                    Section::Upper => case.upper.push(layers::parse_item(line)?),
                    Section::Ops => case.ops.push(ops::parse_op(line)?),
                },
            }
        }
        if case.lowers.is_empty() {
            return Err("a case needs at least one lower layer".to_string());
        }
        Ok(case)
    }
}

/// Returns the layers of `dirs[top..]` (topmost first) that contribute to
/// directory `dir` of their merged view: a layer stops the merge below it
/// where it has an opaque directory, a whiteout or a non-directory.
fn contributors(dirs: &[PathBuf], top: usize, dir: &str) -> Vec<usize> {
    let mut layers: Vec<usize> = (top..dirs.len()).collect();
    let mut prefix = PathBuf::new();
    for name in dir.split('/').filter(|name| !name.is_empty()) {
        prefix.push(name);
        let mut next = Vec::new();
        for layer in layers {
            let path = dirs[layer].join(&prefix);
            match std::fs::symlink_metadata(&path) {
                Err(_) => continue,
                Ok(meta) if meta.is_dir() => {
                    next.push(layer);
                    if sys::lgetxattr(&path, b"trusted.overlay.opaque").is_ok() {
                        break;
                    }
                }
                Ok(_) => break,
            }
        }
        layers = next;
    }
    layers
}

impl Case {
    /// Returns the case without the whiteouts that sit in a directory that
    /// only their own layer contributes to. Kernel overlayfs never writes
    /// such a whiteout, because it writes one only to hide a lower name.
    /// It lists one in readdir as a character device that lookup cannot
    /// find, while unionfs hides it.
    pub fn without_unmerged_whiteouts(&self) -> Case {
        let probe = tempfile::Builder::new()
            .prefix("unionfs-differential-probe-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let stack: Vec<&Vec<Item>> = std::iter::once(&self.upper).chain(&self.lowers).collect();
        let dirs: Vec<PathBuf> = stack
            .iter()
            .enumerate()
            .map(|(index, items)| {
                let dir = probe.path().join(index.to_string());
                std::fs::create_dir(&dir).expect("cannot create a probe layer");
                layers::build(&dir, items, Format::Overlay);
                dir
            })
            .collect();
        let keep = |index: usize, items: &Vec<Item>| -> Vec<Item> {
            items
                .iter()
                .filter(|item| match item {
                    Item::Whiteout { path } => {
                        let (parent, _) = layers::split(path);
                        contributors(&dirs, 0, parent) != [index]
                    }
                    _ => true,
                })
                .cloned()
                .collect()
        };
        Case {
            upper: keep(0, stack[0]),
            lowers: stack[1..]
                .iter()
                .enumerate()
                .map(|(index, items)| keep(index + 1, items))
                .collect(),
            ..self.clone()
        }
    }
}
