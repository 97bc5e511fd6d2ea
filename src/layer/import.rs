//! Unpacking of a layer tar into a new layer directory.
//!
//! Every object is created relative to a directory descriptor that was
//! opened component by component without following symlinks, so:
//! - names with `..` or a leading `/` are rejected (`path`);
//! - a symlink in the tar cannot serve as the parent of a later entry: the
//!   walk fails on it instead of following it;
//! - a hard link's target is resolved the same way, so it names an object
//!   inside the layer;
//! - a symlink's own target is only stored, never followed.
//!
//! The tar is unpacked into a temporary sibling of the layer directory,
//! which is renamed into place once every entry is written, so a failed
//! import leaves no layer behind.
//!
//! Owners (numeric ids), modes with setuid, setgid and sticky bits,
//! modification and access times, and `SCHILY.xattr.*` PAX xattrs are
//! kept. Overlay metadata xattrs in the tar are dropped, since they would
//! change how the layer reads.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use log::warn;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::import_metadata::{Metadata, apply_xattrs, ignore_unsupported_xattr, metadata};
use super::import_whiteout::marker;
use super::path::{self, components};
use super::{Compression, LayerError};
use crate::real;
use crate::sys::xattr;

/// How to unpack a layer tar.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Keep `.wh.NAME` and `.wh..wh..opq` files as they are (AUFS format)
    /// instead of writing 0/0 devices and `trusted.overlay.opaque=y`.
    pub keep_aufs: bool,
}

/// Counts of what an import wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Entries written, whiteouts and opaque markers included.
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Overlay xattrs and AUFS metadata names that were dropped.
    pub dropped: u64,
}

/// The name errors give a layer tar read from a stream.
const TAR_NAME: &str = "the layer tar";

/// Unpacks layer tar `tarball` (plain or gzip) into the new directory
/// `dir`, which must not exist or must be empty.
pub fn import_file(
    tarball: &Path,
    dir: &Path,
    options: ImportOptions,
) -> Result<ImportSummary, LayerError> {
    let mut file = File::open(tarball)
        .map_err(|err| LayerError::io("open the layer tar", tarball.display().to_string(), err))?;
    let mut head = [0u8; 4];
    let read = read_head(&mut file, &mut head)
        .map_err(|err| LayerError::io("read", tarball.display().to_string(), err))?;
    let reader = BufReader::new(io::Cursor::new(head[..read].to_vec()).chain(file));
    let result = match Compression::detect(&head[..read]) {
        Compression::Gzip => import_into(flate2::read::MultiGzDecoder::new(reader), dir, options),
        Compression::None => import_into(reader, dir, options),
        Compression::Zstd => Err(LayerError::Zstd {
            path: tarball.display().to_string(),
        }),
    };
    // Put the file name in place of the unpacker's "the layer tar".
    result.map_err(|err| match err {
        LayerError::Io {
            action,
            entry,
            source,
        } if entry == TAR_NAME => LayerError::io(action, tarball.display().to_string(), source),
        other => other,
    })
}

/// Reads up to `head.len()` bytes, fewer only at end of file.
fn read_head(file: &mut File, head: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

/// Unpacks the uncompressed tar stream `reader` into the new directory
/// `dir` through a temporary sibling, renamed into place on success.
pub fn import_into<R: Read>(
    reader: R,
    dir: &Path,
    options: ImportOptions,
) -> Result<ImportSummary, LayerError> {
    let staging = staging_dir(dir)?;
    let result = unpack(reader, &staging, options).and_then(|summary| {
        std::fs::rename(&staging, dir).map_err(|err| {
            let err = match err.raw_os_error() {
                Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => io::Error::new(
                    err.kind(),
                    "the directory is not empty; give a new or empty directory",
                ),
                _ => err,
            };
            LayerError::io("move the unpacked layer to", dir.display().to_string(), err)
        })?;
        Ok(summary)
    });
    if result.is_err() {
        if let Err(err) = std::fs::remove_dir_all(&staging) {
            warn!(
                "cannot remove the unfinished layer {}: {err}",
                staging.display()
            );
        }
    }
    result
}

/// Creates an empty temporary directory beside `dir`, after checking that
/// `dir` is absent or an empty directory.
fn staging_dir(dir: &Path) -> Result<PathBuf, LayerError> {
    let display_name = dir.display().to_string();
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = std::fs::read_dir(dir)
                .map_err(|err| LayerError::io("read the directory", display_name.clone(), err))?;
            if entries.next().is_some() {
                return Err(LayerError::Usage(format!(
                    "{display_name} is not empty; give a new or empty directory for the layer"
                )));
            }
        }
        Ok(_) => {
            return Err(LayerError::Usage(format!(
                "{display_name} exists and is not a directory; give a new or empty directory for the layer"
            )));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(LayerError::io("check", display_name, err)),
    }
    let name = dir.file_name().ok_or_else(|| {
        LayerError::Usage(format!(
            "{display_name} has no final component; name a directory"
        ))
    })?;
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let prefix = format!(".{}.import-", name.to_string_lossy());
    let staging = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)
        .map_err(|err| LayerError::io("create a directory in", parent.display().to_string(), err))?
        .keep();
    std::fs::set_permissions(
        &staging,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|err| LayerError::io("set the mode of", staging.display().to_string(), err))?;
    Ok(staging)
}

