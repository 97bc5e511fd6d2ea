//! The launcher's side while the container runs: it waits for PID 1,
//! forwards signals to it and relays the terminal with `-t`. When PID 1
//! ignores a forwarded SIGINT or SIGTERM for longer than `--stop-timeout`,
//! it kills every process in the cgroup. `unionfs exec` supervises its
//! command the same way, without a cgroup of its own: there the command
//! alone is killed.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::cgroup::Cgroup;
use super::signals::SignalPipe;
use super::tty;

/// Size of one read from the terminal or stdin.
const CHUNK: usize = 64 * 1024;

/// The end of the container's PID 1: an exit code or a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    /// Returns the exit status `unionfs run` passes on: the command's own,
    /// or 128 + N for a command killed by signal N, as a shell reports it.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal as i32,
        }
    }
}

/// The supervisor of one running container.
pub struct Supervisor<'a> {
    pub init: Pid,
    pub signals: &'a mut SignalPipe,
    /// The cgroup killed when the timeout passes; without one, `init` is.
    pub cgroup: Option<&'a Cgroup>,
    /// The container terminal's master, with `-t`.
    pub master: Option<OwnedFd>,
    /// Relay the launcher's stdin to the terminal (`-i` with `-t`).
    pub relay_stdin: bool,
    pub stop_timeout: Duration,
}

impl Supervisor<'_> {
    /// Runs until PID 1 exits and returns how it ended.
    pub fn wait(mut self) -> io::Result<Exit> {
        let mut kill_deadline: Option<Instant> = None;
        let mut stdin_open = self.relay_stdin;
        if let Some(master) = &self.master {
            tty::copy_window_size(io::stdin().as_fd(), master.as_fd());
        }
        loop {
            if let Some(exit) = self.reap()? {
                self.drain_master();
                return Ok(exit);
            }
            let timeout = match kill_deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                        .unwrap_or(PollTimeout::ZERO)
                }
                None => PollTimeout::NONE,
            };
            let (signal_ready, master_ready, stdin_ready) = {
                let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
                if let Some(master) = &self.master {
                    fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
                }
                let stdin = io::stdin();
                if stdin_open {
                    fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(err) => return Err(err.into()),
                }
                let ready = |fd: Option<&PollFd>| {
                    fd.and_then(PollFd::revents).is_some_and(|r| !r.is_empty())
                };
                let master_index = self.master.as_ref().map(|_| 1);
                let stdin_index = stdin_open.then(|| 1 + usize::from(self.master.is_some()));
                (
                    ready(fds.first()),
                    ready(master_index.and_then(|i| fds.get(i))),
                    ready(stdin_index.and_then(|i| fds.get(i))),
                )
            };
            if signal_ready {
                self.handle_signals(&mut kill_deadline);
            }
            if master_ready && !self.copy_master_output() {
                // The terminal closed: every slave descriptor is gone.
                self.master = None;
            }
            if stdin_ready && !self.copy_stdin() {
                stdin_open = false;
            }
            if kill_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                kill_deadline = None;
                self.kill_after_timeout();
            }
        }
    }

    fn kill_after_timeout(&self) {
        match self.cgroup {
            Some(cgroup) => {
                warn!(
                    "the container did not exit within {:?} of the signal; killing every process in it",
                    self.stop_timeout
                );
                if let Err(err) = cgroup.kill_all() {
                    warn!("{err}");
                }
            }
            None => {
                warn!(
                    "pid {} did not exit within {:?} of the signal; killing it",
                    self.init, self.stop_timeout
                );
                if let Err(err) = kill(self.init, Signal::SIGKILL) {
                    warn!("cannot kill pid {}: {err}", self.init);
                }
            }
        }
    }

    /// Reaps exited children; returns PID 1's end once it exited.
    fn reap(&self) -> io::Result<Option<Exit>> {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.init => {
                    return Ok(Some(Exit::Code(code)));
                }
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == self.init => {
                    return Ok(Some(Exit::Signal(signal)));
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
                Ok(status) => debug!("reaped a child of the launcher: {status:?}"),
                Err(Errno::EINTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    fn handle_signals(&mut self, kill_deadline: &mut Option<Instant>) {
        for signal in self.signals.drain() {
            match signal {
                Signal::SIGCHLD => {}
                Signal::SIGWINCH => {
                    if let Some(master) = &self.master {
                        tty::copy_window_size(io::stdin().as_fd(), master.as_fd());
                    }
                }
                signal => {
                    info!(
                        "forwarding {signal} to the container's PID 1 (pid {})",
                        self.init
                    );
                    if let Err(err) = kill(self.init, signal) {
                        warn!("cannot forward {signal} to pid {}: {err}", self.init);
                    }
                    if matches!(signal, Signal::SIGINT | Signal::SIGTERM) && kill_deadline.is_none()
                    {
                        // A timeout too large for the clock sets no deadline.
                        *kill_deadline = Instant::now().checked_add(self.stop_timeout);
                    }
                }
            }
        }
    }

    /// Copies what the container wrote to its terminal to stdout. Returns
    /// false once the terminal is closed.
    fn copy_master_output(&self) -> bool {
        let Some(master) = &self.master else {
            return false;
        };
        let mut buffer = vec![0u8; CHUNK];
        match nix::unistd::read(master, &mut buffer) {
            Ok(0) | Err(Errno::EIO) => false,
            Ok(n) => {
                let mut stdout = io::stdout().lock();
                if let Err(err) = stdout.write_all(&buffer[..n]).and_then(|()| stdout.flush()) {
                    debug!("cannot write the container's output: {err}");
                }
                true
            }
            Err(Errno::EINTR | Errno::EAGAIN) => true,
            Err(err) => {
                warn!("cannot read the container's terminal: {err}");
                false
            }
        }
    }

    /// Copies stdin to the container's terminal. Returns false at the end
    /// of stdin.
    fn copy_stdin(&mut self) -> bool {
        let mut buffer = vec![0u8; CHUNK];
        let n = match io::stdin().lock().read(&mut buffer) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return true,
            Err(err) => {
                debug!("cannot read stdin: {err}");
                return false;
            }
        };
        if let Some(master) = &self.master {
            // NOTE: this write blocks. A container that stops reading its
            // terminal with more than a buffer of input pending stalls this
            // loop, and its output, until it reads again.
            let mut written = 0;
            while written < n {
                match nix::unistd::write(master, &buffer[written..n]) {
                    Ok(count) => written += count,
                    Err(Errno::EINTR) => {}
                    Err(_) => return false,
                }
            }
        }
        true
    }

    /// Copies the output left in the terminal after PID 1 exited.
    fn drain_master(&self) {
        let Some(master) = &self.master else {
            return;
        };
        loop {
            let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            let ready = matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0);
            if !ready || !self.copy_master_output() {
                return;
            }
        }
    }
}
