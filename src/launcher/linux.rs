//! The real [`Syscalls`]: each call goes to the kernel.
//!
//! Container paths are resolved with `openat2(RESOLVE_IN_ROOT)` from a
//! descriptor of the container's root, so `..` and symlinks (absolute ones
//! included) stay inside the root. Mounts then target the resolved object
//! through `/proc/self/fd/N`, as runc does, so no path is looked up twice.

use std::cell::OnceCell;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag, fstat, makedev, mknodat, umask};
use nix::sys::statvfs::{FsFlags, fstatvfs};
use nix::unistd::{AccessFlags, Gid, Uid};

use super::capabilities::{self, Capabilities};
use super::config::DEFAULT_PATH;
use super::syscalls::{Create, Kind, MountSpec, Source, StdioPlan, Syscalls};
use super::user::Credentials;
use crate::sys::proc_fd_path;

/// Kernel calls for a container whose merged view is mounted at `rootfs`.
pub struct LinuxSyscalls {
    rootfs: PathBuf,
    /// The root, opened on first use: it must be opened inside the new
    /// mount namespace, or mounts on paths under it fail with `EINVAL`.
    root: OnceCell<OwnedFd>,
    /// The socket that carries the terminal's master to the launcher.
    tty_socket: Option<OwnedFd>,
}

impl LinuxSyscalls {
    pub fn new(rootfs: PathBuf, tty_socket: Option<OwnedFd>) -> LinuxSyscalls {
        LinuxSyscalls {
            rootfs,
            root: OnceCell::new(),
            tty_socket,
        }
    }

    fn root(&self) -> io::Result<BorrowedFd<'_>> {
        if let Some(root) = self.root.get() {
            return Ok(root.as_fd());
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open(&self.rootfs, flags, Mode::empty())?;
        Ok(self.root.get_or_init(|| root).as_fd())
    }

    /// Opens container path `path` with `O_PATH`, resolved inside the root.
    fn open_in_root(&self, path: &Path) -> io::Result<OwnedFd> {
        let relative = relative(path);
        let relative = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        Ok(openat2(self.root()?, relative, how)?)
    }

    /// Opens the parent directory of `path` and returns it with the last
    /// component's name.
    fn open_parent<'a>(&self, path: &'a Path) -> io::Result<(OwnedFd, &'a OsStr)> {
        let name = path
            .file_name()
            .ok_or_else(|| invalid(path, "has no final name"))?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        Ok((self.open_in_root(parent)?, name))
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            self.mkdir_all(parent)?;
        }
        let (parent, name) = self.open_parent(path)?;
        let flags =
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(parent, name, flags, Mode::from_bits_truncate(0o644)) {
            Ok(_) | Err(Errno::EEXIST) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Creates the target of `spec` when missing and returns it opened.
    fn open_target(&self, spec: &MountSpec<'_>, source: Option<&OwnedFd>) -> io::Result<OwnedFd> {
        match spec.create {
            Create::Nothing => {}
            Create::Dir => self.mkdir_all(spec.target)?,
            Create::LikeSource => {
                let source_is_dir = match source {
                    Some(fd) => is_dir(fd)?,
                    None => true,
                };
                if source_is_dir {
                    self.mkdir_all(spec.target)?;
                } else if self.kind(spec.target)?.is_none() {
                    self.create_file(spec.target)?;
                }
            }
        }
        self.open_in_root(spec.target)
    }

    /// Creates `path` and its missing parents inside the root. A component
    /// that is a dangling symlink gets its target created instead, resolved
    /// inside the root as `mkdir -p` through the link would, up to
    /// `MAX_SYMLINKS` links deep.
    fn mkdir_all_following(&self, path: &Path, depth: usize) -> io::Result<()> {
        let mut prefix = PathBuf::from("/");
        for component in relative(path).components() {
            let Component::Normal(name) = component else {
                return Err(invalid(path, "must be a normalized absolute path"));
            };
            let parent = self.open_in_root(&prefix)?;
            let parent_path = prefix.clone();
            prefix.push(name);
            match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) => continue,
                Err(Errno::EEXIST) => {}
                Err(err) => return Err(err.into()),
            }
            if self.kind(&prefix)?.is_some() {
                continue;
            }
            // It exists but does not resolve: a dangling symlink.
            if depth >= MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = nix::fcntl::readlinkat(&parent, name)?;
            let target = parent_path.join(target);
            self.mkdir_all_following(&normalize(&target), depth + 1)?;
        }
        // The last component may be an existing non-directory, or a
        // symlink that leads to one.
        if self.kind(path)? != Some(Kind::Directory) {
            return Err(invalid(path, "exists and is not a directory"));
        }
        Ok(())
    }
}

