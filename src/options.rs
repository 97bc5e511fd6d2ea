//! Parsing of the layer list and the `-o` mount options into a [`MountOptions`].
//!
//! This module only turns strings into values. Checks that need the filesystem
//! (missing directories, duplicate or nested layers) happen when the stack is built.
//!
//! LAYERS is an AUFS-style colon list, topmost first: `upper:lower1:lower2`.
//! Each entry may end in `=rw` or `=ro` (in any case). Without marks the first
//! entry is writable and the rest are read-only. Only the topmost entry can be
//! writable, and `top=ro:...` gives a read-only mount.
//!
//! `-o` takes comma-separated options as mount(8) passes them, and a later option
//! overrides an earlier one. `lowerdir=A:B` (topmost first), `upperdir=U` and
//! `workdir=W` use the kernel overlayfs spelling and replace LAYERS, so SOURCE is
//! then only a name. Empty options are skipped.
//!
//! A backslash makes the next character literal: `\:`, `\=`, `\,` and `\\`.
//! Other escapes and a trailing lone backslash are rejected, so that a path is
//! never changed silently.

use std::path::PathBuf;

use crate::idmap::{IdMap, IdMapError};
use crate::whiteout::Format;

/// Maximum value accepted for `threads=`.
const MAX_THREADS: usize = 1024;

/// Options that take no value. `apply_flag` handles each of them.
#[rustfmt::skip]
const FLAGS: &[&str] = &[
    "allow_other", "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime",
    "noatime", "relatime", "strictatime", "nodiratime", "sync", "async", "dirsync", "volatile",
];

/// Options that mount(8), fstab and mount.fuse3 pass and that change nothing here.
/// `default_permissions` is listed because permission checks are always on.
#[rustfmt::skip]
const IGNORED: &[&str] = &[
    "defaults", "nofail", "_netdev", "auto", "noauto", "user", "users", "nouser",
    "default_permissions", "comment", "subtype",
];

/// Options of fuse-overlayfs that are rejected until they are implemented.
#[rustfmt::skip]
const UNSUPPORTED: &[&str] = &[
    "squash_to_root", "squash_to_uid", "squash_to_gid",
    "static_nlink", "noacl", "xattr_permissions",
];

/// One layer of the stack as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    pub path: PathBuf,
    pub writable: bool,
}

/// The validated mount configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Layers, topmost first. At most `layers[0]` is writable.
    pub layers: Vec<LayerSpec>,
    /// Directory for staging copy-ups. It is kept when `ro` is given, although no layer
    /// is then writable.
    pub workdir: Option<PathBuf>,
    /// True when `ro` was given or no layer is writable.
    pub read_only: bool,
    /// True when `allow_other` was given.
    pub allow_other: bool,
    pub suid: bool,
    pub dev: bool,
    pub exec: bool,
    pub noatime: bool,
    pub sync: bool,
    pub dirsync: bool,
    /// Name shown as the mount source: `fsname=`, else SOURCE, else `unionfs`.
    pub fsname: String,
    pub whiteout: Format,
    pub volatile: bool,
    /// Number of FUSE worker threads from `threads=`, between 1 and 1024.
    pub threads: Option<usize>,
    /// `uidmapping=`: owners as stored in the layers to owners as shown.
    pub uid_mapping: Option<IdMap>,
    /// `gidmapping=`: groups as stored in the layers to groups as shown.
    pub gid_mapping: Option<IdMap>,
}

impl MountOptions {
    /// Returns the writable upper layer, if the mount has one.
    pub fn upper(&self) -> Option<&LayerSpec> {
        self.layers.first().filter(|layer| layer.writable)
    }
}

