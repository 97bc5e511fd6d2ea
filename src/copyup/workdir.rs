//! The work dir: where new upper-layer objects are built before they appear.
//!
//! Copy-up, whiteout creation and creation over a whiteout build their object
//! here under a temporary name (or as an unnamed `O_TMPFILE`), give it its
//! final data and metadata, and then move it into the upper layer with one
//! `renameat2` or `linkat`. A reader therefore never sees a half-built object,
//! and a daemon killed mid-way leaves only leftovers here, which are swept at
//! the next mount.
//!
//! Layout: the user's work dir holds a `work/` subdirectory, the name kernel
//! overlayfs uses for the same purpose, so one work dir serves both. The work
//! dir is locked with `flock` while mounted, so two daemons never share it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use log::{debug, info, trace};
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::real;

/// Name of the subdirectory that holds objects under construction.
const STAGING_DIR: &str = "work";

/// How a staged object takes its place in the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Fail with `EEXIST` if the name exists.
    NoReplace,
    /// Atomically replace a non-directory at the name.
    Replace,
    /// Atomically swap with the object at the name, which then sits in the
    /// work dir under the staged name.
    Exchange,
}

/// An open, locked work dir.
pub struct WorkDir {
    path: PathBuf,
    staging: OwnedFd,
    _lock: Flock<OwnedFd>,
    next_name: AtomicU64,
}

