//! Pseudo-terminals for `-t`.
//!
//! The container's PID 1 opens a new terminal from the container's own
//! devpts instance, makes it its controlling terminal and sends the master
//! to the launcher over a Unix socket (as runc's console socket does). The
//! container never gets a descriptor of the host's terminal, because a
//! process holding one can inject keystrokes into it with `TIOCSTI`.
//!
//! The launcher puts its own terminal in raw mode while the container
//! runs, so keys such as Ctrl-C reach the container's terminal as bytes,
//! and [`RawMode`] restores the saved settings when dropped.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::warn;
use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::sys::fdpass;
use crate::sys::terminal;

/// Opens a new terminal from `/dev/ptmx`, makes its slave the controlling
/// terminal and stdin, stdout and stderr of the calling process, and sends
/// the master over `socket`. The caller must be a session leader.
pub fn attach_new_terminal(socket: BorrowedFd<'_>) -> io::Result<()> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_path = ptsname_r(&master)?;
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)?;
    terminal::set_controlling_terminal(slave.as_fd())?;
    // The caller's terminal is still stdin here. Its size is copied now, so
    // the command's first TIOCGWINSZ returns it; the launcher's relay
    // passes on later changes.
    copy_window_size(std::io::stdin().as_fd(), master.as_fd());
    fdpass::send_fd(socket, master.as_fd())?;
    nix::unistd::dup2_stdin(slave.as_fd())?;
    nix::unistd::dup2_stdout(slave.as_fd())?;
    nix::unistd::dup2_stderr(slave.as_fd())?;
    Ok(())
}

/// Receives the terminal master sent by [`attach_new_terminal`].
pub fn receive_master(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fdpass::receive_fd(socket)?
        .ok_or_else(|| io::Error::other("the container exited before sending its terminal"))
}

/// Copies the window size of the terminal `from` (the launcher's) to
/// `to` (the container's master). Does nothing when `from` is no terminal.
pub fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let Ok(size) = terminal::window_size(from) else {
        return;
    };
    if let Err(err) = terminal::set_window_size(to, &size) {
        warn!("cannot pass the window size to the container's terminal: {err}");
    }
}

/// The launcher's terminal in raw mode; the saved settings come back on drop.
pub struct RawMode<Fd: AsFd> {
    fd: Fd,
    saved: Termios,
}

impl<Fd: AsFd> RawMode<Fd> {
    /// Switches `fd` to raw mode. Returns `None` when `fd` is no terminal.
    pub fn enter(fd: Fd) -> io::Result<Option<RawMode<Fd>>> {
        if !nix::unistd::isatty(fd.as_fd()).unwrap_or(false) {
            return Ok(None);
        }
        let saved = tcgetattr(fd.as_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { fd, saved }))
    }
}

impl<Fd: AsFd> Drop for RawMode<Fd> {
    fn drop(&mut self) {
        if let Err(err) = tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved) {
            warn!("cannot restore the terminal settings: {err}; run `stty sane`");
        }
    }
}