/// Unpacks the uncompressed tar stream `reader` into the existing empty
/// directory `root`.
pub fn unpack<R: Read>(
    reader: R,
    root: &Path,
    options: ImportOptions,
) -> Result<ImportSummary, LayerError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|err| LayerError::io("open", root.display().to_string(), err.into()))?;
    let mut unpacker = Unpacker {
        root: root_fd,
        options,
        summary: ImportSummary::default(),
        directory_times: Vec::new(),
        whiteouts: HashSet::new(),
        warned_chown: false,
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|err| LayerError::io("read", TAR_NAME, err))?;
    for entry in entries {
        let entry = entry.map_err(|err| LayerError::io("read an entry of", TAR_NAME, err))?;
        unpacker.entry(entry)?;
    }
    unpacker.set_directory_times()?;
    Ok(unpacker.summary)
}

pub(super) struct Unpacker {
    pub(super) root: OwnedFd,
    options: ImportOptions,
    pub(super) summary: ImportSummary,
    /// Directories whose times are set at the end, after their entries.
    directory_times: Vec<(Vec<OsString>, TimeSpec, TimeSpec)>,
    /// Paths holding a 0/0 device whiteout written by this import.
    pub(super) whiteouts: HashSet<Vec<OsString>>,
    pub(super) warned_chown: bool,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw_name = entry.path_bytes().into_owned();
        let display_name = String::from_utf8_lossy(&raw_name).into_owned();
        let parts =
            components(&raw_name).map_err(|reason| LayerError::invalid(&display_name, reason))?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let meta = metadata(&mut entry, &display_name, &mut self.summary)?;

        let Some((name, parent_parts)) = parts.split_last() else {
            return self.root_entry(kind, &meta, &display_name);
        };
        if !self.options.keep_aufs {
            if let Some(marker) =
                marker(name).map_err(|reason| LayerError::invalid(&display_name, reason))?
            {
                return self.marker(parent_parts, marker, &meta, &display_name);
            }
        }

