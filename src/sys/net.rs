//! Network interface flags, through the `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctls
//! that nix does not wrap.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Brings network interface `name` (such as `lo`) up in the calling
/// process's network namespace. Needs `CAP_NET_ADMIN` in that namespace.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut request = interface_request(name)?;
    get_flags(&socket, &mut request)?;
    // SAFETY: `ifr_ifru` is a union and SIOCGIFFLAGS filled its `ifru_flags`
    // member, the one read and written here.
    unsafe {
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    set_flags(&socket, &request)
}

/// Builds an `ifreq` naming interface `name`, with every other byte zero.
fn interface_request(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: `ifreq` is plain old data, for which all-zero bytes are valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    // The name must leave room for the terminating NUL byte.
    if bytes.is_empty() || bytes.len() >= request.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

fn get_flags(socket: &OwnedFd, request: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into the
    // `ifreq` that `request` points to, which lives for the whole call.
    let ret = unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            request as *mut libc::ifreq,
        )
    };
    super::check(ret as libc::c_long).map(drop)
}

fn set_flags(socket: &OwnedFd, request: &libc::ifreq) -> io::Result<()> {
    // SAFETY: SIOCSIFFLAGS only reads the `ifreq` that `request` points to,
    // which lives for the whole call.
    let ret = unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            request as *const libc::ifreq,
        )
    };
    super::check(ret as libc::c_long).map(drop)
}
