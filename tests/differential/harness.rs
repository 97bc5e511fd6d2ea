//! Runs a case on unionfs and on kernel overlayfs side by side and reports
//! the first difference. Shrinks a failing case while it keeps failing the
//! same way.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rand_chacha::ChaCha8Rng;

use crate::case::Case;
use crate::generate::Generator;
use crate::layers::{self, Format, Item};
use crate::mounts::{Kind, Mount};
use crate::ops::{self, Held, Op, RenameMode};
use crate::sys;
use crate::view::{self, Tree};

/// The first difference between the two filesystems in one run.
#[derive(Debug)]
pub struct Failure {
    /// What differed, without names or values, so that a smaller case can
    /// be checked to fail for the same cause.
    pub signature: String,
    /// What differed, in full.
    pub report: String,
    /// The case as run, up to the operation that differed.
    pub case: Case,
}

/// Where the operations of a run come from.
pub enum Source<'a> {
    /// The operations of the case, in order.
    Fixed,
    /// `count` operations chosen one at a time from the merged view.
    Generated {
        rng: &'a mut ChaCha8Rng,
        count: usize,
    },
}

/// Counts of what a passing run did.
#[derive(Default, Clone, Copy)]
pub struct Totals {
    pub sequences: usize,
    pub operations: usize,
    pub skipped: usize,
}

fn side_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Unionfs => "unionfs",
        Kind::Overlay => "overlay",
    }
}

/// One side's directories and mount.
struct Side {
    /// The lower layers, topmost first.
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    mount: Mount,
    held: Held,
}

fn make_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
    path.to_path_buf()
}

fn build_side(scratch: &Path, kind: Kind, case: &Case) -> Result<Side, String> {
    let base = scratch.join(side_name(kind));
    let format = match kind {
        Kind::Unionfs => case.format,
        Kind::Overlay => Format::Overlay,
    };
    let mut lowers = Vec::new();
    for (index, items) in case.lowers.iter().enumerate() {
        let dir = make_dir(&base.join(format!("lower{index}")));
        layers::build(&dir, items, format);
        lowers.push(dir);
    }
    let upper = make_dir(&base.join("upper"));
    layers::build(&upper, &case.upper, Format::Overlay);
    let work = make_dir(&base.join("work"));
    let mount = Mount::new(kind, &base.join("merged"), &upper, &work, &lowers)?;
    Ok(Side {
        lowers,
        upper,
        mount,
        held: Held::default(),
    })
}

fn path_in(view_path: &str) -> PathBuf {
    if view_path == "." {
        PathBuf::new()
    } else {
        PathBuf::from(view_path)
    }
}

/// Returns why `op` must not run, or `None` when it may. `view` is the
/// merged view before the operation, `upper` the kernel side's upper layer,
/// and `shared` the descriptor slots opened on a lower hard-linked file.
/// Left out are the differences the README documents ("Behaviour") and one
/// rename the kernel prepares before failing:
///
/// - Renaming one name of a lower hard-linked file onto another: unionfs
///   has one inode for the two names and does nothing, as POSIX says for
///   two names of one file, while kernel overlayfs without its index has
///   two inodes.
/// - fstat or read through a descriptor opened on a lower hard-linked file:
///   after one name is split off by a write, unionfs keeps every such
///   descriptor on the inode the other names share, since FUSE sends fstat
///   no file handle; the kernel gives each name its own inode.
/// - Renaming a directory onto a non-empty directory. Both fail with
///   ENOTEMPTY, but kernel overlayfs prepares the rename before the upper
///   filesystem rejects it: it marks a source that has no lower directory
///   opaque, or renames with RENAME_WHITEOUT, which on ext4 updates the
///   source parent's mtime. unionfs changes nothing, as POSIX asks of a
///   failed rename.
pub fn avoided(op: &Op, view: &Tree, upper: &Path, shared: &HashSet<u8>) -> Option<&'static str> {
    if let Op::StatHeld { slot } | Op::ReadHeld { slot, .. } = op {
        if shared.contains(slot) {
            return Some("fstat or read of a descriptor on a lower hard-linked file");
        }
    }
    let Op::Rename { from, to, mode } = op else {
        return None;
    };
    if *mode == RenameMode::NoReplace || from == to {
        return None;
    }
    let target_path = path_in(to);
    let (Some(source), Some(target)) = (view.get(&path_in(from)), view.get(&target_path)) else {
        return None;
    };
    let lower_hard_links = source.kind != 'd'
        && source.same_inode_as == target.same_inode_as
        && std::fs::symlink_metadata(upper.join(from)).is_err()
        && std::fs::symlink_metadata(upper.join(to)).is_err();
    if lower_hard_links {
        return Some("rename between names of one lower hard-linked file");
    }
    let onto_non_empty_dir = *mode == RenameMode::Plain
        && source.kind == 'd'
        && target.kind == 'd'
        && view
            .keys()
            .any(|path| path.parent() == Some(target_path.as_path()) && *path != target_path);
    if onto_non_empty_dir {
        return Some("rename of a directory onto a non-empty directory");
    }
    None
}