impl Syscalls for LinuxSyscalls {
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        Ok(nix::sched::unshare(flags)?)
    }

    fn make_mounts_private(&self) -> io::Result<()> {
        let flags = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
        Ok(nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            flags,
            None::<&str>,
        )?)
    }

    fn mount(&self, spec: &MountSpec<'_>) -> io::Result<()> {
        let source_fd = match spec.source {
            Source::Name(_) => None,
            Source::Host(path) => {
                let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
                Some(nix::fcntl::open(path, flags, Mode::empty())?)
            }
            Source::InRoot(path) => Some(self.open_in_root(path)?),
        };
        let target = self.open_target(spec, source_fd.as_ref())?;
        let source = match (&spec.source, &source_fd) {
            (Source::Name(name), _) => c_string(name.as_bytes())?,
            (_, Some(fd)) => proc_fd_path(fd.as_fd()),
            (_, None) => unreachable!("every non-name source was opened above"),
        };
        Ok(nix::mount::mount(
            Some(source.as_c_str()),
            proc_fd_path(target.as_fd()).as_c_str(),
            spec.fstype,
            spec.flags,
            spec.data,
        )?)
    }

    fn remount_read_only(&self, target: &Path) -> io::Result<()> {
        // Opened after the bind mount, so this is the new mount's root.
        let target = self.open_in_root(target)?;
        let kept = kept_flags(fstatvfs(&target)?.flags());
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept;
        Ok(nix::mount::mount(
            None::<&str>,
            proc_fd_path(target.as_fd()).as_c_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )?)
    }

    fn kind(&self, path: &Path) -> io::Result<Option<Kind>> {
        match self.open_in_root(path) {
            Ok(fd) => Ok(Some(if is_dir(&fd)? {
                Kind::Directory
            } else {
                Kind::Other
            })),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.mkdir_all_following(path, 0)
    }

    fn mknod_char(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        let (parent, name) = self.open_parent(path)?;
        let old_umask = umask(Mode::empty());
        let result = mknodat(
            &parent,
            name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        );
        umask(old_umask);
        Ok(result?)
    }

    fn symlink(&self, value: &Path, path: &Path) -> io::Result<()> {
        let (parent, name) = self.open_parent(path)?;
        Ok(nix::unistd::symlinkat(value, &parent, name)?)
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        Ok(nix::unistd::sethostname(name)?)
    }

    fn set_link_up(&self, interface: &str) -> io::Result<()> {
        crate::sys::net::set_link_up(interface)
    }

    fn pivot_root(&self) -> io::Result<()> {
        // pivot_root(".", ".") stacks the old root on top of the new one at
        // the same place, so unmounting "." detaches the old root and no
        // directory is needed inside the image (runc and youki do this).
        nix::unistd::fchdir(self.root()?)?;
        nix::unistd::pivot_root(".", ".")?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        Ok(nix::unistd::chdir("/")?)
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(err) => Err(err),
        }
    }

    fn limit_bounding_set(&self, keep: &Capabilities) -> io::Result<()> {
        capabilities::limit_bounding_set(keep).map_err(io::Error::other)
    }

    fn setup_stdio(&self, plan: StdioPlan) -> io::Result<()> {
        // A new session: signals from the launcher's terminal reach only
        // the launcher, which forwards them.
        nix::unistd::setsid()?;
        if plan.tty {
            let socket = self
                .tty_socket
                .as_ref()
                .ok_or_else(|| io::Error::other("no socket to pass the terminal on"))?;
            return super::tty::attach_new_terminal(socket.as_fd());
        }
        // NOTE: without -t the command inherits the launcher's stdout and
        // stderr, which may be the host's terminal. After setsid it is not
        // the command's controlling terminal, so TIOCSTI on it needs
        // CAP_SYS_ADMIN, which the default set drops, but --cap-add
        // SYS_ADMIN gives it back.
        if !plan.interactive {
            let null = File::open("/dev/null")?;
            nix::unistd::dup2_stdin(null.as_fd())?;
        }
        Ok(())
    }

    fn set_credentials(&self, credentials: &Credentials) -> io::Result<()> {
        let groups: Vec<Gid> = credentials
            .groups
            .iter()
            .map(|gid| Gid::from_raw(*gid))
            .collect();
        nix::unistd::setgroups(&groups)?;
        let gid = Gid::from_raw(credentials.gid);
        nix::unistd::setresgid(gid, gid, gid)?;
        let uid = Uid::from_raw(credentials.uid);
        Ok(nix::unistd::setresuid(uid, uid, uid)?)
    }

    fn set_capabilities(&self, keep: &Capabilities) -> io::Result<()> {
        capabilities::set_process_sets(keep).map_err(io::Error::other)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        Ok(nix::unistd::chdir(path)?)
    }

    fn set_no_new_privs(&self) -> io::Result<()> {
        Ok(nix::sys::prctl::set_no_new_privs()?)
    }

    fn close_inherited_fds(&self) -> io::Result<()> {
        crate::sys::exec::set_cloexec_from_3()
    }

    fn exec(&self, argv: &[OsString], env: &[OsString]) -> io::Error {
        let result = (|| -> io::Result<()> {
            let path_var = env
                .iter()
                .find_map(|entry| entry.as_bytes().strip_prefix(b"PATH="))
                .map(OsStr::from_bytes)
                .unwrap_or(OsStr::new(DEFAULT_PATH));
            let program = find_program(&argv[0], path_var)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            let program = c_string(program.as_os_str().as_bytes())?;
            let argv = argv
                .iter()
                .map(|arg| c_string(arg.as_bytes()))
                .collect::<io::Result<Vec<_>>>()?;
            let env = env
                .iter()
                .map(|entry| c_string(entry.as_bytes()))
                .collect::<io::Result<Vec<_>>>()?;
            nix::unistd::execve(&program, &argv, &env)?;
            Ok(())
        })();
        match result {
            Ok(()) => io::Error::other("execve returned without an error"),
            Err(err) => err,
        }
    }
}