/// An invalid layer list or mount option. Each message names the value and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error(
        "no layers given: pass LAYERS (for example upper:lower1:lower2) or -o lowerdir=DIR[:DIR...]"
    )]
    MissingLayers,
    #[error("LAYERS is empty: pass at least one directory, topmost first, as DIR[:DIR...]")]
    EmptyLayers,
    #[error(
        "entry {position} of {list} '{value}' has no directory: give a path or remove the extra ':' \
         (data-only layers, written '::' in overlayfs, are not supported)"
    )]
    EmptyLayer {
        list: &'static str,
        position: usize,
        value: String,
    },
    #[error(
        "invalid mark '{mark}' on layer '{entry}': use =rw or =ro, or write \\= for a literal '='"
    )]
    UnknownMark { entry: String, mark: String },
    #[error(
        "layer '{entry}' (entry {position}) is marked rw, but only the topmost layer can be writable: \
         move it to the front or mark it ro"
    )]
    WritableNotTopmost { entry: String, position: usize },
    #[error("'{value}' ends in a lone backslash: write \\\\ for a literal backslash")]
    TrailingBackslash { value: String },
    #[error("invalid escape '\\{escape}' in '{value}': the escapes are \\\\, \\:, \\= and \\,")]
    InvalidEscape { value: String, escape: char },
    #[error("unknown mount option '{option}': check the spelling or remove it")]
    UnknownOption { option: String },
    #[error("mount option '{option}' is not supported yet: remove it")]
    Unsupported { option: String },
    #[error(
        "mount option '{option}' takes no value, got '{option}={value}': write just '{option}'"
    )]
    UnexpectedValue { option: String, value: String },
    #[error("mount option '{option}' needs a value: write {option}={expected}")]
    MissingValue {
        option: String,
        expected: &'static str,
    },
    #[error("invalid value '{value}' for mount option '{option}': expected {expected}")]
    InvalidValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    #[error("mount option {option}: {source}")]
    IdMapping {
        option: &'static str,
        source: IdMapError,
    },
    #[error(
        "-o upperdir='{upperdir}' needs the lower layers: add -o lowerdir=DIR[:DIR...] (a layer list does not combine with -o upperdir=)"
    )]
    UpperWithoutLower { upperdir: String },
    #[error(
        "-o workdir='{workdir}' is set but no layer is writable: add -o upperdir=DIR or mark \
         the topmost layer =rw, or remove workdir"
    )]
    WorkdirWithoutUpper { workdir: String },
}

/// Parses a LAYERS list (`upper:lower1:lower2`, topmost first) with its `=rw`/`=ro` marks.
pub fn parse_layers(spec: &str) -> Result<Vec<LayerSpec>, OptionsError> {
    if spec.is_empty() {
        return Err(OptionsError::EmptyLayers);
    }

    let mut layers = Vec::new();
    for (index, entry) in split_unescaped(spec, ':').into_iter().enumerate() {
        layers.push(parse_layer_entry(spec, index, entry)?);
    }
    Ok(layers)
}

/// Parses entry `index` (0 = topmost) of the LAYERS list `spec`.
fn parse_layer_entry(spec: &str, index: usize, entry: &str) -> Result<LayerSpec, OptionsError> {
    let (path, mark) = match find_unescaped(entry, '=') {
        Some(at) => (&entry[..at], Some(&entry[at + 1..])),
        None => (entry, None),
    };
    if path.is_empty() {
        return Err(OptionsError::EmptyLayer {
            list: "LAYERS",
            position: index + 1,
            value: spec.to_string(),
        });
    }

    let writable = match mark {
        None => index == 0,
        Some(mark) if mark.eq_ignore_ascii_case("rw") => true,
        Some(mark) if mark.eq_ignore_ascii_case("ro") => false,
        Some(mark) => {
            return Err(OptionsError::UnknownMark {
                entry: entry.to_string(),
                mark: mark.to_string(),
            });
        }
    };
    if writable && index > 0 {
        return Err(OptionsError::WritableNotTopmost {
            entry: entry.to_string(),
            position: index + 1,
        });
    }

    Ok(LayerSpec {
        path: PathBuf::from(unescape(path)?),
        writable,
    })
}

/// Combines SOURCE and the `-o` arguments (one element per `-o`) into mount options.
///
/// With `-o lowerdir=`, the layers are `upperdir` (writable, if given) followed by the
/// `lowerdir` entries, and SOURCE is only a name. Otherwise SOURCE is a LAYERS list.
/// `ro` clears the writable flag of every layer. `workdir=` is checked against the
/// writable layer as configured before `ro` applies, so that `ro` can be added to an
/// fstab line that has `upperdir` and `workdir`.
pub fn resolve(source: Option<&str>, opts: &[String]) -> Result<MountOptions, OptionsError> {
    let options = OptionSet::parse(opts)?;
    let layers = options.layers(source)?;
    let mut mount = options.mount;
    mount.layers = layers;

    let has_writable = mount.upper().is_some();
    if let (Some(workdir), false) = (&mount.workdir, has_writable) {
        return Err(OptionsError::WorkdirWithoutUpper {
            workdir: workdir.display().to_string(),
        });
    }
    if mount.read_only {
        for layer in &mut mount.layers {
            layer.writable = false;
        }
    }
    mount.read_only |= !has_writable;

    let default_fsname = source.filter(|name| !name.is_empty()).unwrap_or("unionfs");
    mount.fsname = options.fsname.unwrap_or_else(|| default_fsname.to_string());
    Ok(mount)
}

