#!/usr/bin/env bash
# Runs unionfs on a real root filesystem: a Debian minbase image layer
# (built once with debootstrap and cached), an empty container layer on top,
# a chroot into the merged view, and a look at where each change landed.
# Needs root. Pass `busybox` to use a small busybox root instead of Debian.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: mounting needs root; run it with sudo" >&2
    exit 1
fi
kind=${1:-debian}
case "$kind" in
    debian | busybox) ;;
    *)
        echo "demo.sh: unknown root filesystem '$kind'; use debian or busybox" >&2
        exit 2
        ;;
esac

step() { printf '\n== %s\n' "$*"; }

step "Installing dependencies and building unionfs"
scripts/deps.sh
cargo build --release --locked
unionfs=$repo/target/release/unionfs

step "Building (or reusing) the $kind image layer"
image=$(scripts/rootfs.sh "$kind")
echo "image layer: $image"

demo=$(mktemp -d /tmp/unionfs-demo.XXXXXX)
container=$demo/container-layer
mnt=$demo/rootfs
mkdir -p "$container" "$mnt"
cleanup() {
    if mountpoint -q "$mnt"; then "$unionfs" umount "$mnt" || umount -l "$mnt"; fi
    rm -rf "$demo"
}
trap cleanup EXIT

step "Mounting $container (writable) over the image layer on $mnt"
"$unionfs" mount -o dev,suid "$container:$image" "$mnt"
grep " $mnt " /proc/mounts

run() { chroot "$mnt" /bin/sh -c "$1"; }

step "Running programs from the merged view"
run 'cat /etc/os-release 2>/dev/null | head -2 || busybox | head -1'
run 'ls /bin | wc -l'

step "Changing files inside: the first write copies a file up"
run 'echo "written inside the container" >> /etc/motd'
run 'rm -rf /usr/share/doc 2>/dev/null || rm -rf /usr/share; mkdir -p /srv/app && echo hello > /srv/app/greeting'
run 'cat /etc/motd /srv/app/greeting'

step "The container layer holds only the changes"
find "$container" -printf '%y %M %p\n' | sed "s|$container|container-layer|" | sort | head -40
echo "whiteouts (0/0 character devices) hide removed lower entries:"
find "$container" -type c -printf '  %p\n' | sed "s|$container|container-layer|" | head -5

step "The image layer is unchanged"
if grep -q "written inside the container" "$image/etc/motd" 2>/dev/null; then
    echo "demo.sh: the image layer changed; this is a bug" >&2
    exit 1
fi
echo "$image/etc/motd does not contain the new line"

step "Unmounting"
"$unionfs" umount "$mnt"
echo "done: the container layer was a kernel overlayfs upper layer; demo.sh removes it on exit"
