//! File and directory I/O through handles.
//!
//! Opening a lower file for writing (or with `O_TRUNC`) copies it up first;
//! `O_TRUNC` copies no data. Reads through a handle opened before a copy-up
//! switch to the upper copy. A directory listing is taken when reading
//! starts at offset 0 and served from the handle after that.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use fuser::FileAttr;
use nix::fcntl::{FallocateFlags, OFlag};
use nix::unistd::Whence;

use super::create::{Caller, NewKind, NewObject, real_open_flags};
use super::{Copied, Place, Union, Which, errno};
use crate::handle::FileHandle;
use crate::inode::Node;
use crate::readdir::DirEntry;
use crate::real;

/// A file opened through the merged view.
pub struct Opened {
    pub fh: u64,
    /// The real file's data may stay in the kernel's page cache.
    pub keep_cache: bool,
    /// Reads and writes must bypass the kernel's page cache, because the
    /// kernel inode also stands for another object (a split hard link).
    pub direct_io: bool,
}

impl Union {
    /// Opens regular file node `ino` with open(2) `flags` for `caller`.
    pub fn open(&self, ino: u64, flags: i32, caller: Caller) -> io::Result<Opened> {
        let tid = caller.pid;
        let node = self.node(ino)?;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let mut split = None;
        if writes {
            let keep = if flags & libc::O_TRUNC != 0 {
                Some(0)
            } else {
                None
            };
            if let Copied::Split(place) = self.copy_up_as(&node, Which::Thread(tid), keep)? {
                split = Some(place);
            }
        }
        let epoch = node.epoch();
        let direct_io = split.is_some();
        let file = match split {
            Some(place) => open_place(&place, real_open_flags(flags), false)?,
            None => self.open_real(&node, real_open_flags(flags))?,
        };
        // Truncating drops setuid and setgid bits unless the caller may keep them.
        if flags & libc::O_TRUNC != 0 && caller.uid != 0 {
            super::attr::drop_setid(file.as_fd())?;
        }
        let handle = FileHandle::new(node, file, flags, epoch);
        let fh = self.handles.insert_file(handle);
        Ok(Opened {
            fh,
            keep_cache: !direct_io,
            direct_io,
        })
    }

    /// Creates regular file `name` in `parent` and opens it.
    pub fn create_file(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> io::Result<(Arc<Node>, FileAttr, Opened)> {
        let new = NewObject {
            kind: NewKind::File { flags },
            mode,
            umask,
        };
        let (node, attr, file) = self.create(caller, parent, name, &new)?;
        let file = file.ok_or_else(|| errno(libc::EIO))?;
        let epoch = node.epoch();
        let fh = self
            .handles
            .insert_file(FileHandle::new(node.clone(), file, flags, epoch));
        Ok((
            node,
            attr,
            Opened {
                fh,
                keep_cache: true,
                direct_io: false,
            },
        ))
    }

    fn open_real(&self, node: &Node, flags: i32) -> io::Result<File> {
        let (state, place) = self.locate(node)?;
        let lower = self.stack.upper_index() != Some(state.layer);
        open_place(&place, flags, lower)
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
        let file = handle.replace(file, epoch);
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
    ///
    /// `drop_setid` is set when the writer lacks `CAP_FSETID`: the write then
    /// clears the setuid and setgid bits, as a write through the VFS would.
    /// The daemon writes as root, which would keep them.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], drop_setid: bool) -> io::Result<u32> {
        let (_, file) = self.handle_file(fh)?;
        file.write_all_at(data, offset)?;
        if drop_setid {
            super::attr::drop_setid(file.as_fd())?;
        }
        Ok(data.len() as u32)
    }

    /// Closes handle `fh`.
    pub fn release(&self, fh: u64) {
        self.handles.remove_file(fh);
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

    /// Opens directory node `ino` for reading.
    pub fn opendir(&self, ino: u64) -> io::Result<u64> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        Ok(self.handles.insert_dir(node))
    }

    /// Returns the listing of directory handle `fh` from `offset` on. Offset
    /// 0 takes a new listing, so `rewinddir` sees changes; every other offset
    /// reads the listing taken then, so positions stay valid.
    pub fn readdir(&self, fh: u64, offset: u64) -> io::Result<(Arc<Vec<DirEntry>>, usize)> {
        let handle = self.handles.dir(fh)?;
        if offset == 0 {
            let listing = Arc::new(self.listing(&handle.node)?);
            *handle.listing.lock() = listing.clone();
            return Ok((listing, 0));
        }
        let listing = handle.listing.lock().clone();
        Ok((listing, offset as usize))
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
    }

    /// Flushes directory node `ino`'s upper copy to disk.
    pub fn fsyncdir(&self, ino: u64) -> io::Result<()> {
        let node = self.node(ino)?;
        match super::upper_dir_of(&node) {
            Some(dir) => Ok(nix::unistd::fsync(dir.as_fd())?),
            None => Ok(()),
        }
    }
}

/// Opens the real file at `place` with open(2) `flags`.
/// `lower` says the object is in a lower layer, whose access times reads
/// must not change.
fn open_place(place: &Place, flags: i32, lower: bool) -> io::Result<File> {
    let flags = OFlag::from_bits_truncate(flags);
    let fd = match place {
        Place::Entry { parent, name } if lower => real::open_noatime(parent.as_fd(), name, flags)?,
        Place::Entry { parent, name } => real::open_at(parent.as_fd(), name, flags, 0)?,
        Place::Orphan(fd) => real::reopen(fd.as_fd(), flags)?,
        Place::Dir(_) => return Err(errno(libc::EISDIR)),
    };
    Ok(File::from(fd))
}
