//! Open file handles, by FUSE file handle number.
//!
//! A file handle holds the real file it reads and writes. A handle opened
//! read-only on a lower file notices a later copy-up through the node's
//! epoch and reopens the upper copy, so it reads the new data, as kernel
//! overlayfs does. Directories have no handles: the kernel opens them
//! without asking the daemon (see `Union::readdir`).

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;

use crate::inode::Node;

/// How the kernel moves a handle's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// Through the kernel's page cache of the FUSE inode, and this daemon.
    Cached,
    /// Straight to this daemon, bypassing the page cache.
    Direct,
    /// Straight to the real file (FUSE passthrough), without this daemon.
    Passthrough,
}

/// An open regular file.
pub struct FileHandle {
    pub node: Arc<Node>,
    /// The open flags, minus those only meaningful at open time.
    pub flags: i32,
    pub mode: IoMode,
    file: RwLock<Arc<File>>,
    epoch: AtomicU64,
}

impl FileHandle {
    /// Creates a handle for `file`, opened when the node had `epoch`.
    pub fn new(
        node: Arc<Node>,
        file: Arc<File>,
        flags: i32,
        epoch: u64,
        mode: IoMode,
    ) -> FileHandle {
        FileHandle {
            node,
            flags,
            mode,
            file: RwLock::new(file),
            epoch: AtomicU64::new(epoch),
        }
    }

    /// Returns true when the handle was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY
    }

    /// Returns the real file, or `None` when the node moved to another layer
    /// since the handle opened it.
    pub fn current(&self) -> Option<Arc<File>> {
        if self.epoch.load(Ordering::Acquire) == self.node.epoch() {
            Some(self.file.read().clone())
        } else {
            None
        }
    }

    /// Returns the real file regardless of moves.
    pub fn file(&self) -> Arc<File> {
        self.file.read().clone()
    }

    /// Replaces the real file after the node moved.
    pub fn replace(&self, file: Arc<File>, epoch: u64) -> Arc<File> {
        *self.file.write() = file.clone();
        self.epoch.store(epoch, Ordering::Release);
        file
    }
}

/// All open handles.
pub struct HandleTable {
    files: DashMap<u64, Arc<FileHandle>>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            files: DashMap::new(),
            next: AtomicU64::new(1),
        }
    }
}

impl HandleTable {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Stores a file handle; returns its number.
    pub fn insert_file(&self, handle: FileHandle) -> u64 {
        let id = self.next_id();
        self.files.insert(id, Arc::new(handle));
        id
    }

    /// Returns file handle `id`, or `EBADF`.
    pub fn file(&self, id: u64) -> std::io::Result<Arc<FileHandle>> {
        self.files
            .get(&id)
            .map(|h| h.clone())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Removes file handle `id`.
    pub fn remove_file(&self, id: u64) -> Option<Arc<FileHandle>> {
        self.files.remove(&id).map(|(_, handle)| handle)
    }
}
