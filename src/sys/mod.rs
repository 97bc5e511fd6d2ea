//! Thin wrappers over system calls that nix does not cover safely.
//!
//! This is the only module allowed to use `unsafe`. Every block states why it
//! is sound in a `// SAFETY:` line. Callers get `io::Result` and borrowed or
//! owned fds; no raw fd leaves this module except as a number in a `/proc`
//! path.

#![allow(unsafe_code)]

pub mod bpf;
pub mod exec;
pub mod fdpass;
pub mod file;
pub mod memory;
pub mod net;
pub mod pidfd;
pub mod process;
pub mod terminal;
pub mod xattr;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Builds `/proc/self/fd/N` for `fd`, the path that reaches the object an
/// `O_PATH` descriptor refers to without resolving any name again.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Converts the return value of a libc call that sets errno into an `io::Result`.
fn check(ret: libc::c_long) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}
