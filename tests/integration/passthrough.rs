//! Which files the kernel reads without the daemon (FUSE passthrough).
//!
//! A passthrough read runs in the reader's context against the backing
//! file, so the daemon's own read count (`rchar` in /proc/PID/io) stays
//! flat. A cached read makes the daemon read the data itself.

use std::fs;
use std::io::Read;
use std::path::Path;

use crate::fixture::{Mount, Scratch, daemon_pid};

/// Size of each test file: far above the daemon's own reads of metadata.
const FILE_SIZE: usize = 8 << 20;

/// Bytes the daemon may read while serving a passthrough read: lookups and
/// attribute reads, but not the file's data.
const PASSTHROUGH_SLACK: u64 = 1 << 20;

fn daemon_rchar(pid: i32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .and_then(|value| value.trim().parse().ok())
        .expect("/proc/PID/io must have rchar")
}

/// Reads all of `path` and returns how many bytes the daemon `pid` read
/// meanwhile.
fn daemon_reads_for(pid: i32, path: &Path) -> u64 {
    let before = daemon_rchar(pid);
    let mut data = Vec::new();
    fs::File::open(path)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    assert_eq!(data.len(), FILE_SIZE, "size read from {}", path.display());
    daemon_rchar(pid) - before
}

fn fill(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, vec![0x5a; FILE_SIZE]).unwrap();
}

#[test]
fn passthrough_upper_not_lower() {
    let scratch = Scratch::new();
    let (upper, lower) = (scratch.path("upper"), scratch.path("lower"));
    fill(&upper.join("in-upper"));
    fill(&lower.join("in-lower"));
    let layers = format!("{}:{}=ro", upper.display(), lower.display());
    let mount = Mount::unionfs_layers(&scratch.path("merged"), &layers, &[]);
    let pid = daemon_pid(&mount.root);

    let upper_reads = daemon_reads_for(pid, &mount.root.join("in-upper"));
    assert!(
        upper_reads < PASSTHROUGH_SLACK,
        "an upper file must be read by passthrough, but the daemon read {upper_reads} bytes"
    );
    // A lower file's open handles must see the upper copy after a copy-up,
    // which a fixed backing file cannot do: the daemon serves its reads.
    let lower_reads = daemon_reads_for(pid, &mount.root.join("in-lower"));
    assert!(
        lower_reads >= FILE_SIZE as u64,
        "a lower file on a writable mount must be read by the daemon, which read {lower_reads} bytes"
    );
}

#[test]
fn read_only_stack_passes_lower_files_through() {
    let scratch = Scratch::new();
    let (top, bottom) = (scratch.path("top"), scratch.path("bottom"));
    fill(&top.join("in-top"));
    fill(&bottom.join("dir/in-bottom"));
    let layers = format!("{}=ro:{}=ro", top.display(), bottom.display());
    let mount = Mount::unionfs_layers(&scratch.path("merged"), &layers, &[]);
    let pid = daemon_pid(&mount.root);

    for name in ["in-top", "dir/in-bottom"] {
        let reads = daemon_reads_for(pid, &mount.root.join(name));
        assert!(
            reads < PASSTHROUGH_SLACK,
            "{name} on a mount without a writable layer must be read by passthrough, \
             but the daemon read {reads} bytes"
        );
    }
}
