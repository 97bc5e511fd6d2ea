//! fsx-style data integrity exerciser for unionfs, checked against kernel
//! overlayfs with the same seed.
//!
//! Every file starts in a lower layer. Several worker processes run seeded
//! random reads, writes, truncates, fallocates and mmap reads and writes at
//! once, one file each, plus two workers on one shared file, and check every
//! step against an in-memory model of the file (see `worker.rs`). After
//! unmounting, the upper layer must hold each final model, the lower layers
//! must be unchanged, and the other filesystem must show the same files when
//! mounted over the same layers.
//!
//! Runs with `cargo test --release --test fsx` as root. Environment:
//! - `UNIONFS_FSX_SEED`: the seed, decimal or 0x-hex (default: random).
//! - `UNIONFS_FSX_OPS`: operations per worker (default 5000, soak 20000).
//! - `UNIONFS_FSX_FS`: `unionfs`, `overlay` or `both` (default `both`).
//! - `UNIONFS_FSX_TIMEOUT`: seconds a round may take per filesystem before
//!   its workers are killed (default 300, soak 1800).
//! - `UNIONFS_SOAK=1`: repeat rounds with new seeds for
//!   `UNIONFS_SOAK_SECONDS` (default 600).
//! - `UNIONFS_FSX_OVERLAY_OLD_FD_MMAP=1`: hold kernel overlayfs to the check
//!   it is known to fail (see `Spec::old_fd_mmap`).

mod layers;
mod rng;
mod sys;
mod worker;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use layers::{FilePlan, Kind, Mount, SHARED_CHUNK};
use rng::Rng;
use worker::{Share, Spec};

/// The name `cargo test` filters match against.
const TEST_NAME: &str = "fsx";
/// First argument that makes this binary run as a worker process.
const WORKER_FLAG: &str = "--fsx-worker";
/// Workers that share one file.
const SHARED_WORKERS: u64 = 2;
/// Operation-log lines shown for a failed worker.
const LOG_TAIL: usize = 20;

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|arg| arg == WORKER_FLAG) {
        std::process::exit(worker::main(&args[1..]));
    }
    match libtest_request(&args) {
        Request::List => {
            println!("{TEST_NAME}: test");
            return;
        }
        Request::Skip => {
            println!("running 0 tests (fsx filtered out)");
            return;
        }
        Request::Run => {}
    }
    if let Err(err) = run() {
        eprintln!("fsx: {err}");
        std::process::exit(1);
    }
}

enum Request {
    Run,
    Skip,
    List,
}

/// Interprets the libtest arguments `cargo test -- ARGS` passes to every
/// test binary: `--list`, `--skip NAME`, `--exact` and name filters. Other
/// libtest options are accepted and ignored.
fn libtest_request(args: &[OsString]) -> Request {
    const TAKES_VALUE: [&str; 7] = [
        "--test-threads",
        "--format",
        "--color",
        "--logfile",
        "--shuffle-seed",
        "-Z",
        "--report-time",
    ];
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut exact = false;
    let mut ignored_only = false;
    let mut iter = args.iter().map(|arg| arg.to_string_lossy().into_owned());
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--list" => return Request::List,
            "--exact" => exact = true,
            "--ignored" => ignored_only = true,
            "--skip" => skips.extend(iter.next()),
            flag if TAKES_VALUE.contains(&flag) => {
                iter.next();
            }
            flag if flag.starts_with('-') => {}
            filter => filters.push(filter.to_string()),
        }
    }
    let matches = |pattern: &String| {
        if exact {
            pattern == TEST_NAME
        } else {
            TEST_NAME.contains(pattern.as_str())
        }
    };
    let selected = filters.is_empty() || filters.iter().any(matches);
    if ignored_only || !selected || skips.iter().any(|skip| TEST_NAME.contains(skip.as_str())) {
        Request::Skip
    } else {
        Request::Run
    }
}

/// Settings read from the environment.
struct Config {
    seed: u64,
    ops: u64,
    kinds: Vec<Kind>,
    timeout: Duration,
    soak: Option<Duration>,
    /// Also check kernel overlayfs's mappings through descriptors opened
    /// before the copy-up, which it is known to fail.
    overlay_old_fd_mmap: bool,
}

