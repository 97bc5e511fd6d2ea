//! Differential tests: random layer stacks and random operation sequences,
//! run on unionfs and on kernel overlayfs over identical copies, compared
//! after every operation, after unmounting, and with unionfs's upper layer
//! remounted under kernel overlayfs. They need root, `/dev/fuse` and the
//! overlay filesystem.
//!
//! By default the run is bounded and reproducible: `CI_SEQUENCES` seeds
//! from `BASE_SEED`. Environment variables change that:
//!
//! - `UNIONFS_DIFF_SEED=S` replays seed S alone (as a failure prints it);
//! - `UNIONFS_DIFF_SEQUENCES=N` runs N seeds from the base seed;
//! - `UNIONFS_DIFF_OPS=N` sets the operations per sequence;
//! - `UNIONFS_DIFF_TIME_SEEDS=N` adds N seeds taken from the clock, printed;
//! - `UNIONFS_DIFF_SKIP_OPS=hold,rename` leaves those operations out of
//!   random runs, to look past a known failure;
//! - `UNIONFS_DIFF_TRACE=1` prints each operation and its result;
//! - `UNIONFS_SOAK=1` runs seeds from the clock for `UNIONFS_SOAK_MINUTES`
//!   (default 15) with longer sequences, keeps going after a failure, and
//!   reports each distinct failure once.
//!
//! A failure prints its seed and a minimized case, which a test in
//! `regressions.rs` can replay.

// A failure carries its whole report; it is built once, on the way out.
#![allow(clippy::result_large_err)]

mod case;
mod generate;
mod harness;
mod layers;
mod mounts;
mod ops;
mod regressions;
mod sys;
mod view;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::harness::{Failure, Source, Totals};
use crate::layers::Format;

/// The first seed of the default run.
const BASE_SEED: u64 = 0x5EED_0000;
/// Sequences in the default run, split over two tests that run in
/// parallel.
const CI_SEQUENCES: u64 = 240;
/// Operations per sequence in the default run.
const CI_OPS: usize = 40;
/// Operations per sequence in the soak run.
const SOAK_OPS: usize = 100;
/// Threads of the soak run, each with its own seeds.
const SOAK_THREADS: u64 = 2;

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is invalid: expected a whole number")),
    )
}

fn clock_seed() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    now.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(now.subsec_nanos())
}

/// Runs the sequence of seed `seed`: a random layer stack, then `ops`
/// operations chosen from the merged view as it changes.
fn run_seed(seed: u64, ops: usize, totals: &mut Totals) -> Result<(), Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let format = if rng.gen_bool(0.3) {
        Format::Aufs
    } else {
        Format::Overlay
    };
    let case = generate::random_stack(&mut rng, format);
    harness::run(
        &case,
        Source::Generated {
            rng: &mut rng,
            count: ops,
        },
        totals,
    )
    .map(|_| ())
}

/// Minimizes `failure` and formats it with the seed that found it.
fn describe(seed: u64, failure: Failure) -> String {
    let ops_before = failure.case.ops.len();
    let minimized = harness::minimize(failure);
    format!(
        "seed {seed} (replay with UNIONFS_DIFF_SEED={seed}): {}\n{}\n\
         minimized case ({} of {ops_before} operations), for regressions.rs:\n{}",
        minimized.signature,
        minimized.report,
        minimized.case.ops.len(),
        minimized.case
    )
}

/// Runs `seeds` and panics with the first failure, minimized.
fn run_seeds(label: &str, seeds: impl Iterator<Item = u64>, ops: usize) {
    let started = Instant::now();
    let mut totals = Totals::default();
    for seed in seeds {
        if let Err(failure) = run_seed(seed, ops, &mut totals) {
            panic!(
                "{label}: unionfs differs from kernel overlayfs at {}",
                describe(seed, failure)
            );
        }
    }
    println!(
        "{label}: {} sequences, {} operations ({} skipped as avoided cases) in {:.1} s",
        totals.sequences,
        totals.operations,
        totals.skipped,
        started.elapsed().as_secs_f64()
    );
}

