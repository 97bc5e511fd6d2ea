//! Resource limits through the container's cgroup.

use crate::fixture::{Container, assert_status, stderr, stdout};

/// Allocates and touches 200 MB: `dd` reads /dev/zero into one 200 MB buffer.
const ALLOCATE_200MB: &str = "dd if=/dev/zero of=/dev/null bs=200M count=1";

#[test]
fn memory_limit_oom_killed_and_reported() {
    let container = Container::new("oom");
    let output = container.sh(&["-m", "100m"], ALLOCATE_200MB);
    assert_status(&output, 137);
    assert!(
        stderr(&output).contains("out of memory: limit 100 MiB"),
        "stderr: {}",
        stderr(&output)
    );
    container.assert_no_leftovers();
}

#[test]
fn memory_limit_large_enough_completes() {
    let container = Container::new("nooom");
    let output = container.sh(&["-m", "300m"], ALLOCATE_200MB);
    assert_status(&output, 0);
    assert!(
        !stderr(&output).contains("out of memory"),
        "{}",
        stderr(&output)
    );
    container.assert_no_leftovers();
}

/// A plain SIGKILL is not reported as an OOM kill.
#[test]
fn memory_sigkill_not_oom() {
    let container = Container::new("killnotoom");
    let output = container.sh(&["-m", "100m"], "sleep 30 & kill -9 $!; wait $!");
    assert_status(&output, 137);
    assert!(
        !stderr(&output).contains("out of memory"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn pids_limit_stops_fork_loop() {
    let container = Container::new("pids");
    // The subshell forks until the limit stops it (busybox sh then exits);
    // the outer shell counts the processes without forking.
    let script = "(i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; \
                  n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n";
    let output = container.sh(&["--pids-limit", "32"], script);
    assert_status(&output, 0);
    let count: usize = stdout(&output).trim().parse().unwrap();
    assert!(count <= 32, "{count} processes under --pids-limit 32");
    assert!(count >= 20, "only {count} processes: the loop did not run");
    container.assert_no_leftovers();
}

/// A busy loop for 3 s under `--cpus 0.2` gets about 0.6 s of CPU time.
/// The bound is loose because the machine is shared.
#[test]
fn cpu_quota_limits_busy_loop() {
    let container = Container::new("cpu");
    // The shell's stat after `timeout` reaped the loop: field 16 (cutime)
    // is the CPU time of reaped children in clock ticks.
    let script = "timeout 3 sh -c 'while :; do :; done'; read -r line < /proc/$$/stat; \
                  set -- ${line##*) }; shift 13; echo $1 $2";
    let output = container.sh(&["--cpus", "0.2"], script);
    assert_status(&output, 0);
    let ticks: Vec<u64> = stdout(&output)
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let seconds = (ticks[0] + ticks[1]) as f64 / hz;
    let share = seconds / 3.0;
    assert!(
        (0.1..=0.35).contains(&share),
        "busy loop got {share:.2} of a CPU under --cpus 0.2"
    );
    container.assert_no_leftovers();
}

#[test]
fn cpuset_and_shares_accepted() {
    let container = Container::new("cpuset");
    let output = container.sh(
        &["--cpuset-cpus", "0", "--cpu-shares", "512"],
        "grep Cpus_allowed_list /proc/self/status",
    );
    assert_status(&output, 0);
    assert!(
        stdout(&output).contains("Cpus_allowed_list:\t0\n"),
        "{}",
        stdout(&output)
    );
    container.assert_no_leftovers();
}
