//! Creating names: files, directories, symlinks, device nodes, FIFOs,
//! sockets and hard links.
//!
//! A new object goes straight into the upper directory when the name is
//! free there. Where a whiteout stands, the object is built in the work dir
//! and swapped in, so the hidden lower object never shows through; a new
//! directory there is marked opaque, as kernel overlayfs does, and only
//! there.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use fuser::FileAttr;
use log::debug;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::{Union, attr_of, errno, upper_opacity};
use crate::copyup::meta::{self, Target};
use crate::dirfd::DirFd;
use crate::inode::{Alias, LayerDir, Node, RealState};
use crate::lookup;
use crate::real;
use crate::sys::xattr;
use crate::whiteout::{self, Entry, Opacity, WhiteoutKind};

/// The process a request comes from.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// What to create.
#[derive(Clone, Copy)]
pub enum NewKind<'a> {
    /// A regular file, opened with these flags.
    File {
        flags: i32,
    },
    Dir,
    Symlink(&'a OsStr),
    /// A device node, FIFO or socket (type bits in the mode).
    Node {
        rdev: u64,
    },
}

/// A new object's request: kind, mode with type bits, and the umask.
pub struct NewObject<'a> {
    pub kind: NewKind<'a>,
    pub mode: u32,
    pub umask: u32,
}

/// Where a new name will go.
struct Slot {
    dir: Arc<OwnedFd>,
    /// The upper directory's slot, parent of a new directory's own.
    dir_slot: DirFd,
    whiteout: Option<WhiteoutKind>,
    uid: u32,
    gid: u32,
    /// Permission bits after umask or default ACL.
    mode: u32,
}

impl Union {
    /// Creates `name` in directory `parent`. Returns the new node, its
    /// attributes, and for a regular file the open real file.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        new: &NewObject<'_>,
    ) -> io::Result<(Arc<Node>, FileAttr, Option<File>)> {
        if let NewKind::Node { rdev } = new.kind {
            // A 0/0 character device would read back as a whiteout.
            if new.mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                return Err(errno(libc::EPERM));
            }
        }
        let parent = self.node(parent)?;
        let slot = self.slot(caller, &parent, name, new)?;
        let (file, stat, dir) = match slot.whiteout {
            None => build(slot.dir.as_fd(), name, new, &slot)?,
            Some(kind) => self.build_over_whiteout(&slot, name, new, kind)?,
        };
        debug!(
            "created {name:?} in node {} (mode {:o})",
            parent.ino, stat.st_mode
        );

        let opacity = if slot.whiteout.is_some() {
            Opacity::Opaque
        } else {
            Opacity::Transparent
        };
        let dirs = match dir {
            Some(fd) => {
                let fd = DirFd::child(self.stack.dir_pool(), &slot.dir_slot, name, fd)?;
                vec![LayerDir {
                    layer: 0,
                    fd,
                    opacity,
                }]
            }
            None => Vec::new(),
        };
        let identity = lookup::identity(&self.stack, &stat);
        let state = RealState {
            layer: 0,
            identity,
            nlink: stat.st_nlink,
            dirs,
            orphan: None,
        };
        let alias = Alias {
            parent: parent.clone(),
            name: name.to_os_string(),
        };
        let node = self.table.look_up(state, real::is_dir(&stat), alias);
        Ok((node.clone(), attr_of(node.ino, &stat, false), file))
    }

    /// Finds where new name `name` goes, checking it is free in the upper
    /// layer.
    fn slot(
        &self,
        caller: Caller,
        parent: &Arc<Node>,
        name: &OsStr,
        new: &NewObject<'_>,
    ) -> io::Result<Slot> {
        if whiteout::is_reserved(name) {
            return Err(errno(libc::EPERM));
        }
        // The kernel asks to create a name only after its lookup found it
        // absent, and holds the directory's lock meanwhile, so the lower
        // layers need no second look; the upper one is probed below.
        let dir_slot = self.upper_dir_slot(parent)?;
        let dir = dir_slot.get()?;
        let whiteout = match whiteout::probe(dir.as_fd(), upper_opacity(parent), name)? {
            Entry::Absent => None,
            Entry::Whiteout(kind) => Some(kind),
            Entry::Present(_) => return Err(errno(libc::EEXIST)),
        };
        let parent_stat = real::stat_fd(dir.as_fd())?;
        let inherit_group = parent_stat.st_mode & libc::S_ISGID != 0;
        let gid = if inherit_group {
            parent_stat.st_gid
        } else {
            caller.gid
        };
        let mut mode = new.mode & 0o7777;
        // A default ACL on the parent replaces the umask (POSIX.1e).
        if !has_default_acl(dir.as_fd()) {
            mode &= !new.umask;
        }
        if inherit_group && matches!(new.kind, NewKind::Dir) {
            mode |= libc::S_ISGID;
        }
        Ok(Slot {
            dir,
            dir_slot,
            whiteout,
            uid: caller.uid,
            gid,
            mode,
        })
    }

    fn build_over_whiteout(
        &self,
        slot: &Slot,
        name: &OsStr,
        new: &NewObject<'_>,
        kind: WhiteoutKind,
    ) -> io::Result<Built> {
        let upper = self.upper()?;
        let temp = upper.work.temp_name();
        let built = build(upper.work.fd(), &temp, new, slot).and_then(|built| {
            if let Some(dir) = &built.2 {
                upper.whiteouts.mark_opaque(dir.as_fd())?;
            }
            let is_dir = built.2.is_some();
            upper.whiteouts.replace_whiteout(
                &upper.work,
                &temp,
                is_dir,
                slot.dir.as_fd(),
                name,
                kind,
            )?;
            Ok(built)
        });
        if built.is_err() {
            upper.work.discard(&temp);
        }
        built
    }

    /// Makes a hard link `name` in `parent` to node `ino`, copying the
    /// node up first.
    pub fn link(
        &self,
        caller: Caller,
        ino: u64,
        parent: u64,
        name: &OsStr,
    ) -> io::Result<(Arc<Node>, FileAttr)> {
        let node = self.node(ino)?;
        if node.is_dir {
            return Err(errno(libc::EPERM));
        }
        let parent = self.node(parent)?;
        let new = NewObject {
            kind: NewKind::Node { rdev: 0 },
            mode: 0,
            umask: 0,
        };
        let slot = self.slot(caller, &parent, name, &new)?;
        let place = self.copy_up_for_change(&node, caller.pid, None)?;
        let super::Place::Entry {
            parent: src_dir,
            name: src_name,
        } = place
        else {
            return Err(errno(libc::ENOENT));
        };

        match slot.whiteout {
            None => nix::unistd::linkat(
                src_dir.as_fd(),
                src_name.as_os_str(),
                slot.dir.as_fd(),
                name,
                AtFlags::empty(),
            )?,
            Some(kind) => {
                let upper = self.upper()?;
                let temp = upper.work.temp_name();
                nix::unistd::linkat(
                    src_dir.as_fd(),
                    src_name.as_os_str(),
                    upper.work.fd(),
                    temp.as_os_str(),
                    AtFlags::empty(),
                )?;
                upper
                    .whiteouts
                    .replace_whiteout(&upper.work, &temp, false, slot.dir.as_fd(), name, kind)
                    .inspect_err(|_| upper.work.discard(&temp))?;
            }
        }
        let stat = real::stat_at(slot.dir.as_fd(), name)?.ok_or_else(|| errno(libc::ENOENT))?;
        let alias = Alias {
            parent: parent.clone(),
            name: name.to_os_string(),
        };
        let state = RealState {
            layer: 0,
            identity: lookup::identity(&self.stack, &stat),
            nlink: stat.st_nlink,
            dirs: Vec::new(),
            orphan: None,
        };
        let node = self.table.look_up(state, false, alias);
        Ok((node.clone(), attr_of(node.ino, &stat, false)))
    }
}

