//! Operations on a merged view, their text form (one a line, as a failure
//! prints them and a regression test lists them), and how each runs on one
//! mount.
//!
//! Paths are relative to the mount root, and `.` is the root. No operation
//! follows a symlink in its last component: they use `O_NOFOLLOW`,
//! `lchown`, `AT_SYMLINK_NOFOLLOW` and the `l*xattr` calls, and truncate and
//! chmod skip symlinks. Paths are built from names that the snapshot found
//! without following links, so no symlink leads outside the mount.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::layers::{parse_mode, pattern};
use crate::sys::{self, SysResult, Time};

/// How `write` opens its file, besides `O_WRONLY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    Plain,
    Trunc,
    Append,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallocateMode {
    Allocate,
    KeepSize,
    PunchHole,
    ZeroRange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldMode {
    ReadOnly,
    ReadWrite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    Create,
    Replace,
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// open(O_CREAT|O_WRONLY), with O_EXCL when `exclusive`.
    Create {
        path: String,
        mode: u32,
        exclusive: bool,
    },
    /// open(O_WRONLY) with `open` flags, then pwrite (write for append).
    Write {
        path: String,
        open: OpenMode,
        offset: u64,
        length: u64,
        seed: u64,
    },
    Truncate {
        path: String,
        length: u64,
    },
    Fallocate {
        path: String,
        mode: FallocateMode,
        offset: u64,
        length: u64,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Utimes {
        path: String,
        atime: Time,
        mtime: Time,
    },
    SetXattr {
        path: String,
        name: String,
        value: String,
        mode: XattrMode,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        mode: RenameMode,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    /// Reads `skip` entries, seeks back to the position after `back` of
    /// them, and reads to the end.
    Readdir {
        path: String,
        skip: u32,
        back: u32,
    },
    /// Like `Readdir`, but creates `add` and unlinks `remove` in the
    /// directory between reading and seeking.
    ReaddirChanging {
        path: String,
        skip: u32,
        back: u32,
        add: String,
        remove: String,
    },
    Read {
        path: String,
        offset: u64,
        length: u64,
    },
    /// Opens `path` and keeps the descriptor in `slot` for later operations.
    Hold {
        slot: u8,
        path: String,
        mode: HoldMode,
    },
    ReadHeld {
        slot: u8,
        offset: u64,
        length: u64,
    },
    WriteHeld {
        slot: u8,
        offset: u64,
        length: u64,
        seed: u64,
    },
    TruncateHeld {
        slot: u8,
        length: u64,
    },
    StatHeld {
        slot: u8,
    },
    Close {
        slot: u8,
    },
}

fn time_text(time: Time) -> String {
    match time {
        Time::Now => "now".to_string(),
        Time::Omit => "omit".to_string(),
        Time::At(seconds, nanoseconds) => format!("{seconds}.{nanoseconds:09}"),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create {
                path,
                mode,
                exclusive,
            } => {
                write!(
                    f,
                    "create {path} {mode:04o} {}",
                    if *exclusive { "excl" } else { "-" }
                )
            }
            Op::Write {
                path,
                open,
                offset,
                length,
                seed,
            } => {
                let open = match open {
                    OpenMode::Plain => "plain",
                    OpenMode::Trunc => "trunc",
                    OpenMode::Append => "append",
                };
                write!(f, "write {path} {open} {offset} {length} {seed}")
            }
            Op::Truncate { path, length } => write!(f, "truncate {path} {length}"),
            Op::Fallocate {
                path,
                mode,
                offset,
                length,
            } => {
                let mode = match mode {
                    FallocateMode::Allocate => "allocate",
                    FallocateMode::KeepSize => "keep-size",
                    FallocateMode::PunchHole => "punch-hole",
                    FallocateMode::ZeroRange => "zero-range",
                };
                write!(f, "fallocate {path} {mode} {offset} {length}")
            }
            Op::Chmod { path, mode } => write!(f, "chmod {path} {mode:04o}"),
            Op::Chown { path, uid, gid } => write!(f, "chown {path} {uid} {gid}"),
            Op::Utimes { path, atime, mtime } => {
                write!(
                    f,
                    "utimes {path} {} {}",
                    time_text(*atime),
                    time_text(*mtime)
                )
            }
            Op::SetXattr {
                path,
                name,
                value,
                mode,
            } => {
                let mode = match mode {
                    XattrMode::Any => "any",
                    XattrMode::Create => "create",
                    XattrMode::Replace => "replace",
                };
                write!(f, "setxattr {path} {name} {value} {mode}")
            }
            Op::RemoveXattr { path, name } => write!(f, "removexattr {path} {name}"),
            Op::Link { from, to } => write!(f, "link {from} {to}"),
            Op::Symlink { target, path } => write!(f, "symlink {target} {path}"),
            Op::Mkdir { path, mode } => write!(f, "mkdir {path} {mode:04o}"),
            Op::Rmdir { path } => write!(f, "rmdir {path}"),
            Op::Unlink { path } => write!(f, "unlink {path}"),
            Op::Rename { from, to, mode } => {
                let mode = match mode {
                    RenameMode::Plain => "plain",
                    RenameMode::NoReplace => "noreplace",
                    RenameMode::Exchange => "exchange",
                };
                write!(f, "rename {from} {to} {mode}")
            }
            Op::Mkfifo { path, mode } => write!(f, "mkfifo {path} {mode:04o}"),
            Op::Readdir { path, skip, back } => write!(f, "readdir {path} {skip} {back}"),
            Op::ReaddirChanging {
                path,
                skip,
                back,
                add,
                remove,
            } => {
                write!(f, "readdir-changing {path} {skip} {back} {add} {remove}")
            }
            Op::Read {
                path,
                offset,
                length,
            } => write!(f, "read {path} {offset} {length}"),
            Op::Hold { slot, path, mode } => {
                let mode = match mode {
                    HoldMode::ReadOnly => "rdonly",
                    HoldMode::ReadWrite => "rdwr",
                };
                write!(f, "hold {slot} {path} {mode}")
            }
            Op::ReadHeld {
                slot,
                offset,
                length,
            } => write!(f, "read-held {slot} {offset} {length}"),
            Op::WriteHeld {
                slot,
                offset,
                length,
                seed,
            } => {
                write!(f, "write-held {slot} {offset} {length} {seed}")
            }
            Op::TruncateHeld { slot, length } => write!(f, "truncate-held {slot} {length}"),
            Op::StatHeld { slot } => write!(f, "stat-held {slot}"),
            Op::Close { slot } => write!(f, "close {slot}"),
        }
    }
}

fn parse_time(text: &str) -> Result<Time, String> {
    Ok(match text {
        "now" => Time::Now,
        "omit" => Time::Omit,
        _ => {
            let (seconds, nanoseconds) = text.split_once('.').ok_or_else(|| {
                format!("invalid time {text:?}: expected now, omit or SECONDS.NANOSECONDS")
            })?;
            // The digits after the point are a decimal fraction: `.5` is
            // 500000000 nanoseconds.
            if nanoseconds.is_empty() || nanoseconds.len() > 9 {
                return Err(format!(
                    "invalid time {text:?}: expected 1 to 9 digits after the point"
                ));
            }
            Time::At(
                seconds
                    .parse()
                    .map_err(|_| format!("invalid time {text:?}"))?,
                format!("{nanoseconds:0<9}")
                    .parse()
                    .map_err(|_| format!("invalid time {text:?}"))?,
            )
        }
    })
}

/// Parses one line written by `Op`'s `Display`.
pub fn parse_op(line: &str) -> Result<Op, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let word = |index: usize| {
        words
            .get(index)
            .copied()
            .ok_or_else(|| format!("operation {line:?} has too few fields"))
    };
    let text = |index: usize| word(index).map(str::to_string);
    let number = |index: usize| {
        word(index).and_then(|value| {
            value
                .parse::<u64>()
                .map_err(|_| format!("invalid number {value:?} in {line:?}"))
        })
    };
    let small = |index: usize| number(index).map(|value| value as u32);
    let slot = |index: usize| number(index).map(|value| value as u8);
    let choice = |index: usize, names: &[&str]| {
        let value = word(index)?;
        names.iter().position(|name| *name == value).ok_or_else(|| {
            format!("invalid value {value:?} in {line:?}: expected one of {names:?}")
        })
    };
    Ok(match word(0)? {
        "create" => Op::Create {
            path: text(1)?,
            mode: parse_mode(word(2)?)?,
            exclusive: word(3)? == "excl",
        },
        "write" => Op::Write {
            path: text(1)?,
            open: [OpenMode::Plain, OpenMode::Trunc, OpenMode::Append]
                [choice(2, &["plain", "trunc", "append"])?],
            offset: number(3)?,
            length: number(4)?,
            seed: number(5)?,
        },
        "truncate" => Op::Truncate {
            path: text(1)?,
            length: number(2)?,
        },
        "fallocate" => Op::Fallocate {
            path: text(1)?,
            mode: [
                FallocateMode::Allocate,
                FallocateMode::KeepSize,
                FallocateMode::PunchHole,
                FallocateMode::ZeroRange,
            ][choice(2, &["allocate", "keep-size", "punch-hole", "zero-range"])?],
            offset: number(3)?,
            length: number(4)?,
        },
        "chmod" => Op::Chmod {
            path: text(1)?,
            mode: parse_mode(word(2)?)?,
        },
        "chown" => Op::Chown {
            path: text(1)?,
            uid: small(2)?,
            gid: small(3)?,
        },
        "utimes" => Op::Utimes {
            path: text(1)?,
            atime: parse_time(word(2)?)?,
            mtime: parse_time(word(3)?)?,
        },
        "setxattr" => Op::SetXattr {
            path: text(1)?,
            name: text(2)?,
            value: text(3)?,
            mode: [XattrMode::Any, XattrMode::Create, XattrMode::Replace]
                [choice(4, &["any", "create", "replace"])?],
        },
        "removexattr" => Op::RemoveXattr {
            path: text(1)?,
            name: text(2)?,
        },
        "link" => Op::Link {
            from: text(1)?,
            to: text(2)?,
        },
        "symlink" => Op::Symlink {
            target: text(1)?,
            path: text(2)?,
        },
        "mkdir" => Op::Mkdir {
            path: text(1)?,
            mode: parse_mode(word(2)?)?,
        },
        "rmdir" => Op::Rmdir { path: text(1)? },
        "unlink" => Op::Unlink { path: text(1)? },
        "rename" => Op::Rename {
            from: text(1)?,
            to: text(2)?,
            mode: [
                RenameMode::Plain,
                RenameMode::NoReplace,
                RenameMode::Exchange,
            ][choice(3, &["plain", "noreplace", "exchange"])?],
        },
        "mkfifo" => Op::Mkfifo {
            path: text(1)?,
            mode: parse_mode(word(2)?)?,
        },
        "readdir" => Op::Readdir {
            path: text(1)?,
            skip: small(2)?,
            back: small(3)?,
        },
        "readdir-changing" => Op::ReaddirChanging {
            path: text(1)?,
            skip: small(2)?,
            back: small(3)?,
            add: text(4)?,
            remove: text(5)?,
        },
        "read" => Op::Read {
            path: text(1)?,
            offset: number(2)?,
            length: number(3)?,
        },
        "hold" => Op::Hold {
            slot: slot(1)?,
            path: text(2)?,
            mode: [HoldMode::ReadOnly, HoldMode::ReadWrite][choice(3, &["rdonly", "rdwr"])?],
        },
        "read-held" => Op::ReadHeld {
            slot: slot(1)?,
            offset: number(2)?,
            length: number(3)?,
        },
        "write-held" => Op::WriteHeld {
            slot: slot(1)?,
            offset: number(2)?,
            length: number(3)?,
            seed: number(4)?,
        },
        "truncate-held" => Op::TruncateHeld {
            slot: slot(1)?,
            length: number(2)?,
        },
        "stat-held" => Op::StatHeld { slot: slot(1)? },
        "close" => Op::Close { slot: slot(1)? },
        other => return Err(format!("unknown operation {other:?} in {line:?}")),
    })
}

impl Op {
    /// Returns the operation's name, for grouping failures by cause.
    pub fn name(&self) -> String {
        self.to_string()
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// Descriptors kept by `hold`, closed on drop so that no open file keeps a
/// mount busy.
#[derive(Default)]
pub struct Held {
    slots: BTreeMap<u8, i32>,
}

impl Held {
    fn get(&self, slot: u8) -> SysResult<i32> {
        self.slots.get(&slot).copied().ok_or(libc::EBADF)
    }

    fn put(&mut self, slot: u8, fd: i32) {
        if let Some(old) = self.slots.insert(slot, fd) {
            sys::close(old);
        }
    }

    pub fn close_all(&mut self) {
        for (_, fd) in std::mem::take(&mut self.slots) {
            sys::close(fd);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.close_all();
    }
}

fn resolve(root: &Path, path: &str) -> PathBuf {
    if path == "." {
        root.to_path_buf()
    } else {
        root.join(path)
    }
}

fn hash_bytes(data: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut hasher);
    hasher.finish()
}

fn outcome<T>(result: SysResult<T>, show: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(value) => show(value),
        Err(errno) => sys::errno_name(errno),
    }
}

fn done(result: SysResult<()>) -> String {
    outcome(result, |()| "ok".to_string())
}

/// Opens `path` without following a symlink or blocking on a FIFO.
fn open_nofollow(path: &Path, flags: i32) -> SysResult<i32> {
    sys::open(path, flags | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)
}

fn with_fd<T>(path: &Path, flags: i32, action: impl FnOnce(i32) -> SysResult<T>) -> SysResult<T> {
    let fd = open_nofollow(path, flags)?;
    let result = action(fd);
    sys::close(fd);
    result
}

fn type_letter(d_type: u8) -> char {
    match d_type {
        libc::DT_DIR => 'd',
        libc::DT_REG => 'f',
        libc::DT_LNK => 'l',
        libc::DT_FIFO => 'p',
        libc::DT_CHR => 'c',
        libc::DT_BLK => 'b',
        libc::DT_SOCK => 's',
        _ => '?',
    }
}

/// Reads `skip` entries, seeks back to the position after `back` of them,
/// and reads to the end; `between` runs before the seek. Returns the
/// entries read before the seek and the combined listing.
fn read_with_seek(
    dir: &Path,
    skip: u32,
    back: u32,
    between: impl FnOnce(),
) -> SysResult<(Vec<sys::DirEntry>, Vec<sys::DirEntry>)> {
    let mut stream = sys::DirStream::open(dir)?;
    let mut positions = vec![stream.tell()];
    let mut first = Vec::new();
    for _ in 0..skip {
        match stream.next()? {
            Some(entry) => {
                first.push(entry);
                positions.push(stream.tell());
            }
            None => break,
        }
    }
    between();
    let back = (back as usize).min(first.len());
    stream.seek(positions[back]);
    let mut combined: Vec<sys::DirEntry> = first[..back].to_vec();
    while let Some(entry) = stream.next()? {
        combined.push(entry);
    }
    Ok((first, combined))
}

/// Lists `names` sorted, marking each with its d_type; a name listed twice
/// appears twice.
fn listing(entries: &[sys::DirEntry]) -> String {
    let mut names: Vec<String> = entries
        .iter()
        .map(|entry| {
            format!(
                "{}:{}",
                String::from_utf8_lossy(&entry.name),
                type_letter(entry.d_type)
            )
        })
        .collect();
    names.sort();
    names.join(" ")
}

/// Marks the part of a readdir result that lists names whose d_ino
/// differs from their st_ino. The harness requires that list to be empty
/// on unionfs and does not compare it with kernel overlayfs. For a name
/// that link(2) made in a directory it has not marked impure, kernel
/// overlayfs reports the upper file's inode number as d_ino, while st_ino
/// is the number of the lower file that was copied up.
pub const INODE_CHECK: &str = ", d_ino differs from st_ino: ";

/// Names (other than `.` and `..`) whose d_ino differs from their st_ino.
fn d_ino_mismatches(dir: &Path, entries: &[sys::DirEntry]) -> Vec<String> {
    entries
        .iter()
        .filter(|entry| entry.name != b"." && entry.name != b"..")
        .filter(|entry| {
            sys::lstat(&dir.join(sys::as_os_str(&entry.name)))
                .is_ok_and(|stat| stat.st_ino != entry.d_ino)
        })
        .map(|entry| String::from_utf8_lossy(&entry.name).into_owned())
        .collect()
}

fn readdir(dir: &Path, skip: u32, back: u32) -> String {
    let result = read_with_seek(dir, skip, back, || {});
    outcome(result, |(first, combined)| {
        let back = (back as usize).min(first.len());
        let reread = &combined[back..];
        let consistent = first[back..]
            .iter()
            .zip(reread.iter())
            .all(|(before, after)| before == after);
        format!(
            "listing [{}] seekdir repeats entries: {consistent}{INODE_CHECK}{:?}",
            listing(&combined),
            d_ino_mismatches(dir, &combined)
        )
    })
}

/// Reads a directory while it changes. POSIX leaves open whether entries
/// added or removed after opendir are returned, so the result keeps only
/// the names that existed throughout: each must be listed exactly once.
fn readdir_changing(dir: &Path, skip: u32, back: u32, add: &str, remove: &str) -> String {
    let before: SysResult<BTreeSet<Vec<u8>>> = (|| {
        let mut stream = sys::DirStream::open(dir)?;
        let mut names = BTreeSet::new();
        while let Some(entry) = stream.next()? {
            names.insert(entry.name);
        }
        Ok(names)
    })();
    let before = match before {
        Ok(names) => names,
        Err(errno) => return sys::errno_name(errno),
    };
    let mut changes = String::new();
    let result = read_with_seek(dir, skip, back, || {
        let created = sys::open(
            &dir.join(add),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NONBLOCK,
            0o644,
        )
        .map(sys::close);
        let removed = if remove == "-" {
            Ok(())
        } else {
            sys::unlink(&dir.join(remove))
        };
        changes = format!("create {}, unlink {}", done(created), done(removed));
    });
    outcome(result, |(_, combined)| {
        let untouched: BTreeSet<&Vec<u8>> = before
            .iter()
            .filter(|name| {
                name.as_slice() != add.as_bytes() && name.as_slice() != remove.as_bytes()
            })
            .collect();
        let mut counts: BTreeMap<&Vec<u8>, usize> =
            untouched.iter().map(|name| (*name, 0)).collect();
        for entry in &combined {
            if let Some(count) = counts.get_mut(&entry.name) {
                *count += 1;
            }
        }
        let wrong: Vec<String> = counts
            .iter()
            .filter(|(_, count)| **count != 1)
            .map(|(name, count)| format!("{} listed {count} times", String::from_utf8_lossy(name)))
            .collect();
        format!(
            "{changes}; {} untouched names, wrong: {wrong:?}",
            untouched.len()
        )
    })
}

fn stat_summary(stat: &libc::stat) -> String {
    format!(
        "mode {:o} uid {} gid {} size {} nlink {}",
        stat.st_mode, stat.st_uid, stat.st_gid, stat.st_size, stat.st_nlink
    )
}

/// Runs `op` on the mount at `root` and returns its result as text: `ok`,
/// a value, or an errno name.
pub fn apply(op: &Op, root: &Path, held: &mut Held) -> String {
    match op {
        Op::Create {
            path,
            mode,
            exclusive,
        } => {
            let mut flags = libc::O_CREAT | libc::O_WRONLY;
            if *exclusive {
                flags |= libc::O_EXCL;
            }
            let path = resolve(root, path);
            done(
                sys::open(&path, flags | libc::O_NOFOLLOW | libc::O_NONBLOCK, *mode)
                    .map(sys::close),
            )
        }
        Op::Write {
            path,
            open,
            offset,
            length,
            seed,
        } => {
            let flags = libc::O_WRONLY
                | match open {
                    OpenMode::Plain => 0,
                    OpenMode::Trunc => libc::O_TRUNC,
                    OpenMode::Append => libc::O_APPEND,
                };
            let data = pattern(*seed, *offset, *length as usize);
            let result = with_fd(&resolve(root, path), flags, |fd| match open {
                OpenMode::Append => sys::write(fd, &data),
                _ => sys::pwrite(fd, &data, *offset),
            });
            outcome(result, |written| format!("wrote {written}"))
        }
        Op::Truncate { path, length } => {
            let path = resolve(root, path);
            if sys::is_symlink(&path) {
                return "skipped: symlink".to_string();
            }
            done(sys::truncate(&path, *length))
        }
        Op::Fallocate {
            path,
            mode,
            offset,
            length,
        } => {
            let flags = match mode {
                FallocateMode::Allocate => 0,
                FallocateMode::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
                FallocateMode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                FallocateMode::ZeroRange => libc::FALLOC_FL_ZERO_RANGE,
            };
            done(with_fd(&resolve(root, path), libc::O_WRONLY, |fd| {
                sys::fallocate(fd, flags, *offset, *length)
            }))
        }
        Op::Chmod { path, mode } => {
            let path = resolve(root, path);
            if sys::is_symlink(&path) {
                return "skipped: symlink".to_string();
            }
            done(sys::chmod(&path, *mode))
        }
        Op::Chown { path, uid, gid } => done(sys::lchown(&resolve(root, path), *uid, *gid)),
        Op::Utimes { path, atime, mtime } => {
            done(sys::lutimens(&resolve(root, path), *atime, *mtime))
        }
        Op::SetXattr {
            path,
            name,
            value,
            mode,
        } => {
            let flags = match mode {
                XattrMode::Any => 0,
                XattrMode::Create => libc::XATTR_CREATE,
                XattrMode::Replace => libc::XATTR_REPLACE,
            };
            done(sys::lsetxattr(
                &resolve(root, path),
                name,
                value.as_bytes(),
                flags,
            ))
        }
        Op::RemoveXattr { path, name } => done(sys::lremovexattr(&resolve(root, path), name)),
        Op::Link { from, to } => done(sys::link(&resolve(root, from), &resolve(root, to))),
        Op::Symlink { target, path } => done(sys::symlink(target, &resolve(root, path))),
        Op::Mkdir { path, mode } => done(sys::mkdir(&resolve(root, path), *mode)),
        Op::Rmdir { path } => done(sys::rmdir(&resolve(root, path))),
        Op::Unlink { path } => done(sys::unlink(&resolve(root, path))),
        Op::Rename { from, to, mode } => {
            let flags = match mode {
                RenameMode::Plain => 0,
                RenameMode::NoReplace => libc::RENAME_NOREPLACE,
                RenameMode::Exchange => libc::RENAME_EXCHANGE,
            };
            done(sys::renameat2(
                &resolve(root, from),
                &resolve(root, to),
                flags,
            ))
        }
        Op::Mkfifo { path, mode } => {
            done(sys::mknod(&resolve(root, path), libc::S_IFIFO | mode, 0))
        }
        Op::Readdir { path, skip, back } => readdir(&resolve(root, path), *skip, *back),
        Op::ReaddirChanging {
            path,
            skip,
            back,
            add,
            remove,
        } => readdir_changing(&resolve(root, path), *skip, *back, add, remove),
        Op::Read {
            path,
            offset,
            length,
        } => {
            let result = with_fd(&resolve(root, path), libc::O_RDONLY, |fd| {
                sys::pread(fd, *length as usize, *offset)
            });
            outcome(result, |data| {
                format!("read {} bytes, hash {:x}", data.len(), hash_bytes(&data))
            })
        }
        Op::Hold { slot, path, mode } => {
            let flags = match mode {
                HoldMode::ReadOnly => libc::O_RDONLY,
                HoldMode::ReadWrite => libc::O_RDWR,
            };
            outcome(open_nofollow(&resolve(root, path), flags), |fd| {
                held.put(*slot, fd);
                "ok".to_string()
            })
        }
        Op::ReadHeld {
            slot,
            offset,
            length,
        } => {
            let result = held
                .get(*slot)
                .and_then(|fd| sys::pread(fd, *length as usize, *offset));
            outcome(result, |data| {
                format!("read {} bytes, hash {:x}", data.len(), hash_bytes(&data))
            })
        }
        Op::WriteHeld {
            slot,
            offset,
            length,
            seed,
        } => {
            let data = pattern(*seed, *offset, *length as usize);
            let result = held
                .get(*slot)
                .and_then(|fd| sys::pwrite(fd, &data, *offset));
            outcome(result, |written| format!("wrote {written}"))
        }
        Op::TruncateHeld { slot, length } => {
            done(held.get(*slot).and_then(|fd| sys::ftruncate(fd, *length)))
        }
        Op::StatHeld { slot } => outcome(held.get(*slot).and_then(sys::fstat), |stat| {
            stat_summary(&stat)
        }),
        Op::Close { slot } => match held.slots.remove(slot) {
            Some(fd) => {
                sys::close(fd);
                "ok".to_string()
            }
            None => "EBADF".to_string(),
        },
    }
}