        let parent = self.open_parent(parent_parts, &display_name)?;
        let path: Vec<OsString> = parts.clone();
        match kind {
            EntryType::Directory => {
                self.make_directory(parent.as_fd(), name, &path, &display_name)?;
                let dir = real::open_dir(parent.as_fd(), name)
                    .map_err(|err| LayerError::io("open", &display_name, err))?;
                self.apply_owner_and_mode(dir.as_fd(), None, &meta, &display_name)?;
                apply_xattrs(parent.as_fd(), name, &meta, &display_name)?;
                self.directory_times.push((path, meta.atime, meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(parent.as_fd(), name, &path, &display_name)?;
                let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
                let file = real::open_at(parent.as_fd(), name, flags, 0o600)
                    .map_err(|err| LayerError::io("create", &display_name, err))?;
                let mut file = File::from(file);
                io::copy(&mut entry, &mut file)
                    .map_err(|err| LayerError::io("write", &display_name, err))?;
                self.apply_owner_and_mode(file.as_fd(), None, &meta, &display_name)?;
                apply_xattrs(parent.as_fd(), name, &meta, &display_name)?;
                nix::sys::stat::futimens(file.as_fd(), &meta.atime, &meta.mtime)
                    .map_err(|err| LayerError::io("set the times of", &display_name, err.into()))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        LayerError::invalid(&display_name, "a symlink without a target")
                    })?
                    .into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(LayerError::invalid(
                        &display_name,
                        "a symlink with an empty or NUL-holding target",
                    ));
                }
                self.clear(parent.as_fd(), name, &path, &display_name)?;
                nix::unistd::symlinkat(
                    OsStr::from_bytes(&target),
                    parent.as_fd(),
                    name.as_os_str(),
                )
                .map_err(|err| LayerError::io("create the symlink", &display_name, err.into()))?;
                self.chown_at(parent.as_fd(), name, &meta, &display_name)?;
                apply_xattrs(parent.as_fd(), name, &meta, &display_name)?;
                nix::sys::stat::utimensat(
                    parent.as_fd(),
                    name.as_os_str(),
                    &meta.atime,
                    &meta.mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|err| LayerError::io("set the times of", &display_name, err.into()))?;
            }
            EntryType::Link => {
                self.hard_link(&mut entry, parent.as_fd(), name, &path, &display_name)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (kind_flag, device) = match kind {
                    EntryType::Char => (SFlag::S_IFCHR, device_number(&entry, &display_name)?),
                    EntryType::Block => (SFlag::S_IFBLK, device_number(&entry, &display_name)?),
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.clear(parent.as_fd(), name, &path, &display_name)?;
                nix::sys::stat::mknodat(
                    parent.as_fd(),
                    name.as_os_str(),
                    kind_flag,
                    Mode::empty(),
                    device,
                )
                .map_err(|err| {
                    LayerError::io("create the device node", &display_name, err.into())
                })?;
                let node = real::open_path(parent.as_fd(), name)
                    .map_err(|err| LayerError::io("open", &display_name, err))?;
                self.apply_owner_and_mode(
                    node.as_fd(),
                    Some((parent.as_fd(), name)),
                    &meta,
                    &display_name,
                )?;
                apply_xattrs(parent.as_fd(), name, &meta, &display_name)?;
                nix::sys::stat::utimensat(
                    parent.as_fd(),
                    name.as_os_str(),
                    &meta.atime,
                    &meta.mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|err| LayerError::io("set the times of", &display_name, err.into()))?;
            }
            other => {
                return Err(LayerError::invalid(
                    &display_name,
                    format!("unsupported entry type {other:?}"),
                ));
            }
        }
        self.summary.entries += 1;
        Ok(())
    }

    /// Applies a `./` entry's metadata to the layer's root.
    fn root_entry(
        &mut self,
        kind: EntryType,
        meta: &Metadata,
        display_name: &str,
    ) -> Result<(), LayerError> {
        if kind != EntryType::Directory {
            return Err(LayerError::invalid(
                display_name,
                "the layer's root must be a directory",
            ));
        }
        let root = real::reopen_dir(self.root.as_fd())
            .map_err(|err| LayerError::io("open", display_name, err))?;
        self.apply_owner_and_mode(root.as_fd(), None, meta, display_name)?;
        for (name, value) in &meta.xattrs {
            xattr::set(root.as_fd(), name, value, 0)
                .or_else(ignore_unsupported_xattr(name, display_name))
                .map_err(|err| LayerError::io("set an xattr of", display_name, err))?;
        }
        self.directory_times
            .push((Vec::new(), meta.atime, meta.mtime));
        self.summary.entries += 1;
        Ok(())
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[OsString],
        display_name: &str,
    ) -> Result<(), LayerError> {
        let target_raw = entry
            .link_name_bytes()
            .ok_or_else(|| LayerError::invalid(display_name, "a hard link without a target"))?
            .into_owned();
        let target = components(&target_raw).map_err(|reason| {
            LayerError::invalid(display_name, format!("hard link target: {reason}"))
        })?;
        let Some((target_name, target_parent)) = target.split_last() else {
            return Err(LayerError::invalid(
                display_name,
                "a hard link to the layer's root",
            ));
        };
        if target == path {
            return Err(LayerError::invalid(display_name, "a hard link to itself"));
        }
        let target_dir = self.open_existing(target_parent, display_name)?;
        match real::stat_at(target_dir.as_fd(), target_name)
            .map_err(|err| LayerError::io("check", display_name, err))?
        {
            None => {
                return Err(LayerError::invalid(
                    display_name,
                    format!(
                        "hard link target {} is not in the layer (it must come earlier in the tar)",
                        path::display(&target)
                    ),
                ));
            }
            Some(stat) if real::is_dir(&stat) => {
                return Err(LayerError::invalid(
                    display_name,
                    "a hard link to a directory",
                ));
            }
            Some(_) => {}
        }
        self.clear(parent, name, path, display_name)?;
        nix::unistd::linkat(
            target_dir.as_fd(),
            target_name.as_os_str(),
            parent,
            name,
            AtFlags::empty(),
        )
        .map_err(|err| LayerError::io("create the hard link", display_name, err.into()))
    }

    /// Sets directory times deepest first, after every entry is written.
    fn set_directory_times(&mut self) -> Result<(), LayerError> {
        let mut times = std::mem::take(&mut self.directory_times);
        times.sort_by_key(|(path, _, _)| std::cmp::Reverse(path.len()));
        for (path, atime, mtime) in times {
            let display_name = path::display(&path);
            let dir = self.open_existing(&path, &display_name)?;
            nix::sys::stat::futimens(dir.as_fd(), &atime, &mtime)
                .map_err(|err| LayerError::io("set the times of", &display_name, err.into()))?;
        }
        Ok(())
    }
}

fn device_number<R: Read>(
    entry: &tar::Entry<'_, R>,
    display_name: &str,
) -> Result<libc::dev_t, LayerError> {
    let header = entry.header();
    let major = header
        .device_major()
        .map_err(|err| {
            LayerError::invalid(display_name, format!("invalid device major number: {err}"))
        })?
        .unwrap_or(0);
    let minor = header
        .device_minor()
        .map_err(|err| {
            LayerError::invalid(display_name, format!("invalid device minor number: {err}"))
        })?
        .unwrap_or(0);
    Ok(libc::makedev(major, minor))
}
