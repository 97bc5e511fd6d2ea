//! Whiteouts and opaque directories: the only module that knows their formats.
//!
//! Read, in any layer:
//! - a character device 0/0 named NAME (kernel overlayfs);
//! - a zero-size regular file NAME with `trusted.overlay.whiteout` or
//!   `user.overlay.whiteout`, inside a directory whose `overlay.opaque` xattr
//!   is `x` (kernel overlayfs 6.7 and later);
//! - a file `.wh.NAME` beside the hidden name (AUFS, OCI image layers).
//!
//! A directory is opaque, hiding everything below it, when its
//! `trusted.overlay.opaque` or `user.overlay.opaque` xattr is `y` or when it
//! holds a file `.wh..wh..opq`.
//!
//! Written, in the upper layer: overlay format by default (a 0/0 device and
//! `trusted.overlay.opaque=y`), so kernel overlayfs can mount the layer; AUFS
//! format with `-o whiteout=aufs`, or when the daemon may not create device
//! nodes. Names starting with `.wh.` are reserved in the merged view.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use log::{debug, warn};
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::{FileStat, SFlag};

use crate::copyup::workdir::{Install, WorkDir};
use crate::real;
use crate::sys::xattr;

/// The on-disk format written for whiteouts and opaque directories.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Kernel overlayfs: a 0/0 character device and `trusted.overlay.opaque`.
    #[default]
    Overlay,
    /// AUFS and OCI image layers: `.wh.NAME` files and `.wh..wh..opq`.
    Aufs,
}

const AUFS_PREFIX: &[u8] = b".wh.";
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const AUFS_OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];
const PRIVATE_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// How a directory in one layer treats the layers below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opacity {
    /// Lower layers show through.
    Transparent,
    /// Lower layers are hidden.
    Opaque,
    /// Lower layers show through, and some entries may be xattr whiteouts.
    XattrWhiteouts,
}

/// Which kind of whiteout hides a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutKind {
    /// A 0/0 character device at the name.
    Device,
    /// A zero-size file at the name carrying an `overlay.whiteout` xattr.
    XattrFile,
    /// A `.wh.NAME` file beside the name.
    AufsFile,
}

/// What one layer directory holds for a name.
#[derive(Debug)]
pub enum Entry {
    Absent,
    Whiteout(WhiteoutKind),
    Present(FileStat),
}

/// What a listed directory entry means for the merged view.
#[derive(Debug, PartialEq, Eq)]
pub enum Listed<'a> {
    /// An ordinary entry.
    Visible,
    /// A whiteout hiding this name in lower layers.
    Hides(&'a OsStr),
    /// A format marker that is not part of the merged view.
    Marker,
}

/// Returns true for names the merged view never shows and never creates.
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(AUFS_PREFIX)
}

/// Returns true for xattrs that carry overlay metadata rather than user data.
pub fn is_private_xattr(name: &OsStr) -> bool {
    PRIVATE_XATTR_PREFIXES
        .iter()
        .any(|prefix| name.as_bytes().starts_with(prefix))
}

fn is_device_whiteout(stat: &FileStat) -> bool {
    real::kind(stat) == SFlag::S_IFCHR && stat.st_rdev == 0
}

fn aufs_name(name: &OsStr) -> Option<OsString> {
    let mut full = Vec::with_capacity(AUFS_PREFIX.len() + name.len());
    full.extend_from_slice(AUFS_PREFIX);
    full.extend_from_slice(name.as_bytes());
    (full.len() <= 255).then(|| OsString::from_vec(full))
}

/// Returns the AUFS whiteout name for `name`, or `ENAMETOOLONG` when the
/// prefix would push it past 255 bytes.
fn aufs_marker(name: &OsStr) -> io::Result<OsString> {
    aufs_name(name).ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))
}

fn has_xattr_value(fd: BorrowedFd<'_>, names: &[&str], wanted: &[u8]) -> bool {
    names
        .iter()
        .any(|name| matches!(xattr::get(fd, OsStr::new(name)), Ok(Some(value)) if value == wanted))
}

