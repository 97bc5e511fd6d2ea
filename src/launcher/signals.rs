//! Signals the launcher receives while a container runs, collected without
//! threads: each handler sets a flag and writes a byte to a self-pipe that
//! the supervisor polls (signal-hook's `flag` and `low_level::pipe`).

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;

/// Signals passed on to the container's PID 1, as `docker run` passes
/// them on.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The launcher's signal handlers and their self-pipe.
pub struct SignalPipe {
    reader: UnixStream,
    flags: Vec<(Signal, Arc<AtomicBool>)>,
}

impl SignalPipe {
    /// Installs handlers for the forwarded signals, SIGCHLD and SIGWINCH.
    /// Until [`SignalPipe::drain`] reports them, they do not act.
    pub fn install() -> io::Result<SignalPipe> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for signal in FORWARDED
            .into_iter()
            .chain([Signal::SIGCHLD, Signal::SIGWINCH])
        {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal as i32, Arc::clone(&flag))?;
            signal_hook::low_level::pipe::register(signal as i32, writer.try_clone()?)?;
            flags.push((signal, flag));
        }
        Ok(SignalPipe { reader, flags })
    }

    /// Returns the descriptor that becomes readable when a signal arrives.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
    }

    /// Empties the pipe and returns the signals that arrived since the last
    /// call, each once.
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut buffer = [0u8; 64];
        while matches!(self.reader.read(&mut buffer), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::SeqCst))
            .map(|(signal, _)| *signal)
            .collect()
    }
}