fn has_default_acl(dir: BorrowedFd<'_>) -> bool {
    matches!(
        xattr::get(dir, OsStr::new("system.posix_acl_default")),
        Ok(Some(_))
    )
}

/// The open file (for a regular file), the object's stat, and the open
/// directory (for a directory).
type Built = (Option<File>, FileStat, Option<OwnedFd>);

/// Creates the object `name` in `at` (the upper directory or the work dir)
/// with the slot's owner and mode.
fn build(at: BorrowedFd<'_>, name: &OsStr, new: &NewObject<'_>, slot: &Slot) -> io::Result<Built> {
    let (uid, gid) = (Some(Uid::from_raw(slot.uid)), Some(Gid::from_raw(slot.gid)));
    match new.kind {
        NewKind::File { flags } => {
            let flags =
                OFlag::from_bits_truncate(real_open_flags(flags)) | OFlag::O_CREAT | OFlag::O_EXCL;
            let file = File::from(real::open_at(at, name, flags, slot.mode)?);
            finish_owner(Target::Fd(file.as_fd()), slot)?;
            let stat = real::stat_fd(&file)?;
            Ok((Some(file), stat, None))
        }
        NewKind::Dir => {
            nix::sys::stat::mkdirat(at, name, Mode::from_bits_truncate(slot.mode))?;
            let dir = real::open_dir(at, name)?;
            finish_owner(Target::Fd(dir.as_fd()), slot)?;
            Ok((None, real::stat_fd(&dir)?, Some(dir)))
        }
        NewKind::Symlink(target) => {
            nix::unistd::symlinkat(target, at, name)?;
            nix::unistd::fchownat(at, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            Ok((None, stat_new(at, name)?, None))
        }
        NewKind::Node { rdev } => {
            let kind = SFlag::from_bits_truncate(new.mode & libc::S_IFMT);
            nix::sys::stat::mknodat(at, name, kind, Mode::from_bits_truncate(slot.mode), rdev)?;
            finish_owner(
                Target::Named {
                    dir: at,
                    name,
                    is_symlink: false,
                },
                slot,
            )?;
            Ok((None, stat_new(at, name)?, None))
        }
    }
}

/// Hands a new object to its owner. `chown` clears setuid and setgid bits,
/// so a mode holding them is applied again afterwards.
fn finish_owner(target: Target<'_>, slot: &Slot) -> io::Result<()> {
    meta::set_owner(target, slot.uid, slot.gid)?;
    if slot.mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
        meta::set_mode(target, slot.mode)?;
    }
    Ok(())
}

fn stat_new(at: BorrowedFd<'_>, name: &OsStr) -> io::Result<FileStat> {
    real::stat_at(at, name)?.ok_or_else(|| errno(libc::ENOENT))
}

/// Converts the flags of an open request to flags for the real file.
///
/// Write-only becomes read-write so the kernel may read pages it caches;
/// `O_APPEND` is dropped because the kernel already sends each write at the
/// end of the file; open-time-only flags are dropped.
pub fn real_open_flags(flags: i32) -> i32 {
    let access = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => libc::O_RDONLY,
        _ => libc::O_RDWR,
    };
    let kept = flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME | libc::O_TRUNC);
    access | kept
}