/// Settings collected from every `-o` argument, before SOURCE is taken into account.
struct OptionSet {
    lowerdir: Option<Vec<PathBuf>>,
    upperdir: Option<PathBuf>,
    fsname: Option<String>,
    /// Every other setting. `read_only` is the `ro` flag alone, and `layers` and
    /// `fsname` are empty until `resolve` fills them in.
    mount: MountOptions,
}

impl OptionSet {
    /// Applies every option of every `-o` argument in order, so later ones override.
    fn parse(opts: &[String]) -> Result<Self, OptionsError> {
        let mount = MountOptions {
            layers: Vec::new(),
            workdir: None,
            read_only: false,
            allow_other: false,
            suid: false,
            dev: false,
            exec: true,
            noatime: false,
            sync: false,
            dirsync: false,
            fsname: String::new(),
            whiteout: Format::default(),
            volatile: false,
            threads: None,
            uid_mapping: None,
            gid_mapping: None,
        };
        let mut set = OptionSet {
            lowerdir: None,
            upperdir: None,
            fsname: None,
            mount,
        };
        for arg in opts {
            for option in split_unescaped(arg, ',') {
                if !option.is_empty() {
                    set.apply(option)?;
                }
            }
        }
        Ok(set)
    }

    /// Builds the layer list from `upperdir`/`lowerdir`, or else from SOURCE.
    fn layers(&self, source: Option<&str>) -> Result<Vec<LayerSpec>, OptionsError> {
        if let Some(lowerdir) = &self.lowerdir {
            let upper = self.upperdir.iter().map(|path| LayerSpec {
                path: path.clone(),
                writable: true,
            });
            let lower = lowerdir.iter().map(|path| LayerSpec {
                path: path.clone(),
                writable: false,
            });
            return Ok(upper.chain(lower).collect());
        }
        if let Some(upperdir) = &self.upperdir {
            return Err(OptionsError::UpperWithoutLower {
                upperdir: upperdir.display().to_string(),
            });
        }
        match source {
            Some(spec) => parse_layers(spec),
            None => Err(OptionsError::MissingLayers),
        }
    }

    /// Applies one option, written `name` or `name=value` with escapes still in place.
    fn apply(&mut self, option: &str) -> Result<(), OptionsError> {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        if IGNORED.contains(&name) || name.starts_with("x-") {
            return Ok(());
        }
        if UNSUPPORTED.contains(&name) {
            return Err(OptionsError::Unsupported {
                option: option.to_string(),
            });
        }

        match value {
            None => self.apply_flag(name),
            Some(value) if FLAGS.contains(&name) => Err(OptionsError::UnexpectedValue {
                option: name.to_string(),
                value: value.to_string(),
            }),
            Some(value) => self.apply_value(name, value),
        }
    }

    fn apply_flag(&mut self, name: &str) -> Result<(), OptionsError> {
        match name {
            "allow_other" => self.mount.allow_other = true,
            "ro" | "rw" => self.mount.read_only = name == "ro",
            "suid" | "nosuid" => self.mount.suid = name == "suid",
            "dev" | "nodev" => self.mount.dev = name == "dev",
            "exec" | "noexec" => self.mount.exec = name == "exec",
            "noatime" => self.mount.noatime = true,
            "atime" | "relatime" | "strictatime" => self.mount.noatime = false,
            // NOTE: accepted but not recorded, so directory atimes follow the file setting.
            "nodiratime" => {}
            "sync" | "async" => self.mount.sync = name == "sync",
            "dirsync" => self.mount.dirsync = true,
            "volatile" => self.mount.volatile = true,
            _ => return Err(bare_option_error(name)),
        }
        Ok(())
    }