/// Records which descriptor slots `op` opens on a lower hard-linked file:
/// a name that shares its inode with another name and has no upper copy.
pub fn track_shared(op: &Op, view: &Tree, upper: &Path, shared: &mut HashSet<u8>) {
    match op {
        Op::Hold { slot, path, .. } => {
            let entry = view.get(&path_in(path));
            // The link count covers names hidden from the merged view too.
            let is_shared = entry.is_some_and(|entry| {
                entry.kind == 'f'
                    && entry.nlink > 1
                    && std::fs::symlink_metadata(upper.join(path)).is_err()
            });
            if is_shared {
                shared.insert(*slot);
            } else {
                shared.remove(slot);
            }
        }
        Op::Close { slot } => {
            shared.remove(slot);
        }
        _ => {}
    }
}

/// Returns whether `UNIONFS_DIFF_SKIP_OPS` (operation names separated by
/// commas) names `op`, so that a random run can look past a known failure.
/// The CI run sets no such list.
fn excluded_by_environment(op: &Op) -> bool {
    std::env::var("UNIONFS_DIFF_SKIP_OPS")
        .is_ok_and(|names| names.split(',').any(|name| name.trim() == op.name()))
}

/// Returns whether `UNIONFS_DIFF_TRACE=1` is set, which prints each
/// operation and its result.
fn tracing() -> bool {
    std::env::var("UNIONFS_DIFF_TRACE").is_ok_and(|value| value == "1")
}

/// Splits a readdir result into the part both filesystems must agree on
/// and the list that `ops::INODE_CHECK` introduces.
fn split_inode_check(result: &str) -> (&str, Option<&str>) {
    match result.split_once(ops::INODE_CHECK) {
        Some((main, names)) => (main, Some(names)),
        None => (result, None),
    }
}

/// Returns the first word of a result: `ok`, `wrote`, an errno name.
fn shape(result: &str) -> &str {
    result.split([' ', ',', ':']).next().unwrap_or_default()
}

fn limit_lines(lines: &[String], max: usize) -> String {
    let mut text = lines
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    if lines.len() > max {
        text.push_str(&format!("\n... and {} more differences", lines.len() - max));
    }
    text
}