fn config() -> Result<Config, String> {
    let soak = std::env::var("UNIONFS_SOAK").is_ok_and(|value| !value.is_empty() && value != "0");
    let seed = match std::env::var("UNIONFS_FSX_SEED") {
        Ok(text) => {
            parse_number(&text).ok_or_else(|| format!("UNIONFS_FSX_SEED={text} is not a number"))?
        }
        Err(_) => random_seed(),
    };
    let ops = env_number("UNIONFS_FSX_OPS")?.unwrap_or(if soak { 20_000 } else { 5_000 });
    let timeout = env_number("UNIONFS_FSX_TIMEOUT")?.unwrap_or(if soak { 1800 } else { 300 });
    let soak_seconds = env_number("UNIONFS_SOAK_SECONDS")?.unwrap_or(600);
    let kinds = match std::env::var("UNIONFS_FSX_FS").as_deref() {
        Err(_) | Ok("both") => vec![Kind::Unionfs, Kind::Overlay],
        Ok("unionfs") => vec![Kind::Unionfs],
        Ok("overlay") => vec![Kind::Overlay],
        Ok(other) => {
            return Err(format!(
                "UNIONFS_FSX_FS={other} is invalid: expected unionfs, overlay or both"
            ));
        }
    };
    Ok(Config {
        seed,
        ops,
        kinds,
        timeout: Duration::from_secs(timeout),
        soak: soak.then(|| Duration::from_secs(soak_seconds)),
        overlay_old_fd_mmap: std::env::var("UNIONFS_FSX_OVERLAY_OLD_FD_MMAP")
            .is_ok_and(|value| value == "1"),
    })
}

fn env_number(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => parse_number(&text)
            .map(Some)
            .ok_or_else(|| format!("{name}={text} is not a number")),
    }
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut bytes);
    }
    u64::from_le_bytes(bytes) ^ u64::from(std::process::id())
}

