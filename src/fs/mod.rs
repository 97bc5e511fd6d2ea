//! The `fuser::Filesystem` glue: each handler decodes its request, calls the
//! union, maps the error to an errno and replies. No policy lives here.
//!
//! A panic in a handler would kill a session thread and hang every process
//! using the mount, so each handler runs under `catch_unwind`; the reply it
//! owned is dropped during the unwind, which answers the request with `EIO`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::debug;

use crate::union::{NewKind, NewObject, Opened, SetAttr, Union};

/// How long the kernel may cache names and attributes. Every change to the
/// layers is expected to come through this mount, which keeps the kernel's
/// caches exact, so the lifetime can be long.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);

/// Capabilities asked of the kernel at init, each granted only if supported.
const REQUESTED: [InitFlags; 10] = [
    // Apply the umask here, so a default ACL on the parent can replace it.
    InitFlags::FUSE_DONT_MASK,
    // Let the kernel check POSIX ACLs, as kernel overlayfs does, and cache
    // them, which saves `ls -l` two round trips per name.
    InitFlags::FUSE_POSIX_ACL,
    // Pass O_TRUNC to open, so a truncating open copies up no data.
    InitFlags::FUSE_ATOMIC_O_TRUNC,
    InitFlags::FUSE_PARALLEL_DIROPS,
    InitFlags::FUSE_CACHE_SYMLINKS,
    InitFlags::FUSE_BIG_WRITES,
    // Keep shared mmap working on files opened with direct I/O.
    InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
    // Send attributes with directory entries when the caller stats them.
    InitFlags::FUSE_DO_READDIRPLUS,
    InitFlags::FUSE_READDIRPLUS_AUTO,
    // Open directories without an OPENDIR round trip (see `opendir`).
    InitFlags::FUSE_NO_OPENDIR_SUPPORT,
];

/// The largest readahead asked of the kernel, in bytes.
const MAX_READAHEAD: u32 = 1 << 20;

mod reply;

use reply::{caller, errno_of, fopen_flags, guard, placeholder};

/// The union served over FUSE.
pub struct UnionFs {
    union: Union,
    ttl: Duration,
}

