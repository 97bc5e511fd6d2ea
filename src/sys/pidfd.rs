//! Process descriptors (pidfds, Linux 5.3+): a descriptor that stays bound
//! to one process, so a signal sent through it never reaches a later
//! process that reuses the pid.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Opens a pidfd for process `pid`. The descriptor is close-on-exec.
pub fn open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and touches no memory
    // of this process.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = super::check(ret)?;
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` to the process behind `pidfd`. Fails with `ESRCH` once
/// that process has exited, even if its pid is in use again.
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: with a null siginfo pointer the kernel fills in the signal's
    // details as kill(2) does and reads no memory, and flags must be 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    super::check(ret).map(|_| ())
}
