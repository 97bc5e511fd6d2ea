//! Attributes and xattrs: setattr split per attribute, and the four xattr
//! calls. Any change copies the node up first; a directory is copied up
//! alone, without its subtree. Overlay metadata xattrs are neither listed nor
//! readable nor writable through the merged view.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use fuser::{FileAttr, TimeOrNow};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::{Place, Union, errno};
use crate::real;
use crate::sys::xattr;
use crate::whiteout;

/// The attributes a setattr request changes.
#[derive(Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    /// The open file the request came through, if any.
    pub fh: Option<u64>,
    /// The requesting thread.
    pub tid: u32,
}

impl Union {
    /// Changes the attributes of node `ino`; returns the new attributes.
    pub fn setattr(&self, ino: u64, set: &SetAttr) -> io::Result<FileAttr> {
        let node = self.node(ino)?;
        // A truncate copies only the data that survives it.
        let place = self.copy_up_for_change(&node, set.tid, set.size)?;

        if let Some(size) = set.size {
            self.truncate(&place, set.fh, size)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            chown(&place, set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            chmod(&place, mode)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            set_times(&place, set.atime, set.mtime)?;
        }
        match place {
            Place::Entry { parent, name } if node.state().layer != 0 => {
                // A split name: the node still shows the other names.
                let stat =
                    real::stat_at(parent.as_fd(), &name)?.ok_or_else(|| errno(libc::ENOENT))?;
                let identity = crate::lookup::identity(&self.stack, 0, &stat);
                Ok(super::attr_of(self.table.ino_for(identity), &stat, false))
            }
            _ => self.getattr(ino),
        }
    }

    fn truncate(&self, place: &Place, fh: Option<u64>, size: u64) -> io::Result<()> {
        if let Some(handle) = fh
            .and_then(|fh| self.handles.file(fh).ok())
            .filter(|handle| handle.is_writable())
        {
            return handle.file().set_len(size);
        }
        let file = match place {
            Place::Entry { parent, name } => {
                real::open_at(parent.as_fd(), name, OFlag::O_WRONLY, 0)?
            }
            Place::Orphan(fd) => real::reopen(fd.as_fd(), OFlag::O_WRONLY)?,
            Place::Dir(_) => return Err(errno(libc::EISDIR)),
        };
        File::from(file).set_len(size)
    }

    /// Returns the value of xattr `name` of node `ino`.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        if whiteout::is_private_xattr(name) {
            return Err(errno(libc::ENODATA));
        }
        let target = self.xattr_target(ino)?;
        xattr::get(target.as_fd(), name)?.ok_or_else(|| errno(libc::ENODATA))
    }

    /// Returns the xattr names of node `ino` as a NUL-separated list.
    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let target = self.xattr_target(ino)?;
        let mut list = Vec::new();
        for name in xattr::list(target.as_fd())? {
            if !whiteout::is_private_xattr(&name) {
                list.extend_from_slice(name.as_bytes());
                list.push(0);
            }
        }
        Ok(list)
    }

    /// Sets xattr `name` of node `ino` for thread `tid`.
    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        tid: u32,
    ) -> io::Result<()> {
        if whiteout::is_private_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let node = self.node(ino)?;
        let place = self.copy_up_for_change(&node, tid, None)?;
        xattr::set(xattr_target(place)?.as_fd(), name, value, flags)
    }

    /// Removes xattr `name` of node `ino` for thread `tid`.
    pub fn removexattr(&self, ino: u64, name: &OsStr, tid: u32) -> io::Result<()> {
        if whiteout::is_private_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let node = self.node(ino)?;
        if self.getxattr(ino, name).is_err() {
            return Err(errno(libc::ENODATA));
        }
        let place = self.copy_up_for_change(&node, tid, None)?;
        xattr::remove(xattr_target(place)?.as_fd(), name)
    }

    /// Opens an fd through which node's xattrs can be read and written.
    fn xattr_target(&self, ino: u64) -> io::Result<XattrTarget> {
        let node = self.node(ino)?;
        xattr_target(self.locate(&node)?.1)
    }
}

fn xattr_target(place: Place) -> io::Result<XattrTarget> {
    Ok(match place {
        Place::Dir(fd) | Place::Orphan(fd) => XattrTarget::Shared(fd),
        Place::Entry { parent, name } => {
            XattrTarget::Owned(real::open_path(parent.as_fd(), &name)?)
        }
    })
}

enum XattrTarget {
    Shared(std::sync::Arc<OwnedFd>),
    Owned(OwnedFd),
}

impl XattrTarget {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            XattrTarget::Shared(fd) => fd.as_fd(),
            XattrTarget::Owned(fd) => fd.as_fd(),
        }
    }
}

fn chown(place: &Place, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (uid, gid) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
    match place {
        Place::Entry { parent, name } => nix::unistd::fchownat(
            parent.as_fd(),
            name.as_os_str(),
            uid,
            gid,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?,
        Place::Dir(fd) | Place::Orphan(fd) => {
            nix::unistd::fchownat(fd.as_fd(), "", uid, gid, AtFlags::AT_EMPTY_PATH)?
        }
    }
    Ok(())
}

fn chmod(place: &Place, mode: u32) -> io::Result<()> {
    let mode = Mode::from_bits_truncate(mode & 0o7777);
    match place {
        Place::Entry { parent, name } => nix::sys::stat::fchmodat(
            parent.as_fd(),
            name.as_os_str(),
            mode,
            FchmodatFlags::NoFollowSymlink,
        )?,
        Place::Dir(fd) => nix::sys::stat::fchmod(fd.as_fd(), mode)?,
        Place::Orphan(fd) => {
            let path = crate::sys::proc_fd_path(fd.as_fd());
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                path.as_c_str(),
                mode,
                FchmodatFlags::FollowSymlink,
            )?;
        }
    }
    Ok(())
}

fn timespec(time: Option<TimeOrNow>) -> TimeSpec {
    match time {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(at)) => match at.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => TimeSpec::from_duration(since),
            Err(before) => TimeSpec::from_duration(before.duration()) * -1,
        },
    }
}

fn set_times(place: &Place, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> io::Result<()> {
    let (atime, mtime) = (timespec(atime), timespec(mtime));
    match place {
        Place::Entry { parent, name } => nix::sys::stat::utimensat(
            parent.as_fd(),
            name.as_os_str(),
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )?,
        Place::Dir(fd) => nix::sys::stat::futimens(fd.as_fd(), &atime, &mtime)?,
        Place::Orphan(fd) => {
            let path = crate::sys::proc_fd_path(fd.as_fd());
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                path.as_c_str(),
                &atime,
                &mtime,
                UtimensatFlags::FollowSymlink,
            )?;
        }
    }
    Ok(())
}