impl UnionFs {
    pub fn new(union: Union, ttl: Duration) -> UnionFs {
        UnionFs { union, ttl }
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for flag in REQUESTED {
            if config.add_capabilities(flag).is_err() {
                debug!("kernel lacks FUSE capability {flag:?}");
            }
        }
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        // Passthrough (Linux 6.9) lets upper-layer files bypass the daemon.
        // A stacking depth of 1 keeps the mount usable as a lower layer of
        // kernel overlayfs; layers on stacked filesystems then refuse the
        // backing file, which turns passthrough off.
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.union.enable_passthrough();
        } else {
            log::warn!(
                "the kernel offers no FUSE passthrough; upper-layer files are served through the daemon"
            );
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guard("lookup", reply, |reply| {
            match self.union.lookup(parent.0, name, req.pid()) {
                // A negative entry (node 0) lets the kernel remember the name is
                // absent: it only appears through this mount, which replaces it.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    reply.entry(&self.ttl, &placeholder(0), Generation(0));
                }
                result => self.reply_entry("lookup", reply, result.map(|(_, attr)| attr)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guard("getattr", reply, |reply| {
            self.reply_attr("getattr", reply, self.union.getattr(ino.0))
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|fh| fh.0),
            tid: req.pid(),
        };
        guard("setattr", reply, |reply| {
            self.reply_attr("setattr", reply, self.union.setattr(ino.0, &set))
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guard("readlink", reply, |reply| {
            match self.union.readlink(ino.0) {
                Ok(target) => reply.data(&target),
                Err(err) => reply.error(errno_of("readlink", &err)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let new = NewObject {
            kind: NewKind::Node {
                rdev: u64::from(rdev),
            },
            mode,
            umask,
        };
        guard("mknod", reply, |reply| {
            self.make(req, parent, name, new, reply)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let new = NewObject {
            kind: NewKind::Dir,
            mode: mode | libc::S_IFDIR,
            umask,
        };
        guard("mkdir", reply, |reply| {
            self.make(req, parent, name, new, reply)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let new = NewObject {
            kind: NewKind::Symlink(target.as_os_str()),
            mode: libc::S_IFLNK | 0o777,
            umask: 0,
        };
        guard("symlink", reply, |reply| {
            self.make(req, parent, link_name, new, reply)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guard("unlink", reply, |reply| {
            Self::reply_empty("unlink", reply, self.union.unlink(parent.0, name))
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guard("rmdir", reply, |reply| {
            Self::reply_empty("rmdir", reply, self.union.rmdir(parent.0, name))
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guard("rename", reply, |reply| {
            let result = self
                .union
                .rename(parent.0, name, newparent.0, newname, flags.bits());
            Self::reply_empty("rename", reply, result);
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guard("link", reply, |reply| {
            let result = self
                .union
                .link(caller(req), ino.0, newparent.0, newname)
                .map(|(_, attr)| attr);
            self.reply_entry("link", reply, result);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guard("open", reply, |reply| {
            let register = |fd: BorrowedFd<'_>| reply.open_backing(fd);
            match self.union.open(ino.0, flags.0, caller(req), &register) {
                Ok(Opened {
                    fh,
                    backing: Some(backing),
                    ..
                }) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
                }
                Ok(opened) => reply.opened(FileHandle(opened.fh), fopen_flags(opened.mode)),
                Err(err) => reply.error(errno_of("open", &err)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guard("read", reply, |reply| {
            match self.union.read(fh.0, offset, size) {
                Ok(data) => reply.data(&data),
                Err(err) => reply.error(errno_of("read", &err)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guard("write", reply, |reply| {
            match self.union.write(fh.0, offset, data) {
                Ok(written) => reply.written(written),
                Err(err) => reply.error(errno_of("write", &err)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the layer before their reply and locks stay in the
        // kernel, so a flush has nothing to do. ENOSYS makes the kernel stop
        // sending one on every close(2), which saves a round trip each.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.union.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        guard("fsync", reply, |reply| {
            Self::reply_empty("fsync", reply, self.union.fsync(fh.0, datasync))
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS makes the kernel open every directory without asking, with
        // FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE, which saves two round trips
        // per directory. Every change to a directory comes through this
        // mount and drops the kernel's cached listing of it.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        guard("readdir", reply, |mut reply| {
            let cursor = match self.union.readdir(ino.0, offset) {
                Ok(cursor) => cursor,
                Err(err) => return reply.error(errno_of("readdir", &err)),
            };
            for (index, entry) in cursor.listing.iter().enumerate().skip(cursor.index) {
                let next = cursor.offset_after(index);
                if reply.add(INodeNo(entry.ino), next, entry.kind, &entry.name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        guard("readdirplus", reply, |mut reply| {
            let cursor = match self.union.readdir(ino.0, offset) {
                Ok(cursor) => cursor,
                Err(err) => return reply.error(errno_of("readdirplus", &err)),
            };
            for (index, entry) in cursor.listing.iter().enumerate().skip(cursor.index) {
                let next = cursor.offset_after(index);
                // The kernel takes no reference for "." and "..", and reads no
                // attributes from them.
                if entry.name == "." || entry.name == ".." {
                    if reply.add(
                        INodeNo(entry.ino),
                        next,
                        &entry.name,
                        &Duration::ZERO,
                        &placeholder(entry.ino),
                        Generation(0),
                    ) {
                        break;
                    }
                    continue;
                }
                // A name gone since the listing was taken is skipped.
                let Ok((node, attr)) = self.union.lookup(ino.0, &entry.name, req.pid()) else {
                    continue;
                };
                if reply.add(
                    attr.ino,
                    next,
                    &entry.name,
                    &self.ttl(attr.ino),
                    &attr,
                    Generation(0),
                ) {
                    // Not sent: the kernel holds no reference for it.
                    self.union.forget(node.ino, 1);
                    break;
                }
            }
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guard("fsyncdir", reply, |reply| {
            Self::reply_empty("fsyncdir", reply, self.union.fsyncdir(ino.0))
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guard("statfs", reply, |reply| match self.union.statfs() {
            Ok(fs) => reply.statfs(
                fs.blocks(),
                fs.blocks_free(),
                fs.blocks_available(),
                fs.files(),
                fs.files_free(),
                fs.block_size() as u32,
                fs.name_max() as u32,
                fs.fragment_size() as u32,
            ),
            Err(err) => reply.error(errno_of("statfs", &err)),
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guard("setxattr", reply, |reply| {
            Self::reply_empty(
                "setxattr",
                reply,
                self.union.setxattr(ino.0, name, value, flags, &caller(req)),
            );
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guard("getxattr", reply, |reply| {
            Self::reply_xattr("getxattr", reply, size, self.union.getxattr(ino.0, name))
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guard("listxattr", reply, |reply| {
            Self::reply_xattr("listxattr", reply, size, self.union.listxattr(ino.0))
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guard("removexattr", reply, |reply| {
            Self::reply_empty(
                "removexattr",
                reply,
                self.union.removexattr(ino.0, name, req.pid()),
            );
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The mount uses default_permissions, so the kernel checks access.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guard("create", reply, |reply| {
            let register = |fd: BorrowedFd<'_>| reply.open_backing(fd);
            let new = (name, mode, umask, flags);
            match self
                .union
                .create_file(caller(req), parent.0, new, &register)
            {
                Ok((_, attr, opened)) => {
                    let (ttl, fh) = (self.ttl(attr.ino), FileHandle(opened.fh));
                    match &opened.backing {
                        Some(backing) => reply.created_passthrough(
                            &ttl,
                            &attr,
                            Generation(0),
                            fh,
                            FopenFlags::empty(),
                            backing,
                        ),
                        None => {
                            reply.created(&ttl, &attr, Generation(0), fh, fopen_flags(opened.mode))
                        }
                    }
                }
                Err(err) => reply.error(errno_of("create", &err)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guard("fallocate", reply, |reply| {
            Self::reply_empty(
                "fallocate",
                reply,
                self.union.fallocate(fh.0, offset, length, mode),
            );
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guard("lseek", reply, |reply| {
            match self.union.lseek(fh.0, offset, whence) {
                Ok(position) => reply.offset(position),
                Err(err) => reply.error(errno_of("lseek", &err)),
            }
        });
    }
}
