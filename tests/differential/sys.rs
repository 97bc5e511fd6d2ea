//! Thin libc wrappers that return the errno instead of panicking, so both
//! filesystems' results compare as values.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The result of one system call: its value, or the errno it failed with.
pub type SysResult<T> = Result<T, i32>;

pub fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("test paths contain no NUL byte")
}

pub fn cstr(text: &str) -> CString {
    CString::new(text).expect("test strings contain no NUL byte")
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// Turns a libc return value into a result, reading errno on -1.
pub fn check<T: Copy + PartialEq + From<i8>>(value: T) -> SysResult<T> {
    if value == T::from(-1) {
        Err(last_errno())
    } else {
        Ok(value)
    }
}

/// Returns the errno symbol (`ENOENT`) or the number for an unknown one.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        libc::EAGAIN => "EAGAIN",
        libc::EBUSY => "EBUSY",
        libc::ETXTBSY => "ETXTBSY",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

pub fn open(path: &Path, flags: i32, mode: u32) -> SysResult<i32> {
    let path = cstring(path);
    check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode) })
}

/// Flushes the filesystem that contains `path` (syncfs(2)); errors are
/// ignored, as a later comparison shows their effect.
pub fn syncfs(path: &Path) {
    if let Ok(fd) = open(path, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
        unsafe { libc::syncfs(fd) };
        close(fd);
    }
}

pub fn close(fd: i32) {
    unsafe { libc::close(fd) };
}

pub fn pwrite(fd: i32, data: &[u8], offset: u64) -> SysResult<usize> {
    let written =
        check(unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), offset as i64) })?;
    Ok(written as usize)
}

pub fn write(fd: i32, data: &[u8]) -> SysResult<usize> {
    let written = check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })?;
    Ok(written as usize)
}

pub fn pread(fd: i32, length: usize, offset: u64) -> SysResult<Vec<u8>> {
    let mut buffer = vec![0u8; length];
    let read =
        check(unsafe { libc::pread(fd, buffer.as_mut_ptr().cast(), length, offset as i64) })?;
    buffer.truncate(read as usize);
    Ok(buffer)
}

pub fn fstat(fd: i32) -> SysResult<libc::stat> {
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut stat) })?;
    Ok(stat)
}

pub fn lstat(path: &Path) -> SysResult<libc::stat> {
    let path = cstring(path);
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::lstat(path.as_ptr(), &mut stat) })?;
    Ok(stat)
}

pub fn is_symlink(path: &Path) -> bool {
    lstat(path).is_ok_and(|stat| stat.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

pub fn truncate(path: &Path, length: u64) -> SysResult<()> {
    let path = cstring(path);
    check(unsafe { libc::truncate(path.as_ptr(), length as i64) })?;
    Ok(())
}

pub fn ftruncate(fd: i32, length: u64) -> SysResult<()> {
    check(unsafe { libc::ftruncate(fd, length as i64) })?;
    Ok(())
}

pub fn fallocate(fd: i32, mode: i32, offset: u64, length: u64) -> SysResult<()> {
    check(unsafe { libc::fallocate(fd, mode, offset as i64, length as i64) })?;
    Ok(())
}

pub fn chmod(path: &Path, mode: u32) -> SysResult<()> {
    let path = cstring(path);
    check(unsafe { libc::chmod(path.as_ptr(), mode) })?;
    Ok(())
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> SysResult<()> {
    let path = cstring(path);
    check(unsafe { libc::lchown(path.as_ptr(), uid, gid) })?;
    Ok(())
}

/// A timestamp argument of utimensat(2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    Now,
    Omit,
    At(i64, i64),
}

impl Time {
    fn timespec(self) -> libc::timespec {
        match self {
            Time::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            Time::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            Time::At(seconds, nanoseconds) => libc::timespec {
                tv_sec: seconds,
                tv_nsec: nanoseconds,
            },
        }
    }
}

/// Sets the times of `path` itself, never of a symlink's target.
pub fn lutimens(path: &Path, atime: Time, mtime: Time) -> SysResult<()> {
    let path = cstring(path);
    let times = [atime.timespec(), mtime.timespec()];
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn lsetxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> SysResult<()> {
    let path = cstring(path);
    let name = cstr(name);
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })?;
    Ok(())
}

pub fn lremovexattr(path: &Path, name: &str) -> SysResult<()> {
    let path = cstring(path);
    let name = cstr(name);
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })?;
    Ok(())
}

