//! Crash consistency: the daemon is killed with SIGKILL at random moments
//! while one thread runs copy-ups, appends with fsync, renames, unlinks,
//! rmdirs, creations and whiteouts through the mount.
//!
//! One workload thread means at most one operation is in flight at the
//! kill, so the oracle is exact: the layers must show the state before that
//! operation, or after it (or, for the few operations made of several
//! calls, one of the listed states in between). Each trial then checks:
//! - kernel overlayfs reads the upper layer and shows one of those states,
//!   so no name shows a half-copied file and nothing completed (every
//!   append and creation is fsync'ed) is lost;
//! - the next unionfs mount sweeps the work dir and shows the same view.
//!
//! Trials: `UNIONFS_CRASH_TRIALS` (default 30, or 300 with
//! `UNIONFS_SOAK=1`). `scripts/crash-test.sh` runs this test alone.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fixture::{Scratch, is_mounted};
use crate::support::{
    self, Daemon, Node, View, difference, kernel_view, names_in, read_view, setting, within,
};

/// Lower-layer files that the workload copies up, and their sizes: large
/// enough that a kill often lands inside a copy-up.
const COPY_FILES: usize = 48;
const MIN_COPY_SIZE: usize = 256 << 10;
const MAX_COPY_SIZE: usize = 2 << 20;

/// Lower-layer directories, each with `DIR_FILES` files, for whiteouts and
/// rmdir of merged directories.
const DIRS: usize = 8;
const DIR_FILES: usize = 3;

/// Below this many untouched lower files the upper layer is reset, so that
/// later trials still kill copy-ups.
const MIN_PRISTINE: usize = 6;

/// Content of lower file `index` with `len` bytes: every 16-byte record
/// names the file and its offset, so a truncated, shifted or mixed copy
/// never equals another file's content.
fn lower_content(index: usize, len: usize) -> Vec<u8> {
    let mut content = Vec::with_capacity(len + 16);
    let mut offset = 0;
    while content.len() < len {
        content.extend_from_slice(format!("c{index:03}@{offset:010x}\n").as_bytes());
        offset += 16;
    }
    content.truncate(len);
    content
}

/// The layers and mount of one crash run.
struct Layers {
    scratch: Scratch,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
    initial: View,
}

impl Layers {
    fn new(rng: &mut ChaCha8Rng) -> Layers {
        let scratch = Scratch::new();
        let lower = scratch.path("lower");
        for index in 0..COPY_FILES {
            let len = rng.gen_range(MIN_COPY_SIZE..=MAX_COPY_SIZE);
            fs::write(lower.join(format!("c{index}")), lower_content(index, len)).unwrap();
        }
        for dir in 0..DIRS {
            fs::create_dir(lower.join(format!("d{dir}"))).unwrap();
            for file in 0..DIR_FILES {
                let content = format!("lower d{dir}/e{file}\n");
                fs::write(lower.join(format!("d{dir}/e{file}")), content).unwrap();
            }
        }
        let initial = read_view(&lower).unwrap();
        let layers = Layers {
            upper: scratch.dir.path().join("upper"),
            work: scratch.dir.path().join("work"),
            mnt: scratch.dir.path().join("mnt"),
            lower,
            scratch,
            initial,
        };
        layers.reset();
        layers
    }

    /// Empties the upper layer and the work dir.
    fn reset(&self) {
        for dir in [&self.upper, &self.work] {
            if dir.exists() {
                fs::remove_dir_all(dir).unwrap();
            }
            fs::create_dir(dir).unwrap();
        }
    }

    fn options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }

    fn mount(&self, trial: usize) -> Daemon {
        let log = self.scratch.dir.path().join(format!("daemon-{trial}.log"));
        Daemon::start(&self.mnt, &self.options(), &log, None)
    }

    /// Reads the upper layer as kernel overlayfs shows it over the lower layer.
    fn kernel_view(&self) -> Result<View, String> {
        let check = self.scratch.dir.path().join("kernel");
        kernel_view(&self.upper, std::slice::from_ref(&self.lower), &check)
    }

    /// Mounts the upper layer writable under kernel overlayfs, with a work
    /// dir of its own, and reads the view.
    fn kernel_view_writable(&self) -> Result<View, String> {
        let check = self.scratch.dir.path().join("kernel-rw");
        let work = self.scratch.dir.path().join("kernel-work");
        fs::create_dir_all(&check).unwrap();
        fs::create_dir_all(&work).unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                self.lower.display(),
                self.upper.display(),
                work.display()
            ))
            .arg(&check)
            .output()
            .unwrap();
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let _guard = support::Mounted(check.clone());
        read_view(&check).map_err(|err| err.to_string())
    }
}

