//! Mount isolation: nothing mounted inside leaks out, nothing the host
//! mounts later leaks in, and a run leaves no mount behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::fixture::{Container, assert_status, stdout, wait_for};

#[test]
fn mount_inside_not_visible_on_host() {
    let container = Container::new("mountout");
    let shared = container.scratch.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let marker = format!("inside-{}", container.name);
    let volume = format!("{}:/shared", shared.display());
    let script = format!(
        "mkdir -p /mnt/x && mount -t tmpfs {marker} /mnt/x && touch /shared/ready && \
         while [ ! -e /shared/done ]; do sleep 0.05; done; grep -c {marker} /proc/mounts"
    );
    let child = container.spawn(&["--cap-add", "SYS_ADMIN", "-v", &volume], &script);

    assert!(
        wait_for(Duration::from_secs(10), || shared.join("ready").exists()),
        "container never mounted"
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    std::fs::write(shared.join("done"), "").unwrap();
    let output = child.wait_with_output().unwrap();

    assert_status(&output, 0);
    assert_eq!(stdout(&output).trim(), "1", "the mount is missing inside");
    assert!(
        !host_mounts.contains(&marker),
        "the container's mount is visible on the host"
    );
    container.assert_no_leftovers();
}

#[test]
fn host_mount_later_not_visible_inside() {
    let container = Container::new("mountin");
    let shared = container.scratch.path().join("shared");
    let host_dir = container.scratch.path().join("hostmount");
    std::fs::create_dir(&shared).unwrap();
    std::fs::create_dir(&host_dir).unwrap();
    let marker = format!("host-{}", container.name);
    let volume = format!("{}:/shared", shared.display());
    let script =
        "touch /shared/ready; while [ ! -e /shared/go ]; do sleep 0.05; done; cat /proc/mounts";
    let child = container.spawn(&["-v", &volume], script);

    assert!(wait_for(Duration::from_secs(10), || shared
        .join("ready")
        .exists()));
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", &marker])
        .arg(&host_dir)
        .status()
        .unwrap();
    assert!(mounted.success());
    std::fs::write(shared.join("go"), "").unwrap();
    let output = child.wait_with_output().unwrap();
    let _ = Command::new("umount").arg(&host_dir).status();

    assert_status(&output, 0);
    assert!(
        !stdout(&output).contains(&marker),
        "host mount leaked in:\n{}",
        stdout(&output)
    );
    container.assert_no_leftovers();
}

/// The container's mount table contains its own mounts only: none of the
/// host's (cgroup hierarchies, the host's /run or /tmp).
#[test]
fn host_mounts_not_visible_inside() {
    let container = Container::new("mounttable");
    let output = container.sh(&[], "cut -d' ' -f2 /proc/mounts");
    assert_status(&output, 0);
    let text = stdout(&output);
    let targets: Vec<&str> = text.lines().collect();
    for target in &targets {
        let allowed = *target == "/"
            || ["/proc", "/sys", "/dev"]
                .iter()
                .any(|top| target.starts_with(top));
        assert!(allowed, "unexpected mount {target} in {targets:?}");
    }
    assert!(!targets.iter().any(|t| t.starts_with("/sys/fs/cgroup")));
}

#[test]
fn no_leftovers_after_normal_exit() {
    let container = Container::new("leftnormal");
    assert_status(
        &container.sh(&["--rm", "-m", "64m", "--pids-limit", "16"], "true"),
        0,
    );
    container.assert_no_leftovers();
    assert!(!container.layer().exists(), "--rm kept the container layer");
}

#[test]
fn no_leftovers_after_failing_command() {
    let container = Container::new("leftfail");
    assert_status(&container.sh(&["--rm", "-m", "64m"], "exit 3"), 3);
    container.assert_no_leftovers();
    let output = container
        .command(&["-m", "64m"], &["/no/such/program"])
        .output()
        .unwrap();
    assert_status(&output, 127);
    container.assert_no_leftovers();
}

#[test]
fn no_leftovers_after_sigkill_of_pid_1() {
    let container = Container::new("leftkill");
    let child = container.spawn(&["-m", "64m"], "sleep 30 & sleep 30 & exec sleep 30");
    assert!(wait_for(Duration::from_secs(10), || {
        crate::fixture::container_pids(&container.name).len() >= 3
    }));
    let init = crate::fixture::container_pids(&container.name)
        .into_iter()
        .find(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .any(|line| line.starts_with("NSpid:") && line.ends_with("\t1"))
        })
        .expect("no process is PID 1 in the container");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_status(&output, 137);
    container.assert_no_leftovers();
    assert!(
        container_layer_kept(&container),
        "the container layer must stay without --rm"
    );
}

fn container_layer_kept(container: &Container) -> bool {
    Path::new(&container.layer()).is_dir()
}
