//! Terminal ioctls that nix only offers as unsafe macros: the controlling
//! terminal and the window size.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub use libc::winsize as WindowSize;

/// Makes the terminal `fd` the controlling terminal of the calling process,
/// which must be a session leader without one (`TIOCSCTTY`).
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal the
    // terminal from another session) and reads no memory.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    super::check(ret as libc::c_long).map(drop)
}

/// Returns the window size of the terminal `fd` (`TIOCGWINSZ`).
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<WindowSize> {
    let mut size = WindowSize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points to a live, writable `winsize`.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGWINSZ,
            &mut size as *mut WindowSize,
        )
    };
    super::check(ret as libc::c_long).map(|_| size)
}

/// Sets the window size of the terminal `fd` (`TIOCSWINSZ`); the kernel
/// sends SIGWINCH to the terminal's foreground process group.
pub fn set_window_size(fd: BorrowedFd<'_>, size: &WindowSize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which
    // points to a live `winsize`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, size as *const WindowSize) };
    super::check(ret as libc::c_long).map(drop)
}
