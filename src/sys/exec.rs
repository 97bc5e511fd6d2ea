//! Process state that a forked child cleans up before it runs another
//! program: signal handlers inherited from the parent and open descriptors.

use std::io;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};

/// Resets every catchable signal to its default action and unblocks all
/// signals. A forked child keeps the parent's handlers until `execve`, and a
/// handler that writes to the parent's self-pipe must not run in the child.
pub fn reset_signals() -> io::Result<()> {
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code in this process, so it
        // cannot break an invariant of code interrupted by the signal.
        unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) }?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}

/// Marks every descriptor from 3 up close-on-exec, so that `execve` closes
/// all but stdin, stdout and stderr (`close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11+).
pub fn set_cloexec_from_3() -> io::Result<()> {
    // SAFETY: close_range takes two integers and a flag word and reads no
    // memory. With CLOSE_RANGE_CLOEXEC it closes nothing, so no descriptor
    // owned by Rust code is invalidated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    super::check(ret).map(drop)
}
