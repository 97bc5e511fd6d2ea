//! Copy-up: giving a lower-layer object a copy in the upper layer.
//!
//! A copy-up builds the new object in the work dir with its data, owner,
//! mode, xattrs and timestamps, syncs it, and only then moves it into the
//! upper layer in one step: `linkat` of an `O_TMPFILE` for regular files,
//! `renameat2(RENAME_NOREPLACE)` for everything else. Until that step no
//! reader can see it; a daemon killed before it leaves only work dir
//! leftovers. The parent directory's timestamps are restored afterwards,
//! because a copy-up is not a change the merged view should show.
//!
//! Callers serialise copy-ups of one node and copy up its parent first; this
//! module works on one object whose upper parent already exists.

pub mod data;
pub mod meta;
pub mod workdir;

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::debug;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};

use crate::real;
use crate::stack::Upper;
use meta::Target;
use workdir::Install;

/// One object to copy up.
pub struct CopyUp<'a> {
    pub upper: &'a Upper,
    /// The lower layer directory holding the object.
    pub src_parent: BorrowedFd<'a>,
    /// The upper layer directory that receives the copy.
    pub dst_parent: BorrowedFd<'a>,
    pub name: &'a OsStr,
    /// The lower object's attributes.
    pub stat: FileStat,
    /// How many bytes of a regular file's data to copy: less than its size
    /// for a truncate, 0 for an open with `O_TRUNC`.
    pub data_len: u64,
}

/// The copied-up object.
pub struct Copied {
    pub stat: FileStat,
    /// The new upper directory, for a directory copy-up.
    pub dir: Option<OwnedFd>,
}

impl CopyUp<'_> {
    /// Performs the copy-up.
    pub fn run(&self) -> io::Result<Copied> {
        let parent_stat = real::stat_fd(self.dst_parent)?;

        let copied = match real::kind(&self.stat) {
            SFlag::S_IFREG => self.copy_file()?,
            SFlag::S_IFDIR => self.copy_dir()?,
            SFlag::S_IFLNK => self.copy_symlink()?,
            _ => self.copy_node()?,
        };

        // Restore the parent's times: the copy-up is not a user-visible change.
        if let Err(err) = meta::set_times(Target::Fd(self.dst_parent), &parent_stat) {
            debug!(
                "copy-up of {:?}: cannot restore parent times: {err}",
                self.name
            );
        }
        debug!(
            "copied up {:?} ({} bytes of data)",
            self.name, self.data_len
        );
        Ok(copied)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        if self.upper.volatile {
            Ok(())
        } else {
            file.sync_all()
        }
    }

    fn copy_file(&self) -> io::Result<Copied> {
        let work = &self.upper.work;
        let flags = OFlag::O_RDONLY | OFlag::O_NOATIME;
        let src = File::from(real::open_regular(self.src_parent, self.name, flags)?.0);
        let xattrs = meta::read_xattrs(src.as_fd())?;
        let (dst, temp) = match work.tmpfile() {
            Ok(fd) => (File::from(fd), None),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                let (name, fd) = work.create_file()?;
                (File::from(fd), Some(name))
            }
            Err(err) => return Err(err),
        };

        let built = (|| {
            // Data before xattrs: writing data drops `security.capability`.
            data::copy(&src, &dst, self.data_len)?;
            meta::apply(Target::Fd(dst.as_fd()), &self.stat, &xattrs)?;
            self.sync(&dst)?;
            match &temp {
                Some(name) => work.install(name, self.dst_parent, self.name, Install::NoReplace),
                None => work.link_tmpfile(dst.as_fd(), self.dst_parent, self.name),
            }
        })();
        if let (Err(_), Some(name)) = (&built, &temp) {
            work.discard(name);
        }
        built?;
        Ok(Copied {
            stat: real::stat_fd(&dst)?,
            dir: None,
        })
    }

    fn copy_dir(&self) -> io::Result<Copied> {
        let work = &self.upper.work;
        let src = real::open_dir(self.src_parent, self.name)?;
        let xattrs = meta::read_xattrs(src.as_fd())?;
        let (temp, dir) = work.create_dir()?;
        let built = meta::apply(Target::Fd(dir.as_fd()), &self.stat, &xattrs)
            .and_then(|()| work.install(&temp, self.dst_parent, self.name, Install::NoReplace));
        if built.is_err() {
            work.discard(&temp);
        }
        built?;
        Ok(Copied {
            stat: real::stat_fd(&dir)?,
            dir: Some(dir),
        })
    }

    fn copy_symlink(&self) -> io::Result<Copied> {
        let target = nix::fcntl::readlinkat(self.src_parent, self.name)?;
        let temp = self.upper.work.create_symlink(&target)?;
        self.finish_named(&temp, true)
    }

    fn copy_node(&self) -> io::Result<Copied> {
        let temp = self
            .upper
            .work
            .create_node(self.stat.st_mode & libc::S_IFMT | 0o600, self.stat.st_rdev)?;
        self.finish_named(&temp, false)
    }

    /// Applies metadata to a staged symlink or special file and installs it.
    fn finish_named(&self, temp: &OsStr, is_symlink: bool) -> io::Result<Copied> {
        let work = &self.upper.work;
        let built = (|| {
            let src = real::open_path(self.src_parent, self.name)?;
            let xattrs = meta::read_xattrs(src.as_fd())?;
            let target = Target::Named {
                dir: work.fd(),
                name: temp,
                is_symlink,
            };
            meta::apply(target, &self.stat, &xattrs)?;
            work.install(temp, self.dst_parent, self.name, Install::NoReplace)
        })();
        if built.is_err() {
            work.discard(temp);
        }
        built?;
        let stat = real::stat_at(self.dst_parent, self.name)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        Ok(Copied { stat, dir: None })
    }
}