/// Returns how directory `dir` in its layer treats the layers below it.
pub fn opacity(dir: BorrowedFd<'_>) -> io::Result<Opacity> {
    if has_xattr_value(dir, &OPAQUE_XATTRS, b"y")
        || real::stat_at(dir, OsStr::new(AUFS_OPAQUE))?.is_some()
    {
        return Ok(Opacity::Opaque);
    }
    if has_xattr_value(dir, &OPAQUE_XATTRS, b"x") {
        return Ok(Opacity::XattrWhiteouts);
    }
    Ok(Opacity::Transparent)
}

fn is_xattr_whiteout(
    dir: BorrowedFd<'_>,
    opacity: Opacity,
    name: &OsStr,
    stat: &FileStat,
) -> io::Result<bool> {
    if opacity != Opacity::XattrWhiteouts || real::kind(stat) != SFlag::S_IFREG || stat.st_size != 0
    {
        return Ok(false);
    }
    let marked = |attr: &&str| matches!(xattr::get_at(dir, name, OsStr::new(attr)), Ok(Some(_)));
    Ok(WHITEOUT_XATTRS.iter().any(marked))
}

/// Probes what layer directory `dir`, of the given opacity, holds for `name`.
pub fn probe(dir: BorrowedFd<'_>, opacity: Opacity, name: &OsStr) -> io::Result<Entry> {
    if let Some(stat) = real::stat_at(dir, name)? {
        if is_device_whiteout(&stat) {
            return Ok(Entry::Whiteout(WhiteoutKind::Device));
        }
        if is_xattr_whiteout(dir, opacity, name, &stat)? {
            return Ok(Entry::Whiteout(WhiteoutKind::XattrFile));
        }
        return Ok(Entry::Present(stat));
    }
    match aufs_name(name) {
        Some(marker) if real::stat_at(dir, &marker)?.is_some() => {
            Ok(Entry::Whiteout(WhiteoutKind::AufsFile))
        }
        _ => Ok(Entry::Absent),
    }
}

/// Classifies entry `name` read from layer directory `dir`. `d_type` is the
/// type from `getdents`, `DT_UNKNOWN` when the filesystem gave none.
pub fn classify_listed<'a>(
    dir: BorrowedFd<'_>,
    opacity: Opacity,
    name: &'a OsStr,
    d_type: u8,
) -> io::Result<Listed<'a>> {
    let bytes = name.as_bytes();
    if bytes.starts_with(AUFS_META_PREFIX) {
        return Ok(Listed::Marker);
    }
    if let Some(target) = bytes.strip_prefix(AUFS_PREFIX) {
        return Ok(Listed::Hides(OsStr::from_bytes(target)));
    }
    let may_be_whiteout = match d_type {
        libc::DT_CHR | libc::DT_UNKNOWN => true,
        libc::DT_REG => opacity == Opacity::XattrWhiteouts,
        _ => false,
    };
    if !may_be_whiteout {
        return Ok(Listed::Visible);
    }
    let Some(stat) = real::stat_at(dir, name)? else {
        return Ok(Listed::Marker);
    };
    if is_device_whiteout(&stat) || is_xattr_whiteout(dir, opacity, name, &stat)? {
        return Ok(Listed::Hides(name));
    }
    Ok(Listed::Visible)
}

/// What a move of an upper object must take care of.
#[derive(Clone, Copy, Debug)]
pub struct Moving {
    pub is_dir: bool,
    /// The whiteout standing at the destination name, if any.
    pub dst_whiteout: Option<WhiteoutKind>,
    /// Leave a whiteout at the source name.
    pub hide_source: bool,
    /// Fail with `EEXIST` if the destination name exists.
    pub no_replace: bool,
}

