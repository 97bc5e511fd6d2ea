//! The union: the merged view's operations, built on the layer stack, the
//! inode table and copy-up. The FUSE glue calls these and only maps their
//! `io::Error`s to errnos.
//!
//! Operations are grouped by family: names (`create`), removal (`remove`),
//! `rename`, attributes and xattrs (`attr`), and file and directory I/O
//! (`io`). This file holds lookup and what they share: locating a node's
//! real object and copying a node up.

mod attr;
mod create;
mod io;
mod remove;
mod rename;

use std::ffi::OsStr;
use std::io as stdio;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::FileAttr;
use log::debug;
use nix::sys::stat::FileStat;

pub use self::attr::SetAttr;
pub use self::create::{Caller, NewKind, NewObject};
pub use self::io::Opened;
use crate::copyup::CopyUp;
use crate::dirfd::DirFd;
use crate::handle::HandleTable;
use crate::inode::{Alias, InodeTable, LayerDir, Node, RealState};
use crate::lookup::{self, Found};
use crate::readdir;
use crate::real;
use crate::stack::{LayerStack, Upper};
use crate::whiteout;

/// The merged view of one layer stack.
pub struct Union {
    stack: LayerStack,
    table: InodeTable,
    handles: HandleTable,
    /// Tells the kernel about changes it cannot see; set once the FUSE
    /// session exists.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Whether upper-layer files are served by FUSE passthrough.
    passthrough: Passthrough,
    /// Kernel references dropped so far, for trimming the heap now and then.
    forgotten: std::sync::atomic::AtomicU64,
}

/// How many dropped kernel references make the daemon return freed heap
/// memory to the system.
const TRIM_EVERY: u64 = 1 << 16;

/// The passthrough switch: on once the kernel grants the capability, off
/// for good at the first refused registration.
#[derive(Default)]
pub struct Passthrough(std::sync::atomic::AtomicBool);

impl Passthrough {
    fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn turn_off(&self, err: &stdio::Error) {
        if self.0.swap(false, std::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "FUSE passthrough refused ({err}); upper-layer files are served through the daemon"
            );
        }
    }
}

/// Where a node's real object can be reached.
pub enum Place {
    /// A directory, through its topmost layer directory.
    Dir(Arc<OwnedFd>),
    /// A non-directory, by name in its parent's directory of the same layer.
    Entry {
        parent: Arc<OwnedFd>,
        name: std::ffi::OsString,
    },
    /// An object with no name left, through an `O_PATH` descriptor.
    Orphan(Arc<OwnedFd>),
}

pub(crate) fn errno(code: i32) -> stdio::Error {
    stdio::Error::from_raw_os_error(code)
}

