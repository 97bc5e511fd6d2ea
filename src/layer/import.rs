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

use log::{debug, warn};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use tar::EntryType;

use super::path::{self, components};
use super::{Compression, LayerError, META_PREFIX, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX};
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
    match Compression::detect(&head[..read]) {
        Compression::Gzip => import_into(flate2::read::MultiGzDecoder::new(reader), dir, options),
        Compression::None => import_into(reader, dir, options),
        Compression::Zstd => Err(LayerError::Zstd {
            path: tarball.display().to_string(),
        }),
    }
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
        .map_err(|err| LayerError::io("read", "the layer tar", err))?;
    for entry in entries {
        let entry =
            entry.map_err(|err| LayerError::io("read an entry of", "the layer tar", err))?;
        unpacker.entry(entry)?;
    }
    unpacker.set_directory_times()?;
    Ok(unpacker.summary)
}

/// Metadata of one entry, from its header and its PAX records.
struct Metadata {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    atime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// The meaning of an entry whose name starts with `.wh.`.
enum Marker {
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Whiteout(OsString),
    /// Another `.wh..wh.` name: AUFS metadata, not part of the layer.
    Metadata,
}

struct Unpacker {
    root: OwnedFd,
    options: ImportOptions,
    summary: ImportSummary,
    /// Directories whose times are set at the end, after their entries.
    directory_times: Vec<(Vec<OsString>, TimeSpec, TimeSpec)>,
    /// Paths holding a 0/0 device whiteout written by this import.
    whiteouts: HashSet<Vec<OsString>>,
    warned_chown: bool,
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

    /// Writes a whiteout or opaque marker in the overlay format. A whiteout
    /// device gets the marker entry's times; its owner stays root.
    fn marker(
        &mut self,
        parent_parts: &[OsString],
        marker: Marker,
        meta: &Metadata,
        display_name: &str,
    ) -> Result<(), LayerError> {
        match marker {
            Marker::Metadata => {
                debug!("dropping AUFS metadata entry {display_name}");
                self.summary.dropped += 1;
            }
            Marker::Opaque => {
                let parent = self.open_parent(parent_parts, display_name)?;
                xattr::set(parent.as_fd(), OsStr::new(OPAQUE_XATTR), b"y", 0).map_err(|err| {
                    LayerError::io("mark opaque the directory of", display_name, err)
                })?;
                self.summary.opaque_dirs += 1;
                self.summary.entries += 1;
            }
            Marker::Whiteout(target) => {
                let parent = self.open_parent(parent_parts, display_name)?;
                let mut path = parent_parts.to_vec();
                path.push(target.clone());
                match real::stat_at(parent.as_fd(), &target)
                    .map_err(|err| LayerError::io("check", display_name, err))?
                {
                    None => {
                        nix::sys::stat::mknodat(
                            parent.as_fd(),
                            target.as_os_str(),
                            SFlag::S_IFCHR,
                            Mode::empty(),
                            0,
                        )
                        .map_err(|err| {
                            LayerError::io("create the whiteout for", display_name, err.into())
                        })?;
                        nix::sys::stat::utimensat(
                            parent.as_fd(),
                            target.as_os_str(),
                            &meta.atime,
                            &meta.mtime,
                            UtimensatFlags::NoFollowSymlink,
                        )
                        .map_err(|err| {
                            LayerError::io("set the times of", display_name, err.into())
                        })?;
                        self.whiteouts.insert(path);
                    }
                    // The same layer has a directory of that name, which
                    // replaces what lies below, so it becomes opaque.
                    Some(stat) if real::is_dir(&stat) => {
                        let dir = real::open_dir(parent.as_fd(), &target)
                            .map_err(|err| LayerError::io("open", display_name, err))?;
                        xattr::set(dir.as_fd(), OsStr::new(OPAQUE_XATTR), b"y", 0).map_err(
                            |err| LayerError::io("mark opaque the target of", display_name, err),
                        )?;
                    }
                    // Any other object of that name already hides the
                    // layers below.
                    Some(_) => {}
                }
                self.summary.whiteouts += 1;
                self.summary.entries += 1;
            }
        }
        Ok(())
    }