    fn apply_value(&mut self, name: &str, raw: &str) -> Result<(), OptionsError> {
        if name == "lowerdir" {
            self.lowerdir = Some(parse_lowerdir(raw)?);
            return Ok(());
        }

        let value = unescape(raw)?;
        let invalid = |expected| OptionsError::InvalidValue {
            option: name.to_string(),
            value: value.clone(),
            expected,
        };
        match name {
            "upperdir" | "workdir" if value.is_empty() => return Err(invalid("a directory path")),
            "upperdir" => self.upperdir = Some(PathBuf::from(&value)),
            "workdir" => self.mount.workdir = Some(PathBuf::from(&value)),
            "fsname" if value.is_empty() => return Err(invalid("a non-empty name")),
            "fsname" => self.fsname = Some(value),
            "whiteout" => {
                self.mount.whiteout =
                    parse_whiteout(&value).ok_or_else(|| invalid("overlay or aufs"))?
            }
            "uidmapping" => {
                self.mount.uid_mapping =
                    Some(
                        IdMap::parse(&value).map_err(|source| OptionsError::IdMapping {
                            option: "uidmapping",
                            source,
                        })?,
                    )
            }
            "gidmapping" => {
                self.mount.gid_mapping =
                    Some(
                        IdMap::parse(&value).map_err(|source| OptionsError::IdMapping {
                            option: "gidmapping",
                            source,
                        })?,
                    )
            }
            "threads" => {
                self.mount.threads =
                    Some(parse_threads(&value).ok_or_else(|| invalid("a number from 1 to 1024"))?)
            }
            _ => {
                return Err(OptionsError::UnknownOption {
                    option: format!("{name}={raw}"),
                });
            }
        }
        Ok(())
    }
}

/// Returns the error for a bare `name`: a known option that needs a value, or an unknown one.
fn bare_option_error(name: &str) -> OptionsError {
    let expected = match name {
        "lowerdir" => "DIR[:DIR...]",
        "upperdir" | "workdir" => "DIR",
        "fsname" => "NAME",
        "whiteout" => "overlay|aufs",
        "threads" => "N",
        "uidmapping" | "gidmapping" => "CONTAINER:HOST:SIZE",
        _ => {
            return OptionsError::UnknownOption {
                option: name.to_string(),
            };
        }
    };
    OptionsError::MissingValue {
        option: name.to_string(),
        expected,
    }
}

/// Parses the value of `lowerdir=`: directories, topmost first, without `=rw`/`=ro` marks.
fn parse_lowerdir(raw: &str) -> Result<Vec<PathBuf>, OptionsError> {
    if raw.is_empty() {
        return Err(OptionsError::InvalidValue {
            option: "lowerdir".to_string(),
            value: String::new(),
            expected: "one or more directories, topmost first, as DIR[:DIR...]",
        });
    }

    let mut dirs = Vec::new();
    for (index, entry) in split_unescaped(raw, ':').into_iter().enumerate() {
        if entry.is_empty() {
            return Err(OptionsError::EmptyLayer {
                list: "lowerdir",
                position: index + 1,
                value: raw.to_string(),
            });
        }
        dirs.push(PathBuf::from(unescape(entry)?));
    }
    Ok(dirs)
}

fn parse_whiteout(value: &str) -> Option<Format> {
    match value {
        "overlay" => Some(Format::Overlay),
        "aufs" => Some(Format::Aufs),
        _ => None,
    }
}

fn parse_threads(value: &str) -> Option<usize> {
    value
        .parse()
        .ok()
        .filter(|count| (1..=MAX_THREADS).contains(count))
}

/// Returns the byte offset of the first `separator` in `text` that no backslash escapes.
fn find_unescaped(text: &str, separator: char) -> Option<usize> {
    let mut chars = text.char_indices();
    while let Some((offset, c)) = chars.next() {
        if c == '\\' {
            chars.next();
        } else if c == separator {
            return Some(offset);
        }
    }
    None
}

/// Splits `text` at every unescaped `separator`, leaving escapes in the pieces.
fn split_unescaped(text: &str, separator: char) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(offset) = find_unescaped(rest, separator) {
        pieces.push(&rest[..offset]);
        rest = &rest[offset + separator.len_utf8()..];
    }
    pieces.push(rest);
    pieces
}

/// Decodes the escapes `\\`, `\:`, `\=` and `\,` and rejects any other backslash.
fn unescape(text: &str) -> Result<String, OptionsError> {
    let mut decoded = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            decoded.push(c);
            continue;
        }
        match chars.next() {
            Some(escaped @ ('\\' | ':' | '=' | ',')) => decoded.push(escaped),
            Some(escape) => {
                return Err(OptionsError::InvalidEscape {
                    value: text.to_string(),
                    escape,
                });
            }
            None => {
                return Err(OptionsError::TrailingBackslash {
                    value: text.to_string(),
                });
            }
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests;