/// What kind of operation was in flight at a kill, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum OpKind {
    CopyUpChmod,
    Append,
    Rename,
    Unlink,
    Rmdir,
    Create,
    Mkdir,
    Rewrite,
}

impl OpKind {
    fn copies_up(self, pristine: bool) -> bool {
        pristine && matches!(self, OpKind::CopyUpChmod | OpKind::Append | OpKind::Rename)
    }
}

/// The operation in flight: its kind, whether it copies a lower file up,
/// and every state the layers may show if the kill interrupts it.
struct InFlight {
    kind: OpKind,
    copy_up: bool,
    states: Vec<View>,
    description: String,
}

/// State shared between the workload thread and the trial loop.
struct Shared {
    /// The view after the last completed operation.
    model: View,
    in_flight: Option<InFlight>,
    /// Lower files no operation has touched yet.
    pristine: BTreeSet<Vec<u8>>,
    /// An error the workload met before the kill, which is a failure.
    unexpected: Option<String>,
    operations: usize,
    next_name: usize,
}

fn file(content: &[u8]) -> Node {
    Node::File(Arc::new(content.to_vec()))
}

/// An operation chosen by [`plan`]: its kind, paths, data, and the states
/// the layers may show if a kill interrupts it, the last being "done".
struct Planned {
    kind: OpKind,
    path: Vec<u8>,
    target: Vec<u8>,
    content: Vec<u8>,
    states: Vec<View>,
}

/// Picks the next operation from the model; `None` when the chosen kind
/// has no target in the current tree.
fn plan(shared: &mut Shared, rng: &mut ChaCha8Rng) -> Option<Planned> {
    let model = &shared.model;
    let files: Vec<&Vec<u8>> = model
        .iter()
        .filter(|(_, node)| matches!(node, Node::File(_)))
        .map(|(name, _)| name)
        .collect();
    let pristine: Vec<&Vec<u8>> = shared.pristine.iter().collect();
    let dirs: Vec<&Vec<u8>> = model
        .iter()
        .filter(|(_, node)| **node == Node::Dir)
        .map(|(name, _)| name)
        .collect();
    let empty_dirs: Vec<&Vec<u8>> = dirs
        .iter()
        .copied()
        .filter(|dir| {
            let mut prefix = (*dir).clone();
            prefix.push(b'/');
            !model.keys().any(|name| name.starts_with(&prefix))
        })
        .collect();

    let kind = match rng.gen_range(0..100) {
        0..=24 => OpKind::CopyUpChmod,
        25..=39 => OpKind::Append,
        40..=51 => OpKind::Rename,
        52..=66 => OpKind::Unlink,
        67..=72 => OpKind::Rmdir,
        73..=84 => OpKind::Create,
        85..=89 => OpKind::Mkdir,
        _ => OpKind::Rewrite,
    };
    let pick = |list: &[&Vec<u8>], rng: &mut ChaCha8Rng| -> Option<Vec<u8>> {
        (!list.is_empty()).then(|| list[rng.gen_range(0..list.len())].clone())
    };
    let fresh = |shared_next: usize, rng: &mut ChaCha8Rng, prefix: &str| -> Vec<u8> {
        let parent = if !dirs.is_empty() && rng.gen_bool(0.5) {
            let mut parent = dirs[rng.gen_range(0..dirs.len())].clone();
            parent.push(b'/');
            parent
        } else {
            Vec::new()
        };
        [parent, format!("{prefix}{shared_next}").into_bytes()].concat()
    };

    let before = model.clone();
    let mut after = model.clone();
    let mut planned = Planned {
        kind,
        path: Vec::new(),
        target: Vec::new(),
        content: Vec::new(),
        states: Vec::new(),
    };
    match kind {
        OpKind::CopyUpChmod => {
            planned.path = pick(&pristine, rng).or_else(|| pick(&files, rng))?;
            planned.states = vec![before];
        }
        OpKind::Append => {
            planned.path = pick(&files, rng)?;
            planned.content = format!("appended {}\n", shared.next_name).into_bytes();
            let Some(Node::File(old)) = after.get(&planned.path) else {
                unreachable!()
            };
            let new = [old.as_slice(), &planned.content].concat();
            after.insert(planned.path.clone(), file(&new));
            planned.states = vec![before, after];
        }
        OpKind::Rename => {
            planned.path = pick(&files, rng)?;
            planned.target = if rng.gen_bool(0.3) && files.len() > 1 {
                pick(&files, rng)?
            } else {
                fresh(shared.next_name, rng, "n")
            };
            if planned.target == planned.path {
                return None;
            }
            let node = after.remove(&planned.path).unwrap();
            after.insert(planned.target.clone(), node);
            planned.states = vec![before, after];
        }
        OpKind::Unlink => {
            planned.path = pick(&files, rng)?;
            after.remove(&planned.path);
            planned.states = vec![before, after];
        }
        OpKind::Rmdir => {
            planned.path = pick(&empty_dirs, rng)?;
            after.remove(&planned.path);
            planned.states = vec![before, after];
        }
        OpKind::Create => {
            planned.path = fresh(shared.next_name, rng, "n");
            planned.content = format!("created {}\n", shared.next_name).into_bytes();
            let mut empty = model.clone();
            empty.insert(planned.path.clone(), file(b""));
            after.insert(planned.path.clone(), file(&planned.content));
            planned.states = vec![before, empty, after];
        }
        OpKind::Mkdir => {
            planned.path = fresh(shared.next_name, rng, "m");
            after.insert(planned.path.clone(), Node::Dir);
            planned.states = vec![before, after];
        }
        OpKind::Rewrite => {
            planned.path = pick(&files, rng)?;
            planned.content = format!("rewritten {}\n", shared.next_name).into_bytes();
            let mut empty = model.clone();
            empty.insert(planned.path.clone(), file(b""));
            after.insert(planned.path.clone(), file(&planned.content));
            planned.states = vec![before, empty, after];
        }
    }
    shared.next_name += 1;
    Some(planned)
}

