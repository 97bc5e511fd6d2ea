//! Other tools read what unionfs writes: `umoci unpack` takes an image
//! layout whose layers unionfs exported, and `podman import` takes an
//! exported layer. Both come from Debian's packages.

use std::path::Path;
use std::process::Command;

use crate::fixture::Scratch;
use crate::image::build_layout;
use crate::support::*;

fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{tool} not found: install it with apt-get install {tool} (scripts/deps.sh does)"
    );
}

#[test]
fn umoci_unpacks_exported_layers() {
    require("umoci");
    let scratch = Scratch::new();
    let layout = build_layout(&scratch.dir.path().join("layout"), None);
    let bundle = scratch.dir.path().join("bundle");
    let output = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:test", layout.dir.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert_success(&output, "umoci unpack");
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "from the image\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(std::fs::symlink_metadata(rootfs.join("bin/sh")).is_ok());
    assert!(
        std::fs::symlink_metadata(rootfs.join("bin/vi")).is_err(),
        "whiteout ignored by umoci"
    );
    let root_entries: Vec<_> = std::fs::read_dir(rootfs.join("root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(root_entries, ["profile"], "opaque marker ignored by umoci");
}

/// Runs podman with a private configuration under `dir`, as
/// scripts/podman-test.sh writes it, but with the kernel's overlay driver.
fn podman(dir: &Path, args: &[&str]) -> std::process::Output {
    let storage = dir.join("storage.conf");
    if !storage.exists() {
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\nlog_driver = \"k8s-file\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{0}/events.log\"\ntmp_dir = \"{0}/tmp\"\n",
                dir.display()
            ),
        )
        .unwrap();
    }
    Command::new("podman")
        .args(args)
        .env("CONTAINERS_STORAGE_CONF", &storage)
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
        .output()
        .unwrap()
}

#[test]
fn podman_imports_exported_layer() {
    require("podman");
    let scratch = Scratch::new();
    let podman_dir = scratch.path("podman");
    let tar = scratch.dir.path().join("busybox.tar.gz");
    export(busybox(), &tar, &[], &[]);

    let image = format!("localhost/unionfs-eco-{}:1", std::process::id());
    let imported = podman(&podman_dir, &["import", tar.to_str().unwrap(), &image]);
    let ran = podman(
        &podman_dir,
        &["run", "--rm", &image, "/bin/busybox", "echo", "imported"],
    );
    let _ = podman(&podman_dir, &["rmi", "-f", &image]);
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "findmnt -rn -o TARGET | grep -F '{}' | sort -r | xargs -r -n1 umount -l",
            podman_dir.display()
        ))
        .status();
    assert_success(&imported, "podman import");
    assert_success(&ran, "podman run on the imported image");
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "imported");
}
