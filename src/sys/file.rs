//! File data operations that nix lacks: reflink cloning.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `FICLONE` from `linux/fs.h`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dst` share all of `src`'s data blocks (a reflink copy).
///
/// Fails with `EOPNOTSUPP`, `EXDEV` or `EINVAL` where the filesystem cannot
/// share blocks between these two files; the caller then copies the data.
pub fn clone_file(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument and reads no
    // memory from the caller; both fds are valid for the duration of the call.
    let ret = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    super::check(ret as libc::c_long).map(drop)
}