impl Union {
    /// Builds the merged view of `stack`.
    pub fn new(stack: LayerStack) -> stdio::Result<Union> {
        let (root, _) = lookup::root_state(&stack)?;
        Ok(Union {
            table: InodeTable::new(root),
            handles: HandleTable::default(),
            stack,
            notifier: Arc::new(OnceLock::new()),
            passthrough: Passthrough::default(),
            forgotten: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Returns the slot to put the session's notifier in once it exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Serves upper-layer files by FUSE passthrough from now on; called once
    /// the kernel granted the capability.
    pub fn enable_passthrough(&self) {
        self.passthrough
            .0
            .store(true, std::sync::atomic::Ordering::Relaxed);
        log::info!("FUSE passthrough on for upper-layer files");
    }

    /// Makes the kernel drop its cached attributes of node `ino`, after its
    /// real object changed in a way no reply told the kernel about.
    fn invalidate_attrs(&self, ino: u64) {
        if let Some(notifier) = self.notifier.get() {
            // Offset -1 leaves the page cache alone, so no page lock is taken.
            if let Err(err) = notifier.inval_inode(fuser::INodeNo(ino), -1, 0) {
                debug!("cannot invalidate cached attributes of node {ino}: {err}");
            }
        }
    }

    /// Makes the kernel drop its cached listing of directory node `ino`.
    fn invalidate_listing(&self, ino: u64) {
        if let Some(notifier) = self.notifier.get() {
            if let Err(err) = notifier.inval_inode(fuser::INodeNo(ino), 0, 0) {
                debug!("cannot invalidate the cached listing of node {ino}: {err}");
            }
        }
    }

    /// Returns the layer stack.
    pub fn stack(&self) -> &LayerStack {
        &self.stack
    }

    /// Returns the upper layer, or `EROFS` for a read-only stack.
    fn upper(&self) -> stdio::Result<&Upper> {
        self.stack.upper().ok_or_else(|| errno(libc::EROFS))
    }

    /// Returns node `ino`.
    pub fn node(&self, ino: u64) -> stdio::Result<Arc<Node>> {
        self.table.get(ino)
    }

    /// Looks up `name` in directory `parent` for thread `tid`; the kernel
    /// then holds one more reference to the returned node.
    pub fn lookup(
        &self,
        parent: u64,
        name: &OsStr,
        tid: u32,
    ) -> stdio::Result<(Arc<Node>, FileAttr)> {
        let parent = self.node(parent)?;
        let found = self
            .find(&parent, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let (node, attr) = self.adopt(&parent, name, found);
        if self.is_volatile(&node) {
            let alias = Alias {
                parent,
                name: name.to_os_string(),
            };
            node.hint(tid, alias);
        }
        Ok((node, attr))
    }

    /// Registers a found object as a node under `parent`/`name`.
    fn adopt(&self, parent: &Arc<Node>, name: &OsStr, found: Found) -> (Arc<Node>, FileAttr) {
        let is_dir = found.is_dir();
        let merged = found.state.is_merged();
        let alias = Alias {
            parent: parent.clone(),
            name: name.to_os_string(),
        };
        let node = self.table.look_up(found.state, is_dir, alias);
        let attr = attr_of(node.ino, &found.stat, merged);
        (node, attr)
    }

    /// Drops `count` kernel references to node `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        self.table.forget(ino, count);
        let before = self
            .forgotten
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        if before / TRIM_EVERY != (before + count) / TRIM_EVERY {
            self.table.shrink();
            crate::sys::memory::trim_heap();
        }
    }

    /// Resolves `name` in directory node `parent`; `None` when absent.
    fn find(&self, parent: &Node, name: &OsStr) -> stdio::Result<Option<Found>> {
        if !parent.is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        real::check_name(name)?;
        if whiteout::is_reserved(name) {
            return Ok(None);
        }
        let dirs = parent.state().dirs.clone();
        lookup::resolve(&self.stack, &dirs, name)
    }

    /// Returns where node's real object is now, with the state it was read from.
    pub fn locate(&self, node: &Node) -> stdio::Result<(RealState, Place)> {
        let state = node.snapshot();
        if let Some(orphan) = &state.orphan {
            let place = Place::Orphan(orphan.clone());
            return Ok((state, place));
        }
        if let Some(top) = state.dirs.first() {
            let place = Place::Dir(top.fd.get()?);
            return Ok((state, place));
        }
        let alias = node.path_in_layer().ok_or_else(|| errno(libc::ESTALE))?;
        let parent = dir_in_layer(&alias.parent, state.layer)?;
        Ok((
            state,
            Place::Entry {
                parent,
                name: alias.name,
            },
        ))
    }

    /// Stats node's real object. A name may change under a concurrent
    /// unlink or rename, so what it leads to must be the node's object;
    /// otherwise the node is located anew.
    fn stat_node(&self, node: &Node) -> stdio::Result<(RealState, FileStat)> {
        // Only directories are ever marked removed; files skip the lock.
        if let Some(last) = node.is_dir.then(|| node.removed_dir()).flatten() {
            return Ok((node.snapshot(), last));
        }
        for _ in 0..MAX_RELOCATIONS {
            let (state, place) = self.locate(node)?;
            let stat = match &place {
                Place::Dir(fd) | Place::Orphan(fd) => {
                    return Ok((state, real::stat_fd(fd.as_fd())?));
                }
                Place::Entry { parent, name } => real::stat_at(parent.as_fd(), name)?,
            };
            if let Some(stat) = stat.filter(|stat| self.is_object_of(&state, stat)) {
                return Ok((state, stat));
            }
        }
        Err(errno(libc::ENOENT))
    }

    /// Returns true when `stat` describes the object `state` records.
    fn is_object_of(&self, state: &RealState, stat: &FileStat) -> bool {
        lookup::identity(&self.stack, stat) == state.identity
    }

    /// Returns the attributes of node `ino`.
    pub fn getattr(&self, ino: u64) -> stdio::Result<FileAttr> {
        let node = self.node(ino)?;
        let (state, stat) = self.stat_node(&node)?;
        Ok(attr_of(node.ino, &stat, state.is_merged()))
    }

    /// Returns the target of symlink node `ino`.
    pub fn readlink(&self, ino: u64) -> stdio::Result<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt;
        let node = self.node(ino)?;
        let target = match self.locate(&node)?.1 {
            Place::Entry { parent, name } => {
                nix::fcntl::readlinkat(parent.as_fd(), name.as_os_str())?
            }
            Place::Orphan(fd) => nix::fcntl::readlinkat(fd.as_fd(), "")?,
            Place::Dir(_) => return Err(errno(libc::EINVAL)),
        };
        Ok(target.into_vec())
    }

    /// Returns filesystem statistics: those of the upper layer, or of the
    /// topmost layer when read-only.
    pub fn statfs(&self) -> stdio::Result<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::fstatvfs(self.stack.root(0))?)
    }