impl WorkDir {
    /// Opens (creating if needed) and locks the work dir at `path`, then
    /// sweeps leftovers of an earlier daemon from its staging directory.
    ///
    /// `upper_dev` is the device of the upper layer: a work dir on another
    /// filesystem is rejected because nothing could be renamed from it.
    pub fn open(path: &Path, upper_dev: u64) -> io::Result<WorkDir> {
        // Check the filesystem before creating anything, so a rejected work
        // dir leaves nothing behind.
        let existing = nix::sys::stat::stat(path).ok();
        let checked = match &existing {
            Some(_) => path,
            None => path.parent().unwrap_or(Path::new("/")),
        };
        let device = nix::sys::stat::stat(checked)
            .map_err(|err| with_path(err.into(), "cannot find work dir", path))?
            .st_dev;
        if device != upper_dev {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "work dir {} is on another filesystem than the upper layer; \
                     choose a work dir on the upper layer's filesystem",
                    path.display()
                ),
            ));
        }
        if existing.is_none() {
            nix::unistd::mkdir(path, Mode::from_bits_truncate(0o755))
                .map_err(|err| with_path(err.into(), "cannot create work dir", path))?;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open(path, flags, Mode::empty())
            .map_err(|err| with_path(err.into(), "cannot open work dir", path))?;
        let lock = Flock::lock(root, FlockArg::LockExclusiveNonblock).map_err(|(_, _)| {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "work dir {} is in use by another unionfs mount; \
                     unmount that one or pass another -o workdir=",
                    path.display()
                ),
            )
        })?;
        match nix::sys::stat::mkdirat(lock.as_fd(), STAGING_DIR, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(err) => return Err(with_path(err.into(), "cannot create staging dir in", path)),
        }
        let staging = real::open_dir(lock.as_fd(), OsStr::new(STAGING_DIR))?;
        let work = WorkDir {
            path: path.to_path_buf(),
            staging,
            _lock: lock,
            next_name: AtomicU64::new(0),
        };
        work.sweep()?;
        Ok(work)
    }

    /// Returns the path the work dir was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the staging directory, where temporary names live.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.staging.as_fd()
    }

    /// Removes everything left in the staging directory.
    fn sweep(&self) -> io::Result<()> {
        let names = list_names(self.fd())?;
        for name in &names {
            remove_tree(self.fd(), name)?;
        }
        if !names.is_empty() {
            info!(
                "swept {} leftover objects from work dir {}",
                names.len(),
                self.path.display()
            );
        }
        Ok(())
    }

    /// Returns a fresh temporary name, unique within this daemon's life.
    pub fn temp_name(&self) -> OsString {
        let n = self.next_name.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#{:x}.{n:x}", std::process::id()))
    }

    /// Creates an unnamed regular file for a copy-up, writable by the daemon
    /// whatever its final mode. Returns `EOPNOTSUPP` or `EISDIR` where the
    /// filesystem lacks `O_TMPFILE`.
    pub fn tmpfile(&self) -> io::Result<OwnedFd> {
        let fd = nix::fcntl::openat(
            self.fd(),
            ".",
            OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        Ok(fd)
    }

    /// Creates a named regular file; returns its temporary name and an fd.
    pub fn create_file(&self) -> io::Result<(OsString, OwnedFd)> {
        let name = self.temp_name();
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR;
        let fd = real::open_at(self.fd(), &name, flags, 0o600)?;
        Ok((name, fd))
    }

    /// Creates a directory writable by the daemon; returns its name and an fd.
    pub fn create_dir(&self) -> io::Result<(OsString, OwnedFd)> {
        let name = self.temp_name();
        nix::sys::stat::mkdirat(self.fd(), name.as_os_str(), Mode::from_bits_truncate(0o700))?;
        let fd = real::open_dir(self.fd(), &name)?;
        Ok((name, fd))
    }

    /// Creates a symlink pointing at `target`; returns its temporary name.
    pub fn create_symlink(&self, target: &OsStr) -> io::Result<OsString> {
        let name = self.temp_name();
        nix::unistd::symlinkat(target, self.fd(), name.as_os_str())?;
        Ok(name)
    }

    /// Creates a device node, FIFO or socket with type and permission bits
    /// in `mode`; returns its temporary name.
    pub fn create_node(&self, mode: u32, rdev: u64) -> io::Result<OsString> {
        let name = self.temp_name();
        let kind = nix::sys::stat::SFlag::from_bits_truncate(mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        nix::sys::stat::mknodat(self.fd(), name.as_os_str(), kind, perm, rdev)?;
        Ok(name)
    }

    /// Moves staged object `temp` to `name` in upper directory `parent`.
    pub fn install(
        &self,
        temp: &OsStr,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        how: Install,
    ) -> io::Result<()> {
        real::check_name(name)?;
        let flags = match how {
            Install::NoReplace => RenameFlags::RENAME_NOREPLACE,
            Install::Replace => RenameFlags::empty(),
            Install::Exchange => RenameFlags::RENAME_EXCHANGE,
        };
        nix::fcntl::renameat2(self.fd(), temp, parent, name, flags)?;
        trace!("installed {temp:?} as {name:?} ({how:?})");
        Ok(())
    }

    /// Gives the unnamed file `file` (from [`WorkDir::tmpfile`]) the name
    /// `name` in `parent`. Fails with `EEXIST` if the name exists.
    pub fn link_tmpfile(
        &self,
        file: BorrowedFd<'_>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<()> {
        real::check_name(name)?;
        match nix::unistd::linkat(file, "", parent, name, AtFlags::AT_EMPTY_PATH) {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc path does not.
            Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EPERM) => {
                let path = crate::sys::proc_fd_path(file);
                nix::unistd::linkat(
                    self.fd(),
                    path.as_c_str(),
                    parent,
                    name,
                    AtFlags::AT_SYMLINK_FOLLOW,
                )?;
                Ok(())
            }
            result => Ok(result?),
        }
    }

    /// Moves `name` out of `parent` into the work dir and deletes it there,
    /// so a large tree disappears from the upper layer in one rename.
    pub fn evict(&self, parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let temp = self.temp_name();
        nix::fcntl::renameat2(
            parent,
            name,
            self.fd(),
            temp.as_os_str(),
            RenameFlags::RENAME_NOREPLACE,
        )?;
        self.discard(&temp);
        Ok(())
    }

    /// Deletes staged object `temp`. Failure only leaves a leftover for the
    /// next sweep, so it is logged rather than returned.
    pub fn discard(&self, temp: &OsStr) {
        if let Err(err) = remove_tree(self.fd(), temp) {
            debug!(
                "cannot remove {temp:?} from work dir {}: {err}",
                self.path.display()
            );
        }
    }
}

fn with_path(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

/// Returns every name in directory `dir` except `.` and `..`.
pub fn list_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let fd = real::reopen_dir(dir)?;
    let mut names = Vec::new();
    for entry in nix::dir::Dir::from_fd(fd)?.into_iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Deletes `name` in `dir` and, if it is a directory, everything below it,
/// without following any symlink.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(stat) = real::stat_at(dir, name)? else {
        return Ok(());
    };
    if !real::is_dir(&stat) {
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
        return Ok(());
    }
    let child = real::open_dir(dir, name)?;
    for entry in list_names(child.as_fd())? {
        remove_tree(child.as_fd(), &entry)?;
    }
    drop(child);
    nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}