/// Runs `case` (with operations from `source`) on fresh copies of its layer
/// stack: unionfs and kernel overlayfs side by side. It compares the
/// results and the merged views after each operation, and the upper layers
/// after unmounting. Then it mounts unionfs's upper layer under kernel
/// overlayfs and compares that merged view too.
pub fn run(case: &Case, source: Source<'_>, totals: &mut Totals) -> Result<Case, Failure> {
    let scratch = tempfile::Builder::new()
        .prefix("unionfs-differential-")
        .tempdir()
        .expect("cannot create a temporary directory");
    let started = SystemTime::now();
    let case = &case.without_unmerged_whiteouts();
    let mut executed = Case {
        ops: Vec::new(),
        ..case.clone()
    };
    let fail = |signature: String, report: String, executed: &Case| Failure {
        signature,
        report,
        case: executed.clone(),
    };

    let mut union = build_side(scratch.path(), Kind::Unionfs, case)
        .map_err(|err| fail("mount unionfs".into(), err, &executed))?;
    let mut kernel = build_side(scratch.path(), Kind::Overlay, case)
        .map_err(|err| fail("mount kernel overlayfs".into(), err, &executed))?;

    // Write back the new layers first: ext4's block counts (so sparse-ness)
    // move while delayed allocations are written, and unionfs may show the
    // attributes it cached before, where kernel overlayfs stats anew.
    sys::syncfs(scratch.path());
    let mut kernel_view = view::tree(&kernel.mount.root, started);
    let union_view = view::tree(&union.mount.root, started);
    let differences = view::differences(&union_view, &kernel_view);
    if !differences.is_empty() {
        return Err(fail(
            format!(
                "initial view: {:?}",
                view::difference_kinds(&union_view, &kernel_view)
            ),
            format!(
                "the merged views differ before any operation:\n{}",
                limit_lines(&differences, 40)
            ),
            &executed,
        ));
    }

    let (mut generated, fixed) = match source {
        Source::Fixed => (None, case.ops.clone()),
        Source::Generated { rng, count } => (Some((rng, Generator::new(case), count)), Vec::new()),
    };
    let mut index = 0;
    let mut shared = HashSet::new();
    loop {
        let op = match &mut generated {
            None => match fixed.get(index) {
                Some(op) => op.clone(),
                None => break,
            },
            Some((rng, generator, count)) => {
                if index >= *count {
                    break;
                }
                // Draw again rather than run into an avoided case.
                loop {
                    let op = generator.next(rng, &kernel_view);
                    if excluded_by_environment(&op) {
                        continue;
                    }
                    if avoided(&op, &kernel_view, &kernel.upper, &shared).is_none() {
                        break op;
                    }
                    totals.skipped += 1;
                }
            }
        };
        index += 1;
        executed.ops.push(op.clone());
        if let Some(reason) = avoided(&op, &kernel_view, &kernel.upper, &shared) {
            // A shrunk or hand-written list can reach one too.
            if tracing() {
                println!("  {index:3} {op}  =>  skipped: {reason}");
            }
            totals.skipped += 1;
            continue;
        }
        totals.operations += 1;
        track_shared(&op, &kernel_view, &kernel.upper, &mut shared);

        let kernel_result = ops::apply(&op, &kernel.mount.root, &mut kernel.held);
        let union_result = ops::apply(&op, &union.mount.root, &mut union.held);
        if tracing() {
            println!("  {index:3} {op}  =>  {union_result}");
        }
        let (kernel_result, _) = split_inode_check(&kernel_result);
        let (union_result, union_mismatches) = split_inode_check(&union_result);
        if union_mismatches.is_some_and(|names| names != "[]") {
            return Err(fail(
                format!("result of {}: d_ino differs from st_ino", op.name()),
                format!(
                    "operation {index} `{op}`: unionfs lists names whose d_ino differs from their st_ino: {}",
                    union_mismatches.unwrap()
                ),
                &executed,
            ));
        }
        if kernel_result != union_result {
            return Err(fail(
                format!(
                    "result of {}: unionfs {} / kernel {}",
                    op.name(),
                    shape(union_result),
                    shape(kernel_result)
                ),
                format!(
                    "operation {index} `{op}` returned different results:\n  unionfs: {union_result}\n  kernel:  {kernel_result}"
                ),
                &executed,
            ));
        }

        // Block counts, so sparse-ness, depend on how far ext4 has written
        // each side back; they are compared once both are written back.
        kernel_view = view::tree(&kernel.mount.root, started);
        let union_view = view::without_sparseness(view::tree(&union.mount.root, started));
        let kernel_now = view::without_sparseness(kernel_view.clone());
        let (union_view, kernel_view) = (&union_view, &kernel_now);
        let differences = view::differences(union_view, kernel_view);
        if !differences.is_empty() {
            return Err(fail(
                format!(
                    "view after {}: {:?}",
                    op.name(),
                    view::difference_kinds(union_view, kernel_view)
                ),
                format!(
                    "after operation {index} `{op}` (both returned {kernel_result}) the merged views differ:\n{}",
                    limit_lines(&differences, 40)
                ),
                &executed,
            ));
        }
    }

    union.held.close_all();
    kernel.held.close_all();

    // The remount below shows the layers after writeback, and ext4's block
    // counts (so sparse-ness) can change when delayed allocations are
    // written. Flush the filesystem under both sides and compare once more,
    // so that the view the remount must match is taken after writeback too.
    sys::syncfs(scratch.path());
    kernel_view = view::tree(&kernel.mount.root, started);
    let union_view = view::tree(&union.mount.root, started);
    let differences = view::differences(&union_view, &kernel_view);
    if !differences.is_empty() {
        return Err(fail(
            format!(
                "view after writeback: {:?}",
                view::difference_kinds(&union_view, &kernel_view)
            ),
            format!(
                "after the last operation and a syncfs the merged views differ:\n{}",
                limit_lines(&differences, 40)
            ),
            &executed,
        ));
    }

    union
        .mount
        .unmount()
        .map_err(|err| fail("unmount unionfs".into(), err, &executed))?;
    kernel
        .mount
        .unmount()
        .map_err(|err| fail("unmount kernel overlayfs".into(), err, &executed))?;

    let union_upper = view::layer(&union.upper, started);
    let kernel_upper = view::layer(&kernel.upper, started);
    let differences = view::differences(&union_upper, &kernel_upper);
    if !differences.is_empty() {
        return Err(fail(
            format!(
                "upper layer: {:?}",
                view::difference_kinds(&union_upper, &kernel_upper)
            ),
            format!(
                "the upper layers differ after unmounting (w is a whiteout):\n{}",
                limit_lines(&differences, 40)
            ),
            &executed,
        ));
    }

    // Kernel overlayfs reads only overlay-format lowers, so the remount
    // uses the kernel side's copies, which hold the same entries.
    let check = make_dir(&scratch.path().join("check"));
    let work = make_dir(&check.join("work"));
    let remount = Mount::new(
        Kind::Overlay,
        &check.join("merged"),
        &union.upper,
        &work,
        &kernel.lowers,
    )
    .map_err(|err| fail("remount: mount failed".into(), err, &executed))?;
    let remounted = view::tree(&remount.root, started);
    drop(remount);
    let differences = view::differences(&remounted, &kernel_view);
    if !differences.is_empty() {
        return Err(fail(
            format!(
                "remount: {:?}",
                view::difference_kinds(&remounted, &kernel_view)
            ),
            format!(
                "unionfs's upper layer under kernel overlayfs (left) shows another view than kernel overlayfs did (right):\n{}",
                limit_lines(&differences, 40)
            ),
            &executed,
        ));
    }
    totals.sequences += 1;
    Ok(executed)
}