    /// Opens the directory `parts` below the root, creating missing
    /// directories (mode 0755, owned by the caller) and never following a
    /// symlink.
    fn open_parent(
        &mut self,
        parts: &[OsString],
        display_name: &str,
    ) -> Result<OwnedFd, LayerError> {
        let mut dir = real::reopen_dir(self.root.as_fd())
            .map_err(|err| LayerError::io("open", display_name, err))?;
        for (depth, part) in parts.iter().enumerate() {
            let path = &parts[..=depth];
            match real::stat_at(dir.as_fd(), part)
                .map_err(|err| LayerError::io("check", display_name, err))?
            {
                None => {
                    self.make_directory(dir.as_fd(), part, path, display_name)?;
                    nix::sys::stat::fchmodat(
                        dir.as_fd(),
                        part.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                    .map_err(|err| LayerError::io("set the mode of", display_name, err.into()))?;
                }
                Some(stat) if real::is_dir(&stat) => {}
                Some(stat) if self.is_own_whiteout(path, &stat) => {
                    self.make_directory(dir.as_fd(), part, path, display_name)?;
                }
                Some(stat) => {
                    let what = if real::kind(&stat) == SFlag::S_IFLNK {
                        "a symlink"
                    } else {
                        "not a directory"
                    };
                    return Err(LayerError::invalid(
                        display_name,
                        format!(
                            "its parent {} is {what} in the layer; a layer tar may not place entries through it",
                            path::display(path)
                        ),
                    ));
                }
            }
            dir = real::open_dir(dir.as_fd(), part)
                .map_err(|err| LayerError::io("open", display_name, err))?;
        }
        Ok(dir)
    }

    fn is_own_whiteout(&self, path: &[OsString], stat: &nix::sys::stat::FileStat) -> bool {
        real::kind(stat) == SFlag::S_IFCHR && stat.st_rdev == 0 && self.whiteouts.contains(path)
    }

    /// Creates directory `name` in `parent` unless one exists. A whiteout
    /// this import wrote at that name is replaced, and the directory is
    /// marked opaque, since the whiteout deleted what lay below.
    fn make_directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[OsString],
        display_name: &str,
    ) -> Result<(), LayerError> {
        let mut opaque = false;
        match real::stat_at(parent, name)
            .map_err(|err| LayerError::io("check", display_name, err))?
        {
            Some(stat) if real::is_dir(&stat) => return Ok(()),
            Some(stat) => {
                opaque = self.is_own_whiteout(path, &stat);
                self.whiteouts.remove(path);
                remove(parent, name, false, display_name)?;
            }
            None => {}
        }
        nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))
            .map_err(|err| LayerError::io("create the directory", display_name, err.into()))?;
        if opaque {
            let dir = real::open_dir(parent, name)
                .map_err(|err| LayerError::io("open", display_name, err))?;
            xattr::set(dir.as_fd(), OsStr::new(OPAQUE_XATTR), b"y", 0)
                .map_err(|err| LayerError::io("mark opaque", display_name, err))?;
        }
        Ok(())
    }

    /// Removes the object at `name` before a non-directory replaces
    /// it, as tar does for a later entry of the same name.
    fn clear(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[OsString],
        display_name: &str,
    ) -> Result<(), LayerError> {
        if let Some(stat) =
            real::stat_at(parent, name).map_err(|err| LayerError::io("check", display_name, err))?
        {
            self.whiteouts.remove(path);
            remove(parent, name, real::is_dir(&stat), display_name)?;
        }
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

    /// Opens existing directory `parts` below the root without following a
    /// symlink and without creating anything.
    fn open_existing(&self, parts: &[OsString], display_name: &str) -> Result<OwnedFd, LayerError> {
        let mut dir = real::reopen_dir(self.root.as_fd())
            .map_err(|err| LayerError::io("open", display_name, err))?;
        for (depth, part) in parts.iter().enumerate() {
            dir = real::open_dir(dir.as_fd(), part).map_err(|err| {
                let reason = match err.raw_os_error() {
                    Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV) => format!(
                        "hard link target parent {} is a symlink or not a directory",
                        path::display(&parts[..=depth])
                    ),
                    _ => format!(
                        "hard link target parent {} cannot be opened: {err}",
                        path::display(&parts[..=depth])
                    ),
                };
                LayerError::invalid(display_name, reason)
            })?;
        }
        Ok(dir)
    }

    /// Sets owner, then mode, of the object `fd` refers to. `at` gives the
    /// parent and name for objects `fd` cannot change (an `O_PATH` fd).
    fn apply_owner_and_mode(
        &mut self,
        fd: BorrowedFd<'_>,
        at: Option<(BorrowedFd<'_>, &OsStr)>,
        meta: &Metadata,
        display_name: &str,
    ) -> Result<(), LayerError> {
        let owner = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        let chowned = match at {
            None => nix::unistd::fchown(fd, owner.0, owner.1),
            Some((parent, name)) => {
                nix::unistd::fchownat(parent, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)
            }
        };
        self.check_chown(chowned, display_name)?;
        // chown clears setuid and setgid, so the mode comes second.
        let mode = Mode::from_bits_truncate(meta.mode & 0o7777);
        let chmodded = match at {
            None => nix::sys::stat::fchmod(fd, mode),
            Some((parent, name)) => nix::sys::stat::fchmodat(
                parent,
                name,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            ),
        };
        chmodded.map_err(|err| LayerError::io("set the mode of", display_name, err.into()))
    }

    fn chown_at(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Metadata,
        display_name: &str,
    ) -> Result<(), LayerError> {
        let chowned = nix::unistd::fchownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        self.check_chown(chowned, display_name)
    }

    /// Without privilege (EPERM), files keep the caller's owner and one
    /// warning reports it. Any other failure is an error.
    fn check_chown(
        &mut self,
        result: nix::Result<()>,
        display_name: &str,
    ) -> Result<(), LayerError> {
        match result {
            Ok(()) => Ok(()),
            Err(Errno::EPERM) => {
                if !self.warned_chown {
                    warn!(
                        "cannot set file owners (not root); the layer's files keep the caller's owner"
                    );
                    self.warned_chown = true;
                }
                Ok(())
            }
            Err(err) => Err(LayerError::io("set the owner of", display_name, err.into())),
        }
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

/// Classifies an entry's final name: `None` for an ordinary name.
fn marker(name: &OsStr) -> Result<Option<Marker>, String> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE_MARKER.as_bytes() {
        return Ok(Some(Marker::Opaque));
    }
    if bytes.starts_with(META_PREFIX) {
        return Ok(Some(Marker::Metadata));
    }
    let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(None);
    };
    if target.is_empty() || target == b"." || target == b".." {
        return Err(format!(
            "whiteout {:?} names no deletable entry",
            String::from_utf8_lossy(bytes)
        ));
    }
    Ok(Some(Marker::Whiteout(
        OsStr::from_bytes(target).to_os_string(),
    )))
}

