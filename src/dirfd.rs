//! Layer directory descriptors, kept open within a budget.
//!
//! Every directory a node merges is reached through a descriptor, so that
//! no operation walks a path from the layer root. Those descriptors are not
//! kept forever: the kernel decides how many directories stay cached, and
//! one descriptor per directory and layer would let a walk of enough
//! directories exhaust the daemon's open file limit. A [`DirFd`] therefore
//! holds its descriptor only while the [`DirPool`] has room. When the pool
//! is over budget, a clock sweep closes the descriptors used least
//! recently; a closed one is opened again from its parent's, one component
//! at a time and never through a symlink, and must still be the same
//! directory (device and inode number) or the access fails with `ESTALE`.
//!
//! Locks: a slot's descriptor lock may be held while its parent's is taken
//! (reopening walks up), and then the pool's clock lock; the sweep takes no
//! slot lock while holding the clock lock, and the clock's clean-up only
//! tries slot locks.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::real;

/// Descriptors the pool always leaves free for everything else the daemon
/// opens: layer roots, the work dir, the FUSE channels, open files.
const RESERVED: usize = 64;

/// The smallest budget, so a tiny open file limit still leaves a working
/// set of directories.
const MIN_BUDGET: usize = 8;

/// All layer directory descriptors of one mount.
pub struct DirPool {
    budget: usize,
    open: AtomicUsize,
    /// Slots holding a descriptor, in the order the sweep visits them.
    clock: Mutex<VecDeque<Weak<Slot>>>,
}

