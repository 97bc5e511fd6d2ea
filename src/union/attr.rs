//! Attributes and xattrs: setattr split per attribute, and the four xattr
//! calls. Any change copies the node up first; a directory is copied up
//! alone, without its subtree. Overlay metadata xattrs are neither listed nor
//! readable nor writable through the merged view.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use fuser::{FileAttr, TimeOrNow};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::create::Caller;
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
        let place = match self.writable_handle(set.fh) {
            // The handle's file already is the object to change: the open
            // copied it up, or split its name off.
            Some(handle) => Place::Orphan(std::sync::Arc::new(OwnedFd::from(
                handle.file().try_clone()?,
            ))),
            // A truncate copies only the data that survives it.
            None => self.copy_up_for_change(&node, set.tid, set.size)?,
        };

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
        // After a split the reply still describes the node, which keeps
        // showing the other names' lower object: the kernel applies these
        // attributes to the inode those names share.
        self.getattr(ino)
    }

    /// Returns file handle `fh` if it is open for writing.
    fn writable_handle(
        &self,
        fh: Option<u64>,
    ) -> Option<std::sync::Arc<crate::handle::FileHandle>> {
        fh.and_then(|fh| self.handles.file(fh).ok())
            .filter(|handle| handle.is_writable())
    }

    fn truncate(&self, place: &Place, fh: Option<u64>, size: u64) -> io::Result<()> {
        let file = match (self.writable_handle(fh), place) {
            (Some(handle), _) => handle.file(),
            (None, Place::Entry { parent, name }) => std::sync::Arc::new(File::from(
                real::open_regular(parent.as_fd(), name, OFlag::O_WRONLY)?.0,
            )),
            (None, Place::Orphan(fd)) => {
                std::sync::Arc::new(File::from(real::reopen(fd.as_fd(), OFlag::O_WRONLY)?))
            }
            (None, Place::Dir(_)) => return Err(errno(libc::EISDIR)),
        };
        file.set_len(size)
    }

    /// Returns the value of xattr `name` of node `ino`.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        if whiteout::is_private_xattr(name) {
            return Err(errno(libc::ENODATA));
        }
        let place = self.locate(&*self.node(ino)?)?.1;
        get_xattr(&place, name)?.ok_or_else(|| errno(libc::ENODATA))
    }

    /// Returns the xattr names of node `ino` as a NUL-separated list.
    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let place = self.locate(&*self.node(ino)?)?.1;
        let mut list = Vec::new();
        for name in list_xattrs(&place)? {
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
        caller: &Caller,
    ) -> io::Result<()> {
        if whiteout::is_private_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let node = self.node(ino)?;
        let place = self.copy_up_for_change(&node, caller.pid, None)?;
        match &place {
            Place::Dir(fd) | Place::Orphan(fd) => xattr::set(fd.as_fd(), name, value, flags)?,
            Place::Entry {
                parent,
                name: entry,
            } => xattr::set_at(parent.as_fd(), entry, name, value, flags)?,
        }

        // The daemon writes with CAP_FSETID, so the layer's filesystem keeps
        // the setgid bit that the kernel drops when someone outside the
        // file's group sets its access ACL.
        if name == ACCESS_ACL {
            let (_, stat) = self.stat_node(&node)?;
            if stat.st_mode & libc::S_ISGID != 0 && !may_keep_setgid(caller, stat.st_gid) {
                chmod(&place, stat.st_mode & !libc::S_ISGID)?;
            }
        }
        Ok(())
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
        match &place {
            Place::Dir(fd) | Place::Orphan(fd) => xattr::remove(fd.as_fd(), name),
            Place::Entry {
                parent,
                name: entry,
            } => xattr::remove_at(parent.as_fd(), entry, name),
        }
    }
}

fn get_xattr(place: &Place, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    match place {
        Place::Dir(fd) | Place::Orphan(fd) => xattr::get(fd.as_fd(), name),
        Place::Entry {
            parent,
            name: entry,
        } => xattr::get_at(parent.as_fd(), entry, name),
    }
}

fn list_xattrs(place: &Place) -> io::Result<Vec<std::ffi::OsString>> {
    match place {
        Place::Dir(fd) | Place::Orphan(fd) => xattr::list(fd.as_fd()),
        Place::Entry { parent, name } => xattr::list_at(parent.as_fd(), name),
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

/// The xattr holding a file's POSIX access ACL.
const ACCESS_ACL: &str = "system.posix_acl_access";

/// The capability that lets a process keep setgid bits (capabilities(7)).
const CAP_FSETID: u32 = 4;

/// Returns true when `caller` may keep a file's setgid bit: it is in the
/// file's group `gid`, or it has CAP_FSETID. Supplementary groups and
/// capabilities come from /proc; a caller that cannot be read may not.
fn may_keep_setgid(caller: &Caller, gid: u32) -> bool {
    if caller.gid == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", caller.pid)) else {
        return false;
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
    };
    let in_group = field("Groups:").is_some_and(|groups| {
        groups
            .split_whitespace()
            .any(|group| group.parse() == Ok(gid))
    });
    let capable = field("CapEff:")
        .and_then(|caps| u64::from_str_radix(caps, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_FSETID) != 0);
    in_group || capable
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