/// Runs `case`'s own operations and returns the failure, if any.
pub fn replay(case: &Case) -> Option<Failure> {
    replay_counting(case, &mut Totals::default())
}

/// Like `replay`, adding what ran to `totals`.
pub fn replay_counting(case: &Case, totals: &mut Totals) -> Option<Failure> {
    run(case, Source::Fixed, totals).err()
}

/// Limits on shrinking, so that one failure cannot take the whole run.
const MAX_SHRINK_RUNS: usize = 400;
const MAX_SHRINK_TIME: Duration = Duration::from_secs(120);

/// Removes chunks of `items` (halves, then quarters, down to single items)
/// while `still_fails` holds for what is left; `budget` counts down the runs.
fn shrink_list<T: Clone>(
    items: Vec<T>,
    budget: &mut dyn FnMut() -> bool,
    still_fails: &mut dyn FnMut(&[T]) -> bool,
) -> Vec<T> {
    let mut items = items;
    let mut chunk = (items.len() / 2).max(1);
    loop {
        let mut removed = false;
        let mut start = 0;
        while start < items.len() {
            if !budget() {
                return items;
            }
            let end = (start + chunk).min(items.len());
            let candidate: Vec<T> = items[..start]
                .iter()
                .chain(&items[end..])
                .cloned()
                .collect();
            if still_fails(&candidate) {
                items = candidate;
                removed = true;
            } else {
                start += chunk;
            }
        }
        if chunk == 1 {
            if !removed {
                return items;
            }
        } else {
            chunk = (chunk / 2).max(1);
        }
    }
}

/// Shrinks a failing case: first its operations, then its layer entries,
/// each time re-running both filesystems from scratch and keeping a change
/// only if the run fails with the same signature. Returns the smallest
/// failure found.
pub fn minimize(failure: Failure) -> Failure {
    let signature = failure.signature.clone();
    let started = Instant::now();
    let mut runs = 0;
    let mut budget = || {
        runs += 1;
        runs <= MAX_SHRINK_RUNS && started.elapsed() < MAX_SHRINK_TIME
    };
    let mut case = failure.case.clone();

    let ops = {
        let base = case.clone();
        shrink_list(case.ops.clone(), &mut budget, &mut |ops: &[Op]| {
            let candidate = Case {
                ops: ops.to_vec(),
                ..base.clone()
            };
            replay(&candidate).is_some_and(|found| found.signature == signature)
        })
    };
    case.ops = ops;

    // Layer entries, tagged with their layer (usize::MAX for the upper).
    let mut tagged: Vec<(usize, Item)> = Vec::new();
    for (index, layer) in case.lowers.iter().enumerate() {
        tagged.extend(layer.iter().map(|item| (index, item.clone())));
    }
    tagged.extend(case.upper.iter().map(|item| (usize::MAX, item.clone())));
    let layer_count = case.lowers.len();
    let rebuild = |tagged: &[(usize, Item)], base: &Case| {
        let mut candidate = base.clone();
        candidate.lowers = vec![Vec::new(); layer_count];
        candidate.upper = Vec::new();
        for (index, item) in tagged {
            match *index {
                usize::MAX => candidate.upper.push(item.clone()),
                index => candidate.lowers[index].push(item.clone()),
            }
        }
        candidate
    };
    let kept = {
        let base = case.clone();
        shrink_list(tagged, &mut budget, &mut |tagged: &[(usize, Item)]| {
            replay(&rebuild(tagged, &base)).is_some_and(|found| found.signature == signature)
        })
    };
    case = rebuild(&kept, &case);

    // Run the smallest case once more for its report; the operations it
    // ran are the ones that matter.
    match replay(&case) {
        Some(found) if found.signature == signature => found,
        _ => failure,
    }
}
