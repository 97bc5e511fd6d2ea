//! The layer stack: the ordered, opened layers of one mount.
//!
//! Index 0 is the topmost layer. When the mount is writable it is the upper
//! layer and has a work dir; every other layer is a read-only lower layer.
//! Each layer is held as an open directory fd taken before the mount goes
//! live, so later changes to the host path (or an ID-mapped mount that the
//! caller detaches, as podman does) do not move the layer.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::{debug, info};
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use nix::sys::statvfs::FsFlags;

use crate::copyup::workdir::WorkDir;
use crate::options::MountOptions;
use crate::real;
use crate::whiteout::Writer;

/// Name of the default work dir when it must live inside the upper layer.
/// The `.wh.` prefix keeps it out of the merged view.
pub const INNER_WORKDIR_NAME: &str = ".wh..wh.unionfs-work";

/// One opened layer.
#[derive(Debug)]
pub struct Layer {
    /// The path the layer was given as, made absolute.
    pub path: PathBuf,
    /// The layer's root directory.
    pub root: OwnedFd,
    /// Device of the layer's root; layers on one filesystem share it.
    pub dev: u64,
    /// Index of the layer's filesystem among the stack's distinct devices,
    /// in stack order; inode numbers are made unique per filesystem with it.
    pub fs_index: usize,
}

/// The writable top of the stack.
pub struct Upper {
    /// Where new objects are built before they appear.
    pub work: WorkDir,
    /// Writes whiteouts and opaque markers in the chosen format.
    pub whiteouts: Writer,
    /// Skip `fsync` when building objects (`-o volatile`).
    pub volatile: bool,
    /// Held for the mount's life: two mounts writing one upper layer would
    /// each cache names and attributes the other changes.
    _lock: Flock<OwnedFd>,
}

/// The opened layers of one mount, topmost first.
pub struct LayerStack {
    layers: Vec<Layer>,
    upper: Option<Upper>,
    /// Index of every filesystem seen, by device: the layers' own first, in
    /// stack order, then any mounted inside a layer, as lookups meet them.
    devices: dashmap::DashMap<u64, usize>,
    /// Held while a new filesystem gets its index, so indexes stay unique.
    new_device: parking_lot::Mutex<()>,
    /// Descriptors of the layer directories nodes merge.
    dir_pool: std::sync::Arc<crate::dirfd::DirPool>,
}

/// A layer or mount configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("layer {path}: {error}; check the path in the layer list")]
    Open { path: PathBuf, error: io::Error },
    #[error("layer {0} is not a directory; every layer must be a directory")]
    NotDirectory(PathBuf),
    #[error("layer {0} is listed twice (as {1}); list each directory once")]
    Duplicate(PathBuf, PathBuf),
    #[error("layer {inner} is inside layer {outer}; layers must be separate directory trees")]
    Nested { inner: PathBuf, outer: PathBuf },
    #[error(
        "mountpoint {mountpoint} is inside layer {layer}; choose a mountpoint outside every layer"
    )]
    MountpointInLayer { mountpoint: PathBuf, layer: PathBuf },
    #[error("mountpoint {0}: {1}; create the directory first")]
    Mountpoint(PathBuf, io::Error),
    #[error(
        "upper layer {0} is on a read-only filesystem; remount it read-write or mark the layer =ro"
    )]
    ReadOnlyUpper(PathBuf),
    #[error(
        "work dir {workdir} must not be inside layer {layer} or contain it; choose a directory beside the upper layer"
    )]
    WorkdirNested { workdir: PathBuf, layer: PathBuf },
    #[error(
        "upper layer {0} is in use by another unionfs mount; unmount that one first, or use another upper layer"
    )]
    UpperInUse(PathBuf),
    #[error("{0}")]
    Workdir(io::Error),
}

