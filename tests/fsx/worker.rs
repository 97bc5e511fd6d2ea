//! One exerciser process: seeded random operations on one file through the
//! merged view, each checked against an in-memory model of the file.
//!
//! The file starts in a lower layer. The worker opens it read-only first and
//! keeps that descriptor for the whole run. The first operation that changes
//! the file copies it up, and every later check reads through the old
//! descriptor as well as the current read-write one.
//!
//! Two workers may share one file. Each then owns every `count`-th chunk of
//! the file, touches only its own chunks and never changes the file's size,
//! so each model stays exact while both write at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::rng::Rng;
use crate::sys;

/// The largest size a worker gives its own file, in bytes.
const MAX_SIZE: u64 = 768 * 1024;
/// The largest read, write or fallocate length, in bytes.
const MAX_LEN: u64 = 64 * 1024;
/// Operations between two checks of the whole file.
const FULL_CHECK_INTERVAL: u64 = 64;

/// The chunks one worker owns in a file shared with other workers.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    /// This worker owns chunk `c` when `c % count == index`.
    pub index: u64,
    pub count: u64,
    /// Chunk size in bytes, a multiple of the page size.
    pub chunk: u64,
}

/// What one worker process does.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    /// The file in the merged view.
    pub path: PathBuf,
    /// The same file in its lower layer, read directly for the starting model.
    pub lower: PathBuf,
    pub seed: u64,
    pub ops: u64,
    pub share: Option<Share>,
    /// Where the final model is written, for the checks after unmounting.
    pub model_out: PathBuf,
    /// Where each operation is logged before it runs, so a crash or a hang
    /// still shows the last one.
    pub op_log: PathBuf,
    /// Whether mappings through the descriptor opened before the copy-up
    /// must show the copied-up data: fresh ones, and one made at the start
    /// and kept. Kernel overlayfs maps the lower file in both cases (a
    /// documented overlayfs limitation), so for it such reads go through a
    /// fresh mapping of the current descriptor instead.
    pub old_fd_mmap: bool,
}

impl Spec {
    /// Encodes the spec as command-line arguments for a worker process.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            self.name.clone().into(),
            "--path".into(),
            self.path.clone().into(),
            "--lower".into(),
            self.lower.clone().into(),
            "--seed".into(),
            self.seed.to_string().into(),
            "--ops".into(),
            self.ops.to_string().into(),
            "--model-out".into(),
            self.model_out.clone().into(),
            "--op-log".into(),
            self.op_log.clone().into(),
            "--old-fd-mmap".into(),
            self.old_fd_mmap.to_string().into(),
        ];
        if let Some(share) = self.share {
            args.push("--share".into());
            args.push(format!("{}/{}/{}", share.index, share.count, share.chunk).into());
        }
        args
    }

    /// Decodes the arguments written by [`Spec::to_args`].
    pub fn from_args(args: &[OsString]) -> Result<Spec, String> {
        let mut values = BTreeMap::new();
        let mut iter = args.iter();
        while let Some(key) = iter.next() {
            let key = key.to_string_lossy().into_owned();
            let value = iter
                .next()
                .ok_or_else(|| format!("worker argument {key} has no value"))?;
            values.insert(key, value.clone());
        }
        let take = |key: &str| {
            values
                .get(key)
                .cloned()
                .ok_or_else(|| format!("worker argument {key} is missing"))
        };
        let number = |key: &str| -> Result<u64, String> {
            let text = take(key)?.to_string_lossy().into_owned();
            text.parse()
                .map_err(|_| format!("worker argument {key}={text} is not a number"))
        };
        let share = match values.get("--share") {
            None => None,
            Some(text) => {
                let text = text.to_string_lossy();
                let parts: Vec<u64> = text
                    .split('/')
                    .map(|part| part.parse().map_err(|_| format!("invalid --share {text}")))
                    .collect::<Result<_, _>>()?;
                match parts[..] {
                    [index, count, chunk] => Some(Share {
                        index,
                        count,
                        chunk,
                    }),
                    _ => {
                        return Err(format!(
                            "invalid --share {text}: expected INDEX/COUNT/CHUNK"
                        ));
                    }
                }
            }
        };
        Ok(Spec {
            name: take("--name")?.to_string_lossy().into_owned(),
            path: take("--path")?.into(),
            lower: take("--lower")?.into(),
            seed: number("--seed")?,
            ops: number("--ops")?,
            share,
            model_out: take("--model-out")?.into(),
            op_log: take("--op-log")?.into(),
            old_fd_mmap: take("--old-fd-mmap")? == "true",
        })
    }
}

