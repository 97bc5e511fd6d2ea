//! Extended attributes of an object reached through a descriptor.
//!
//! Descriptors opened with `O_PATH` (symlinks, device nodes, sockets: objects
//! the daemon must never open for I/O) cannot be used with `f*xattr`, which
//! fail with `EBADF` for them. Those calls then go through
//! `/proc/self/fd/N`, which names the very object the descriptor holds; for a
//! symlink this reaches the link itself, not its target.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::{check, proc_fd_path};

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Runs `by_fd` on `fd`, or `by_path` on its `/proc/self/fd` path when the
/// descriptor is an `O_PATH` one.
fn with_target(
    fd: BorrowedFd<'_>,
    by_fd: impl Fn(libc::c_int) -> libc::c_long,
    by_path: impl Fn(&CStr) -> libc::c_long,
) -> io::Result<usize> {
    match check(by_fd(fd.as_raw_fd())) {
        Err(err) if err.raw_os_error() == Some(libc::EBADF) => check(by_path(&proc_fd_path(fd))),
        result => result,
    }
}

/// Reads into a buffer sized by a first call with an empty buffer, retrying
/// while the value grows between the two calls.
fn read_sized(read: impl Fn(*mut libc::c_void, usize) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    loop {
        let size = read(std::ptr::null_mut(), 0)?;
        let mut buf = vec![0u8; size];
        match read(buf.as_mut_ptr().cast(), buf.len()) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(err) if err.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Returns the value of attribute `name`, or `None` when the object lacks it.
pub fn get(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let name = c_name(name)?;
    let result = read_sized(|buf, size| {
        with_target(
            fd,
            // SAFETY: `name` is NUL-terminated and `buf` is null with size 0
            // or points to `size` writable bytes owned by `read_sized`.
            |raw| unsafe { libc::fgetxattr(raw, name.as_ptr(), buf, size) as libc::c_long },
            // SAFETY: as above; `path` is a NUL-terminated /proc path.
            |path| unsafe {
                libc::getxattr(path.as_ptr(), name.as_ptr(), buf, size) as libc::c_long
            },
        )
    });
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) if err.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Returns the names of all attributes of the object.
pub fn list(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let raw = read_sized(|buf, size| {
        with_target(
            fd,
            // SAFETY: `buf` is null with size 0 or points to `size` writable bytes.
            |raw| unsafe { libc::flistxattr(raw, buf.cast(), size) as libc::c_long },
            // SAFETY: as above; `path` is a NUL-terminated /proc path.
            |path| unsafe { libc::listxattr(path.as_ptr(), buf.cast(), size) as libc::c_long },
        )
    })?;
    Ok(split_names(&raw))
}

/// Sets attribute `name`; `flags` is 0, `XATTR_CREATE` or `XATTR_REPLACE`.
pub fn set(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let name = c_name(name)?;
    let (ptr, len) = (value.as_ptr().cast::<libc::c_void>(), value.len());
    with_target(
        fd,
        // SAFETY: `name` is NUL-terminated and `ptr` points to `len` readable bytes.
        |raw| unsafe { libc::fsetxattr(raw, name.as_ptr(), ptr, len, flags) as libc::c_long },
        // SAFETY: as above; `path` is a NUL-terminated /proc path.
        |path| unsafe {
            libc::setxattr(path.as_ptr(), name.as_ptr(), ptr, len, flags) as libc::c_long
        },
    )
    .map(drop)
}

/// Removes attribute `name`.
pub fn remove(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    with_target(
        fd,
        // SAFETY: `name` is NUL-terminated.
        |raw| unsafe { libc::fremovexattr(raw, name.as_ptr()) as libc::c_long },
        // SAFETY: `name` and `path` are NUL-terminated.
        |path| unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) as libc::c_long },
    )
    .map(drop)
}

/// System call numbers of the `*xattrat` calls (Linux 6.13), the same on
/// every architecture because they came after the numbering was unified.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `struct xattr_args` from `linux/xattr.h`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Set once a `*xattrat` call returned `ENOSYS` (a kernel before 6.13).
static NO_XATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `call` (a `*xattrat` system call), or returns `None` when the kernel
/// lacks it so the caller falls back to an `O_PATH` descriptor.
fn try_at(call: impl Fn() -> libc::c_long) -> Option<io::Result<usize>> {
    use std::sync::atomic::Ordering;
    if NO_XATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    match check(call()) {
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => {
            NO_XATTRAT.store(true, Ordering::Relaxed);
            None
        }
        result => Some(result),
    }
}

