//! Directory walks and object replacement inside a layer during `import`.
//! Parents are opened one component at a time without following symlinks,
//! and an object that a later entry of the same name replaces is removed
//! first, as tar does.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::import::Unpacker;
use super::path;
use super::{LayerError, OPAQUE_XATTR};
use crate::real;
use crate::sys::xattr;

impl Unpacker {
    /// Opens the directory `parts` below the root, creating missing
    /// directories (mode 0755, owned by the caller) and never following a
    /// symlink.
    pub(super) fn open_parent(
        &mut self,
        parts: &[OsString],
        display_name: &str,
    ) -> Result<OwnedFd, LayerError> {
        let mut dir = real::reopen_dir(self.root.as_fd())
            .map_err(|err| LayerError::io("open", display_name, err))?;
        for (depth, part) in parts.iter().enumerate() {
            let path = &parts[..=depth];
            match real::stat_at(dir.as_fd(), part)
                .map_err(|err| LayerError::io("check", display_name, err))?
            {
                None => {
                    self.make_directory(dir.as_fd(), part, path, display_name)?;
                    nix::sys::stat::fchmodat(
                        dir.as_fd(),
                        part.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                    .map_err(|err| LayerError::io("set the mode of", display_name, err.into()))?;
                }
                Some(stat) if real::is_dir(&stat) => {}
                Some(stat) if self.is_own_whiteout(path, &stat) => {
                    self.make_directory(dir.as_fd(), part, path, display_name)?;
                }
                Some(stat) => {
                    let what = if real::kind(&stat) == SFlag::S_IFLNK {
                        "a symlink"
                    } else {
                        "not a directory"
                    };
                    return Err(LayerError::invalid(
                        display_name,
                        format!(
                            "its parent {} is {what} in the layer; a layer tar may not place entries through it",
                            path::display(path)
                        ),
                    ));
                }
            }
            dir = real::open_dir(dir.as_fd(), part)
                .map_err(|err| LayerError::io("open", display_name, err))?;
        }
        Ok(dir)
    }

    /// Creates directory `name` in `parent` unless one exists. A whiteout
    /// this import wrote at that name is replaced, and the directory is
    /// marked opaque, since the whiteout deleted what lay below.
    pub(super) fn make_directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[OsString],
        display_name: &str,
    ) -> Result<(), LayerError> {
        let mut opaque = false;
        match real::stat_at(parent, name)
            .map_err(|err| LayerError::io("check", display_name, err))?
        {
            Some(stat) if real::is_dir(&stat) => return Ok(()),
            Some(stat) => {
                opaque = self.is_own_whiteout(path, &stat);
                self.whiteouts.remove(path);
                remove(parent, name, false, display_name)?;
            }
            None => {}
        }
        nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))
            .map_err(|err| LayerError::io("create the directory", display_name, err.into()))?;
        if opaque {
            let dir = real::open_dir(parent, name)
                .map_err(|err| LayerError::io("open", display_name, err))?;
            xattr::set(dir.as_fd(), OsStr::new(OPAQUE_XATTR), b"y", 0)
                .map_err(|err| LayerError::io("mark opaque", display_name, err))?;
        }
        Ok(())
    }

    /// Removes the object at `name` before a non-directory replaces
    /// it, as tar does for a later entry of the same name.
    pub(super) fn clear(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &[OsString],
        display_name: &str,
    ) -> Result<(), LayerError> {
        if let Some(stat) =
            real::stat_at(parent, name).map_err(|err| LayerError::io("check", display_name, err))?
        {
            self.whiteouts.remove(path);
            remove(parent, name, real::is_dir(&stat), display_name)?;
        }
        Ok(())
    }

    /// Opens existing directory `parts` below the root without following a
    /// symlink and without creating anything.
    pub(super) fn open_existing(
        &self,
        parts: &[OsString],
        display_name: &str,
    ) -> Result<OwnedFd, LayerError> {
        let mut dir = real::reopen_dir(self.root.as_fd())
            .map_err(|err| LayerError::io("open", display_name, err))?;
        for (depth, part) in parts.iter().enumerate() {
            dir = real::open_dir(dir.as_fd(), part).map_err(|err| {
                let reason = match err.raw_os_error() {
                    Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV) => format!(
                        "hard link target parent {} is a symlink or not a directory",
                        path::display(&parts[..=depth])
                    ),
                    _ => format!(
                        "hard link target parent {} cannot be opened: {err}",
                        path::display(&parts[..=depth])
                    ),
                };
                LayerError::invalid(display_name, reason)
            })?;
        }
        Ok(dir)
    }
}

/// Removes `name` in `parent`: a directory with everything below it.
fn remove(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    is_dir: bool,
    display_name: &str,
) -> Result<(), LayerError> {
    if !is_dir {
        return nix::unistd::unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|err| LayerError::io("replace", display_name, err.into()));
    }
    // The directory was opened without following symlinks; its
    // /proc/self/fd path names exactly that directory.
    let dir =
        real::open_dir(parent, name).map_err(|err| LayerError::io("open", display_name, err))?;
    let proc_path = crate::sys::proc_fd_path(dir.as_fd());
    let proc_path = Path::new(OsStr::from_bytes(proc_path.as_bytes()));
    for child in
        std::fs::read_dir(proc_path).map_err(|err| LayerError::io("read", display_name, err))?
    {
        let child = child.map_err(|err| LayerError::io("read", display_name, err))?;
        let child_is_dir = child
            .file_type()
            .map_err(|err| LayerError::io("check", display_name, err))?
            .is_dir();
        remove(dir.as_fd(), &child.file_name(), child_is_dir, display_name)?;
    }
    nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir)
        .map_err(|err| LayerError::io("replace", display_name, err.into()))
}