/// Which descriptor an operation goes through.
#[derive(Clone, Copy, Debug)]
enum Fd {
    /// Opened read-only before the file was copied up.
    Old,
    /// The current read-write descriptor.
    Current,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Allocate,
    KeepSize,
    PunchHole,
    ZeroRange,
    ZeroRangeKeepSize,
    CollapseRange,
    InsertRange,
}

impl Mode {
    const ALL: [Mode; 7] = [
        Mode::Allocate,
        Mode::KeepSize,
        Mode::PunchHole,
        Mode::ZeroRange,
        Mode::ZeroRangeKeepSize,
        Mode::CollapseRange,
        Mode::InsertRange,
    ];

    fn flags(self) -> i32 {
        match self {
            Mode::Allocate => 0,
            Mode::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
            Mode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Mode::ZeroRange => libc::FALLOC_FL_ZERO_RANGE,
            Mode::ZeroRangeKeepSize => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            Mode::CollapseRange => libc::FALLOC_FL_COLLAPSE_RANGE,
            Mode::InsertRange => libc::FALLOC_FL_INSERT_RANGE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Allocate => "allocate",
            Mode::KeepSize => "keep-size",
            Mode::PunchHole => "punch-hole",
            Mode::ZeroRange => "zero-range",
            Mode::ZeroRangeKeepSize => "zero-range-keep-size",
            Mode::CollapseRange => "collapse-range",
            Mode::InsertRange => "insert-range",
        }
    }

    /// Modes that leave the file size alone, the only ones allowed on a shared file.
    fn keeps_size(self) -> bool {
        matches!(
            self,
            Mode::KeepSize | Mode::PunchHole | Mode::ZeroRangeKeepSize
        )
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Read {
        fd: Fd,
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        len: u64,
    },
    MapRead {
        fd: Fd,
        offset: u64,
        len: u64,
    },
    /// A read through the mapping made at the start, before the copy-up.
    FirstMappingRead {
        offset: u64,
        len: u64,
    },
    MapWrite {
        offset: u64,
        len: u64,
    },
    Truncate {
        size: u64,
        by_path: bool,
    },
    Fallocate {
        mode: Mode,
        offset: u64,
        len: u64,
    },
    DropCache,
    Fsync {
        data_only: bool,
    },
    Reopen {
        truncate: bool,
    },
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::MapRead { .. } => "mapread",
            Op::FirstMappingRead { .. } => "firstmapread",
            Op::MapWrite { .. } => "mapwrite",
            Op::Truncate { .. } => "truncate",
            Op::Fallocate { .. } => "fallocate",
            Op::DropCache => "dropcache",
            Op::Fsync { .. } => "fsync",
            Op::Reopen { .. } => "reopen",
        }
    }

    fn changes_file(&self) -> bool {
        !matches!(
            self,
            Op::Read { .. } | Op::MapRead { .. } | Op::FirstMappingRead { .. } | Op::DropCache
        )
    }
}