/// Lists the xattr names of `path` itself.
pub fn llistxattr(path: &Path) -> SysResult<Vec<Vec<u8>>> {
    let cpath = cstring(path);
    let size = check(unsafe { libc::llistxattr(cpath.as_ptr(), std::ptr::null_mut(), 0) })?;
    let mut buffer = vec![0u8; size as usize + 256];
    let size = check(unsafe {
        libc::llistxattr(cpath.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len())
    })?;
    buffer.truncate(size as usize);
    Ok(buffer
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| name.to_vec())
        .collect())
}

pub fn lgetxattr(path: &Path, name: &[u8]) -> SysResult<Vec<u8>> {
    let cpath = cstring(path);
    let cname = CString::new(name).expect("xattr names contain no NUL byte");
    let size =
        check(unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) })?;
    let mut buffer = vec![0u8; size as usize + 256];
    let size = check(unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    })?;
    buffer.truncate(size as usize);
    Ok(buffer)
}

pub fn link(from: &Path, to: &Path) -> SysResult<()> {
    let from = cstring(from);
    let to = cstring(to);
    check(unsafe { libc::link(from.as_ptr(), to.as_ptr()) })?;
    Ok(())
}

pub fn symlink(target: &str, path: &Path) -> SysResult<()> {
    let target = cstr(target);
    let path = cstring(path);
    check(unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) })?;
    Ok(())
}

pub fn mkdir(path: &Path, mode: u32) -> SysResult<()> {
    let path = cstring(path);
    check(unsafe { libc::mkdir(path.as_ptr(), mode) })?;
    Ok(())
}

pub fn rmdir(path: &Path) -> SysResult<()> {
    let path = cstring(path);
    check(unsafe { libc::rmdir(path.as_ptr()) })?;
    Ok(())
}

pub fn unlink(path: &Path) -> SysResult<()> {
    let path = cstring(path);
    check(unsafe { libc::unlink(path.as_ptr()) })?;
    Ok(())
}

pub fn mknod(path: &Path, mode: u32, device: u64) -> SysResult<()> {
    let path = cstring(path);
    check(unsafe { libc::mknod(path.as_ptr(), mode, device) })?;
    Ok(())
}

pub fn renameat2(from: &Path, to: &Path, flags: u32) -> SysResult<()> {
    let from = cstring(from);
    let to = cstring(to);
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

pub fn readlink(path: &Path) -> SysResult<Vec<u8>> {
    std::fs::read_link(path)
        .map(|target| target.into_os_string().as_bytes().to_vec())
        .map_err(|err| err.raw_os_error().unwrap_or(-1))
}

/// One entry returned by readdir(3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub d_type: u8,
    pub d_ino: u64,
}

/// A directory stream from opendir(3), closed on drop.
pub struct DirStream(*mut libc::DIR);

impl DirStream {
    pub fn open(path: &Path) -> SysResult<DirStream> {
        let path = cstring(path);
        let dir = unsafe { libc::opendir(path.as_ptr()) };
        if dir.is_null() {
            Err(last_errno())
        } else {
            Ok(DirStream(dir))
        }
    }

    /// Returns the next entry, `Ok(None)` at the end.
    pub fn next(&mut self) -> SysResult<Option<DirEntry>> {
        unsafe { *libc::__errno_location() = 0 };
        let entry = unsafe { libc::readdir(self.0) };
        if entry.is_null() {
            let errno = unsafe { *libc::__errno_location() };
            return if errno == 0 { Ok(None) } else { Err(errno) };
        }
        let entry = unsafe { &*entry };
        let name = unsafe { CStr::from_ptr(entry.d_name.as_ptr()) };
        Ok(Some(DirEntry {
            name: name.to_bytes().to_vec(),
            d_type: entry.d_type,
            d_ino: entry.d_ino,
        }))
    }

    pub fn tell(&mut self) -> i64 {
        unsafe { libc::telldir(self.0) }
    }

    pub fn seek(&mut self, position: i64) {
        unsafe { libc::seekdir(self.0, position) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.0) };
    }
}

pub fn as_os_str(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}
