//! The container layer: writes land there and nowhere else, two
//! containers on the same image stay apart, `--rm`, and volumes.

use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use crate::fixture::{Container, assert_status, busybox, stderr, stdout, wait_for};

#[test]
fn writes_land_in_container_layer() {
    let container = Container::new("writes");
    let image_hostname = std::fs::read_to_string(busybox().join("etc/hostname")).unwrap();
    let script = "echo new > /etc/newfile && echo changed > /etc/hostname && rm /etc/group && cat /etc/hostname";
    let output = container.sh(&[], script);
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "changed\n");

    let layer = container.layer();
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/newfile")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/hostname")).unwrap(),
        "changed\n"
    );
    let whiteout = std::fs::symlink_metadata(layer.join("etc/group")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "no whiteout for the removed /etc/group"
    );

    assert_eq!(
        std::fs::read_to_string(busybox().join("etc/hostname")).unwrap(),
        image_hostname
    );
    assert!(busybox().join("etc/group").exists());
    assert!(!busybox().join("etc/newfile").exists());
    container.assert_no_leftovers();
}

#[test]
fn container_layer_kept_and_reused() {
    let container = Container::new("reuse");
    assert_status(&container.sh(&[], "echo kept > /root/note"), 0);
    let output = container.sh(&[], "cat /root/note");
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "kept\n");
    assert_status(&container.sh(&["--rm"], "true"), 0);
    assert!(!container.layer().exists());
}

#[test]
fn two_containers_see_only_own_writes() {
    let first = Container::new("twoa");
    let second = Container::new("twob");
    let shared = first.scratch.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let volume = format!("{}:/shared", shared.display());
    let script = |name: &str| {
        format!(
            "echo {name} > /etc/mine-{name}; touch /shared/{name}; \
             while [ ! -e /shared/go ]; do sleep 0.05; done; ls /etc | grep mine-"
        )
    };
    let first_child = first.spawn(&["-v", &volume], &script("a"));
    let second_child = second.spawn(&["-v", &volume], &script("b"));
    assert!(wait_for(Duration::from_secs(10), || {
        shared.join("a").exists() && shared.join("b").exists()
    }));
    std::fs::write(shared.join("go"), "").unwrap();
    let first_output = first_child.wait_with_output().unwrap();
    let second_output = second_child.wait_with_output().unwrap();

    assert_status(&first_output, 0);
    assert_status(&second_output, 0);
    assert_eq!(stdout(&first_output), "mine-a\n");
    assert_eq!(stdout(&second_output), "mine-b\n");
    assert!(!busybox().join("etc/mine-a").exists());
    first.assert_no_leftovers();
    second.assert_no_leftovers();
}

#[test]
fn volume_read_write() {
    let container = Container::new("volrw");
    let host = container.scratch.path().join("data");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in"), "from host\n").unwrap();
    let volume = format!("{}:/mnt/data", host.display());
    let output = container.sh(
        &["-v", &volume],
        "cat /mnt/data/in; echo from container > /mnt/data/out",
    );
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "from host\n");
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "from container\n"
    );
    container.assert_no_leftovers();
}

#[test]
fn volume_read_only() {
    let container = Container::new("volro");
    let host = container.scratch.path().join("data");
    std::fs::create_dir(&host).unwrap();
    let volume = format!("{}:/data:ro", host.display());
    let output = container.sh(&["-v", &volume], "touch /data/x");
    assert_status(&output, 1);
    assert!(
        stderr(&output).contains("Read-only file system"),
        "{}",
        stderr(&output)
    );
    assert!(!host.join("x").exists());
}

#[test]
fn volume_single_file() {
    let container = Container::new("volfile");
    let host = container.scratch.path().join("config.txt");
    std::fs::write(&host, "setting=1\n").unwrap();
    let volume = format!("{}:/etc/app/config.txt:ro", host.display());
    let output = container.sh(&["-v", &volume], "cat /etc/app/config.txt");
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "setting=1\n");
}

/// An image symlink cannot redirect a volume's target onto the host: the
/// target resolves inside the container's root.
#[test]
fn volume_target_symlink_stays_inside() {
    let container = Container::new("volsymlink");
    let outside = container.scratch.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let image = container.scratch.path().join("evil-image");
    std::fs::create_dir(&image).unwrap();
    std::os::unix::fs::symlink(&outside, image.join("evil")).unwrap();
    let source = container.scratch.path().join("source");
    std::fs::create_dir(&source).unwrap();

    let layers = format!(
        "{}:{}:{}",
        container.layer().display(),
        image.display(),
        busybox().display()
    );
    let volume = format!("{}:/evil/planted", source.display());
    let output = std::process::Command::new(crate::fixture::unionfs_bin())
        .args([
            "run",
            "--name",
            &container.name,
            "-v",
            &volume,
            &layers,
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_status(&output, 0);
    assert!(
        !outside.join("planted").exists(),
        "the volume target escaped to the host"
    );
    let inside = container
        .layer()
        .join(outside.strip_prefix("/").unwrap())
        .join("planted");
    assert!(inside.is_dir(), "{} missing", inside.display());
    container.assert_no_leftovers();
}

#[test]
fn workdir_created_and_entered() {
    let container = Container::new("workdir");
    let output = container.sh(&["-w", "/work/dir"], "pwd");
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "/work/dir\n");
    assert!(container.layer().join("work/dir").is_dir());
}
