//! File and directory I/O through handles.
//!
//! Opening a lower file for writing copies it up first; with `O_TRUNC`
//! the copy-up copies no data. Reads through a handle opened before a copy-up
//! switch to the upper copy. Directories are read without handles: a
//! listing belongs to the directory node (see `readdir::Listings`).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use fuser::BackingId;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use fuser::FileAttr;
use nix::fcntl::{FallocateFlags, OFlag};
use nix::unistd::Whence;

use super::create::{Caller, NewKind, NewObject, real_open_flags};
use super::{Copied, MAX_RELOCATIONS, Place, Union, Which, errno};
use crate::handle::{FileHandle, IoMode};
use crate::inode::Node;
use crate::readdir::Cursor;
use crate::real;

/// A file opened through the merged view.
pub struct Opened {
    pub fh: u64,
    pub mode: IoMode,
    /// The backing file to name in a passthrough reply.
    pub backing: Option<Arc<BackingId>>,
}

/// Registers a real file with the kernel for passthrough; the FUSE glue
/// provides it from the reply being built.
pub type RegisterBacking<'a> = &'a dyn Fn(BorrowedFd<'_>) -> io::Result<BackingId>;

impl Union {
    /// Opens regular file node `ino` with open(2) `flags` for `caller`.
    pub fn open(
        &self,
        ino: u64,
        flags: i32,
        caller: Caller,
        register: RegisterBacking<'_>,
    ) -> io::Result<Opened> {
        let node = self.node(ino)?;
        // With atomic O_TRUNC the kernel leaves truncating to the open, even
        // for a read-only open.
        // NOTE: so a read-only O_TRUNC open of a running program truncates
        // it before the kernel's ETXTBSY check, which runs after the open;
        // write opens are checked before it.
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let mut split = None;
        if writes {
            let keep = if flags & libc::O_TRUNC != 0 {
                Some(0)
            } else {
                None
            };
            if let Copied::Split(place) = self.copy_up_as(&node, Which::Thread(caller.pid), keep)? {
                split = Some(place);
            }
        }
        let epoch = node.epoch();
        let file = match &split {
            Some(place) => open_place(place, real_open_flags(flags), false)?.0,
            None => self.open_real(&node, real_open_flags(flags))?,
        };
        self.start_handle(node, file, flags, epoch, split.is_some(), register)
    }

    /// Creates regular file `name` in `parent` and opens it.
    pub fn create_file(
        &self,
        caller: Caller,
        parent: u64,
        new: (&OsStr, u32, u32, i32),
        register: RegisterBacking<'_>,
    ) -> io::Result<(Arc<Node>, FileAttr, Opened)> {
        let (name, mode, umask, flags) = new;
        let new = NewObject {
            kind: NewKind::File { flags },
            mode,
            umask,
        };
        let (node, attr, file) = self.create(caller, parent, name, &new)?;
        let file = file.ok_or_else(|| errno(libc::EIO))?;
        let epoch = node.epoch();
        let opened = self.start_handle(node.clone(), file, flags, epoch, false, register)?;
        Ok((node, attr, opened))
    }

    /// Chooses the I/O mode of a new handle on `node` and stores the handle.
    ///
    /// Passthrough serves files in the upper layer, and lower files only
    /// when the stack has no writable layer: a lower file's handles must
    /// switch to the upper copy after a copy-up, which the kernel's fixed
    /// backing file could not do. Nor does it start on setuid
    /// or setgid files: a passthrough write runs with the daemon's
    /// credentials, which keep those bits where the writer's would clear
    /// them. Once a file's handles use passthrough, later opens join them,
    /// since the kernel fails any other mode beside a backing file. A split
    /// name's writer uses direct I/O, because its kernel inode also shows
    /// the other names.
    fn start_handle(
        &self,
        node: Arc<Node>,
        file: File,
        flags: i32,
        epoch: u64,
        split: bool,
        register: RegisterBacking<'_>,
    ) -> io::Result<Opened> {
        let file = Arc::new(file);
        let layer = node.state().layer;
        let fixed = self.stack.upper_index().is_none_or(|upper| layer == upper);
        let eligible = !split && fixed && self.passthrough.is_on() && !is_setid(&file)?;
        let mut modes = node.open_modes.lock();
        let mut backing = None;
        let mode = if split {
            IoMode::Direct
        } else if let Some(shared) = modes.backing.clone() {
            // The kernel fails any other I/O mode on an inode with a backing
            // file, so every open joins the passthrough ones.
            backing = Some(shared);
            IoMode::Passthrough
        } else if eligible && modes.cached == 0 {
            backing = self.register_backing(&file, register);
            modes.backing = backing.clone();
            if backing.is_some() {
                IoMode::Passthrough
            } else {
                IoMode::Cached
            }
        } else {
            IoMode::Cached
        };
        modes.handles += 1;
        match mode {
            IoMode::Cached => modes.cached += 1,
            IoMode::Passthrough => modes.passthrough += 1,
            IoMode::Direct => {}
        }
        drop(modes);
        let handle = FileHandle::new(node, file, flags, epoch, mode);
        let fh = self.handles.insert_file(handle);
        Ok(Opened { fh, mode, backing })
    }

    /// Registers `file` for passthrough; turns passthrough off for the rest
    /// of the mount when the kernel refuses.
    fn register_backing(
        &self,
        file: &File,
        register: RegisterBacking<'_>,
    ) -> Option<Arc<BackingId>> {
        match register(file.as_fd()) {
            Ok(backing) => Some(Arc::new(backing)),
            Err(err) => {
                self.passthrough.turn_off(&err);
                None
            }
        }
    }

    /// Opens node's real file. The name it is reached by may change under
    /// a concurrent unlink or rename; a file that is not the node's object is
    /// closed again and the node located anew.
    fn open_real(&self, node: &Node, flags: i32) -> io::Result<File> {
        for _ in 0..MAX_RELOCATIONS {
            let (state, place) = self.locate(node)?;
            let lower = self.stack.upper_index() != Some(state.layer);
            match open_place(&place, flags, lower) {
                Ok((file, stat)) if self.is_object_of(&state, &stat) => return Ok(file),
                Ok(_) => continue,
                Err(err) if real::is_absent(&err) || err.raw_os_error() == Some(libc::EINVAL) => {
                    continue;
                }
                Err(err) => return Err(err),
            }
        }
        Err(errno(libc::ENOENT))
    }

    /// Returns handle `fh`'s real file, reopening it if the node was copied
    /// up since the handle opened it.
    fn handle_file(&self, fh: u64) -> io::Result<(Arc<FileHandle>, Arc<File>)> {
        let handle = self.handles.file(fh)?;
        if let Some(file) = handle.current() {
            return Ok((handle, file));
        }
        let epoch = handle.node.epoch();
        let file = self.open_real(&handle.node, real_open_flags(handle.flags & !libc::O_TRUNC))?;
        let file = handle.replace(Arc::new(file), epoch);
        Ok((handle, file))
    }

    /// Reads up to `size` bytes at `offset`; fewer only at end of file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let (_, file) = self.handle_file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(read) => done += read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let (_, file) = self.handle_file(fh)?;
        file.write_all_at(data, offset)?;
        Ok(data.len() as u32)
    }

    /// Closes handle `fh`.
    pub fn release(&self, fh: u64) {
        let Some(handle) = self.handles.remove_file(fh) else {
            return;
        };
        let mut modes = handle.node.open_modes.lock();
        modes.handles = modes.handles.saturating_sub(1);
        match handle.mode {
            IoMode::Cached => modes.cached = modes.cached.saturating_sub(1),
            IoMode::Passthrough => {
                modes.passthrough = modes.passthrough.saturating_sub(1);
                if modes.passthrough == 0 {
                    // Dropping the last reference closes the backing id.
                    modes.backing = None;
                }
            }
            IoMode::Direct => {}
        }
    }

    /// Flushes handle `fh`'s data (and metadata unless `datasync`) to disk.
    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        let (_, file) = self.handle_file(fh)?;
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    /// Allocates or deallocates space as fallocate(2) with `mode`.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> io::Result<()> {
        let (_, file) = self.handle_file(fh)?;
        let flags = FallocateFlags::from_bits(mode).ok_or_else(|| errno(libc::EOPNOTSUPP))?;
        nix::fcntl::fallocate(file.as_fd(), flags, offset as i64, length as i64)?;
        Ok(())
    }

    /// Finds data or a hole as lseek(2) with `SEEK_DATA` or `SEEK_HOLE`.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> io::Result<i64> {
        let (_, file) = self.handle_file(fh)?;
        let whence = match whence {
            libc::SEEK_DATA => Whence::SeekData,
            libc::SEEK_HOLE => Whence::SeekHole,
            libc::SEEK_SET => Whence::SeekSet,
            libc::SEEK_END => Whence::SeekEnd,
            _ => return Err(errno(libc::EINVAL)),
        };
        Ok(nix::unistd::lseek(file.as_fd(), offset, whence)?)
    }

    /// Returns where a read of directory node `ino` at `offset` goes on.
    /// Offset 0 takes a new listing, so `rewinddir` shows changes; other
    /// offsets resume in the node's current listing.
    pub fn readdir(&self, ino: u64, offset: u64) -> io::Result<Cursor> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        let resumed = node.listings.lock().resume(offset);
        let cursor = match resumed {
            Some(cursor) => cursor,
            None => {
                let listing = self.listing(&node)?;
                node.listings.lock().start(listing, offset)
            }
        };
        if cursor.at_end() {
            node.listings.lock().finish(&cursor);
        }
        Ok(cursor)
    }

    /// Flushes directory node `ino`'s upper copy to disk.
    pub fn fsyncdir(&self, ino: u64) -> io::Result<()> {
        let node = self.node(ino)?;
        match super::upper_dir_of(&node) {
            Some(dir) => Ok(nix::unistd::fsync(dir.get()?.as_fd())?),
            None => Ok(()),
        }
    }
}