fn bytes_path(root: &Path, relative: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    root.join(std::ffi::OsStr::from_bytes(relative))
}

/// Performs `planned` on the mount; each step is one system call.
fn perform(root: &Path, planned: &Planned) -> std::io::Result<()> {
    let path = bytes_path(root, &planned.path);
    match planned.kind {
        OpKind::CopyUpChmod => fs::set_permissions(&path, fs::Permissions::from_mode(0o640)),
        OpKind::Append => {
            let mut file = OpenOptions::new().append(true).open(&path)?;
            file.write_all(&planned.content)?;
            file.sync_all()
        }
        OpKind::Rename => fs::rename(&path, bytes_path(root, &planned.target)),
        OpKind::Unlink => fs::remove_file(&path),
        OpKind::Rmdir => fs::remove_dir(&path),
        OpKind::Create => {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)?;
            file.write_all(&planned.content)?;
            file.sync_all()
        }
        OpKind::Mkdir => fs::create_dir(&path),
        OpKind::Rewrite => {
            let mut file = OpenOptions::new().write(true).truncate(true).open(&path)?;
            file.write_all(&planned.content)?;
            file.sync_all()
        }
    }
}

/// Runs operations until one fails; a failure before `killed` is set is
/// recorded as unexpected.
fn workload(root: PathBuf, shared: Arc<Mutex<Shared>>, killed: Arc<AtomicBool>, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    loop {
        if killed.load(Ordering::SeqCst) {
            return;
        }
        let planned = {
            let mut state = shared.lock().unwrap();
            let Some(planned) = plan(&mut state, &mut rng) else {
                continue;
            };
            let copy_up = planned
                .kind
                .copies_up(state.pristine.contains(&planned.path));
            state.pristine.remove(&planned.path);
            state.in_flight = Some(InFlight {
                kind: planned.kind,
                copy_up,
                states: planned.states.clone(),
                description: format!(
                    "{:?} {:?} {:?}",
                    planned.kind,
                    String::from_utf8_lossy(&planned.path),
                    String::from_utf8_lossy(&planned.target)
                ),
            });
            planned
        };
        let result = perform(&root, &planned);
        let mut state = shared.lock().unwrap();
        match result {
            Ok(()) => {
                state.model = planned.states.last().unwrap().clone();
                state.in_flight = None;
                state.operations += 1;
            }
            Err(err) => {
                if !killed.load(Ordering::SeqCst) {
                    let what = &state.in_flight.as_ref().unwrap().description;
                    state.unexpected = Some(format!("{what} failed before the kill: {err}"));
                }
                return;
            }
        }
    }
}

/// Counts for the report.
#[derive(Default, Debug)]
struct Report {
    trials: usize,
    operations: usize,
    killed_in_copy_up: usize,
    killed_between_operations: usize,
    in_flight_kinds: std::collections::BTreeMap<String, usize>,
    in_flight_completed: usize,
    leftovers_swept: usize,
    resets: usize,
}