/// Removes `name` in `parent`: a directory with everything below it.
fn remove(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    is_dir: bool,
    display_name: &str,
) -> Result<(), LayerError> {
    if !is_dir {
        return nix::unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|err| LayerError::io("replace", display_name, err.into()));
    }
    // The directory was opened without following symlinks; its
    // /proc/self/fd path names exactly that directory.
    let dir =
        real::open_dir(parent, name).map_err(|err| LayerError::io("open", display_name, err))?;
    let proc_path = crate::sys::proc_fd_path(dir.as_fd());
    let proc_path = Path::new(OsStr::from_bytes(proc_path.as_bytes()));
    for child in
        std::fs::read_dir(proc_path).map_err(|err| LayerError::io("read", display_name, err))?
    {
        let child = child.map_err(|err| LayerError::io("read", display_name, err))?;
        let child_is_dir = child
            .file_type()
            .map_err(|err| LayerError::io("check", display_name, err))?
            .is_dir();
        remove(dir.as_fd(), &child.file_name(), child_is_dir, display_name)?;
    }
    nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir)
        .map_err(|err| LayerError::io("replace", display_name, err.into()))
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

/// Reads an entry's metadata. PAX records override the header's owner and
/// times, and give the xattrs.
fn metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    display_name: &str,
    summary: &mut ImportSummary,
) -> Result<Metadata, LayerError> {
    let header = entry.header();
    let invalid = |field: &str, err: io::Error| {
        LayerError::invalid(display_name, format!("invalid {field}: {err}"))
    };
    let mode = header.mode().map_err(|err| invalid("mode", err))?;
    let mut uid = header.uid().map_err(|err| invalid("uid", err))?;
    let mut gid = header.gid().map_err(|err| invalid("gid", err))?;
    let mut mtime = TimeSpec::new(
        header.mtime().map_err(|err| invalid("mtime", err))? as i64,
        0,
    );
    let mut atime = None;
    let mut xattrs = Vec::new();

    if let Some(records) = entry
        .pax_extensions()
        .map_err(|err| LayerError::io("read the PAX records of", display_name, err))?
    {
        for record in records {
            let record = record.map_err(|err| invalid("PAX record", err))?;
            let key = record.key_bytes();
            let value = record.value_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if super::is_overlay_xattr(name) {
                    debug!(
                        "dropping overlay xattr {} of {display_name}",
                        String::from_utf8_lossy(name)
                    );
                    summary.dropped += 1;
                } else {
                    xattrs.push((OsStr::from_bytes(name).to_os_string(), value.to_vec()));
                }
                continue;
            }
            match key {
                b"uid" => uid = parse_pax_number(value, display_name, "uid")?,
                b"gid" => gid = parse_pax_number(value, display_name, "gid")?,
                b"mtime" => mtime = parse_pax_time(value, display_name, "mtime")?,
                b"atime" => atime = Some(parse_pax_time(value, display_name, "atime")?),
                _ => {}
            }
        }
    }
    let id = |value: u64, field: &str| {
        u32::try_from(value)
            .ok()
            .filter(|&id| id != u32::MAX)
            .ok_or_else(|| {
                LayerError::invalid(display_name, format!("{field} {value} is out of range"))
            })
    };
    Ok(Metadata {
        mode,
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        atime: atime.unwrap_or(mtime),
        mtime,
        xattrs,
    })
}

