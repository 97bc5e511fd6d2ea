//! Access to real objects inside a layer, always relative to a directory fd.
//!
//! Every name passed here is one path component that came through the merged
//! view. Opens use `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and
//! every `*at` call passes `AT_SYMLINK_NOFOLLOW`, so a symlink inside a layer
//! is only ever read as a link and can never steer the daemon onto host files.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// Returns true for the errors that mean "no such entry" when probing a
/// layer: the name is missing, a path component is not a directory, or the
/// name cannot exist there at all because it is too long.
pub fn is_absent(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG)
    )
}

/// The longest name any layer's filesystem takes, in bytes.
pub const NAME_MAX: usize = 255;

/// Rejects names that are not a single path component (`EINVAL`) or that
/// are longer than [`NAME_MAX`] (`ENAMETOOLONG`).
pub fn check_name(name: &OsStr) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if bytes.len() > NAME_MAX {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(())
}

/// Opens `name` in `dir` with `flags`, never following a symlink; the final
/// component opens as the link itself only with `O_PATH | O_NOFOLLOW`.
pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    check_name(name)?;
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(dir, name, how) {
        Ok(fd) => Ok(fd),
        // openat2 is missing before Linux 5.6: one component with O_NOFOLLOW
        // gives the same guarantee.
        Err(Errno::ENOSYS) => Ok(nix::fcntl::openat(
            dir,
            name,
            flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(mode),
        )?),
        Err(err) => Err(err.into()),
    }
}

/// Opens directory `name` in `dir` for reading entries and attributes.
pub fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
}

/// Opens directory `dir` again, for a reader with its own offset.
pub fn reopen_dir(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    Ok(nix::fcntl::openat(dir, ".", flags, Mode::empty())?)
}

/// Like [`reopen_dir`], but reading entries leaves the directory's access
/// time alone, as kernel overlayfs does for lower layers.
pub fn reopen_dir_noatime(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(dir, ".", flags | OFlag::O_NOATIME, Mode::empty()) {
        // O_NOATIME needs ownership or CAP_FOWNER; it is only an optimisation.
        Err(Errno::EPERM) => reopen_dir(dir),
        result => Ok(result?),
    }
}

/// Opens regular file `name` in `dir` for I/O with `flags`; returns the
/// file and its stat. The object is first opened as `O_PATH` and checked:
/// anything but a regular file fails with `EINVAL` without ever being
/// opened for I/O, so a device node swapped in under the name cannot make
/// the daemon open a device.
pub fn open_regular(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlag,
) -> io::Result<(OwnedFd, FileStat)> {
    let path_fd = open_path(dir, name)?;
    let stat = stat_fd(&path_fd)?;
    if kind(&stat) != SFlag::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok((reopen(path_fd.as_fd(), flags)?, stat))
}

/// Opens any object as an `O_PATH` descriptor, which allows no I/O but serves
/// `fstat`, `*at` calls with an empty path and `/proc/self/fd` access.
pub fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(dir, name, OFlag::O_PATH, 0)
}

/// Reopens `fd` (often `O_PATH`) with new `flags` through `/proc/self/fd`.
///
/// Used for objects that lost their name, such as an open file after unlink.
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlag) -> io::Result<OwnedFd> {
    let path = crate::sys::proc_fd_path(fd);
    let flags = (flags | OFlag::O_CLOEXEC) & !OFlag::O_CREAT;
    match nix::fcntl::open(path.as_c_str(), flags, Mode::empty()) {
        // O_NOATIME needs ownership or CAP_FOWNER; it is only an optimisation.
        Err(Errno::EPERM) if flags.contains(OFlag::O_NOATIME) => Ok(nix::fcntl::open(
            path.as_c_str(),
            flags - OFlag::O_NOATIME,
            Mode::empty(),
        )?),
        result => Ok(result?),
    }
}

/// Stats `name` in `dir` without following a symlink; `None` when absent.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(err) => {
            let err = io::Error::from(err);
            if is_absent(&err) { Ok(None) } else { Err(err) }
        }
    }
}

/// Stats the object `fd` refers to.
pub fn stat_fd(fd: impl AsFd) -> io::Result<FileStat> {
    Ok(nix::sys::stat::fstat(fd)?)
}

/// Returns the file type bits of a stat result.
pub fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & libc::S_IFMT)
}

/// Returns true when the stat result describes a directory.
pub fn is_dir(stat: &FileStat) -> bool {
    kind(stat) == SFlag::S_IFDIR
}
