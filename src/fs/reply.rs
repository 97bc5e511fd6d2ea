//! Helpers for the FUSE handlers: error mapping, the panic guard, the
//! reply shapes several handlers share, and open flags.

use std::ffi::OsStr;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FopenFlags, Generation, INodeNo, ReplyAttr, ReplyEmpty, ReplyEntry, ReplyXattr, Request,
};
use log::{debug, error};

use super::UnionFs;
use crate::handle::IoMode;
use crate::union::{Caller, NewObject};

/// Maps an error from the union to the errno sent to the kernel.
pub(super) fn errno_of(op: &str, err: &io::Error) -> Errno {
    match err.raw_os_error() {
        Some(code) => {
            if !matches!(
                code,
                libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::ENODATA | libc::EXDEV
            ) {
                debug!("{op}: {err}");
            }
            Errno::from_i32(code)
        }
        None => {
            error!("{op}: {err}");
            Errno::EIO
        }
    }
}

/// Runs a handler, logging a panic instead of letting it end the thread.
pub(super) fn guard<R>(op: &str, reply: R, handler: impl FnOnce(R)) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handler(reply))) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        error!("{op}: handler panicked ({what}); the request was answered with EIO");
    }
}

pub(super) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

impl UnionFs {
    /// Returns how long the kernel may cache node `ino`'s name and
    /// attributes: not at all for a node whose names may split apart.
    pub(super) fn ttl(&self, ino: INodeNo) -> Duration {
        match self.union.node(ino.0) {
            Ok(node) if self.union.is_volatile(&node) => Duration::ZERO,
            _ => self.ttl,
        }
    }

    pub(super) fn reply_entry(
        &self,
        op: &str,
        reply: ReplyEntry,
        result: io::Result<fuser::FileAttr>,
    ) {
        match result {
            Ok(attr) => reply.entry(&self.ttl(attr.ino), &attr, Generation(0)),
            Err(err) => reply.error(errno_of(op, &err)),
        }
    }

    pub(super) fn reply_empty(op: &str, reply: ReplyEmpty, result: io::Result<()>) {
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno_of(op, &err)),
        }
    }

    pub(super) fn reply_attr(
        &self,
        op: &str,
        reply: ReplyAttr,
        result: io::Result<fuser::FileAttr>,
    ) {
        match result {
            Ok(attr) => reply.attr(&self.ttl(attr.ino), &attr),
            Err(err) => reply.error(errno_of(op, &err)),
        }
    }

    pub(super) fn reply_xattr(op: &str, reply: ReplyXattr, size: u32, result: io::Result<Vec<u8>>) {
        match result {
            Ok(value) if size == 0 => reply.size(value.len() as u32),
            Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(value) => reply.data(&value),
            Err(err) => reply.error(errno_of(op, &err)),
        }
    }

    pub(super) fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new: NewObject<'_>,
        reply: ReplyEntry,
    ) {
        let result = self
            .union
            .create(caller(req), parent.0, name, &new)
            .map(|(_, attr, _)| attr);
        self.reply_entry("create", reply, result);
    }
}

/// Returns attributes that carry only inode number `ino`, for replies whose
/// attributes the kernel ignores.
pub(super) fn placeholder(ino: u64) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::Directory,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

pub(super) fn fopen_flags(mode: IoMode) -> FopenFlags {
    match mode {
        // The kernel's page cache of a file stays valid across opens: every
        // change comes through this mount.
        IoMode::Cached => FopenFlags::FOPEN_KEEP_CACHE,
        IoMode::Direct => FopenFlags::FOPEN_DIRECT_IO,
        IoMode::Passthrough => FopenFlags::empty(),
    }
}
