//! Concurrency: many threads run random operations (copy-ups, appends,
//! truncations, renames, unlinks, mkdir and rmdir, links, reads, listings,
//! xattrs) on the same few files and directories for a bounded time.
//!
//! The run must end with no deadlock (a watchdog gives every thread a
//! deadline and names the operation it is stuck in), no errno outside the
//! ones the operation can give on a racing tree, no panic in the daemon's
//! log, and an upper layer that kernel overlayfs mounts and shows exactly
//! as unionfs showed it.
//!
//! `UNIONFS_STRESS_SECONDS` (default 10, or 300 with `UNIONFS_SOAK=1`) and
//! `UNIONFS_STRESS_THREADS` (default 8) size the run; `scripts/stress.sh`
//! runs this test alone.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fixture::{self, Scratch, is_mounted};
use crate::support::{self, Daemon, difference, read_view, setting, within};

/// Errnos a racing tree can give: names appear and vanish, directories
/// fill, renames cross layers (EXDEV for lower directories), and a
/// directory can be renamed into itself (EINVAL).
const EXPECTED_ERRNOS: &[i32] = &[
    libc::ENOENT,
    libc::EEXIST,
    libc::ENOTEMPTY,
    libc::EXDEV,
    libc::EISDIR,
    libc::ENOTDIR,
    libc::EINVAL,
    libc::ENODATA,
];

/// Names the threads fight over.
const FILES: &[&str] = &[
    "a0", "a1", "a2", "a3", "b0", "d0/x0", "d0/x1", "d1/x0", "e0/y0",
];
const DIRS: &[&str] = &["d0", "d1", "d2", "e0", "e1", "d0/sub"];

fn pick<'a>(rng: &mut ChaCha8Rng, names: &[&'a str]) -> &'a str {
    names[rng.gen_range(0..names.len())]
}

/// Runs one random operation under `root`; returns its description and
/// result.
fn random_operation(
    root: &Path,
    rng: &mut ChaCha8Rng,
    thread: usize,
) -> (String, std::io::Result<()>) {
    let file = pick(rng, FILES);
    let other = pick(rng, FILES);
    let dir = pick(rng, DIRS);
    let path = root.join(file);
    match rng.gen_range(0..15) {
        0 => (format!("read {file}"), fs::read(&path).map(drop)),
        1 => (
            format!("append {file}"),
            OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(format!("t{thread}\n").as_bytes())),
        ),
        2 => (
            format!("rewrite {file}"),
            fs::write(&path, format!("rewritten by {thread}\n")),
        ),
        3 => (
            format!("rename {file} -> {other}"),
            fs::rename(&path, root.join(other)),
        ),
        4 => (format!("unlink {file}"), fs::remove_file(&path)),
        5 => (format!("mkdir {dir}"), fs::create_dir(root.join(dir))),
        6 => (format!("rmdir {dir}"), fs::remove_dir(root.join(dir))),
        7 => {
            let target = pick(rng, DIRS);
            (
                format!("rename dir {dir} -> {target}"),
                fs::rename(root.join(dir), root.join(target)),
            )
        }
        8 => (
            format!("chmod {file}"),
            fs::set_permissions(
                &path,
                fs::Permissions::from_mode(0o600 + rng.gen_range(0..0o100)),
            ),
        ),
        9 => (
            format!("link {file} -> {other}"),
            fs::hard_link(&path, root.join(other)),
        ),
        10 => (
            format!("list {dir}"),
            fs::read_dir(root.join(dir)).and_then(|entries| {
                for entry in entries {
                    entry?;
                }
                Ok(())
            }),
        ),
        11 => (
            format!("truncate {file}"),
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(rng.gen_range(0..64))),
        ),
        12 => (
            format!("setxattr {file}"),
            xattr::set(&path, "user.stress", format!("{thread}").as_bytes()),
        ),
        13 => (
            format!("stat {file}"),
            fs::symlink_metadata(&path).map(drop),
        ),
        _ => (
            format!("create {file}"),
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map(drop),
        ),
    }
}