impl fmt::Display for Fd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fd::Old => "old-fd",
            Fd::Current => "current-fd",
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Read { fd, offset, len } => write!(f, "read {fd} {offset:#x} len {len:#x}"),
            Op::Write { offset, len } => write!(f, "write {offset:#x} len {len:#x}"),
            Op::MapRead { fd, offset, len } => write!(f, "mapread {fd} {offset:#x} len {len:#x}"),
            Op::FirstMappingRead { offset, len } => {
                write!(f, "read through the first mapping {offset:#x} len {len:#x}")
            }
            Op::MapWrite { offset, len } => write!(f, "mapwrite {offset:#x} len {len:#x}"),
            Op::Truncate { size, by_path } => {
                let how = if by_path { "truncate(2)" } else { "ftruncate" };
                write!(f, "{how} to {size:#x}")
            }
            Op::Fallocate { mode, offset, len } => {
                write!(f, "fallocate {} {offset:#x} len {len:#x}", mode.name())
            }
            Op::DropCache => f.write_str("posix_fadvise DONTNEED"),
            Op::Fsync { data_only: false } => f.write_str("fsync"),
            Op::Fsync { data_only: true } => f.write_str("fdatasync"),
            Op::Reopen { truncate: false } => f.write_str("reopen O_RDWR"),
            Op::Reopen { truncate: true } => f.write_str("reopen O_RDWR|O_TRUNC"),
        }
    }
}

/// Runs the worker described by `args` and returns the process exit code.
pub fn main(args: &[OsString]) -> i32 {
    let spec = match Spec::from_args(args) {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("fsx worker: {err}");
            return 2;
        }
    };
    let name = spec.name.clone();
    match Worker::start(spec).and_then(|mut worker| worker.run()) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(err) => {
            eprintln!("fsx worker {name}: {err}");
            1
        }
    }
}

struct Worker {
    spec: Spec,
    rng: Rng,
    model: Vec<u8>,
    /// Opened read-only before any copy-up, and kept open for the whole run.
    old: File,
    /// A shared mapping of the starting content through `old`, made before
    /// the copy-up and kept for the whole run. It exists only when
    /// `Spec::old_fd_mmap` is set.
    first_mapping: Option<sys::Mapping>,
    /// Length of the starting content, the extent of `first_mapping`.
    first_mapping_len: u64,
    current: Option<File>,
    op_log: File,
    unsupported: BTreeSet<Mode>,
    counts: BTreeMap<&'static str, u64>,
    /// Index of the first operation allowed to change the file.
    first_change: u64,
    /// Whether an operation changed the file, and so copied it up.
    changed: bool,
    /// The filesystem block size, which collapse and insert ranges must be
    /// multiples of.
    block: u64,
}

impl Worker {
    fn start(spec: Spec) -> Result<Worker, String> {
        let model = std::fs::read(&spec.lower).map_err(|err| {
            format!(
                "cannot read lower-layer file {}: {err}",
                spec.lower.display()
            )
        })?;
        let old = File::open(&spec.path)
            .map_err(|err| format!("cannot open {} read-only: {err}", spec.path.display()))?;
        let op_log = File::create(&spec.op_log)
            .map_err(|err| format!("cannot create {}: {err}", spec.op_log.display()))?;
        let first_mapping_len = model.len() as u64;
        let first_mapping = if spec.old_fd_mmap && first_mapping_len > 0 {
            let mapping = sys::Mapping::new(&old, 0, model.len(), false)
                .map_err(|err| format!("cannot map {}: {err}", spec.path.display()))?;
            Some(mapping)
        } else {
            None
        };
        let block = std::fs::metadata(&spec.lower)
            .map_err(|err| format!("cannot stat {}: {err}", spec.lower.display()))?
            .blksize();
        let mut rng = Rng::new(spec.seed);
        // Start with a few read-only operations, so the copy-up happens mid-run.
        let first_change = rng.below(spec.ops.min(24) + 1);
        Ok(Worker {
            spec,
            rng,
            model,
            old,
            first_mapping,
            first_mapping_len,
            block,
            current: None,
            op_log,
            unsupported: BTreeSet::new(),
            counts: BTreeMap::new(),
            first_change,
            changed: false,
        })
    }