    /// Lists directory node `node`, with `.` and `..` first.
    fn listing(&self, node: &Node) -> stdio::Result<Vec<readdir::DirEntry>> {
        let dirs = node.state().dirs.clone();
        let parent_ino = node.alias().map_or(node.ino, |alias| alias.parent.ino);
        let mut entries = vec![
            readdir::DirEntry {
                name: ".".into(),
                kind: fuser::FileType::Directory,
                ino: node.ino,
            },
            readdir::DirEntry {
                name: "..".into(),
                kind: fuser::FileType::Directory,
                ino: parent_ino,
            },
        ];
        entries.extend(readdir::list(&self.stack, &self.table, &dirs)?);
        Ok(entries)
    }

    /// Makes sure directory `node` exists in the upper layer, copying it and
    /// its missing ancestors up; returns its upper directory.
    fn upper_dir(&self, node: &Arc<Node>) -> stdio::Result<Arc<OwnedFd>> {
        self.upper_dir_slot(node)?.get()
    }

    /// Like [`Union::upper_dir`], returning the directory's slot.
    fn upper_dir_slot(&self, node: &Arc<Node>) -> stdio::Result<DirFd> {
        if let Some(slot) = upper_dir_of(node) {
            return Ok(slot);
        }
        self.copy_up(node, None)?;
        upper_dir_of(node).ok_or_else(|| errno(libc::EIO))
    }

    /// Copies node up unless it is already in the upper layer, choosing the
    /// node's primary name. See [`Union::copy_up_as`].
    fn copy_up(&self, node: &Arc<Node>, data_len: Option<u64>) -> stdio::Result<Copied> {
        self.copy_up_as(node, Which::Primary, data_len)
    }

