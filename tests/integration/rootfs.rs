//! Real root filesystems as lower layers: a busybox root and a Debian
//! minbase root (both built and cached by `scripts/rootfs.sh`), walked,
//! read, changed and used through `chroot`, against kernel overlayfs over
//! the same layer.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixture::Pair;

/// Builds (or finds in the cache) root filesystem `kind`; returns its path.
fn rootfs(kind: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rootfs.sh");
    let output = Command::new(&script)
        .arg(kind)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
    assert!(
        output.status.success(),
        "rootfs.sh {kind} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    PathBuf::from(path)
}

/// Runs `script` with `/bin/sh` chrooted into `root`; returns the exit
/// status and output.
fn in_chroot(root: &Path, script: &str) -> (i32, String) {
    let output = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn busybox_root_matches_kernel() {
    let pair = Pair::over(&[rootfs("busybox")]);
    pair.assert_same_view();
    pair.both("run a shell", |root| {
        in_chroot(root, "echo hello; ls /bin | wc -l")
    });
    let changes = "echo motd > /etc/motd && rm /bin/vi && mkdir -p /root/new && cp /etc/passwd /root/new/ \
                   && mv /etc/hostname /etc/hostname.old && chmod 700 /tmp && ln -s /bin/busybox /bin/bb \
                   && sed -i s/nobody/NOBODY/ /etc/passwd && rm -r /usr/sbin";
    pair.both("change files", |root| in_chroot(root, changes));
    pair.both("read back", |root| {
        in_chroot(root, "cat /etc/motd /etc/passwd; ls /usr; bb echo via link")
    });
    pair.finish();
}

#[test]
fn debian_root_runs_programs() {
    let pair = Pair::over(&[rootfs("debian")]);
    pair.assert_same_view();
    pair.both("list packages", |root| in_chroot(root, "dpkg -l | wc -l"));
    pair.both("run perl", |root| {
        in_chroot(root, "perl -e 'print 6*7, qq(\\n)'")
    });
    let changes = "sed -i s/^root:/ROOT:/ /etc/passwd && rm -rf /usr/share/doc /usr/share/man \
                   && echo deb > /etc/apt/sources.list.d/extra.list && mkdir -p /srv/data && cp -a /etc/apt /srv/data/ \
                   && useradd -m builder && chown -R builder /srv/data";
    pair.both("change the system", |root| in_chroot(root, changes));
    pair.both("read back", |root| in_chroot(root, "head -1 /etc/passwd; id builder; ls /usr/share | wc -l; ls -R /srv/data | wc -l; tar cf - /etc 2>&1 | wc -c"));
    pair.finish();
}
