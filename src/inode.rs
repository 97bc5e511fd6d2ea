//! The inode table: merged-view nodes and the only place that assigns inode
//! numbers.
//!
//! A node is one object of the merged view. Its inode number is derived from
//! the real object it shows, so it survives the kernel forgetting the node
//! and looking it up again: `(filesystem index << 56) | real inode number`,
//! which is the real number itself when all layers share one filesystem (as
//! kernel overlayfs reports it). Two names of one real object, such as hard
//! links inside a layer, therefore share a node. A copy-up records the upper
//! object as the origin's successor, so a file keeps its number after copy-up
//! for the life of the mount. Numbers that cannot be derived (a huge real
//! number, a real number reused while the kernel still holds the old node)
//! are assigned from a counter in the top range instead.
//!
//! Lock order, outer first; no code takes an earlier lock while holding a
//! later one:
//! 1. `Node::copy_up` of one node at a time (parents are copied up before
//!    the child's lock is taken, never while holding it);
//! 2. `Node::state`;
//! 3. `Node::aliases`, then `Node::hidden_names`, then `Node::hints`;
//!    `Node::open_modes` and `Node::listings`, each never held with another
//!    node lock;
//! 4. the shard locks inside the table's maps, held only for the map call.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::whiteout::Opacity;

/// The inode number of the merged root, fixed by FUSE.
pub const ROOT_INO: u64 = 1;

const FS_SHIFT: u32 = 56;
const ASSIGNED_BASE: u64 = 0xFF << FS_SHIFT;

/// A real object: its filesystem's index in the layer stack and its inode
/// number there.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Identity {
    pub fs_index: usize,
    pub ino: u64,
}

/// One layer's directory that takes part in a merged directory.
#[derive(Clone, Debug)]
pub struct LayerDir {
    pub layer: usize,
    pub fd: crate::dirfd::DirFd,
    pub opacity: Opacity,
}

/// One name of a node: its parent and the name within it.
#[derive(Clone)]
pub struct Alias {
    pub parent: Arc<Node>,
    pub name: OsString,
}

/// Where a node's object lives now.
#[derive(Clone, Debug)]
pub struct RealState {
    /// The topmost layer holding the object.
    pub layer: usize,
    /// The real object's identity in that layer.
    pub identity: Identity,
    /// The real object's link count when it was found.
    pub nlink: u64,
    /// For a directory, every layer directory merged into it, topmost first,
    /// ending at an opaque one.
    pub dirs: Vec<LayerDir>,
    /// The object itself once its last name is gone but it is still open.
    pub orphan: Option<Arc<OwnedFd>>,
}

impl RealState {
    /// Returns true for a directory that merges more than one layer.
    pub fn is_merged(&self) -> bool {
        self.dirs.len() > 1
    }

    /// Returns true for a non-directory in a lower layer with more than one
    /// name there. Copying up one name breaks the link, as kernel overlayfs
    /// does without its index, so the names stop being one node.
    pub fn is_shared_lower(&self) -> bool {
        self.layer != 0 && self.dirs.is_empty() && self.nlink > 1
    }
}

/// The open handles of a node by I/O mode. The kernel rejects a page-cached
/// open while passthrough handles are open on an inode, and the reverse,
/// and wants one backing file for all passthrough handles of an inode.
#[derive(Default)]
pub struct OpenModes {
    /// Every open handle, whatever its mode.
    pub handles: u32,
    pub cached: u32,
    pub passthrough: u32,
    /// The real file registered with the kernel for passthrough.
    pub backing: Option<Arc<fuser::BackingId>>,
}

/// A node of the merged view.
pub struct Node {
    /// The inode number, and the FUSE node id.
    pub ino: u64,
    pub is_dir: bool,
    state: RwLock<RealState>,
    aliases: RwLock<Vec<Alias>>,
    /// Names the merged view no longer shows for the node (removed, or split
    /// off as in [`RealState::is_shared_lower`]) under which its object still
    /// sits in its lower layer, so open descriptors can still reach it.
    hidden_names: RwLock<Vec<Alias>>,
    /// The name each recent requesting thread looked the node up by, for a
    /// node with several lower names (see [`RealState::is_shared_lower`]).
    hints: Mutex<Vec<(u32, Alias)>>,
    /// Serialises copy-up of this node; holders re-check the state.
    pub copy_up: Mutex<()>,
    /// How the node's open handles do I/O.
    pub open_modes: Mutex<OpenModes>,
    /// For a directory, the listing readers are paging through (see
    /// `Union::readdir`).
    pub listings: Mutex<crate::readdir::Listings>,
    /// Incremented when the object moves to another layer, so open handles
    /// notice that they must reopen it.
    epoch: AtomicU64,
    lookups: AtomicU64,
    /// Set when the real object has no name left in any layer.
    unlinked: AtomicBool,
    /// A removed directory's last attributes: its layer descriptors are
    /// closed at once, so its inodes are freed without waiting for the
    /// kernel to forget the node, and fstat(2) on it still returns them.
    /// Boxed: most nodes never need it, and a stat is 144 bytes.
    removed: Mutex<Option<Box<nix::sys::stat::FileStat>>>,
}

