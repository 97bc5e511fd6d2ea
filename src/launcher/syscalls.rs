//! The privileged operations that set up a container, behind a trait so
//! that the order of namespace, mount and credential steps can be tested
//! without root against a recording fake (the shape youki uses).
//!
//! The implementation resolves every container path (a mount target, a
//! device node, a symlink) inside the container's root. It never joins one
//! to a host path as a string, so a symlink in an image cannot redirect a
//! mount onto the host.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::capabilities::Capabilities;
use super::user::Credentials;

/// The source of a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// A filesystem name, such as `proc` or `tmpfs`.
    Name(&'a str),
    /// A path on the host, for bind mounts of volumes.
    Host(&'a Path),
    /// A path inside the container's root, for bind mounts inside it.
    InRoot(&'a Path),
}

/// The object to create at a mount target that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing target is an error.
    Nothing,
    /// A directory, with missing parents.
    Dir,
    /// An empty file for a file source, a directory otherwise.
    LikeSource,
}

/// One mount inside the container's root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountSpec<'a> {
    pub source: Source<'a>,
    /// Absolute path inside the container.
    pub target: &'a Path,
    pub fstype: Option<&'a str>,
    pub flags: MsFlags,
    pub data: Option<&'a str>,
    pub create: Create,
}

/// The type of an existing object inside the container's root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    Other,
}

/// The setup of the command's stdin, stdout and stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StdioPlan {
    /// A new pseudo-terminal from the container's devpts, whose master
    /// goes to the launcher.
    pub tty: bool,
    /// Keep stdin open; without it stdin is /dev/null.
    pub interactive: bool,
}

/// The privileged calls of container setup, in the order the container
/// side makes them. Paths are container paths unless a name says host.
pub trait Syscalls {
    /// Moves the calling process into new namespaces (`unshare(2)`).
    fn unshare(&self, flags: CloneFlags) -> io::Result<()>;
    /// Makes every mount in this mount namespace private, recursively, so
    /// mounts propagate neither out to the host nor in from it.
    fn make_mounts_private(&self) -> io::Result<()>;
    fn mount(&self, spec: &MountSpec<'_>) -> io::Result<()>;
    /// Remounts the bind mount at `target` read-only, keeping its other flags.
    fn remount_read_only(&self, target: &Path) -> io::Result<()>;
    /// Returns the type of `path`, or `None` when it does not exist.
    fn kind(&self, path: &Path) -> io::Result<Option<Kind>>;
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates a character device node with exactly `mode` (no umask).
    fn mknod_char(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()>;
    /// Creates a symlink at `path` whose content is `value`.
    fn symlink(&self, value: &Path, path: &Path) -> io::Result<()>;
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    fn set_link_up(&self, interface: &str) -> io::Result<()>;
    /// Makes the container's root the process's root and detaches the old
    /// root (`pivot_root(2)`), leaving the working directory at `/`.
    fn pivot_root(&self) -> io::Result<()>;
    /// Reads a file of the container after `pivot_root`; returns an empty
    /// string when it does not exist.
    fn read_file(&self, path: &Path) -> io::Result<String>;
    fn limit_bounding_set(&self, keep: &Capabilities) -> io::Result<()>;
    fn setup_stdio(&self, plan: StdioPlan) -> io::Result<()>;
    /// Sets the supplementary groups, gid and uid, in that order.
    fn set_credentials(&self, credentials: &Credentials) -> io::Result<()>;
    fn set_capabilities(&self, keep: &Capabilities) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn set_no_new_privs(&self) -> io::Result<()>;
    /// Marks every descriptor but 0, 1 and 2 close-on-exec.
    fn close_inherited_fds(&self) -> io::Result<()>;
    /// Runs `argv[0]`, searched on `PATH` from `env` when it has no `/`.
    /// Returns only on failure.
    fn exec(&self, argv: &[OsString], env: &[OsString]) -> io::Error;
}
