//! The container lifecycle: `run -d`, `ps`, `logs`, `exec`, `stop`, `rm`,
//! names and ids, records under /run/unionfs, and bad input for each.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fixture::{
    Container, RECORDS_DIR, STATE_DIR, assert_status, container_pids, record_dirs, stderr, stdout,
    unionfs_bin, wait_for,
};

/// Runs `unionfs ARGS...` and returns its output.
fn unionfs(args: &[&str]) -> Output {
    Command::new(unionfs_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Starts `script` with `run -d` and returns the id it printed.
fn start(container: &Container, options: &[&str], script: &str) -> String {
    let mut run = container.command(&[&["-d"], options].concat(), &["sh", "-c", script]);
    let output = run.output().unwrap();
    assert_status(&output, 0);
    let id = stdout(&output).trim().to_string();
    assert_eq!(id.len(), 64, "run -d printed {id:?}");
    assert!(
        id.bytes().all(|b| b.is_ascii_hexdigit()),
        "run -d printed {id:?}"
    );
    id
}

/// Returns the container's record.
fn record(id: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(RECORDS_DIR).join(id).join("state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Returns the `ps` row of container `name`, split into its columns.
fn ps_row(name: &str) -> Option<Vec<String>> {
    let output = unionfs(&["ps", "--no-trunc"]);
    assert_status(&output, 0);
    let text = stdout(&output);
    let header = text.lines().next().unwrap().to_string();
    let starts: Vec<usize> = [
        "CONTAINER ID",
        "NAME",
        "COMMAND",
        "STATUS",
        "STARTED",
        "EXIT CODE",
    ]
    .iter()
    .map(|column| header.find(column).unwrap())
    .collect();
    text.lines().skip(1).find_map(|line| {
        let cells: Vec<String> = (0..starts.len())
            .map(|index| {
                let end = starts
                    .get(index + 1)
                    .copied()
                    .unwrap_or(line.len())
                    .min(line.len());
                line.get(starts[index]..end)
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .collect();
        (cells[1] == name).then_some(cells)
    })
}

/// Waits until `ps` shows container `name` with `status`.
fn wait_status(name: &str, status: &str) -> Vec<String> {
    let mut last = None;
    let reached = wait_for(Duration::from_secs(30), || {
        last = ps_row(name);
        last.as_ref().is_some_and(|row| row[3] == status)
    });
    assert!(
        reached,
        "container {name} never reached {status:?}: {last:?}"
    );
    last.unwrap()
}

/// Removes the container if a failed assert left it, so later runs start clean.
struct Cleanup<'a>(&'a Container);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !record_dirs(&self.0.name).is_empty() {
            let _ = unionfs(&["rm", "-f", &self.0.name]);
        }
    }
}

#[test]
fn detach_ps_logs_stop_rm() {
    let container = Container::new("lifecycle");
    let _cleanup = Cleanup(&container);
    let id = start(
        &container,
        &[],
        "echo to-stdout; echo to-stderr >&2; exec sleep 60",
    );

    let row = wait_status(&container.name, "running");
    assert_eq!(row[0], id);
    assert_eq!(
        row[2],
        "sh -c echo to-stdout; echo to-stderr >&2; exec sleep 60"
    );
    assert_eq!(row[5], "-");
    assert!(row[4].ends_with("ago"), "STARTED is {:?}", row[4]);
    let state = record(&id);
    assert_eq!(state["status"], "running");
    assert!(state["init"]["pid"].as_i64().unwrap() > 0);
    assert!(state["init"]["start_time"].as_u64().unwrap() > 0);

    assert!(wait_for(Duration::from_secs(10), || {
        stdout(&unionfs(&["logs", &container.name])) == "to-stdout\n"
    }));
    let logs = unionfs(&["logs", &container.name]);
    assert_status(&logs, 0);
    assert_eq!(stdout(&logs), "to-stdout\n");
    assert_eq!(stderr(&logs), "to-stderr\n");

    let stopped = unionfs(&["stop", "-t", "1", &container.name]);
    assert_status(&stopped, 0);
    assert_eq!(stdout(&stopped), format!("{}\n", container.name));
    // sleep as PID 1 has no SIGTERM handler, so the timeout's SIGKILL ends it.
    let row = wait_status(&container.name, "exited");
    assert_eq!(row[5], "137");
    let state = record(&id);
    assert_eq!(state["exit_code"], 137);
    assert!(state["finished_at"].as_u64().is_some());
    assert_eq!(state["oom_killed"], false);

    let removed = unionfs(&["rm", &id]);
    assert_status(&removed, 0);
    assert!(ps_row(&container.name).is_none());
    container.assert_no_leftovers();
    assert!(!Path::new(RECORDS_DIR).join(&id).exists());
}

#[test]
fn exit_on_its_own_recorded() {
    let container = Container::new("selfexit");
    let _cleanup = Cleanup(&container);
    let id = start(&container, &[], "exit 3");

    let row = wait_status(&container.name, "exited");
    assert_eq!(row[5], "3");
    assert_eq!(record(&id)["exit_code"], 3);
    // The teardown ran before the exit was recorded.
    assert!(container_pids(&container.name).is_empty());
    assert!(!Path::new(STATE_DIR).join(&container.name).exists());

    assert_status(&unionfs(&["rm", &container.name]), 0);
    container.assert_no_leftovers();
}

#[test]
fn oom_kill_recorded() {
    let container = Container::new("detachoom");
    let _cleanup = Cleanup(&container);
    let id = start(
        &container,
        &["-m", "100m"],
        "dd if=/dev/zero of=/dev/null bs=200M count=1",
    );

    let row = wait_status(&container.name, "exited (out of memory)");
    assert_eq!(row[5], "137");
    assert_eq!(record(&id)["oom_killed"], true);
    assert_status(&unionfs(&["rm", &id]), 0);
    container.assert_no_leftovers();
}

#[test]
fn detach_with_rm_leaves_nothing() {
    let container = Container::new("detachrm");
    let id = start(&container, &["--rm"], "echo done");

    assert!(
        wait_for(Duration::from_secs(30), || !Path::new(RECORDS_DIR)
            .join(&id)
            .exists()),
        "the record of a --rm container stayed"
    );
    assert!(!container.layer().exists(), "the container layer stayed");
    container.assert_no_leftovers();
}

#[test]
fn exec_joins_namespaces_and_cgroup() {
    let container = Container::new("exec");
    let _cleanup = Cleanup(&container);
    start(&container, &["--hostname", "inside"], "exec sleep 60");
    wait_status(&container.name, "running");

    let script = "for ns in mnt uts ipc net pid cgroup; do \
                    [ \"$(readlink /proc/self/ns/$ns)\" = \"$(readlink /proc/1/ns/$ns)\" ] || echo differs $ns; \
                  done; \
                  [ \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" ] || echo differs cgroup-membership; \
                  hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
                  grep -E 'CapEff|NoNewPrivs' /proc/self/status";
    let output = unionfs(&["exec", &container.name, "--", "sh", "-c", script]);
    assert_status(&output, 0);
    assert_eq!(
        stdout(&output),
        "inside\nsleep 60 \nCapEff:\t00000000a80425fb\nNoNewPrivs:\t1\n",
        "stderr: {}",
        stderr(&output)
    );

    let status = unionfs(&["exec", &container.name, "--", "sh", "-c", "exit 7"]);
    assert_status(&status, 7);
    let user = unionfs(&[
        "exec",
        "-u",
        "65534",
        "-w",
        "/tmp",
        "-e",
        "GREETING=hi",
        &container.name,
        "--",
        "sh",
        "-c",
        "id -u; pwd; echo $GREETING",
    ]);
    assert_status(&user, 0);
    assert_eq!(stdout(&user), "65534\n/tmp\nhi\n");

    // Only the container's processes are in its cgroup after the execs.
    assert_eq!(container_pids(&container.name).len(), 1);
    assert_status(&unionfs(&["rm", "-f", &container.name]), 0);
    container.assert_no_leftovers();
}

/// A failing exec (missing command, missing working directory, unknown
/// user) leaves the container running with the same processes.
#[test]
fn failing_exec_leaves_container_alone() {
    let container = Container::new("execfail");
    let _cleanup = Cleanup(&container);
    start(&container, &["--pids-limit", "8"], "exec sleep 60");
    wait_status(&container.name, "running");
    let before = container_pids(&container.name);

    let cases: &[(&[&str], i32, &str)] = &[
        (&["--", "no-such-command"], 127, "not found"),
        (&["-w", "/no/such/dir", "--", "true"], 125, "/no/such/dir"),
        (&["-u", "ghost", "--", "true"], 125, "\"ghost\""),
        (&["-e", "=bad", "--", "true"], 125, "\"=bad\""),
    ];
    for (options, code, fragment) in cases {
        let separator = options.iter().position(|option| *option == "--").unwrap();
        let (before_command, command) = options.split_at(separator);
        let mut args: Vec<&str> = vec!["exec"];
        args.extend(before_command);
        args.push(&container.name);
        args.extend(command);
        let output = unionfs(&args);
        assert_status(&output, *code);
        assert!(
            stderr(&output).contains(fragment),
            "{fragment:?} not in {}",
            stderr(&output)
        );
    }

    assert_eq!(container_pids(&container.name), before);
    assert_eq!(wait_status(&container.name, "running")[5], "-");
    let still = unionfs(&["exec", &container.name, "--", "true"]);
    assert_status(&still, 0);
    assert_status(&unionfs(&["rm", "-f", &container.name]), 0);
    container.assert_no_leftovers();
}

#[test]
fn bad_references_rejected() {
    let unknown = "no-such-container-anywhere";
    for args in [
        vec!["logs", unknown],
        vec!["stop", unknown],
        vec!["rm", unknown],
        vec!["rm", "-f", unknown],
    ] {
        let output = unionfs(&args);
        assert_status(&output, 1);
        assert!(
            stderr(&output).contains(&format!("no such container: {unknown}")),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let output = unionfs(&["exec", unknown, "--", "true"]);
    assert_status(&output, 125);
    assert!(
        stderr(&output).contains("no such container"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn exec_into_exited_rejected() {
    let container = Container::new("execexited");
    let _cleanup = Cleanup(&container);
    start(&container, &[], "exit 0");
    wait_status(&container.name, "exited");

    let output = unionfs(&["exec", &container.name, "--", "true"]);
    assert_status(&output, 125);
    assert!(
        stderr(&output).contains("is not running"),
        "{}",
        stderr(&output)
    );
    assert_status(&unionfs(&["rm", &container.name]), 0);
    container.assert_no_leftovers();
}

/// Stopping a stopped container changes nothing and succeeds, as
/// `docker stop` does; the recorded exit status stays.
#[test]
fn stop_stopped_container() {
    let container = Container::new("stoptwice");
    let _cleanup = Cleanup(&container);
    let id = start(&container, &[], "exit 5");
    wait_status(&container.name, "exited");

    let output = unionfs(&["stop", &container.name]);
    assert_status(&output, 0);
    assert!(
        stderr(&output).contains("is not running"),
        "{}",
        stderr(&output)
    );
    assert_eq!(record(&id)["exit_code"], 5);
    assert_status(&unionfs(&["rm", &container.name]), 0);
    container.assert_no_leftovers();
}

#[test]
fn rm_running_needs_force() {
    let container = Container::new("rmrunning");
    let _cleanup = Cleanup(&container);
    start(&container, &[], "exec sleep 60");
    wait_status(&container.name, "running");

    let rejected = unionfs(&["rm", &container.name]);
    assert_status(&rejected, 1);
    assert!(
        stderr(&rejected).contains("is running"),
        "{}",
        stderr(&rejected)
    );
    assert!(stderr(&rejected).contains("rm -f"), "{}", stderr(&rejected));
    wait_status(&container.name, "running");
    assert_eq!(container_pids(&container.name).len(), 1);

    let forced = unionfs(&["rm", "-f", &container.name]);
    assert_status(&forced, 0);
    assert!(ps_row(&container.name).is_none());
    container.assert_no_leftovers();
}

/// Names, full ids and unique id prefixes all name a container; a second
/// container with a name in use is rejected and leaves nothing.
#[test]
fn names_and_ids_accepted() {
    let container = Container::new("naming");
    let _cleanup = Cleanup(&container);
    let id = start(&container, &[], "echo ready; exec sleep 60");
    wait_status(&container.name, "running");

    let by_prefix = unionfs(&["exec", &id[..10], "--", "true"]);
    assert_status(&by_prefix, 0);
    assert!(wait_for(Duration::from_secs(10), || {
        stdout(&unionfs(&["logs", &id])) == "ready\n"
    }));

    let twin = Container::new("naming");
    let layers = format!(
        "{}:{}",
        twin.scratch.path().join("other").display(),
        crate::fixture::busybox().display()
    );
    let rejected = Command::new(unionfs_bin())
        .args([
            "run",
            "-d",
            "--name",
            &container.name,
            &layers,
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_status(&rejected, 125);
    assert!(
        stderr(&rejected).contains("in use"),
        "{}",
        stderr(&rejected)
    );
    assert_eq!(record_dirs(&container.name).len(), 1);
    assert!(!twin.scratch.path().join("other").exists());

    assert_status(&unionfs(&["stop", "-t", "1", &id[..12]]), 0);
    assert_status(&unionfs(&["rm", &id[..12]]), 0);
    container.assert_no_leftovers();
}

/// A foreground run is listed while it runs and accepts exec; its record
/// goes with it. Its output is not kept, so `logs` rejects it.
#[test]
fn foreground_run_listed() {
    let container = Container::new("foreground");
    let mut child = container.spawn(&[], "exec sleep 30");
    wait_status(&container.name, "running");

    let output = unionfs(&["exec", &container.name, "--", "hostname"]);
    assert_status(&output, 0);
    assert_eq!(stdout(&output), format!("{}\n", container.name));
    let logs = unionfs(&["logs", &container.name]);
    assert_status(&logs, 1);
    assert!(stderr(&logs).contains("foreground"), "{}", stderr(&logs));

    assert_status(&unionfs(&["stop", "-t", "1", &container.name]), 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    container.assert_no_leftovers();
}

/// A monitor killed with SIGKILL leaves a dead container; `rm` kills its
/// processes and removes its mount, cgroups and record.
#[test]
fn dead_monitor_cleaned_by_rm() {
    let container = Container::new("deadmonitor");
    let _cleanup = Cleanup(&container);
    let id = start(&container, &[], "exec sleep 60");
    wait_status(&container.name, "running");
    let monitor = record(&id)["monitor"]["pid"].as_i64().unwrap() as i32;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let row = wait_status(&container.name, "dead");
    assert_eq!(row[5], "-");
    assert_eq!(
        container_pids(&container.name).len(),
        1,
        "PID 1 outlived its monitor"
    );

    assert_status(&unionfs(&["rm", &container.name]), 0);
    container.assert_no_leftovers();
}

/// A record whose pids now belong to other processes (here: pid and start
/// time of a process of this test, with another start time) never gets
/// those processes signalled: `rm -f` and `stop` treat it as dead.
#[test]
fn reused_pid_never_signalled() {
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = bystander.id() as i32;
    let start_time: u64 = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let name = format!("reused-{}", std::process::id());
    let id = format!("{:064x}", u64::from(std::process::id()) << 20 | 0xfeed);
    let reused = serde_json::json!({
        "id": id, "name": name, "command": ["sleep", "60"], "layers": "/nonexistent",
        "status": "running", "detached": true, "remove": false,
        "created_at": 1, "started_at": 1, "finished_at": null, "exit_code": null,
        "oom_killed": false,
        "monitor": {"pid": pid, "start_time": start_time + 1},
        "init": {"pid": pid, "start_time": start_time + 2},
        "cgroups": [], "rootfs": format!("{STATE_DIR}/{name}/rootfs"),
        "env": [], "user": null, "workdir": "/", "capabilities": []
    });
    let dir = PathBuf::from(RECORDS_DIR).join(&id);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.join("state.json"), serde_json::to_vec(&reused).unwrap()).unwrap();

    assert_eq!(ps_row(&name).unwrap()[3], "dead");
    let stopped = unionfs(&["stop", "-t", "1", &name]);
    assert_status(&stopped, 0);
    let removed = unionfs(&["rm", "-f", &name]);
    assert_status(&removed, 0);
    assert!(!dir.exists());
    assert_eq!(
        bystander.try_wait().unwrap(),
        None,
        "the bystander was signalled"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

/// `logs -f` prints output as it comes and returns once the container
/// has exited.
#[test]
fn logs_follow_until_exit() {
    let container = Container::new("follow");
    let _cleanup = Cleanup(&container);
    start(
        &container,
        &[],
        "echo first; sleep 1; echo second >&2; echo third",
    );

    let output = unionfs(&["logs", "-f", &container.name]);
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "first\nthird\n");
    assert_eq!(stderr(&output), "second\n");
    assert_eq!(wait_status(&container.name, "exited")[5], "0");
    assert_status(&unionfs(&["rm", &container.name]), 0);
    container.assert_no_leftovers();
}

/// `exec -t` gives the command a terminal of the container's own devpts,
/// with the caller's window size and `TERM=xterm`, and passes its exit
/// status on.
#[test]
fn exec_tty_own_terminal() {
    use nix::pty::{Winsize, openpty};
    use std::os::fd::AsFd;

    let container = Container::new("exectty");
    let _cleanup = Cleanup(&container);
    start(&container, &[], "exec sleep 60");
    wait_status(&container.name, "running");
    let size = Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let slave = || Stdio::from(pty.slave.try_clone().unwrap());

    let mut child = Command::new(unionfs_bin())
        .args([
            "exec",
            "-t",
            &container.name,
            "--",
            "sh",
            "-c",
            "tty; stty size; echo $TERM; exit 4",
        ])
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    drop(pty.slave);
    let mut output = Vec::new();
    loop {
        let mut buffer = [0u8; 4096];
        match nix::unistd::read(pty.master.as_fd(), &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(count) => output.extend_from_slice(&buffer[..count]),
        }
    }
    let output = String::from_utf8_lossy(&output);

    assert_eq!(status.code(), Some(4), "output: {output}");
    assert!(output.contains("/dev/pts/0\r\n"), "{output:?}");
    assert!(output.contains("30 100\r\n"), "{output:?}");
    assert!(output.contains("xterm\r\n"), "{output:?}");
    assert_status(&unionfs(&["rm", "-f", &container.name]), 0);
    container.assert_no_leftovers();
}

/// Failures of `run -d` before the command starts reach the caller with
/// the exit status a foreground run gives, and leave nothing behind.
#[test]
fn detach_start_failures_reported() {
    let cases: &[(&[&str], &[&str], i32, &str)] = &[
        (&[], &["no-such-command"], 127, "not found"),
        (&["-m", "10x"], &["true"], 125, "\"10x\""),
        (
            &["-v", "/nonexistent/source:/data"],
            &["true"],
            125,
            "/nonexistent/source",
        ),
        (&["-u", "ghost"], &["true"], 125, "\"ghost\""),
    ];
    for (options, command, code, fragment) in cases {
        let container = Container::new("detachfail");
        let output = container
            .command(&[&["-d"], *options].concat(), command)
            .output()
            .unwrap();
        assert_status(&output, *code);
        assert_eq!(stdout(&output), "", "an id was printed for {options:?}");
        assert!(
            stderr(&output).contains(fragment),
            "{fragment:?} not in {}",
            stderr(&output)
        );
        container.assert_no_leftovers();
    }
}

/// A stop timeout too large for the clock waits for the exit instead of
/// failing.
#[test]
fn stop_huge_timeout_accepted() {
    let container = Container::new("hugestop");
    let _cleanup = Cleanup(&container);
    start(
        &container,
        &[],
        "trap 'exit 9' TERM; while :; do sleep 1; done",
    );
    wait_status(&container.name, "running");

    let output = unionfs(&["stop", "-t", &u64::MAX.to_string(), &container.name]);
    assert_status(&output, 0);
    assert_eq!(wait_status(&container.name, "exited")[5], "9");
    assert_status(&unionfs(&["rm", &container.name]), 0);
    container.assert_no_leftovers();
}
