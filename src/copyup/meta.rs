//! Copying metadata for copy-up: owner, mode, xattrs and timestamps.
//!
//! Order matters: the owner is set first because `chown` clears the setuid
//! and setgid bits and drops `security.capability`; then the mode; then the
//! xattrs; the timestamps last, since every earlier step changes them.

use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;

use log::debug;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::sys::xattr;
use crate::whiteout;

/// An object being built in the work dir, reached either through an fd that
/// allows metadata calls (a regular file or directory) or by name.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Fd(BorrowedFd<'a>),
    Named {
        dir: BorrowedFd<'a>,
        name: &'a std::ffi::OsStr,
        is_symlink: bool,
    },
}

/// Reads every xattr of `src` that carries user data (overlay metadata
/// excluded), as `(name, value)` pairs.
pub fn read_xattrs(src: BorrowedFd<'_>) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut pairs = Vec::new();
    let names = match xattr::list(src) {
        Ok(names) => names,
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(pairs),
        Err(err) => return Err(err),
    };
    for name in names {
        if whiteout::is_private_xattr(&name) {
            continue;
        }
        if let Some(value) = xattr::get(src, &name)? {
            pairs.push((name, value));
        }
    }
    Ok(pairs)
}

/// Gives `target` the owner, mode, xattrs and timestamps of `stat`/`xattrs`.
pub fn apply(
    target: Target<'_>,
    stat: &FileStat,
    xattrs: &[(OsString, Vec<u8>)],
) -> io::Result<()> {
    set_owner(target, stat.st_uid, stat.st_gid)?;
    set_mode(target, stat.st_mode)?;
    set_xattrs(target, xattrs)?;
    set_times(target, stat)
}

/// Sets the owner of `target`.
pub fn set_owner(target: Target<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    match target {
        Target::Fd(fd) => nix::unistd::fchown(fd, uid, gid)?,
        Target::Named { dir, name, .. } => {
            nix::unistd::fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?
        }
    }
    Ok(())
}

/// Sets the permission bits of `target` (symlinks have none to set).
pub fn set_mode(target: Target<'_>, mode: u32) -> io::Result<()> {
    let mode = Mode::from_bits_truncate(mode & 0o7777);
    match target {
        Target::Fd(fd) => nix::sys::stat::fchmod(fd, mode)?,
        Target::Named {
            is_symlink: true, ..
        } => {}
        Target::Named { dir, name, .. } => {
            let flag = nix::sys::stat::FchmodatFlags::NoFollowSymlink;
            nix::sys::stat::fchmodat(dir, name, mode, flag)?;
        }
    }
    Ok(())
}

fn set_xattrs(target: Target<'_>, xattrs: &[(OsString, Vec<u8>)]) -> io::Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    for (name, value) in xattrs {
        let set = match target {
            Target::Fd(fd) => xattr::set(fd, name, value, 0),
            Target::Named {
                dir, name: entry, ..
            } => xattr::set_at(dir, entry, name, value, 0),
        };
        match set {
            Ok(()) => {}
            // The upper filesystem may lack a namespace the lower one has.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EPERM)
                ) =>
            {
                debug!("copy-up: xattr {name:?} not copied: {err}");
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Sets the access and modification times of `target` from `stat`.
pub fn set_times(target: Target<'_>, stat: &FileStat) -> io::Result<()> {
    let atime = TimeSpec::new(stat.st_atime, stat.st_atime_nsec);
    let mtime = TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec);
    match target {
        Target::Fd(fd) => nix::sys::stat::futimens(fd, &atime, &mtime)?,
        Target::Named { dir, name, .. } => {
            nix::sys::stat::utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)?;
        }
    }
    Ok(())
}