fn parse_pax_number(value: &[u8], display_name: &str, field: &str) -> Result<u64, LayerError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            LayerError::invalid(
                display_name,
                format!("invalid PAX {field} {:?}", String::from_utf8_lossy(value)),
            )
        })
}

/// Parses a PAX time such as `1700000000.123456789` (seconds, optional
/// fraction, possibly negative).
fn parse_pax_time(value: &[u8], display_name: &str, field: &str) -> Result<TimeSpec, LayerError> {
    let invalid = || {
        LayerError::invalid(
            display_name,
            format!("invalid PAX {field} {:?}", String::from_utf8_lossy(value)),
        )
    };
    let text = std::str::from_utf8(value).map_err(|_| invalid())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = seconds.parse().map_err(|_| invalid())?;
    if !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let digits: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(9)
        .collect();
    let nanos: i64 = digits.parse().map_err(|_| invalid())?;
    Ok(match (negative, nanos) {
        (false, _) => TimeSpec::new(seconds, nanos),
        (true, 0) => TimeSpec::new(-seconds, 0),
        (true, _) => TimeSpec::new(-seconds - 1, 1_000_000_000 - nanos),
    })
}

/// Sets the entry's xattrs on `name` in `parent`, without following a
/// symlink.
fn apply_xattrs(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    meta: &Metadata,
    display_name: &str,
) -> Result<(), LayerError> {
    for (attr, value) in &meta.xattrs {
        xattr::set_at(parent, name, attr, value, 0)
            .or_else(ignore_unsupported_xattr(attr, display_name))
            .map_err(|err| LayerError::io("set an xattr of", display_name, err))?;
    }
    Ok(())
}

/// Turns "not supported here" into a warning: a layer from an SELinux host
/// carries `security.selinux`, which other hosts cannot store.
fn ignore_unsupported_xattr<'a>(
    attr: &'a OsStr,
    display_name: &'a str,
) -> impl FnOnce(io::Error) -> io::Result<()> + 'a {
    move |err| match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            warn!(
                "cannot set xattr {} of {display_name} here (not supported); skipping it",
                attr.to_string_lossy()
            );
            Ok(())
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let parse = |text: &str| parse_pax_time(text.as_bytes(), "x", "mtime").unwrap();
        assert_eq!(parse("1700000000"), TimeSpec::new(1_700_000_000, 0));
        assert_eq!(
            parse("1700000000.5"),
            TimeSpec::new(1_700_000_000, 500_000_000)
        );
        assert_eq!(parse("1.000000001"), TimeSpec::new(1, 1));
        assert_eq!(parse("-1.5"), TimeSpec::new(-2, 500_000_000));
        assert!(parse_pax_time(b"1.x", "x", "mtime").is_err());
        assert!(parse_pax_time(b"", "x", "mtime").is_err());
    }

    #[test]
    fn markers() {
        assert!(matches!(
            marker(OsStr::new(".wh..wh..opq")),
            Ok(Some(Marker::Opaque))
        ));
        assert!(matches!(
            marker(OsStr::new(".wh..wh.plnk")),
            Ok(Some(Marker::Metadata))
        ));
        assert!(matches!(
            marker(OsStr::new(".wh.foo")),
            Ok(Some(Marker::Whiteout(name))) if name == "foo"
        ));
        assert!(matches!(marker(OsStr::new("foo")), Ok(None)));
        assert!(matches!(marker(OsStr::new(".whfoo")), Ok(None)));
        for bad in [".wh.", ".wh..", ".wh..."] {
            assert!(marker(OsStr::new(bad)).is_err(), "{bad} was accepted");
        }
    }
}