impl LayerStack {
    /// Opens and checks every layer, the mountpoint and the work dir.
    pub fn open(options: &MountOptions, mountpoint: &Path) -> Result<LayerStack, StackError> {
        let canonical_mountpoint = check_mountpoint(mountpoint)?;
        let mut layers = Vec::with_capacity(options.layers.len());
        let mut canonical = Vec::with_capacity(options.layers.len());
        let mut devices: HashMap<u64, usize> = HashMap::new();
        let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();

        for spec in &options.layers {
            let (layer, path, ino) = open_layer(&spec.path, &mut devices)?;
            if let Some(first) = seen.insert((layer.dev, ino), spec.path.clone()) {
                return Err(StackError::Duplicate(spec.path.clone(), first));
            }
            layers.push(layer);
            canonical.push(path);
        }
        check_nesting(&canonical, &canonical_mountpoint)?;

        let upper = match options.upper() {
            Some(_) if !options.read_only => Some(open_upper(options, &layers[0], &canonical)?),
            _ => None,
        };
        info!(
            "layer stack: {} layers on {} filesystems, {}",
            layers.len(),
            devices.len(),
            if upper.is_some() {
                "writable"
            } else {
                "read-only"
            }
        );
        Ok(LayerStack {
            devices: devices.into_iter().collect(),
            new_device: parking_lot::Mutex::new(()),
            dir_pool: crate::dirfd::DirPool::for_open_file_limit(layers.len() + 8),
            layers,
            upper,
        })
    }

    /// Returns the layers, topmost first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Returns layer `index`'s root directory.
    pub fn root(&self, index: usize) -> BorrowedFd<'_> {
        self.layers[index].root.as_fd()
    }

    /// Returns the upper layer's writing state, or `None` for a read-only stack.
    pub fn upper(&self) -> Option<&Upper> {
        self.upper.as_ref()
    }

    /// Returns the index of the upper layer when the stack is writable.
    pub fn upper_index(&self) -> Option<usize> {
        self.upper.as_ref().map(|_| 0)
    }

    /// Returns the pool of layer directory descriptors.
    pub fn dir_pool(&self) -> &std::sync::Arc<crate::dirfd::DirPool> {
        &self.dir_pool
    }

    /// Returns the index of the filesystem on device `dev`, assigning the
    /// next free index to a filesystem not seen before. Inode numbers are
    /// unique per filesystem, so this index makes them unique in the stack.
    pub fn fs_index(&self, dev: u64) -> usize {
        if let Some(index) = self.devices.get(&dev) {
            return *index;
        }
        let _assigning = self.new_device.lock();
        let next = self.devices.len();
        *self.devices.entry(dev).or_insert(next)
    }
}

fn check_mountpoint(mountpoint: &Path) -> Result<PathBuf, StackError> {
    let canonical = mountpoint
        .canonicalize()
        .map_err(|err| StackError::Mountpoint(mountpoint.to_path_buf(), err))?;
    if !canonical.is_dir() {
        let err = io::Error::from_raw_os_error(libc::ENOTDIR);
        return Err(StackError::Mountpoint(mountpoint.to_path_buf(), err));
    }
    Ok(canonical)
}

fn open_layer(
    path: &Path,
    devices: &mut HashMap<u64, usize>,
) -> Result<(Layer, PathBuf, u64), StackError> {
    let open_error = |error| StackError::Open {
        path: path.to_path_buf(),
        error,
    };
    let canonical = path.canonicalize().map_err(open_error)?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = match nix::fcntl::open(&canonical, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOTDIR) => {
            return Err(StackError::NotDirectory(path.to_path_buf()));
        }
        Err(err) => return Err(open_error(err.into())),
    };
    let stat = real::stat_fd(&root).map_err(open_error)?;
    let next_index = devices.len();
    let fs_index = *devices.entry(stat.st_dev).or_insert(next_index);
    debug!(
        "layer {}: device {:#x}, filesystem index {fs_index}",
        canonical.display(),
        stat.st_dev
    );
    let layer = Layer {
        path: canonical.clone(),
        root,
        dev: stat.st_dev,
        fs_index,
    };
    Ok((layer, canonical, stat.st_ino))
}