/// Returns the seeds of one half of the default run, or of the run the
/// environment variables request (all in the first half).
fn seeds_for(half: u64) -> Vec<u64> {
    if let Some(seed) = env_number("UNIONFS_DIFF_SEED") {
        return if half == 0 { vec![seed] } else { Vec::new() };
    }
    let count = env_number("UNIONFS_DIFF_SEQUENCES").unwrap_or(CI_SEQUENCES);
    let mut seeds: Vec<u64> = (0..count)
        .filter(|index| index % 2 == half)
        .map(|index| BASE_SEED + index)
        .collect();
    let clock_seeds = env_number("UNIONFS_DIFF_TIME_SEEDS").unwrap_or(0);
    for index in 0..clock_seeds {
        if index % 2 == half {
            let seed = clock_seed().wrapping_add(index);
            println!("clock seed {seed} (replay with UNIONFS_DIFF_SEED={seed})");
            seeds.push(seed);
        }
    }
    seeds
}

fn ops_per_sequence() -> usize {
    env_number("UNIONFS_DIFF_OPS").map_or(CI_OPS, |ops| ops as usize)
}

fn soaking() -> bool {
    std::env::var("UNIONFS_SOAK").is_ok_and(|value| value == "1")
}

#[test]
fn random_sequences_even() {
    if soaking() {
        return;
    }
    run_seeds("even seeds", seeds_for(0).into_iter(), ops_per_sequence());
}

#[test]
fn random_sequences_odd() {
    if soaking() {
        return;
    }
    run_seeds("odd seeds", seeds_for(1).into_iter(), ops_per_sequence());
}

/// Runs the soak: seeds from the clock on two threads until the time is up,
/// going on after failures. Each distinct failure is minimized and reported
/// once.
#[test]
fn soak() {
    if !soaking() {
        return;
    }
    let minutes = env_number("UNIONFS_SOAK_MINUTES").unwrap_or(15);
    let ops = env_number("UNIONFS_DIFF_OPS").map_or(SOAK_OPS, |ops| ops as usize);
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let started = Instant::now();
    let first = clock_seed();
    println!("soak: seeds from {first}, {ops} operations each, {minutes} minutes");

    let found: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let workers: Vec<(Totals, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SOAK_THREADS)
            .map(|worker| {
                let found = &found;
                scope.spawn(move || {
                    let mut totals = Totals::default();
                    let mut failed_runs = 0;
                    let mut seed = first.wrapping_add(worker);
                    while Instant::now() < deadline {
                        if let Err(failure) = run_seed(seed, ops, &mut totals) {
                            failed_runs += 1;
                            println!("soak: seed {seed} failed: {}", failure.signature);
                            let known = found.lock().unwrap().contains_key(&failure.signature);
                            if !known {
                                let signature = failure.signature.clone();
                                let text = describe(seed, failure);
                                println!("{text}");
                                found.lock().unwrap().insert(signature, text);
                            }
                        }
                        seed = seed.wrapping_add(SOAK_THREADS);
                    }
                    (totals, failed_runs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    let found = found.into_inner().unwrap();
    let sequences: usize = workers.iter().map(|(totals, _)| totals.sequences).sum();
    let operations: usize = workers.iter().map(|(totals, _)| totals.operations).sum();
    let skipped: usize = workers.iter().map(|(totals, _)| totals.skipped).sum();
    let failed_runs: usize = workers.iter().map(|(_, failed)| failed).sum();
    println!(
        "soak: {sequences} passing sequences, {operations} operations in them ({skipped} skipped as avoided cases), {failed_runs} failing sequences, {} distinct failures in {:.0} s",
        found.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        found.is_empty(),
        "soak found {} distinct differences:\n\n{}",
        found.len(),
        found.into_values().collect::<Vec<_>>().join("\n\n")
    );
}
