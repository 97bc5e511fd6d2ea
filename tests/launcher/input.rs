//! Bad input: each case gives a clear error, exit status 125, and leaves
//! nothing behind (no container layer, mount, cgroup or state directory).

use std::process::Command;

use crate::fixture::{Container, STATE_DIR, assert_status, busybox, stderr, unionfs_bin};

fn assert_rejected(container: &Container, output: &std::process::Output, fragments: &[&str]) {
    assert_status(output, 125);
    for fragment in fragments {
        assert!(
            stderr(output).contains(fragment),
            "{fragment:?} not in {}",
            stderr(output)
        );
    }
    assert!(
        !container.layer().exists(),
        "the container layer was created"
    );
    container.assert_no_leftovers();
}

#[test]
fn nonexistent_image_layer() {
    let container = Container::new("badlayer");
    let layers = format!("{}:/nonexistent/image", container.layer().display());
    let output = Command::new(unionfs_bin())
        .args(["run", "--name", &container.name, &layers, "--", "true"])
        .output()
        .unwrap();
    assert_rejected(&container, &output, &["/nonexistent/image", "not found"]);
}

#[test]
fn invalid_memory_value() {
    let container = Container::new("badmem");
    let output = container.sh(&["-m", "10x"], "true");
    assert_rejected(&container, &output, &["\"10x\"", "100m"]);
}

#[test]
fn invalid_options() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--net", "bridge"], &["--net \"bridge\"", "none or host"]),
        (&["--cpus", "0"], &["--cpus"]),
        (&["--cap-add", "FLY"], &["\"FLY\""]),
        (&["-v", "relative-only"], &["--volume"]),
        (&["-w", "relative"], &["--workdir"]),
        (&["--hostname", "bad name"], &["--hostname"]),
        (&["-m", "100k"], &["100k", "at least 6m"]),
        (&["--memroy", "10m"], &["--memroy", "--memory"]),
        (&["--pids-limit", "-1"], &["'-1'"]),
    ];
    for (options, fragments) in cases {
        let container = Container::new("badopt");
        let output = container.sh(options, "true");
        assert_rejected(&container, &output, fragments);
    }
}

#[test]
fn missing_volume_source() {
    let container = Container::new("badvolume");
    let output = container.sh(&["-v", "/nonexistent/source:/data"], "true");
    assert_rejected(&container, &output, &["/nonexistent/source", "--volume"]);
}

#[test]
fn unknown_user_name() {
    let container = Container::new("baduser");
    let output = container.sh(&["-u", "ghost"], "true");
    assert_status(&output, 125);
    assert!(stderr(&output).contains("\"ghost\""), "{}", stderr(&output));
    container.assert_no_leftovers();
}

#[test]
fn without_root() {
    let container = Container::new("noroot");
    let layers = container.layers();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(unionfs_bin())
        .args(["run", "--name", &container.name, &layers, "--", "true"])
        .output()
        .unwrap();
    assert_rejected(&container, &output, &["needs root", "sudo"]);
}

#[test]
fn name_in_use() {
    let container = Container::new("nameinuse");
    let state = std::path::Path::new(STATE_DIR).join(&container.name);
    std::fs::create_dir_all(&state).unwrap();
    let output = container.sh(&[], "true");
    let kept = state.exists();
    let _ = std::fs::remove_dir(&state);
    assert_status(&output, 125);
    assert!(
        stderr(&output).contains("another --name"),
        "{}",
        stderr(&output)
    );
    assert!(kept, "the other container's state directory was removed");
    assert!(!container.layer().exists());
}

#[test]
fn layers_missing_from_command_line() {
    let output = Command::new(unionfs_bin())
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_status(&output, 125);
    let output = Command::new(unionfs_bin())
        .args(["run", &busybox().display().to_string()])
        .output()
        .unwrap();
    assert_status(&output, 125);
    assert!(stderr(&output).contains("COMMAND"), "{}", stderr(&output));
}
