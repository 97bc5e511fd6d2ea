//! The layer stack the exerciser runs on: seeded file contents in two lower
//! layers, and mounts of unionfs or kernel overlayfs over them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::rng::Rng;

/// Chunk size of the file two workers share. Each worker owns every other chunk.
pub const SHARED_CHUNK: u64 = 64 * 1024;
const SHARED_CHUNKS: u64 = 8;

/// Which filesystem serves the merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unionfs,
    Overlay,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unionfs => "unionfs",
            Kind::Overlay => "kernel overlayfs",
        }
    }

    pub fn dir_name(self) -> &'static str {
        match self {
            Kind::Unionfs => "unionfs",
            Kind::Overlay => "overlay",
        }
    }

    pub fn other(self) -> Kind {
        match self {
            Kind::Unionfs => Kind::Overlay,
            Kind::Overlay => Kind::Unionfs,
        }
    }
}

/// One file the lower layers start with.
pub struct FilePlan {
    /// Path inside the merged view.
    pub relative: &'static str,
    /// Lower layer index, 0 being the topmost lower layer.
    pub layer: usize,
    /// The whole content, zeros where the file has holes.
    pub content: Vec<u8>,
    /// Byte ranges written with data. The rest of the file is holes.
    pub extents: Vec<(u64, u64)>,
    /// Whether two workers share the file.
    pub shared: bool,
}

/// The lower layers need this many directories.
pub const LOWER_LAYERS: usize = 2;

/// Plans the lower-layer files for `seed`: one worker file each in several
/// shapes (sparse, dense, empty, mostly hole), and one shared file.
pub fn plan(seed: u64) -> Vec<FilePlan> {
    let mut rng = Rng::new(Rng::derive(seed, u64::MAX));
    let sparse_size = rng.between(200 * 1024, 500 * 1024);
    let dense_size = rng.between(1, 70 * 1024);
    let tail_size = rng.between(600 * 1024, 760 * 1024);
    let shared_size = SHARED_CHUNKS * SHARED_CHUNK;
    let shared_extents: Vec<(u64, u64)> = (0..SHARED_CHUNKS)
        .filter(|chunk| chunk % 3 != 2)
        .map(|chunk| (chunk * SHARED_CHUNK + 100, SHARED_CHUNK - 300))
        .collect();
    vec![
        file(&mut rng, "f0", 1, sparse_size, spread(sparse_size, 3)),
        file(&mut rng, "dir/f1", 0, dense_size, vec![(0, dense_size)]),
        file(&mut rng, "dir/sub/f2", 1, 0, Vec::new()),
        file(&mut rng, "f3", 0, tail_size, vec![(tail_size - 5000, 5000)]),
        FilePlan {
            shared: true,
            ..file(&mut rng, "shared", 1, shared_size, shared_extents)
        },
    ]
}

/// `count` extents spread over `size` bytes, with holes between them.
fn spread(size: u64, count: u64) -> Vec<(u64, u64)> {
    let stride = size / count;
    (0..count)
        .map(|index| (index * stride + stride / 4, stride / 2))
        .collect()
}

fn file(
    rng: &mut Rng,
    relative: &'static str,
    layer: usize,
    size: u64,
    extents: Vec<(u64, u64)>,
) -> FilePlan {
    let mut content = vec![0u8; size as usize];
    for &(offset, len) in &extents {
        rng.fill(&mut content[offset as usize..(offset + len) as usize]);
    }
    FilePlan {
        relative,
        layer,
        content,
        extents,
        shared: false,
    }
}

/// Writes the planned files into `lowers` (topmost first), leaving holes
/// where no extent was planned.
pub fn build(plans: &[FilePlan], lowers: &[PathBuf]) -> Result<(), String> {
    for plan in plans {
        let path = lowers[plan.layer].join(plan.relative);
        std::fs::create_dir_all(path.parent().unwrap())
            .map_err(|err| format!("cannot create the parent of {}: {err}", path.display()))?;
        let file = File::create(&path)
            .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
        for &(offset, len) in &plan.extents {
            file.write_all_at(
                &plan.content[offset as usize..(offset + len) as usize],
                offset,
            )
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        }
        file.set_len(plan.content.len() as u64)
            .map_err(|err| format!("cannot size {}: {err}", path.display()))?;
    }
    Ok(())
}

/// A mounted merged view, lazily unmounted on drop if still mounted.
pub struct Mount {
    pub kind: Kind,
    pub root: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Mounts `kind` at `root` over `lowers` (topmost first) with upper layer
    /// `upper` and work dir `work`.
    pub fn new(
        kind: Kind,
        root: &Path,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
    ) -> Result<Mount, String> {
        for dir in [root, upper, work] {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        }
        let lowerdir: Vec<String> = lowers
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        let mut command = match kind {
            Kind::Unionfs => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_unionfs"));
                command.arg("-o").arg(&options).arg(root);
                command
            }
            Kind::Overlay => {
                let mut command = Command::new("mount");
                command
                    .args(["-t", "overlay", "overlay", "-o", &options])
                    .arg(root);
                command
            }
        };
        run(&mut command)?;
        Ok(Mount {
            kind,
            root: root.to_path_buf(),
            mounted: true,
        })
    }

    /// Unmounts now. For unionfs, waits for the daemon to exit.
    pub fn unmount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        match self.kind {
            Kind::Unionfs => run(Command::new(env!("CARGO_BIN_EXE_unionfs"))
                .arg("umount")
                .arg(&self.root)),
            Kind::Overlay => run(Command::new("umount").arg(&self.root)),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            // Lazy, so that a failed run never leaves a busy mount behind.
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|err| format!("cannot run {command:?}: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}