/// How opaque directories are marked in the upper layer.
#[derive(Clone, Copy, Debug)]
enum OpaqueMarker {
    Xattr(&'static str),
    AufsFile,
}

/// Writes whiteouts and opaque markers into the upper layer, staging every
/// new object in the work dir so it appears in one step.
#[derive(Debug)]
pub struct Writer {
    format: Format,
    opaque: OpaqueMarker,
}

impl Writer {
    /// Chooses how to write, degrading from the requested format where the
    /// upper filesystem or the daemon's privileges do not allow it. Each
    /// degradation is logged once, here.
    pub fn probe(work: &WorkDir, requested: Format) -> Writer {
        let format = match requested {
            Format::Overlay if !can_create_device_whiteout(work) => {
                warn!(
                    "cannot create 0/0 device whiteouts in {} (needs CAP_MKNOD); writing AUFS .wh. whiteouts instead",
                    work.path().display()
                );
                Format::Aufs
            }
            other => other,
        };
        let opaque = match format {
            Format::Aufs => OpaqueMarker::AufsFile,
            Format::Overlay => match OPAQUE_XATTRS.iter().find(|name| can_set_xattr(work, name)) {
                Some(&name) if name == OPAQUE_XATTRS[0] => OpaqueMarker::Xattr(name),
                Some(&name) => {
                    warn!(
                        "cannot set trusted.* xattrs in {}; marking opaque directories with {name} (kernel overlayfs reads it only with -o userxattr)",
                        work.path().display()
                    );
                    OpaqueMarker::Xattr(name)
                }
                None => {
                    warn!(
                        "cannot set overlay xattrs in {}; marking opaque directories with {AUFS_OPAQUE} files",
                        work.path().display()
                    );
                    OpaqueMarker::AufsFile
                }
            },
        };
        debug!("whiteout format {format:?}, opaque marker {opaque:?}");
        Writer { format, opaque }
    }

    /// Returns the format whiteouts are written in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Marks directory `dir` opaque.
    pub fn mark_opaque(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        match self.opaque {
            OpaqueMarker::Xattr(name) => xattr::set(dir, OsStr::new(name), b"y", 0),
            OpaqueMarker::AufsFile => {
                let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
                match real::open_at(dir, OsStr::new(AUFS_OPAQUE), flags, 0o444) {
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                    result => result.map(drop),
                }
            }
        }
    }

    /// Stages a whiteout object in the work dir; returns its temporary name.
    fn stage(&self, work: &WorkDir) -> io::Result<OsString> {
        match self.format {
            Format::Overlay => work.create_node(libc::S_IFCHR, 0),
            Format::Aufs => work.create_file().map(|(name, _)| name),
        }
    }

    /// Removes `name` from upper directory `parent` and leaves a whiteout
    /// that hides the same name in lower layers. `upper_exists` says whether
    /// `parent` holds an object at `name` (a file, or a directory with any
    /// content) that must go too.
    pub fn remove_and_hide(
        &self,
        work: &WorkDir,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        upper_exists: bool,
    ) -> io::Result<()> {
        if !upper_exists {
            return self.hide(work, parent, name);
        }
        match self.format {
            Format::Overlay => {
                let temp = self.stage(work)?;
                let swapped = work.install(&temp, parent, name, Install::Exchange);
                // After the exchange the temporary name holds the removed object.
                work.discard(&temp);
                swapped
            }
            Format::Aufs => {
                self.hide(work, parent, name)?;
                work.evict(parent, name)
            }
        }
    }

    /// Leaves a whiteout for `name` in upper directory `dir`, where the name
    /// is free in the upper layer.
    fn hide(&self, work: &WorkDir, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let temp = self.stage(work)?;
        let installed = match self.format {
            Format::Overlay => work.install(&temp, dir, name, Install::NoReplace),
            Format::Aufs => aufs_marker(name)
                .and_then(|marker| work.install(&temp, dir, &marker, Install::Replace)),
        };
        installed.inspect_err(|_| work.discard(&temp))
    }