/// Finds `name` as `execvp` does: a name with a `/` is used as is,
/// otherwise the first executable regular file of that name in a `PATH`
/// directory. Returns `None` when there is none.
pub fn find_program(name: &OsStr, path_var: &OsStr) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(name));
    }
    path_var
        .as_bytes()
        .split(|byte| *byte == b':')
        .map(|dir| {
            if dir.is_empty() {
                Path::new(".")
            } else {
                Path::new(OsStr::from_bytes(dir))
            }
        })
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate.is_file() && nix::unistd::access(candidate, AccessFlags::X_OK).is_ok()
        })
}

/// Returns the flags of a mount that a read-only remount must repeat, or
/// the remount would clear them (and fail where they are locked).
fn kept_flags(flags: FsFlags) -> MsFlags {
    let pairs = [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    pairs
        .iter()
        .filter(|(statvfs, _)| flags.contains(*statvfs))
        .fold(MsFlags::empty(), |all, (_, mount)| all | *mount)
}

/// Maximum symlinks followed when creating directories, as the kernel's
/// path lookup allows (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Resolves `.` and `..` lexically in an absolute path; `..` at the root
/// stays at the root, as inside a chroot.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => normal.push(name),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    normal
}

fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

fn is_dir(fd: &OwnedFd) -> io::Result<bool> {
    let stat = fstat(fd)?;
    Ok(stat.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"))
}

fn invalid(path: &Path, reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} {reason}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolution inside a root needs no privilege: an absolute symlink in
    /// the root and `..` both stay inside it.
    #[test]
    fn open_in_root_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/marker"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("dotdot")).unwrap();
        let sys = LinuxSyscalls::new(root.clone(), None);
        for path in ["/link/marker", "/dotdot/marker", "/../etc/marker"] {
            let fd = sys.open_in_root(Path::new(path)).unwrap();
            let target = std::fs::read_link(proc_fd_path(fd.as_fd()).to_str().unwrap()).unwrap();
            assert_eq!(target, root.join("etc/marker"), "{path}");
        }
    }

    #[test]
    fn mkdir_all_through_symlink_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join(relative(&outside))).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let sys = LinuxSyscalls::new(root.clone(), None);
        sys.mkdir_all(Path::new("/escape/made")).unwrap();
        assert!(!outside.join("made").exists());
        assert!(root.join(relative(&outside)).join("made").is_dir());
    }

    #[test]
    fn mkdir_all_rejects_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let sys = LinuxSyscalls::new(dir.path().to_path_buf(), None);
        let error = sys.mkdir_all(Path::new("/file")).unwrap_err();
        assert!(error.to_string().contains("not a directory"), "{error}");
    }

    #[test]
    fn find_program_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::write(bin.join("plain"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path_var = format!("/nonexistent:{}", bin.display());
        assert_eq!(
            find_program(OsStr::new("tool"), OsStr::new(&path_var)),
            Some(tool)
        );
        assert_eq!(
            find_program(OsStr::new("plain"), OsStr::new(&path_var)),
            None
        );
        assert_eq!(
            find_program(OsStr::new("missing"), OsStr::new(&path_var)),
            None
        );
        assert_eq!(
            find_program(OsStr::new("./x"), OsStr::new(&path_var)),
            Some(PathBuf::from("./x"))
        );
        assert_eq!(find_program(OsStr::new(""), OsStr::new(&path_var)), None);
    }
}