impl Node {
    fn new(ino: u64, is_dir: bool, state: RealState, alias: Option<Alias>) -> Node {
        Node {
            ino,
            is_dir,
            state: RwLock::new(state),
            aliases: RwLock::new(alias.into_iter().collect()),
            hidden_names: RwLock::new(Vec::new()),
            hints: Mutex::new(Vec::new()),
            copy_up: Mutex::new(()),
            open_modes: Mutex::new(OpenModes::default()),
            listings: Mutex::default(),
            epoch: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            unlinked: AtomicBool::new(false),
            removed: Mutex::new(None),
        }
    }

    /// Returns the node's real state; hold the guard only briefly.
    pub fn state(&self) -> RwLockReadGuard<'_, RealState> {
        self.state.read()
    }

    /// Returns a copy of the node's real state.
    pub fn snapshot(&self) -> RealState {
        self.state.read().clone()
    }

    /// Replaces the node's real state after its object moved to another
    /// layer or place, and tells open handles to reopen it.
    pub fn set_state(&self, state: RealState) {
        *self.state.write() = state;
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Updates the state in place without moving the object (a directory
    /// gaining or losing merged layers).
    pub fn update_state(&self, update: impl FnOnce(&mut RealState)) {
        update(&mut self.state.write());
    }

    /// Returns the counter that changes whenever the object moves.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Returns the primary name of the node, or `None` for the root and for
    /// a node whose names are all gone.
    pub fn alias(&self) -> Option<Alias> {
        self.aliases.read().first().cloned()
    }

    /// Returns a path to the node's object in its layer: its primary name,
    /// or, when the merged view shows none, a hidden one in the lower layer.
    pub fn path_in_layer(&self) -> Option<Alias> {
        self.alias()
            .or_else(|| self.hidden_names.read().first().cloned())
    }

    /// Moves name `alias` from the node's names to its hidden names: the
    /// merged view stops showing the node there, but the node's lower
    /// object stays reachable under it.
    pub fn hide_name(&self, alias: &Alias) {
        self.remove_alias(alias.parent.ino, &alias.name);
        self.hidden_names.write().push(alias.clone());
    }

    /// Returns every known name of the node.
    pub fn aliases(&self) -> Vec<Alias> {
        self.aliases.read().clone()
    }

    /// Records another name for the node, if it is new.
    pub fn add_alias(&self, parent: &Arc<Node>, name: &OsStr) {
        let mut aliases = self.aliases.write();
        if !aliases
            .iter()
            .any(|alias| alias.parent.ino == parent.ino && alias.name == name)
        {
            aliases.push(Alias {
                parent: parent.clone(),
                name: name.to_os_string(),
            });
        }
    }

    /// Forgets one name of the node; returns true when no name is left.
    pub fn remove_alias(&self, parent: u64, name: &OsStr) -> bool {
        let mut aliases = self.aliases.write();
        aliases.retain(|alias| !(alias.parent.ino == parent && alias.name == name));
        aliases.is_empty()
    }

    /// Replaces name `from` with `to` (a rename).
    pub fn move_alias(&self, from: (u64, &OsStr), to: Alias) {
        let mut aliases = self.aliases.write();
        aliases.retain(|alias| !(alias.parent.ino == from.0 && alias.name == from.1));
        aliases.insert(0, to);
    }

    /// Records that thread `tid` just looked the node up by `alias`.
    pub fn hint(&self, tid: u32, alias: Alias) {
        const KEPT: usize = 32;
        let mut hints = self.hints.lock();
        hints.retain(|(other, _)| *other != tid);
        if hints.len() == KEPT {
            hints.remove(0);
        }
        hints.push((tid, alias));
    }

    /// Returns the name thread `tid` last looked the node up by, if it is
    /// still one of the node's names.
    pub fn hinted(&self, tid: u32) -> Option<Alias> {
        let hint = self
            .hints
            .lock()
            .iter()
            .rev()
            .find(|(other, _)| *other == tid)
            .map(|(_, alias)| alias.clone())?;
        let known = self
            .aliases
            .read()
            .iter()
            .any(|alias| alias.parent.ino == hint.parent.ino && alias.name == hint.name);
        known.then_some(hint)
    }

    /// Marks the real object as gone from every layer.
    pub fn mark_unlinked(&self) {
        self.unlinked.store(true, Ordering::Release);
    }

    /// Records that directory node was removed from the merged view: drops
    /// its layer directories and keeps `last`, its final attributes, with no
    /// links left, or one for a merged directory, as kernel overlayfs shows.
    pub fn mark_removed_dir(&self, mut last: nix::sys::stat::FileStat, merged: bool) {
        last.st_nlink = u64::from(merged);
        *self.removed.lock() = Some(Box::new(last));
        self.state.write().dirs.clear();
    }

    /// Returns a removed directory's final attributes.
    pub fn removed_dir(&self) -> Option<nix::sys::stat::FileStat> {
        self.removed.lock().as_deref().copied()
    }

    /// Returns true once the real object has no name left.
    pub fn is_unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Acquire)
    }
}

