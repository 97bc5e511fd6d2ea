//! Exit statuses and signals.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fixture::{Container, assert_status, container_pids, stderr, stdout, wait_for};

#[test]
fn exit_status_zero_and_three() {
    let container = Container::new("exit03");
    assert_status(&container.sh(&[], "exit 0"), 0);
    assert_status(&container.sh(&[], "exit 3"), 3);
}

/// A command killed by signal 9 gives 128 + 9, as a shell reports it.
#[test]
fn exit_status_killed_child() {
    let container = Container::new("exit137");
    assert_status(&container.sh(&[], "sleep 30 & kill -9 $!; wait $!"), 137);
}

#[test]
fn exit_status_pid_1_killed_from_host() {
    let container = Container::new("exitkill");
    let child = container.spawn(&[], "exec sleep 30");
    // PID 1 is `sh` until it execs `sleep`; kill the `sleep`.
    let sleeping = || {
        container_pids(&container.name).into_iter().find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm == "sleep\n")
        })
    };
    assert!(wait_for(Duration::from_secs(10), || sleeping().is_some()));
    let init = sleeping().expect("the container runs sleep");
    kill(Pid::from_raw(init), Signal::SIGKILL).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_status(&output, 137);
    container.assert_no_leftovers();
}

#[test]
fn missing_command_127_with_message() {
    let container = Container::new("exit127");
    let output = container
        .command(&[], &["no-such-command", "arg"])
        .output()
        .unwrap();
    assert_status(&output, 127);
    assert!(
        stderr(&output).contains("\"no-such-command\" not found"),
        "{}",
        stderr(&output)
    );
    container.assert_no_leftovers();
}

#[test]
fn non_executable_command_126() {
    let container = Container::new("exit126");
    let output = container.command(&[], &["/etc/passwd"]).output().unwrap();
    assert_status(&output, 126);
    assert!(
        stderr(&output).contains("cannot be run"),
        "{}",
        stderr(&output)
    );
}

/// SIGINT and SIGTERM sent to `unionfs run` reach PID 1, which handles them.
#[test]
fn signals_forwarded_to_pid_1() {
    for (signal, name) in [(Signal::SIGINT, "INT"), (Signal::SIGTERM, "TERM")] {
        let container = Container::new(&format!("sig{name}"));
        let script = format!(
            "trap 'echo got {name}; exit 5' {name}; touch /tmp/ready; while :; do sleep 0.05; done"
        );
        let child = container.spawn(&[], &script);
        let layer = container.layer();
        assert!(wait_for(Duration::from_secs(10), || layer
            .join("tmp/ready")
            .exists()));
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let output = child.wait_with_output().unwrap();
        assert_status(&output, 5);
        assert_eq!(stdout(&output).trim(), format!("got {name}"));
        container.assert_no_leftovers();
    }
}

/// PID 1 without a handler ignores SIGTERM (the kernel protects a
/// namespace's init); the launcher kills the container after --stop-timeout.
#[test]
fn stop_timeout_kills_ignoring_pid_1() {
    let container = Container::new("stoptimeout");
    let child = container.spawn(&["--stop-timeout", "1"], "exec sleep 30");
    assert!(wait_for(Duration::from_secs(10), || !container_pids(
        &container.name
    )
    .is_empty()));
    let started = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_status(&output, 137);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    container.assert_no_leftovers();
}