#[test]
fn sigkill_during_workload() {
    let trials = setting("UNIONFS_CRASH_TRIALS", 30, 300) as usize;
    let max_delay_ms = setting("UNIONFS_CRASH_MAX_DELAY_MS", 120, 120);
    let seed = support::seed("sigkill_during_workload");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let layers = Layers::new(&mut rng);
    let pristine_all: BTreeSet<Vec<u8>> = (0..COPY_FILES)
        .map(|index| format!("c{index}").into_bytes())
        .collect();
    let shared = Arc::new(Mutex::new(Shared {
        model: layers.initial.clone(),
        in_flight: None,
        pristine: pristine_all.clone(),
        unexpected: None,
        operations: 0,
        next_name: 0,
    }));
    let mut report = Report::default();
    let mut daemon = layers.mount(0);

    for trial in 0..trials {
        let killed = Arc::new(AtomicBool::new(false));
        let worker = {
            let (root, shared, killed) = (layers.mnt.clone(), shared.clone(), killed.clone());
            let worker_seed = rng.r#gen();
            std::thread::spawn(move || workload(root, shared, killed, worker_seed))
        };
        std::thread::sleep(Duration::from_millis(rng.gen_range(1..=max_delay_ms)));
        killed.store(true, Ordering::SeqCst);
        daemon.kill();
        let joined = within(Duration::from_secs(30), move || worker.join().is_ok());
        assert_eq!(
            joined,
            Some(true),
            "trial {trial}: the workload hung or panicked after the daemon was killed"
        );
        daemon.assert_no_panic();
        support::detach(&layers.mnt);
        assert!(
            !is_mounted(&layers.mnt),
            "trial {trial}: the dead mount stayed"
        );

        let mut state = shared.lock().unwrap();
        if let Some(error) = state.unexpected.take() {
            panic!("trial {trial}: {error}");
        }
        let mut candidates = vec![state.model.clone()];
        match state.in_flight.take() {
            Some(in_flight) => {
                *report
                    .in_flight_kinds
                    .entry(format!("{:?}", in_flight.kind))
                    .or_default() += 1;
                report.killed_in_copy_up += usize::from(in_flight.copy_up);
                candidates = in_flight.states;
            }
            None => report.killed_between_operations += 1,
        }

        let kernel = layers.kernel_view().unwrap_or_else(|err| {
            panic!("trial {trial}: kernel overlayfs rejects the upper layer: {err}")
        });
        let matched = candidates
            .iter()
            .position(|candidate| *candidate == kernel)
            .unwrap_or_else(|| {
                let differences: Vec<String> = candidates
                    .iter()
                    .map(|candidate| difference(&kernel, candidate).unwrap_or_default())
                    .collect();
                panic!(
                    "trial {trial}: kernel overlayfs shows a state no operation left; \
                     against each allowed state: {differences:#?}"
                )
            });
        if matched + 1 == candidates.len() && candidates.len() > 1 {
            report.in_flight_completed += 1;
        }
        state.model = candidates.swap_remove(matched);
        report.operations = state.operations;

        let leftovers = names_in(&layers.work.join("work"));
        report.leftovers_swept += usize::from(!leftovers.is_empty());
        if state.pristine.len() < MIN_PRISTINE {
            check_writable_kernel_mount(&layers, &state.model, trial);
            layers.reset();
            state.model = layers.initial.clone();
            state.pristine = pristine_all.clone();
            report.resets += 1;
        }
        drop(state);

        // The old guard must go first: dropping it detaches its mountpoint.
        drop(daemon);
        daemon = layers.mount(trial + 1);
        let swept = names_in(&layers.work.join("work"));
        assert!(
            swept.is_empty(),
            "trial {trial}: the work dir kept leftovers after the remount: {swept:?}"
        );
        let view = read_view(&layers.mnt).unwrap();
        let model = shared.lock().unwrap().model.clone();
        if let Some(diff) = difference(&view, &model) {
            panic!("trial {trial}: the remounted unionfs view differs: {diff}");
        }
        report.trials += 1;
    }

    daemon.unmount();
    daemon.assert_no_panic();
    let model = shared.lock().unwrap().model.clone();
    check_writable_kernel_mount(&layers, &model, trials);
    println!("sigkill_during_workload: {report:#?}");
    assert!(
        report.operations > 0,
        "the workload completed no operation in {trials} trials"
    );
}

/// Asserts kernel overlayfs mounts the upper layer writable and shows `model`.
fn check_writable_kernel_mount(layers: &Layers, model: &View, trial: usize) {
    let view = layers.kernel_view_writable().unwrap_or_else(|err| {
        panic!("after trial {trial}: kernel overlayfs cannot mount the upper layer: {err}")
    });
    if let Some(diff) = difference(&view, model) {
        panic!("after trial {trial}: kernel overlayfs (read-write) shows another view: {diff}");
    }
}
