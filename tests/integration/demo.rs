//! The layer demo from the teaching material this project grew from: five
//! layers each holding one file, and a write that copies one up.

use std::io::Write;

use crate::fixture::{Mount, Scratch};

#[test]
fn demo_append_copies_up() {
    let scratch = Scratch::new();
    let names = [
        "container-layer",
        "image-layer4",
        "image-layer3",
        "image-layer2",
        "image-layer1",
    ];
    for name in names {
        std::fs::write(
            scratch.path(name).join(format!("{name}.txt")),
            format!("I am {name}\n"),
        )
        .unwrap();
    }
    let layers: Vec<String> = names
        .iter()
        .map(|name| scratch.dir.path().join(name).display().to_string())
        .collect();
    let mnt = scratch.dir.path().join("mnt");
    let mut mount = Mount::unionfs_layers(&mnt, &layers.join(":"), &[]);

    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("image-layer4.txt"))
        .unwrap();
    writeln!(file, "write to image-layer4").unwrap();
    drop(file);

    let mut listed: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = names.iter().map(|name| format!("{name}.txt")).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let merged = std::fs::read_to_string(mnt.join("image-layer4.txt")).unwrap();
    assert_eq!(merged, "I am image-layer4\nwrite to image-layer4\n");
    mount.unmount();

    let lower =
        std::fs::read_to_string(scratch.dir.path().join("image-layer4/image-layer4.txt")).unwrap();
    assert_eq!(
        lower, "I am image-layer4\n",
        "the image layer must not change"
    );
    let copied =
        std::fs::read_to_string(scratch.dir.path().join("container-layer/image-layer4.txt"))
            .unwrap();
    assert_eq!(copied, merged, "the container layer holds the changed copy");
}
