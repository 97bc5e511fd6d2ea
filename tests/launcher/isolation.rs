//! Namespaces: PID, UTS, network and IPC isolation.

use std::io::Read;
use std::time::Duration;

use crate::fixture::{Container, assert_status, container_pids, stdout, wait_for};

#[test]
fn pid_namespace_command_is_pid_1() {
    let container = Container::new("pid1");
    let child = container.spawn(&[], "echo $$; exec sleep 30");

    let is_sleep = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm == "sleep\n")
    };
    assert!(
        wait_for(Duration::from_secs(10), || container_pids(&container.name)
            .iter()
            .any(is_sleep)),
        "the container's command never started"
    );
    let host_pid = container_pids(&container.name)
        .into_iter()
        .find(is_sleep)
        .unwrap();
    assert_ne!(host_pid, 1);
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|line| line.starts_with("NSpid:"))
        .unwrap();
    let fields: Vec<&str> = nspid.split_whitespace().collect();
    assert_eq!(fields, ["NSpid:", &host_pid.to_string(), "1"]);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout(&output).trim(), "1");
    container.assert_no_leftovers();
}

#[test]
fn pid_namespace_sees_only_own_processes() {
    let container = Container::new("pidsee");
    let output = container.sh(
        &[],
        "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n",
    );
    assert_status(&output, 0);
    // The shell itself, and nothing of the host.
    assert_eq!(stdout(&output).trim(), "1");
    container.assert_no_leftovers();
}

#[test]
fn uts_hostname_stays_inside() {
    let host_before = nix::unistd::gethostname().unwrap();
    let container = Container::new("uts");
    let output = container.sh(&["--hostname", "box-one"], "hostname");
    assert_status(&output, 0);
    assert_eq!(stdout(&output).trim(), "box-one");

    let output = container.sh(
        &["--cap-add", "SYS_ADMIN"],
        "hostname changed-inside && hostname",
    );
    assert_status(&output, 0);
    assert_eq!(stdout(&output).trim(), "changed-inside");
    assert_eq!(nix::unistd::gethostname().unwrap(), host_before);
    container.assert_no_leftovers();
}

#[test]
fn uts_default_hostname_is_name() {
    let container = Container::new("utsdefault");
    let output = container.sh(&[], "hostname; echo $HOSTNAME");
    assert_status(&output, 0);
    let expected = format!("{0}\n{0}\n", container.name);
    assert_eq!(stdout(&output), expected);
}

#[test]
fn network_none_only_loopback_up() {
    let container = Container::new("netnone");
    let output = container.sh(&[], "ls /sys/class/net; cat /sys/class/net/lo/flags");
    assert_status(&output, 0);
    let lines: Vec<String> = stdout(&output).lines().map(str::to_string).collect();
    assert_eq!(lines[0], "lo");
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(
        flags & libc::IFF_UP as u32,
        libc::IFF_UP as u32,
        "lo is down"
    );
    assert_eq!(lines.len(), 2, "interfaces besides lo: {lines:?}");
}

/// A server and client on loopback inside the container's own network
/// namespace.
#[test]
fn network_none_loopback_works() {
    let container = Container::new("netloop");
    let script = "nc -l -p 8099 > /tmp/got & sleep 0.3; echo ping-over-lo | nc 127.0.0.1 8099; \
                  sleep 0.3; cat /tmp/got";
    let output = container.sh(&[], script);
    assert_status(&output, 0);
    assert!(
        stdout(&output).contains("ping-over-lo"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn network_host_shares_interfaces() {
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    let container = Container::new("nethost");
    let output = container.sh(&["--net", "host"], "ls /sys/class/net");
    assert_status(&output, 0);
    let inside: Vec<String> = stdout(&output).lines().map(str::to_string).collect();
    assert_eq!(inside, host);
}

#[test]
fn ipc_namespace_is_new() {
    let container = Container::new("ipc");
    let output = container.sh(&[], "readlink /proc/self/ns/ipc");
    assert_status(&output, 0);
    let host = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    assert_ne!(stdout(&output).trim(), host.to_string_lossy());
}

#[test]
fn env_defaults_and_overrides() {
    let container = Container::new("env");
    let mut child = container
        .command(
            &["-e", "GREETING=hi there", "-e", "PATH=/bin:/usr/bin"],
            &["env"],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let hostname = format!("HOSTNAME={}", container.name);
    assert_eq!(
        lines,
        [
            "GREETING=hi there",
            "HOME=/root",
            &hostname,
            "PATH=/bin:/usr/bin"
        ]
    );
}