    /// Copies node up unless it is already in the upper layer. `data_len`
    /// limits how much of a regular file's data is copied (`None`: all).
    ///
    /// A node with several names in a lower layer is split rather than
    /// moved: only the name `which` selects gets an upper copy, and the node
    /// keeps showing the lower object under its other names, as kernel
    /// overlayfs breaks such links without its index.
    fn copy_up_as(
        &self,
        node: &Arc<Node>,
        which: Which,
        data_len: Option<u64>,
    ) -> stdio::Result<Copied> {
        let upper = self.upper()?;
        if node.state().layer == 0 {
            return Ok(Copied::InPlace);
        }
        let alias = match which {
            Which::Named(alias) => alias,
            Which::Thread(tid) => node
                .hinted(tid)
                .or_else(|| node.alias())
                .ok_or_else(|| errno(libc::ESTALE))?,
            Which::Primary => node.alias().ok_or_else(|| errno(libc::ESTALE))?,
        };
        // The parent first, without holding this node's lock (lock order).
        let dst_parent = self.upper_dir(&alias.parent)?;

        let _guard = node.copy_up.lock();
        let state = node.snapshot();
        if state.layer == 0 {
            return Ok(Copied::InPlace);
        }
        let src_parent = dir_in_layer(&alias.parent, state.layer)?;
        let stat = match &state.dirs.first() {
            Some(dir) => real::stat_fd(dir.fd.get()?.as_fd())?,
            None => real::stat_at(src_parent.as_fd(), &alias.name)?
                .ok_or_else(|| errno(libc::ENOENT))?,
        };
        let job = CopyUp {
            upper,
            src_parent: src_parent.as_fd(),
            dst_parent: dst_parent.as_fd(),
            name: &alias.name,
            data_len: data_len.map_or(stat.st_size as u64, |len| len.min(stat.st_size as u64)),
            stat,
        };
        let copied = job.run()?;
        // Installing the copy changed the parent's change time.
        self.invalidate_attrs(alias.parent.ino);

        if state.is_shared_lower() {
            // NOTE: descriptors already open on the node, and fstat(2) on the
            // split name's writer, keep showing the lower object: FUSE sends
            // fstat no file handle, and the node id is the shared st_ino.
            node.hide_name(&alias);
            // The name now has its own inode number, which the parent's
            // cached listing does not know.
            self.invalidate_listing(alias.parent.ino);
            debug!(
                "node {}: name {:?} split off into the upper layer",
                node.ino, alias.name
            );
            return Ok(Copied::Split(Place::Entry {
                parent: dst_parent,
                name: alias.name,
            }));
        }
        let identity = lookup::identity(&self.stack, &copied.stat);
        let mut dirs = state.dirs.clone();
        if let Some(dir) = copied.dir {
            let parent_slot = upper_dir_of(&alias.parent).ok_or_else(|| errno(libc::EIO))?;
            let fd = DirFd::child(self.stack.dir_pool(), &parent_slot, &alias.name, dir)?;
            let top = LayerDir {
                layer: 0,
                fd,
                opacity: whiteout::Opacity::Transparent,
            };
            dirs.insert(0, top);
        }
        self.table.record_origin(identity, node.ino);
        let nlink = copied.stat.st_nlink;
        node.set_state(RealState {
            layer: 0,
            identity,
            nlink,
            dirs,
            orphan: None,
        });
        // The upper copy has its own change time and, for a directory, a
        // merged link count: the kernel's cached attributes are stale.
        self.invalidate_attrs(node.ino);
        debug!("node {} copied up from layer {}", node.ino, state.layer);
        Ok(Copied::InPlace)
    }

    /// Copies node up for a change requested by thread `tid` and returns
    /// where the changed object now is.
    fn copy_up_for_change(
        &self,
        node: &Arc<Node>,
        tid: u32,
        data_len: Option<u64>,
    ) -> stdio::Result<Place> {
        match self.copy_up_as(node, Which::Thread(tid), data_len)? {
            Copied::Split(place) => Ok(place),
            Copied::InPlace => Ok(self.locate(node)?.1),
        }
    }

