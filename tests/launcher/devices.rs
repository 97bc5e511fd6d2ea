//! Device access control of the container's cgroup, through the library on
//! each kind of hierarchy the host has. One test uses the v1 devices
//! controller. The other leaves the v1 hierarchies out of the layout, so
//! the cgroup gets the BPF device program of a cgroup v2 host. The
//! container-level case is `boundary::device_nodes_beyond_allowed_set_unusable`
//! in the reliability tests.

use std::io::Write;
use std::process::{Command, Stdio};

use nix::unistd::Pid;
use unionfs::launcher::cgroup::{Cgroup, Controller, Layout};

/// Creates device nodes in a fresh directory and runs a shell in a new
/// cgroup of `layout`, which opens each node and creates one more.
/// Returns what the shell printed.
fn probe(layout: &Layout, case: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    for (name, major, minor) in [("null", 1, 3), ("fuse", 10, 229), ("kmsg", 1, 11)] {
        let path = dir.path().join(name);
        crate::fixture::assert_status(
            &Command::new("mknod")
                .arg(&path)
                .args(["c", &major.to_string(), &minor.to_string()])
                .output()
                .unwrap(),
            0,
        );
    }

    let script = "read go; cd \"$1\"; \
                  for node in null fuse kmsg; do (exec 3<$node) 2>/dev/null && echo opened $node; done; \
                  mknod made c 10 229 && echo made; (exec 3<made) 2>/dev/null && echo opened made; true";
    let name = format!("devices-{case}-{}", std::process::id());
    let cgroup = Cgroup::create_in(layout, &name, &Default::default()).unwrap();
    let mut child = Command::new("/bin/sh")
        .args(["-c", script, "sh"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let added = cgroup.add(Pid::from_raw(child.id() as i32));
    let _ = child.stdin.take().unwrap().write_all(b"go\n");
    let output = child.wait_with_output().unwrap();
    cgroup
        .wait_empty(std::time::Duration::from_secs(10))
        .unwrap();
    cgroup.remove().unwrap();
    added.unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn v1_devices_controller_allows_default_set() {
    let mut layout = Layout::detect().unwrap();
    layout.unified = None;
    if !layout
        .v1
        .iter()
        .any(|hierarchy| hierarchy.controllers.contains(&Controller::Devices))
    {
        eprintln!("skipped: no cgroup v1 devices hierarchy");
        return;
    }
    assert_eq!(probe(&layout, "v1"), "opened null\nmade\n");
}

#[test]
fn v2_device_program_allows_default_set() {
    let mut layout = Layout::detect().unwrap();
    layout.v1.clear();
    if layout.unified.is_none() {
        eprintln!("skipped: no cgroup v2 hierarchy");
        return;
    }
    assert_eq!(probe(&layout, "v2"), "opened null\nmade\n");
}