/// All nodes the kernel currently knows, by inode number.
pub struct InodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    /// Upper objects made by copy-up, mapped to the number they took over.
    origins: DashMap<Identity, u64>,
    /// Identities whose derived number could not be used.
    assigned: DashMap<Identity, u64>,
    next_assigned: AtomicU64,
}

impl InodeTable {
    /// Creates a table holding only the root node.
    pub fn new(root: RealState) -> InodeTable {
        let table = InodeTable {
            nodes: DashMap::new(),
            origins: DashMap::new(),
            assigned: DashMap::new(),
            next_assigned: AtomicU64::new(ASSIGNED_BASE),
        };
        let root = Node::new(ROOT_INO, true, root, None);
        root.lookups.store(1, Ordering::Relaxed);
        table.nodes.insert(ROOT_INO, Arc::new(root));
        table
    }

    /// Returns the node with inode number `ino`.
    pub fn get(&self, ino: u64) -> io::Result<Arc<Node>> {
        self.nodes
            .get(&ino)
            .map(|node| node.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    /// Returns the inode number the merged view shows for real object `id`.
    pub fn ino_for(&self, id: Identity) -> u64 {
        if let Some(ino) = self.origins.get(&id) {
            return *ino;
        }
        if let Some(ino) = self.assigned.get(&id) {
            return *ino;
        }
        derive(id).unwrap_or_else(|| self.assign(id))
    }

    fn assign(&self, id: Identity) -> u64 {
        *self
            .assigned
            .entry(id)
            .or_insert_with(|| self.next_assigned.fetch_add(1, Ordering::Relaxed))
    }

    /// Records that upper object `upper` now shows the node numbered `ino`.
    pub fn record_origin(&self, upper: Identity, ino: u64) {
        if derive(upper) != Some(ino) {
            self.origins.insert(upper, ino);
        }
    }

    /// Gives back the table's spare capacity after many nodes were freed.
    pub fn shrink(&self) {
        self.nodes.shrink_to_fit();
    }

    /// Forgets number mappings of a real object that no longer exists, so a
    /// new object reusing its real inode number starts afresh.
    pub fn forget_identity(&self, id: Identity) {
        self.origins.remove(&id);
        self.assigned.remove(&id);
    }

    /// Returns the node for a looked-up object and counts one kernel
    /// reference to it. `make` builds the node when the kernel has none.
    ///
    /// A live node at the derived number that shows another object (its real
    /// inode number was reused while the kernel still holds it) keeps its
    /// number; the new object gets an assigned one.
    pub fn look_up(&self, state: RealState, is_dir: bool, alias: Alias) -> Arc<Node> {
        let mut ino = self.ino_for(state.identity);
        loop {
            match self.nodes.entry(ino) {
                Entry::Occupied(entry) => {
                    let node = entry.get();
                    let same = !node.is_unlinked()
                        && node.is_dir == is_dir
                        && node.state().identity == state.identity;
                    if same {
                        node.lookups.fetch_add(1, Ordering::Relaxed);
                        let node = node.clone();
                        drop(entry);
                        node.add_alias(&alias.parent, &alias.name);
                        return node;
                    }
                    drop(entry);
                    self.origins.remove(&state.identity);
                    self.assigned.remove(&state.identity);
                    ino = self.assign(state.identity);
                }
                Entry::Vacant(entry) => {
                    let node = Arc::new(Node::new(ino, is_dir, state, Some(alias)));
                    node.lookups.store(1, Ordering::Relaxed);
                    entry.insert(node.clone());
                    return node;
                }
            }
        }
    }

    /// Drops `count` kernel references to node `ino`, freeing the node when
    /// none is left.
    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        self.nodes.remove_if(&ino, |_, node| {
            let before = node.lookups.fetch_sub(
                count.min(node.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            before <= count
        });
    }
}

/// Derives the number for `id`, or `None` when it does not fit the scheme.
fn derive(id: Identity) -> Option<u64> {
    let fs = u64::try_from(id.fs_index).ok()?;
    let fits = id.ino < (1 << FS_SHIFT) && fs < 0xFF;
    let ino = id.ino | (fs << FS_SHIFT);
    (fits && ino != ROOT_INO).then_some(ino)
}

#[cfg(test)]
mod tests {
    /// The daemon keeps a node for every name the kernel holds, millions on
    /// a large tree, so a field that grows every node shows in its
    /// resident size.
    #[test]
    fn node_stays_small() {
        let size = std::mem::size_of::<super::Node>();
        assert!(size <= 272, "Node grew to {size} bytes");
    }
}
