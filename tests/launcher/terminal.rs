//! `-t`: the container gets its own pseudo-terminal, the window size is
//! passed on, and the launcher's terminal settings come back on exit.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::{Winsize, openpty};
use nix::sys::termios::tcgetattr;

use crate::fixture::Container;

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, Winsize);

fn set_window_size(master: &OwnedFd, size: &Winsize) {
    // SAFETY: TIOCSWINSZ reads one `winsize` from a live reference.
    unsafe { tiocswinsz(master.as_raw_fd(), size) }.unwrap();
}

/// Reads from `master` until the slave side closes or `timeout` passes.
fn read_all(master: &OwnedFd, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        let mut buffer = [0u8; 4096];
        match nix::unistd::read(master, &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn tty_own_terminal_window_size_and_restore() {
    let size = Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let before = tcgetattr(pty.slave.as_fd()).unwrap();
    let container = Container::new("tty");
    let slave = || Stdio::from(pty.slave.try_clone().unwrap());
    let mut child = container
        .command(&["-i", "-t"], &["sh"])
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();

    std::thread::sleep(Duration::from_millis(500));
    nix::unistd::write(&pty.master, b"tty; stty size; echo $TERM\r").unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // The launcher is not in the terminal's foreground process group, so
    // the test sends the SIGWINCH a resize would bring.
    let resized = Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    set_window_size(&pty.master, &resized);
    let launcher = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(launcher, nix::sys::signal::Signal::SIGWINCH).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::unistd::write(&pty.master, b"stty size; exit 7\r").unwrap();
    let status = child.wait().unwrap();
    let after = tcgetattr(pty.slave.as_fd()).unwrap();
    drop(pty.slave);
    let output = read_all(&pty.master, Duration::from_secs(2));

    assert_eq!(status.code(), Some(7), "output:\n{output}");
    assert!(
        output.contains("/dev/pts/0"),
        "not the container's own terminal:\n{output}"
    );
    assert!(
        output.contains("30 100"),
        "window size not passed on:\n{output}"
    );
    assert!(output.contains("xterm"), "TERM not set:\n{output}");
    assert_eq!(
        after.local_flags, before.local_flags,
        "terminal settings not restored"
    );
    assert_eq!(
        after.input_flags, before.input_flags,
        "terminal settings not restored"
    );
    container.assert_no_leftovers();
}

/// Without `-t` the command's stdin is /dev/null unless `-i` is given.
#[test]
fn stdin_null_without_interactive() {
    let container = Container::new("stdin");
    let output = container.sh(&[], "readlink /proc/self/fd/0");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "/dev/null\n");

    let mut child = container
        .command(&["-i"], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "piped in\n");
}
