//! Real input: a second image layer built with the launcher itself (a
//! package install over the Debian minbase root), then a container over
//! both layers. Needs Debian's package mirror.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixture::{Container, assert_status, stdout, unionfs_bin};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn last_line(output: &std::process::Output) -> PathBuf {
    assert!(
        output.status.success(),
        "script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(stdout(output).lines().last().unwrap().trim())
}

#[test]
fn package_layer_then_container_over_it() {
    let debian = last_line(
        &Command::new(script("rootfs.sh"))
            .arg("debian")
            .output()
            .unwrap(),
    );
    let cache = tempfile::Builder::new()
        .prefix("unionfs-layer-")
        .tempdir()
        .unwrap();
    let layer = last_line(
        &Command::new(script("package-layer.sh"))
            .args(["procps", "--cache"])
            .arg(cache.path())
            .env("UNIONFS", unionfs_bin())
            .output()
            .unwrap(),
    );
    assert!(
        layer.join("usr/bin/ps").is_file(),
        "procps is not in the new layer"
    );
    assert!(
        !debian.join("usr/bin/ps").exists(),
        "the install changed the Debian root"
    );

    let container = Container::new("debian");
    let layers = format!(
        "{}:{}:{}",
        container.layer().display(),
        layer.display(),
        debian.display()
    );
    let output = Command::new(unionfs_bin())
        .args([
            "run",
            "--name",
            &container.name,
            "--hostname",
            "demo",
            &layers,
            "--",
        ])
        .args([
            "sh",
            "-c",
            "ps -o pid=,comm= -p 1; hostname; echo hi > /root/note",
        ])
        .output()
        .unwrap();
    assert_status(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines, ["1 sh", "demo"]);
    assert_eq!(
        std::fs::read_to_string(container.layer().join("root/note")).unwrap(),
        "hi\n"
    );
    assert!(!layer.join("root/note").exists());
    assert!(!debian.join("root/note").exists());
    container.assert_no_leftovers();
}