    /// Returns true when the kernel must not cache node's name or
    /// attributes: its names may split apart at the next copy-up, and a
    /// fresh lookup of each name is what tells them apart.
    pub fn is_volatile(&self, node: &Node) -> bool {
        self.stack.upper().is_some() && node.state().is_shared_lower()
    }

    /// Returns true when removing `found`, named `name` in `parent`, needs a
    /// whiteout: some lower layer shows that name. An object found in a lower
    /// layer answers that at once; one found in the upper layer needs a look
    /// at the layers below it.
    fn needs_whiteout(&self, parent: &Node, name: &OsStr, found: &Found) -> stdio::Result<bool> {
        let lower_dir = found.state.dirs.iter().any(|dir| dir.layer != 0);
        if found.state.layer != 0 || lower_dir {
            return Ok(true);
        }
        self.lower_has(parent, name)
    }

    /// Returns true when some layer below the upper one shows `name` in
    /// directory node `parent`, so removing it needs a whiteout.
    fn lower_has(&self, parent: &Node, name: &OsStr) -> stdio::Result<bool> {
        let dirs = parent.state().dirs.clone();
        let lower = dirs
            .iter()
            .skip_while(|dir| dir.layer == 0)
            .cloned()
            .collect::<Vec<_>>();
        Ok(lookup::resolve(&self.stack, &lower, name)?.is_some())
    }
}

/// How often an operation locates a node again after a concurrent unlink
/// or rename moved its object from under the name it was reached by.
const MAX_RELOCATIONS: usize = 3;

/// Which name of a node a copy-up gives an upper copy.
pub(crate) enum Which {
    /// The node's first known name.
    Primary,
    /// The name a requesting thread last looked the node up by.
    Thread(u32),
    /// This name.
    Named(Alias),
}

/// The outcome of a copy-up.
pub(crate) enum Copied {
    /// The node itself now lives in the upper layer.
    InPlace,
    /// One name of a node with several lower names got its own upper copy,
    /// here; the node still shows the lower object.
    Split(Place),
}

/// Returns the fd of directory node `node` in layer `layer`.
fn dir_in_layer(node: &Node, layer: usize) -> stdio::Result<Arc<OwnedFd>> {
    let slot = node
        .state()
        .dirs
        .iter()
        .find(|dir| dir.layer == layer)
        .map(|dir| dir.fd.clone());
    slot.ok_or_else(|| errno(libc::ESTALE))?.get()
}

/// Returns the opacity of directory node's upper directory (transparent
/// when it has none).
fn upper_opacity(node: &Node) -> whiteout::Opacity {
    node.state()
        .dirs
        .first()
        .filter(|dir| dir.layer == 0)
        .map_or(whiteout::Opacity::Transparent, |dir| dir.opacity)
}

/// Returns directory node's upper directory, if it has one.
fn upper_dir_of(node: &Node) -> Option<DirFd> {
    node.state()
        .dirs
        .first()
        .filter(|dir| dir.layer == 0)
        .map(|dir| dir.fd.clone())
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// Builds FUSE attributes for node number `ino` from its real object's
/// stat. A merged directory reports one link, as kernel overlayfs does,
/// because its real link counts do not add up to a meaningful number.
pub fn attr_of(ino: u64, stat: &FileStat, merged: bool) -> FileAttr {
    FileAttr {
        ino: fuser::INodeNo(ino),
        size: stat.st_size as u64,
        blocks: stat.st_blocks as u64,
        atime: system_time(stat.st_atime, stat.st_atime_nsec),
        mtime: system_time(stat.st_mtime, stat.st_mtime_nsec),
        ctime: system_time(stat.st_ctime, stat.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: readdir::file_type(stat.st_mode),
        perm: (stat.st_mode & 0o7777) as u16,
        nlink: if merged { 1 } else { stat.st_nlink as u32 },
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: stat.st_rdev as u32,
        blksize: stat.st_blksize as u32,
        flags: 0,
    }
}