fn run() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("needs root to mount unionfs and kernel overlayfs; run it with sudo".into());
    }
    let config = config()?;
    let started = Instant::now();
    let mut round = 0u64;
    loop {
        let seed = if round == 0 {
            config.seed
        } else {
            Rng::derive(config.seed, round)
        };
        run_round(&config, seed)?;
        round += 1;
        match config.soak {
            Some(limit) if started.elapsed() < limit => continue,
            Some(_) => {
                println!(
                    "fsx: soak passed {round} rounds in {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// Runs one seed on every configured filesystem and fails if any of them fails.
fn run_round(config: &Config, seed: u64) -> Result<(), String> {
    println!(
        "fsx: seed {seed:#x} (set UNIONFS_FSX_SEED={seed:#x} to repeat), {} operations per worker",
        config.ops
    );
    let scratch = tempfile::Builder::new()
        .prefix("unionfs-fsx-")
        .tempdir()
        .map_err(|err| format!("cannot create a scratch directory: {err}"))?;
    let mut failed = Vec::new();
    for &kind in &config.kinds {
        let result = exercise(kind, seed, config, &scratch.path().join(kind.dir_name()));
        match result {
            Ok(report) => println!("fsx: {}: {report}", kind.name()),
            Err(err) => {
                println!("fsx: {}: FAILED with seed {seed:#x}\n{err}", kind.name());
                failed.push(kind.name());
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    // Keep the layers for inspection.
    let kept = scratch.keep();
    Err(format!(
        "seed {seed:#x} failed on {}; layers kept in {}; repeat with UNIONFS_FSX_SEED={seed:#x} UNIONFS_FSX_OPS={}",
        failed.join(" and "),
        kept.display(),
        config.ops
    ))
}

/// One worker process and what it works on.
struct Running {
    spec: Spec,
    child: Child,
}

/// A worker's spec and the index of the planned file it works on.
struct Assignment {
    plan: usize,
    spec: Spec,
}

/// Runs all workers for `seed` on `kind` and checks the layers afterwards.
/// Returns a one-line report.
fn exercise(kind: Kind, seed: u64, config: &Config, base: &Path) -> Result<String, String> {
    let plans = layers::plan(seed);
    let lowers: Vec<PathBuf> = (0..layers::LOWER_LAYERS)
        .map(|index| base.join(format!("lower{index}")))
        .collect();
    let upper = base.join("upper");
    let models = base.join("models");
    std::fs::create_dir_all(&models)
        .map_err(|err| format!("cannot create {}: {err}", models.display()))?;
    layers::build(&plans, &lowers)?;

    let mut mount = Mount::new(kind, &base.join("mnt"), &lowers, &upper, &base.join("work"))?;
    let old_fd_mmap = kind == Kind::Unionfs || config.overlay_old_fd_mmap;
    let assignments = assign_workers(
        &plans,
        seed,
        config.ops,
        &mount.root,
        &lowers,
        &models,
        old_fd_mmap,
    );
    let started = Instant::now();
    let (summaries, mut problems) = run_workers(&assignments, config.timeout, base)?;
    let elapsed = started.elapsed();

    let expected = if problems.is_empty() {
        final_models(&plans, &assignments)?
    } else {
        BTreeMap::new()
    };
    if problems.is_empty() {
        problems.extend(compare_files(
            &expected,
            &mount.root,
            "the merged view after all workers",
        ));
    }
    mount.unmount()?;
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }

    problems.extend(compare_files(
        &expected,
        &upper,
        "the upper layer after unmounting",
    ));
    for plan in &plans {
        let original: BTreeMap<&str, Vec<u8>> = [(plan.relative, plan.content.clone())].into();
        problems.extend(compare_files(
            &original,
            &lowers[plan.layer],
            "the lower layer (must be unchanged)",
        ));
    }

    // The same layers under the other filesystem must show the same files.
    let other = kind.other();
    let mut check = Mount::new(
        other,
        &base.join("check"),
        &lowers,
        &upper,
        &base.join("check-work"),
    )?;
    problems.extend(compare_files(
        &expected,
        &check.root,
        &format!("{} over the same layers", other.name()),
    ));
    check.unmount()?;
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    Ok(describe(assignments.len(), &summaries, elapsed))
}

fn assign_workers(
    plans: &[FilePlan],
    seed: u64,
    ops: u64,
    root: &Path,
    lowers: &[PathBuf],
    models: &Path,
    old_fd_mmap: bool,
) -> Vec<Assignment> {
    let mut assignments = Vec::new();
    for (plan_index, plan) in plans.iter().enumerate() {
        let sharers = if plan.shared { SHARED_WORKERS } else { 1 };
        for index in 0..sharers {
            let name = if plan.shared {
                format!("{}#{index}", plan.relative)
            } else {
                plan.relative.to_string()
            };
            let file_name = name.replace(['/', '#'], "_");
            let spec = Spec {
                seed: Rng::derive(seed, assignments.len() as u64),
                name,
                path: root.join(plan.relative),
                lower: lowers[plan.layer].join(plan.relative),
                ops,
                share: plan.shared.then_some(Share {
                    index,
                    count: sharers,
                    chunk: SHARED_CHUNK,
                }),
                model_out: models.join(format!("{file_name}.model")),
                op_log: models.join(format!("{file_name}.ops")),
                old_fd_mmap,
            };
            assignments.push(Assignment {
                plan: plan_index,
                spec,
            });
        }
    }
    assignments
}

/// Starts one process per spec, waits for all of them up to `timeout`, and
/// returns each worker's summary line and the failures found.
fn run_workers(
    assignments: &[Assignment],
    timeout: Duration,
    base: &Path,
) -> Result<(Vec<String>, Vec<String>), String> {
    let exe =
        std::env::current_exe().map_err(|err| format!("cannot find this test binary: {err}"))?;
    let mut running = Vec::new();
    for Assignment { spec, .. } in assignments {
        let child = Command::new(&exe)
            .arg(WORKER_FLAG)
            .args(spec.to_args())
            .current_dir(base)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot start worker {}: {err}", spec.name))?;
        running.push(Running {
            spec: spec.clone(),
            child,
        });
    }

    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    while running
        .iter_mut()
        .any(|worker| matches!(worker.child.try_wait(), Ok(None)))
    {
        if Instant::now() > deadline {
            timed_out = true;
            for worker in &mut running {
                let _ = worker.child.kill();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut summaries = Vec::new();
    let mut problems = Vec::new();
    for worker in running {
        let name = worker.spec.name.clone();
        let op_log = worker.spec.op_log.clone();
        let output = worker
            .child
            .wait_with_output()
            .map_err(|err| format!("cannot wait for worker {name}: {err}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if output.status.success() {
            summaries.push(stdout.trim().to_string());
            continue;
        }
        let reason = if timed_out && output.status.code().is_none() {
            format!("killed after the {} s timeout (hung?)", timeout.as_secs())
        } else {
            format!("exited with {}", output.status)
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = match stderr.trim() {
            "" => "(no message: the worker was killed before it could write one)",
            text => text,
        };
        problems.push(format!(
            "worker {name} (seed {:#x}) {reason}:\n{}\n  last operations (index and operation):\n{}",
            worker.spec.seed,
            indent(message),
            indent(&log_tail(&op_log))
        ));
    }
    Ok((summaries, problems))
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}

/// Builds the expected final content of every file from the workers'
/// models. A shared file takes each chunk from the worker that owns it.
fn final_models(
    plans: &[FilePlan],
    assignments: &[Assignment],
) -> Result<BTreeMap<&'static str, Vec<u8>>, String> {
    let mut expected = BTreeMap::new();
    for (plan_index, plan) in plans.iter().enumerate() {
        let mut content: Option<Vec<u8>> = None;
        let specs = assignments
            .iter()
            .filter(|assignment| assignment.plan == plan_index)
            .map(|assignment| &assignment.spec);
        for spec in specs {
            let model = std::fs::read(&spec.model_out)
                .map_err(|err| format!("cannot read {}: {err}", spec.model_out.display()))?;
            match (spec.share, &mut content) {
                (Some(share), Some(merged)) => {
                    for (chunk, bytes) in model.chunks(share.chunk as usize).enumerate() {
                        if chunk as u64 % share.count == share.index {
                            let start = chunk * share.chunk as usize;
                            merged[start..start + bytes.len()].copy_from_slice(bytes);
                        }
                    }
                }
                _ => content = Some(model),
            }
        }
        expected.insert(plan.relative, content.unwrap_or_default());
    }
    Ok(expected)
}

/// Compares each expected file with the file of that name under `root`.
fn compare_files(expected: &BTreeMap<&str, Vec<u8>>, root: &Path, place: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (relative, content) in expected {
        let path = root.join(relative);
        match std::fs::read(&path) {
            Err(err) => problems.push(format!("{place}: cannot read {relative}: {err}")),
            Ok(actual) if actual.len() != content.len() => problems.push(format!(
                "{place}: {relative} has {:#x} bytes, expected {:#x}",
                actual.len(),
                content.len()
            )),
            Ok(actual) => {
                if let Some(offset) = actual.iter().zip(content).position(|(a, b)| a != b) {
                    problems.push(format!(
                        "{place}: {relative} differs from the model, first at byte {offset:#x}"
                    ));
                }
            }
        }
    }
    problems
}

/// Sums the workers' summary lines into one report line.
fn describe(processes: usize, summaries: &[String], elapsed: Duration) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut unsupported: Vec<String> = Vec::new();
    for summary in summaries {
        for field in summary.split_whitespace() {
            if let Some(list) = field.strip_prefix("counts=") {
                for entry in list.split(',').filter(|entry| !entry.is_empty()) {
                    if let Some((kind, count)) = entry.split_once(':') {
                        *counts.entry(kind.to_string()).or_default() +=
                            count.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            if let Some(list) = field.strip_prefix("unsupported=") {
                for mode in list.split(',').filter(|mode| !mode.is_empty()) {
                    if !unsupported.iter().any(|known| known == mode) {
                        unsupported.push(mode.to_string());
                    }
                }
            }
        }
    }
    let total: u64 = counts.values().sum();
    let counts: Vec<String> = counts
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    let unsupported = if unsupported.is_empty() {
        String::new()
    } else {
        format!(
            "; fallocate modes not supported: {}",
            unsupported.join(", ")
        )
    };
    format!(
        "ok: {} processes, {total} operations in {:.1} s ({}){unsupported}",
        processes,
        elapsed.as_secs_f64(),
        counts.join(", ")
    )
}