/// Opens `entry` in `dir` as an `O_PATH` descriptor for the fallback path.
fn open_entry(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<std::os::fd::OwnedFd> {
    crate::real::open_path(dir, entry)
}

fn c_entry(entry: &OsStr) -> io::Result<CString> {
    crate::real::check_name(entry)?;
    c_name(entry)
}

/// Returns the value of attribute `name` of `entry` in directory `dir`,
/// without following a symlink; `None` when the object lacks it.
pub fn get_at(dir: BorrowedFd<'_>, entry: &OsStr, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let (path, attr) = (c_entry(entry)?, c_name(name)?);
    let read = |buf: *mut libc::c_void, size: usize| {
        let args = XattrArgs {
            value: buf as u64,
            size: size as u32,
            flags: 0,
        };
        try_at(|| {
            // SAFETY: `path` and `attr` are NUL-terminated; `args` points at a
            // buffer of `size` writable bytes (or is null with size 0) owned
            // by `read_sized` for the duration of the call.
            unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    dir.as_raw_fd(),
                    path.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    attr.as_ptr(),
                    &args,
                    size_of_args(),
                )
            }
        })
    };
    if read(std::ptr::null_mut(), 0).is_none() {
        return get(open_entry(dir, entry)?.as_fd(), name);
    }
    match read_sized(|buf, size| {
        read(buf, size).unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::ENOSYS)))
    }) {
        Ok(value) => Ok(Some(value)),
        Err(err) if err.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Returns the attribute names of `entry` in directory `dir`.
pub fn list_at(dir: BorrowedFd<'_>, entry: &OsStr) -> io::Result<Vec<OsString>> {
    let path = c_entry(entry)?;
    let read = |buf: *mut libc::c_void, size: usize| {
        try_at(|| {
            // SAFETY: `path` is NUL-terminated; `buf` is null with size 0 or
            // points at `size` writable bytes owned by `read_sized`.
            unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    dir.as_raw_fd(),
                    path.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    buf,
                    size,
                )
            }
        })
    };
    if read(std::ptr::null_mut(), 0).is_none() {
        return list(open_entry(dir, entry)?.as_fd());
    }
    let raw = read_sized(|buf, size| {
        read(buf, size).unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::ENOSYS)))
    })?;
    Ok(split_names(&raw))
}

/// Sets attribute `name` of `entry` in directory `dir`.
pub fn set_at(
    dir: BorrowedFd<'_>,
    entry: &OsStr,
    name: &OsStr,
    value: &[u8],
    flags: i32,
) -> io::Result<()> {
    let (path, attr) = (c_entry(entry)?, c_name(name)?);
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: value.len() as u32,
        flags: flags as u32,
    };
    let result = try_at(|| {
        // SAFETY: `path` and `attr` are NUL-terminated and `args` points at
        // `value`, which outlives the call.
        unsafe {
            libc::syscall(
                SYS_SETXATTRAT,
                dir.as_raw_fd(),
                path.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
                &args,
                size_of_args(),
            )
        }
    });
    match result {
        Some(result) => result.map(drop),
        None => set(open_entry(dir, entry)?.as_fd(), name, value, flags),
    }
}

/// Removes attribute `name` of `entry` in directory `dir`.
pub fn remove_at(dir: BorrowedFd<'_>, entry: &OsStr, name: &OsStr) -> io::Result<()> {
    let (path, attr) = (c_entry(entry)?, c_name(name)?);
    let result = try_at(|| {
        // SAFETY: `path` and `attr` are NUL-terminated.
        unsafe {
            libc::syscall(
                SYS_REMOVEXATTRAT,
                dir.as_raw_fd(),
                path.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
            )
        }
    });
    match result {
        Some(result) => result.map(drop),
        None => remove(open_entry(dir, entry)?.as_fd(), name),
    }
}

fn size_of_args() -> usize {
    std::mem::size_of::<XattrArgs>()
}

fn split_names(raw: &[u8]) -> Vec<OsString> {
    raw.split(|&byte| byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| OsString::from_vec(name.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;

    #[test]
    fn symlink_attribute_stays_on_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fd = open(&link, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty()).unwrap();
        let name = OsStr::new("trusted.unionfs-test");

        set(fd.as_fd(), name, b"v", 0).unwrap();

        assert_eq!(get(fd.as_fd(), name).unwrap(), Some(b"v".to_vec()));
        let target_fd = open(&target, OFlag::O_RDONLY, Mode::empty()).unwrap();
        assert_eq!(get(target_fd.as_fd(), name).unwrap(), None);
        assert!(list(fd.as_fd()).unwrap().iter().any(|n| n == name));
        remove(fd.as_fd(), name).unwrap();
        assert_eq!(get(fd.as_fd(), name).unwrap(), None);
    }
}