    fn run(&mut self) -> Result<String, String> {
        self.check_all(Fd::Old, "the starting content")?;
        for index in 0..self.spec.ops {
            let op = self.pick(index >= self.first_change);
            self.changed |= op.changes_file();
            writeln!(self.op_log, "{index} {op}").map_err(|err| format!("cannot log: {err}"))?;
            self.apply(op)
                .and_then(|()| self.check_size())
                .and_then(|()| {
                    if index % FULL_CHECK_INTERVAL == FULL_CHECK_INTERVAL - 1 {
                        self.check_all(Fd::Old, "the periodic check")?;
                        self.check_all(Fd::Current, "the periodic check")
                    } else {
                        Ok(())
                    }
                })
                .map_err(|err| format!("operation {index} ({op}): {err}"))?;
            *self.counts.entry(op.kind()).or_default() += 1;
        }
        self.finish()
    }

    fn finish(&mut self) -> Result<String, String> {
        let fresh = File::open(&self.spec.path)
            .map_err(|err| format!("cannot reopen {}: {err}", self.spec.path.display()))?;
        self.current = Some(fresh);
        self.check_all(Fd::Current, "the final check")?;
        self.check_all(Fd::Old, "the final check")?;
        std::fs::write(&self.spec.model_out, &self.model)
            .map_err(|err| format!("cannot write {}: {err}", self.spec.model_out.display()))?;

        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(kind, count)| format!("{kind}:{count}"))
            .collect();
        let unsupported: Vec<&str> = self.unsupported.iter().map(|mode| mode.name()).collect();
        Ok(format!(
            "fsx-summary ops={} first_change={} counts={} unsupported={}",
            self.spec.ops,
            self.first_change,
            counts.join(","),
            unsupported.join(",")
        ))
    }

    fn size(&self) -> u64 {
        self.model.len() as u64
    }

    fn file(&self, fd: Fd) -> &File {
        match (fd, &self.current) {
            (Fd::Current, Some(file)) => file,
            _ => &self.old,
        }
    }

    /// Returns the read-write descriptor, opening it (and so copying the
    /// file up) on first use.
    fn current(&mut self) -> Result<&File, String> {
        if self.current.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.spec.path)
                .map_err(|err| {
                    format!("cannot open {} read-write: {err}", self.spec.path.display())
                })?;
            self.current = Some(file);
        }
        Ok(self.current.as_ref().unwrap())
    }

    // ---- choosing operations ----

    fn pick(&mut self, may_change: bool) -> Op {
        loop {
            let op = match self.spec.share {
                Some(share) => self.pick_shared(share),
                None => self.pick_own(),
            };
            if let Some(op) = op {
                if may_change || !op.changes_file() {
                    return op;
                }
            }
        }
    }

    fn pick_fd(&mut self) -> Fd {
        if self.rng.chance(1, 2) {
            Fd::Old
        } else {
            Fd::Current
        }
    }

    /// Picks a length from 1 to `max`, short more often than long.
    fn pick_len(&mut self, max: u64) -> u64 {
        let limit = if self.rng.chance(1, 2) {
            max.min(4096)
        } else {
            max
        };
        self.rng.between(1, limit.max(1))
    }

    /// Picks an operation on a file this worker owns alone.
    fn pick_own(&mut self) -> Option<Op> {
        let size = self.size();
        let roll = self.rng.below(100);
        let op = match roll {
            0..14 => {
                let offset = self.rng.below(size + MAX_LEN / 4 + 1);
                let len = self.pick_len(MAX_LEN);
                Op::Read {
                    fd: self.pick_fd(),
                    offset,
                    len,
                }
            }
            14..18 => {
                let limit = size.min(self.first_mapping_len);
                if limit == 0 {
                    return None;
                }
                let offset = self.rng.below(limit);
                let len = self.pick_len((limit - offset).min(MAX_LEN));
                Op::FirstMappingRead { offset, len }
            }
            18..38 => {
                let (offset, len) = self.pick_range_to_write();
                Op::Write { offset, len }
            }
            38..48 => {
                if size == 0 {
                    return None;
                }
                let offset = self.rng.below(size);
                let len = self.pick_len((size - offset).min(MAX_LEN));
                Op::MapRead {
                    fd: self.pick_fd(),
                    offset,
                    len,
                }
            }
            48..58 => {
                let (offset, len) = self.pick_range_to_write();
                Op::MapWrite { offset, len }
            }
            58..66 => {
                let size = match self.rng.below(3) {
                    0 => self.rng.below(size + 1),
                    1 => self.rng.between(size, MAX_SIZE),
                    _ => self.rng.below(MAX_SIZE + 1),
                };
                Op::Truncate {
                    size,
                    by_path: self.rng.chance(1, 3),
                }
            }
            66..83 => return self.pick_fallocate(),
            83..89 => Op::DropCache,
            89..92 => Op::Fsync {
                data_only: self.rng.chance(1, 2),
            },
            _ => Op::Reopen {
                truncate: self.rng.chance(1, 10),
            },
        };
        Some(op)
    }

    fn pick_range_to_write(&mut self) -> (u64, u64) {
        let len = self.pick_len(MAX_LEN);
        let size = self.size();
        let offset = if size > 0 && self.rng.chance(1, 2) {
            self.rng.below(size)
        } else {
            self.rng.below(MAX_SIZE - len + 1)
        };
        (offset, len.min(MAX_SIZE - offset))
    }

    fn pick_fallocate(&mut self) -> Option<Op> {
        let mode = Mode::ALL[self.rng.below(Mode::ALL.len() as u64) as usize];
        if self.unsupported.contains(&mode) {
            return None;
        }
        let size = self.size();
        let (offset, len) = match mode {
            Mode::CollapseRange => {
                // The range must be block-aligned and end before end of file.
                let blocks = size / self.block;
                if blocks < 2 {
                    return None;
                }
                let start = self.rng.below(blocks - 1);
                let count = self.rng.between(1, (blocks - 1 - start).min(16));
                (start * self.block, count * self.block)
            }
            Mode::InsertRange => {
                // The offset must be block-aligned and inside the file.
                if size == 0 {
                    return None;
                }
                let start = self.rng.below(size.div_ceil(self.block));
                let count = self.rng.between(1, 16);
                if size + count * self.block > MAX_SIZE || start * self.block >= size {
                    return None;
                }
                (start * self.block, count * self.block)
            }
            _ => self.pick_range_to_write(),
        };
        Some(Op::Fallocate { mode, offset, len })
    }

    /// Picks an operation on this worker's own chunks of a shared file. None
    /// of these operations changes the file size.
    fn pick_shared(&mut self, share: Share) -> Option<Op> {
        let chunks = self.size() / share.chunk;
        let owned = (chunks + share.count - 1 - share.index) / share.count;
        if owned == 0 {
            return Some(Op::DropCache);
        }
        let chunk = (self.rng.below(owned) * share.count + share.index) * share.chunk;
        let offset = chunk + self.rng.below(share.chunk);
        let len = self.pick_len((chunk + share.chunk - offset).min(MAX_LEN));
        let op = match self.rng.below(100) {
            0..17 => Op::Read {
                fd: self.pick_fd(),
                offset,
                len,
            },
            17..22 => Op::FirstMappingRead { offset, len },
            22..48 => Op::Write { offset, len },
            48..62 => Op::MapRead {
                fd: self.pick_fd(),
                offset,
                len,
            },
            62..76 => Op::MapWrite { offset, len },
            76..88 => {
                let modes: Vec<Mode> = Mode::ALL
                    .into_iter()
                    .filter(|mode| mode.keeps_size() && !self.unsupported.contains(mode))
                    .collect();
                if modes.is_empty() {
                    return None;
                }
                let mode = modes[self.rng.below(modes.len() as u64) as usize];
                Op::Fallocate { mode, offset, len }
            }
            88..94 => Op::DropCache,
            94..97 => Op::Fsync {
                data_only: self.rng.chance(1, 2),
            },
            _ => Op::Reopen { truncate: false },
        };
        Some(op)
    }

    // ---- applying operations to the file and the model ----

    fn apply(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Read { fd, offset, len } => self.compare(self.file(fd), offset, len, "read"),
            Op::MapRead {
                mut fd,
                offset,
                len,
            } => {
                if !self.spec.old_fd_mmap && self.changed {
                    self.current()?;
                    fd = Fd::Current;
                }
                let data = sys::map_read(self.file(fd), offset, len as usize)
                    .map_err(|err| format!("mmap read failed: {err}"))?;
                self.compare_bytes(&data, offset, len, "mmap read")
            }
            Op::FirstMappingRead { offset, len } => match &self.first_mapping {
                Some(mapping) => {
                    let data = mapping.bytes()[offset as usize..(offset + len) as usize].to_vec();
                    self.compare_bytes(&data, offset, len, "reading the first mapping")
                }
                // Without the first mapping, read through a fresh one, as
                // MapRead does, so that the operation sequence stays the same.
                None => self.apply(Op::MapRead {
                    fd: Fd::Old,
                    offset,
                    len,
                }),
            },
            Op::Write { offset, len } => {
                let data = self.random_bytes(len);
                self.current()?
                    .write_all_at(&data, offset)
                    .map_err(|err| format!("pwrite failed: {err}"))?;
                self.model_write(offset, &data);
                self.check_written(offset, len)
            }
            Op::MapWrite { offset, len } => {
                let data = self.random_bytes(len);
                let end = offset + len;
                if end > self.size() {
                    self.current()?.set_len(end).map_err(|err| {
                        format!("ftruncate to {end:#x} before mmap failed: {err}")
                    })?;
                    self.model.resize(end as usize, 0);
                }
                sys::map_write(self.current()?, offset, &data)
                    .map_err(|err| format!("mmap write failed: {err}"))?;
                self.model_write(offset, &data);
                self.check_written(offset, len)
            }
            Op::Truncate { size, by_path } => {
                let old_size = self.size();
                let result = if by_path {
                    sys::truncate_path(&self.spec.path, size)
                } else {
                    self.current()?.set_len(size)
                };
                result.map_err(|err| format!("truncate failed: {err}"))?;
                self.model.resize(size as usize, 0);
                if size > old_size {
                    self.check_written(old_size, size - old_size)?;
                }
                Ok(())
            }
            Op::Fallocate { mode, offset, len } => self.fallocate(mode, offset, len),
            Op::DropCache => {
                sys::drop_cache(&self.old).map_err(|err| format!("posix_fadvise failed: {err}"))?;
                if let Some(file) = &self.current {
                    sys::drop_cache(file).map_err(|err| format!("posix_fadvise failed: {err}"))?;
                }
                Ok(())
            }
            Op::Fsync { data_only } => {
                let file = self.current()?;
                let result = if data_only {
                    file.sync_data()
                } else {
                    file.sync_all()
                };
                result.map_err(|err| format!("fsync failed: {err}"))
            }
            Op::Reopen { truncate } => {
                self.current = None;
                let flags = if truncate { libc::O_TRUNC } else { 0 };
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(flags)
                    .open(&self.spec.path)
                    .map_err(|err| format!("open failed: {err}"))?;
                self.current = Some(file);
                if truncate {
                    self.model.clear();
                }
                Ok(())
            }
        }
    }

    fn fallocate(&mut self, mode: Mode, offset: u64, len: u64) -> Result<(), String> {
        let result = sys::fallocate(self.current()?, mode.flags(), offset, len);
        if let Err(err) = result {
            if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                // Not every filesystem supports every mode, and a rejected
                // call must leave the file unchanged.
                self.unsupported.insert(mode);
                return self.check_all(Fd::Current, "an unsupported fallocate");
            }
            return Err(format!("fallocate failed: {err}"));
        }

        let size = self.size();
        let end = offset + len;
        match mode {
            Mode::Allocate | Mode::ZeroRange if end > size => self.model.resize(end as usize, 0),
            _ => {}
        }
        match mode {
            Mode::PunchHole | Mode::ZeroRange | Mode::ZeroRangeKeepSize => {
                let stop = end.min(self.size());
                if offset < stop {
                    self.model[offset as usize..stop as usize].fill(0);
                }
            }
            Mode::CollapseRange => {
                self.model.drain(offset as usize..end as usize);
            }
            Mode::InsertRange => {
                let zeros = std::iter::repeat_n(0u8, len as usize);
                self.model.splice(offset as usize..offset as usize, zeros);
            }
            Mode::Allocate | Mode::KeepSize => {}
        }
        match mode {
            Mode::CollapseRange | Mode::InsertRange => self.check_all(Fd::Old, "the shifted file"),
            _ => self.check_written(offset, len.min(self.size().saturating_sub(offset))),
        }
    }

    fn model_write(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if end > self.model.len() {
            self.model.resize(end, 0);
        }
        self.model[offset as usize..end].copy_from_slice(data);
    }

    fn random_bytes(&mut self, len: u64) -> Vec<u8> {
        let mut data = vec![0u8; len as usize];
        self.rng.fill(&mut data);
        data
    }

    // ---- checks ----

    /// Checks a range just changed, through the descriptor opened before
    /// the copy-up, which must see the new data too.
    fn check_written(&self, offset: u64, len: u64) -> Result<(), String> {
        self.compare(
            &self.old,
            offset,
            len,
            "reading back through the old descriptor",
        )
    }

    /// Checks the whole file, or on a shared file every chunk this worker owns.
    fn check_all(&self, fd: Fd, context: &str) -> Result<(), String> {
        let context = format!("{context} through the {fd}");
        let Some(share) = self.spec.share else {
            return self.compare(self.file(fd), 0, self.size(), &context);
        };
        let chunks = self.size().div_ceil(share.chunk);
        for chunk in (share.index..chunks).step_by(share.count as usize) {
            let offset = chunk * share.chunk;
            let len = share.chunk.min(self.size() - offset);
            self.compare(self.file(fd), offset, len, &context)?;
        }
        Ok(())
    }

    fn check_size(&self) -> Result<(), String> {
        let expected = self.size();
        let by_fd = self
            .old
            .metadata()
            .map_err(|err| format!("fstat failed: {err}"))?
            .len();
        if by_fd != expected {
            return Err(format!("fstat size {by_fd:#x}, expected {expected:#x}"));
        }
        let by_path = std::fs::metadata(&self.spec.path)
            .map_err(|err| format!("stat failed: {err}"))?
            .len();
        if by_path != expected {
            return Err(format!("stat size {by_path:#x}, expected {expected:#x}"));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` with pread and compares them with the model.
    fn compare(&self, file: &File, offset: u64, len: u64, context: &str) -> Result<(), String> {
        let data = sys::read_at(file, offset, len as usize)
            .map_err(|err| format!("{context}: pread failed: {err}"))?;
        self.compare_bytes(&data, offset, len, context)
    }

    fn compare_bytes(
        &self,
        data: &[u8],
        offset: u64,
        len: u64,
        context: &str,
    ) -> Result<(), String> {
        let size = self.size();
        let start = offset.min(size) as usize;
        let end = (offset + len).min(size) as usize;
        let expected = &self.model[start..end];
        if data == expected {
            return Ok(());
        }
        if data.len() != expected.len() {
            return Err(format!(
                "{context}: got {:#x} bytes at {offset:#x}, expected {:#x} (model size {size:#x})",
                data.len(),
                expected.len()
            ));
        }
        let differing: Vec<usize> = (0..data.len())
            .filter(|&i| data[i] != expected[i])
            .collect();
        let first = differing[0];
        let last = differing[differing.len() - 1];
        Err(format!(
            "{context}: {} of {:#x} bytes differ from the model, first at {:#x} \
             (got {:#04x}, expected {:#04x}), last at {:#x}; got {}, expected {}",
            differing.len(),
            data.len(),
            offset as usize + first,
            data[first],
            expected[first],
            offset as usize + last,
            preview(&data[first..]),
            preview(&expected[first..]),
        ))
    }
}

/// The first bytes of `bytes` in hex, to show in a mismatch message.
fn preview(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes
        .iter()
        .take(16)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    shown.join("")
}