/// Returns true when a write must clear the file's setuid or setgid bit
/// (setgid only with group execute, as the kernel treats it).
fn is_setid(file: &File) -> io::Result<bool> {
    let mode = real::stat_fd(file)?.st_mode;
    Ok(mode & libc::S_ISUID != 0
        || mode & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP))
}

/// Opens the regular file at `place` with open(2) `flags`; returns it and
/// its stat. `lower` says the file is in a lower layer, whose access times
/// reads must not change.
fn open_place(
    place: &Place,
    flags: i32,
    lower: bool,
) -> io::Result<(File, nix::sys::stat::FileStat)> {
    let mut flags = OFlag::from_bits_truncate(flags);
    if lower {
        flags |= OFlag::O_NOATIME;
    }
    let (fd, stat) = match place {
        Place::Entry { parent, name } => real::open_regular(parent.as_fd(), name, flags)?,
        Place::Orphan(fd) => {
            let stat = real::stat_fd(fd.as_fd())?;
            if real::kind(&stat) != nix::sys::stat::SFlag::S_IFREG {
                return Err(errno(libc::EINVAL));
            }
            (real::reopen(fd.as_fd(), flags)?, stat)
        }
        Place::Dir(_) => return Err(errno(libc::EISDIR)),
    };
    Ok((File::from(fd), stat))
}