/// One thread's state, for the watchdog.
struct Worker {
    current: Mutex<(String, Instant)>,
    operations: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

#[test]
fn threads_race_on_few_names() {
    let seconds = setting("UNIONFS_STRESS_SECONDS", 10, 300);
    let threads = setting("UNIONFS_STRESS_THREADS", 8, 8) as usize;
    let seed = support::seed("threads_race_on_few_names");

    let scratch = Scratch::new();
    let lower = scratch.path("lower");
    for name in ["a0", "a1", "a2", "b0", "d0/x0", "d0/x1", "d1/x0", "d2/z"] {
        let content: String = std::iter::repeat_n(format!("lower {name}\n"), 4096).collect();
        fixture::write(&lower, name, &content);
    }
    let upper = scratch.path("upper");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        scratch.path("work").display()
    );
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&scratch.dir.path().join("mnt"), &options, &log, None);
    let root = daemon.mountpoint.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<Arc<Worker>> = (0..threads)
        .map(|_| {
            Arc::new(Worker {
                current: Mutex::new((String::from("starting"), Instant::now())),
                operations: AtomicU64::new(0),
                unexpected: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let handles: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(index, worker)| {
            let (worker, stop, root) = (worker.clone(), stop.clone(), root.clone());
            std::thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index as u64);
                while !stop.load(Ordering::Relaxed) {
                    let (what, result) = random_operation(&root, &mut rng, index);
                    if let Err(err) = result {
                        let code = err.raw_os_error().unwrap_or(-1);
                        if !EXPECTED_ERRNOS.contains(&code) {
                            worker
                                .unexpected
                                .lock()
                                .unwrap()
                                .push(format!("{what}: {err}"));
                        }
                    }
                    *worker.current.lock().unwrap() = (what, Instant::now());
                    worker.operations.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Watch for a thread that stops making progress while the run lasts.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let stall = Duration::from_secs(30);
    let mut stuck = None;
    while Instant::now() < deadline && stuck.is_none() {
        std::thread::sleep(Duration::from_millis(200));
        stuck = workers.iter().enumerate().find_map(|(index, worker)| {
            let (what, since) = worker.current.lock().unwrap().clone();
            (since.elapsed() > stall).then(|| format!("thread {index} after {what:?}"))
        });
    }
    stop.store(true, Ordering::Relaxed);
    let joined = within(stall, move || {
        handles.into_iter().all(|handle| handle.join().is_ok())
    });
    if stuck.is_some() || joined.is_none() {
        let report: Vec<String> = workers
            .iter()
            .enumerate()
            .map(|(index, worker)| {
                let (what, since) = worker.current.lock().unwrap().clone();
                format!(
                    "thread {index}: last finished {what:?} {:?} ago",
                    since.elapsed()
                )
            })
            .collect();
        support::abort_connection(&root);
        panic!("deadlock: a thread made no progress for {stall:?}: {stuck:?}\n{report:#?}");
    }
    assert_eq!(joined, Some(true), "a worker thread panicked");

    let operations: u64 = workers
        .iter()
        .map(|w| w.operations.load(Ordering::Relaxed))
        .sum();
    println!(
        "threads_race_on_few_names: {threads} threads, {operations} operations in {seconds} s"
    );
    let unexpected: Vec<String> = workers
        .iter()
        .flat_map(|worker| worker.unexpected.lock().unwrap().clone())
        .collect();
    assert!(daemon.is_running(), "the daemon died");
    daemon.assert_no_panic();

    // The upper layer is checked before the errnos, so a run with both
    // kinds of failure reports both.
    let union_view = read_view(&root).unwrap();
    daemon.unmount();
    assert!(!is_mounted(&root));
    let kernel = kernel_writable_view(&scratch, &lower, &upper);
    if let Some(diff) = difference(&kernel, &union_view) {
        panic!("kernel overlayfs shows the upper layer differently: {diff}");
    }
    assert!(
        unexpected.is_empty(),
        "{} operations failed with an unexpected errno, first ones: {:#?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(20)]
    );
}

/// Mounts `upper` over `lower` writable under kernel overlayfs with a new
/// work dir, reads the view and unmounts.
fn kernel_writable_view(scratch: &Scratch, lower: &Path, upper: &Path) -> support::View {
    let check: PathBuf = scratch.dir.path().join("kernel");
    let work = scratch.path("kernel-work");
    fs::create_dir_all(&check).unwrap();
    fixture::run(
        std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(&check),
    );
    let _guard = support::Mounted(check.clone());
    read_view(&check).unwrap()
}