impl DirPool {
    /// Creates a pool sized for the process's open file limit, minus what
    /// `fixed` descriptors (layer roots and the like) and a reserve need.
    pub fn for_open_file_limit(fixed: usize) -> Arc<DirPool> {
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| {
                usize::try_from(soft).unwrap_or(usize::MAX)
            });
        let budget = limit.saturating_sub(RESERVED + fixed) / 2;
        Arc::new(DirPool::with_budget(budget.max(MIN_BUDGET)))
    }

    /// Creates a pool holding at most `budget` descriptors open.
    pub fn with_budget(budget: usize) -> DirPool {
        DirPool {
            budget,
            open: AtomicUsize::new(0),
            clock: Mutex::new(VecDeque::new()),
        }
    }

    /// Returns how many descriptors the pool holds open now.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn track(&self, slot: &Arc<Slot>) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut clock = self.clock.lock();
            clock.push_back(Arc::downgrade(slot));
            // Entries of slots that closed or went away are dropped lazily by
            // the sweep; drop them here too, so a pool under budget does not
            // grow its clock without end.
            if clock.len() > 4 * open + 64 {
                // try_lock: this thread may hold a slot's lock while
                // reopening its parent; a busy slot is kept.
                clock.retain(|weak| {
                    weak.upgrade()
                        .is_some_and(|slot| slot.fd.try_lock().is_none_or(|fd| fd.is_some()))
                });
            }
        }
        if open > self.budget {
            self.sweep();
        }
    }

    /// Closes descriptors until the pool is within budget, skipping once
    /// each slot used since the last sweep passed it.
    fn sweep(&self) {
        let mut visits = 2 * self.clock.lock().len();
        while self.open.load(Ordering::Relaxed) > self.budget && visits > 0 {
            visits -= 1;
            let Some(weak) = self.clock.lock().pop_front() else {
                return;
            };
            let Some(slot) = weak.upgrade() else {
                continue;
            };
            if slot.used.swap(false, Ordering::Relaxed) {
                self.clock.lock().push_back(weak);
                continue;
            }
            if slot.close() {
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Where a directory is, for reopening it.
enum Origin {
    /// A layer root, whose descriptor is never closed.
    Root,
    /// Entry `name` of directory `parent` in the same layer.
    Child { parent: DirFd, name: OsString },
}

struct Slot {
    fd: Mutex<Option<Arc<OwnedFd>>>,
    origin: RwLock<Origin>,
    /// Device and inode number of the directory, checked on every reopen.
    identity: (u64, u64),
    used: AtomicBool,
    pool: Weak<DirPool>,
}

impl Slot {
    /// Closes the descriptor of a child directory; returns true if one was
    /// open.
    fn close(&self) -> bool {
        if matches!(*self.origin.read(), Origin::Root) {
            return false;
        }
        self.fd.lock().take().is_some()
    }

    /// Drops the slot's count in the pool when the slot goes away open.
    fn release(&self) {
        if self.fd.lock().take().is_some() {
            if let Some(pool) = self.pool.upgrade() {
                pool.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !matches!(*self.origin.read(), Origin::Root) {
            self.release();
        }
    }
}

/// A layer directory's descriptor, open while the pool has room.
#[derive(Clone)]
pub struct DirFd(Arc<Slot>);

impl std::fmt::Debug for DirFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DirFd({}:{})", self.0.identity.0, self.0.identity.1)
    }
}

impl DirFd {
    /// Wraps a layer root's descriptor, which stays open for the mount's life.
    pub fn root(pool: &Arc<DirPool>, fd: OwnedFd) -> io::Result<DirFd> {
        let stat = real::stat_fd(&fd)?;
        Ok(DirFd(Arc::new(Slot {
            fd: Mutex::new(Some(Arc::new(fd))),
            origin: RwLock::new(Origin::Root),
            identity: (stat.st_dev, stat.st_ino),
            used: AtomicBool::new(true),
            pool: Arc::downgrade(pool),
        })))
    }

    /// Wraps `fd`, the descriptor of directory `name` in `parent`.
    pub fn child(
        pool: &Arc<DirPool>,
        parent: &DirFd,
        name: &OsStr,
        fd: OwnedFd,
    ) -> io::Result<DirFd> {
        let stat = real::stat_fd(&fd)?;
        let slot = Arc::new(Slot {
            fd: Mutex::new(Some(Arc::new(fd))),
            origin: RwLock::new(Origin::Child {
                parent: parent.clone(),
                name: name.to_os_string(),
            }),
            identity: (stat.st_dev, stat.st_ino),
            used: AtomicBool::new(true),
            pool: Arc::downgrade(pool),
        });
        pool.track(&slot);
        Ok(DirFd(slot))
    }

    /// Opens directory `name` in `parent` and wraps its descriptor.
    pub fn open_child(pool: &Arc<DirPool>, parent: &DirFd, name: &OsStr) -> io::Result<DirFd> {
        let fd = real::open_dir(parent.get()?.as_fd(), name)?;
        DirFd::child(pool, parent, name, fd)
    }

    /// Returns the descriptor, opening it again if the pool closed it.
    pub fn get(&self) -> io::Result<Arc<OwnedFd>> {
        let slot = &self.0;
        slot.used.store(true, Ordering::Relaxed);
        let mut fd = slot.fd.lock();
        if let Some(fd) = fd.as_ref() {
            return Ok(fd.clone());
        }
        let (parent, name) = match &*slot.origin.read() {
            Origin::Child { parent, name } => (parent.clone(), name.clone()),
            Origin::Root => return Err(io::Error::from_raw_os_error(libc::EBADF)),
        };
        let reopened = real::open_dir(parent.get()?.as_fd(), &name)?;
        let stat = real::stat_fd(&reopened)?;
        if (stat.st_dev, stat.st_ino) != slot.identity {
            // Something else now sits under this name: the directory moved
            // behind the daemon's back.
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let reopened = Arc::new(reopened);
        *fd = Some(reopened.clone());
        drop(fd);
        if let Some(pool) = slot.pool.upgrade() {
            pool.track(slot);
        }
        Ok(reopened)
    }

    /// Records that the directory is now entry `name` of `parent` (a rename
    /// through the mount).
    pub fn moved(&self, parent: &DirFd, name: &OsStr) {
        let mut origin = self.0.origin.write();
        if let Origin::Child { .. } = &*origin {
            *origin = Origin::Child {
                parent: parent.clone(),
                name: name.to_os_string(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_over(dir: &std::path::Path, budget: usize) -> (Arc<DirPool>, DirFd) {
        let pool = Arc::new(DirPool::with_budget(budget));
        let root = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let root = DirFd::root(&pool, root).unwrap();
        (pool, root)
    }

    #[test]
    fn pool_stays_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        for index in 0..20 {
            std::fs::create_dir(dir.path().join(format!("d{index}"))).unwrap();
        }
        let (pool, root) = pool_over(dir.path(), 4);
        let children: Vec<DirFd> = (0..20)
            .map(|index| DirFd::open_child(&pool, &root, OsStr::new(&format!("d{index}"))).unwrap())
            .collect();
        assert!(
            pool.open_count() <= 4,
            "{} descriptors open",
            pool.open_count()
        );

        for child in &children {
            let fd = child.get().unwrap();
            assert!(real::stat_fd(fd.as_fd()).is_ok());
        }
        assert!(
            pool.open_count() <= 5,
            "{} descriptors open",
            pool.open_count()
        );
        drop(children);
        assert_eq!(pool.open_count(), 0);
    }

    #[test]
    fn reopen_rejects_replaced_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let (pool, root) = pool_over(dir.path(), 1);
        let a = DirFd::open_child(&pool, &root, OsStr::new("a")).unwrap();
        let _b = DirFd::open_child(&pool, &root, OsStr::new("b")).unwrap();
        let _ = a.get();
        let _ = _b.get();
        // Make sure `a` was closed, then swap another directory in.
        a.0.close();
        std::fs::rename(dir.path().join("a"), dir.path().join("a.old")).unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();

        let err = a.get().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn moved_directory_reopens_at_new_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let (pool, root) = pool_over(dir.path(), 1);
        let a = DirFd::open_child(&pool, &root, OsStr::new("a")).unwrap();
        std::fs::rename(dir.path().join("a"), dir.path().join("z")).unwrap();
        a.moved(&root, OsStr::new("z"));
        a.0.close();

        assert!(a.get().is_ok());
    }
}