    /// Moves upper object `src` to `dst`, leaving a whiteout at the source
    /// when `hide_source`, so the same name in lower layers stays hidden.
    /// `dst_whiteout` is the whiteout standing at the destination, if any.
    pub fn move_object(
        &self,
        work: &WorkDir,
        src: (BorrowedFd<'_>, &OsStr),
        dst: (BorrowedFd<'_>, &OsStr),
        moving: Moving,
    ) -> io::Result<()> {
        match moving.dst_whiteout {
            // A directory cannot replace a non-directory by rename: swap them.
            Some(kind @ (WhiteoutKind::Device | WhiteoutKind::XattrFile)) if moving.is_dir => {
                nix::fcntl::renameat2(src.0, src.1, dst.0, dst.1, RenameFlags::RENAME_EXCHANGE)?;
                // A swapped device whiteout already hides the source name.
                if moving.hide_source && kind == WhiteoutKind::Device {
                    return Ok(());
                }
                nix::unistd::unlinkat(src.0, src.1, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
                if moving.hide_source {
                    self.hide(work, src.0, src.1)
                } else {
                    Ok(())
                }
            }
            Some(WhiteoutKind::AufsFile) => {
                self.move_plain(
                    work,
                    src,
                    dst,
                    moving.hide_source,
                    RenameFlags::RENAME_NOREPLACE,
                )?;
                let marker = aufs_marker(dst.1)?;
                nix::unistd::unlinkat(
                    dst.0,
                    marker.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )?;
                Ok(())
            }
            Some(_) => self.move_plain(work, src, dst, moving.hide_source, RenameFlags::empty()),
            None => {
                let flags = if moving.no_replace {
                    RenameFlags::RENAME_NOREPLACE
                } else {
                    RenameFlags::empty()
                };
                self.move_plain(work, src, dst, moving.hide_source, flags)
            }
        }
    }

    fn move_plain(
        &self,
        work: &WorkDir,
        src: (BorrowedFd<'_>, &OsStr),
        dst: (BorrowedFd<'_>, &OsStr),
        hide_source: bool,
        flags: RenameFlags,
    ) -> io::Result<()> {
        if !hide_source {
            return Ok(nix::fcntl::renameat2(src.0, src.1, dst.0, dst.1, flags)?);
        }
        if self.format == Format::Overlay {
            match nix::fcntl::renameat2(
                src.0,
                src.1,
                dst.0,
                dst.1,
                flags | RenameFlags::RENAME_WHITEOUT,
            ) {
                Err(nix::errno::Errno::EINVAL) => {}
                result => return Ok(result?),
            }
        }
        // Without RENAME_WHITEOUT, and always for AUFS, the whiteout is a
        // second step. An AUFS whiteout goes first, since `.wh.NAME` beside
        // NAME in the same layer leaves NAME visible until the move.
        if self.format == Format::Aufs {
            self.hide(work, src.0, src.1)?;
        }
        nix::fcntl::renameat2(src.0, src.1, dst.0, dst.1, flags)?;
        if self.format == Format::Overlay {
            self.hide(work, src.0, src.1)?;
        }
        Ok(())
    }

    /// Puts staged object `temp` at `name` in upper directory `parent`, where
    /// a whiteout of `kind` stands now.
    pub fn replace_whiteout(
        &self,
        work: &WorkDir,
        temp: &OsStr,
        is_dir: bool,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        kind: WhiteoutKind,
    ) -> io::Result<()> {
        match kind {
            WhiteoutKind::AufsFile => {
                work.install(temp, parent, name, Install::NoReplace)?;
                let marker = aufs_marker(name)?;
                nix::unistd::unlinkat(
                    parent,
                    marker.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )?;
                Ok(())
            }
            // A directory cannot replace a non-directory by rename: swap
            // them, then delete the whiteout from the work dir.
            WhiteoutKind::Device | WhiteoutKind::XattrFile if is_dir => {
                work.install(temp, parent, name, Install::Exchange)?;
                work.discard(temp);
                Ok(())
            }
            WhiteoutKind::Device | WhiteoutKind::XattrFile => {
                work.install(temp, parent, name, Install::Replace)
            }
        }
    }
}

fn can_create_device_whiteout(work: &WorkDir) -> bool {
    match work.create_node(libc::S_IFCHR, 0) {
        Ok(temp) => {
            work.discard(&temp);
            true
        }
        Err(err) => {
            debug!("probe: mknod 0/0 in work dir failed: {err}");
            false
        }
    }
}

fn can_set_xattr(work: &WorkDir, name: &str) -> bool {
    let Ok((temp, fd)) = work.create_dir() else {
        return false;
    };
    let ok = xattr::set(fd.as_fd(), OsStr::new(name), b"y", 0).is_ok();
    drop(fd);
    work.discard(&temp);
    ok
}