fn check_nesting(layers: &[PathBuf], mountpoint: &Path) -> Result<(), StackError> {
    for (i, outer) in layers.iter().enumerate() {
        if mountpoint.starts_with(outer) {
            return Err(StackError::MountpointInLayer {
                mountpoint: mountpoint.to_path_buf(),
                layer: outer.clone(),
            });
        }
        for (j, inner) in layers.iter().enumerate() {
            if i != j && inner.starts_with(outer) {
                return Err(StackError::Nested {
                    inner: inner.clone(),
                    outer: outer.clone(),
                });
            }
        }
    }
    Ok(())
}

fn open_upper(
    options: &MountOptions,
    upper: &Layer,
    layers: &[PathBuf],
) -> Result<Upper, StackError> {
    let fs =
        nix::sys::statvfs::fstatvfs(&upper.root).map_err(|err| StackError::Workdir(err.into()))?;
    if fs.flags().contains(FsFlags::ST_RDONLY) {
        return Err(StackError::ReadOnlyUpper(upper.path.clone()));
    }
    let workdir = match &options.workdir {
        Some(path) => explicit_workdir(path, layers)?,
        None => default_workdir(upper),
    };
    let lock = lock_upper(upper)?;
    let work = WorkDir::open(&workdir, upper.dev).map_err(StackError::Workdir)?;
    let whiteouts = Writer::probe(&work, options.whiteout);
    info!("work dir {}", work.path().display());
    Ok(Upper {
        work,
        whiteouts,
        volatile: options.volatile,
        _lock: lock,
    })
}

/// Locks the upper layer against a second mount, whatever its work dir.
fn lock_upper(upper: &Layer) -> Result<Flock<OwnedFd>, StackError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(upper.root.as_fd(), ".", flags, Mode::empty())
        .map_err(|err| StackError::Workdir(err.into()))?;
    Flock::lock(fd, FlockArg::LockExclusiveNonblock)
        .map_err(|_| StackError::UpperInUse(upper.path.clone()))
}

fn explicit_workdir(path: &Path, layers: &[PathBuf]) -> Result<PathBuf, StackError> {
    let absolute = std::path::absolute(path).map_err(StackError::Workdir)?;
    // The work dir may not exist yet; its parent must.
    let canonical = match absolute.canonicalize() {
        Ok(canonical) => canonical,
        Err(_) => {
            let parent = absolute.parent().unwrap_or(Path::new("/"));
            let name = absolute.file_name().unwrap_or(OsStr::new(""));
            let parent = parent.canonicalize().map_err(|err| {
                StackError::Workdir(io::Error::new(
                    err.kind(),
                    format!(
                        "work dir {}: {err}; create its parent directory first",
                        path.display()
                    ),
                ))
            })?;
            parent.join(name)
        }
    };
    for layer in layers {
        if canonical.starts_with(layer) || layer.starts_with(&canonical) {
            return Err(StackError::WorkdirNested {
                workdir: path.to_path_buf(),
                layer: layer.clone(),
            });
        }
    }
    Ok(canonical)
}

/// Picks the work dir for a mount given none: `.NAME.unionfs-work` beside
/// upper layer NAME, or, when the upper layer is the root of its filesystem
/// (so a sibling could not share it), a hidden directory inside the layer.
fn default_workdir(upper: &Layer) -> PathBuf {
    let beside = match (upper.path.parent(), upper.path.file_name()) {
        (Some(parent), Some(name)) => {
            let mut sibling = OsString::from(".");
            sibling.push(name);
            sibling.push(".unionfs-work");
            let same_fs = nix::sys::stat::stat(parent).is_ok_and(|stat| stat.st_dev == upper.dev);
            same_fs.then(|| parent.join(sibling))
        }
        _ => None,
    };
    beside.unwrap_or_else(|| upper.path.join(INNER_WORKDIR_NAME))
}

/// Returns the open upper layer directory `upper` as `io::Result` for callers
/// that need it and a uniform error when the stack is read-only.
pub fn read_only_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}
