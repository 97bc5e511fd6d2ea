"""Builds the benchmark's layers once and caches them under .cache/bench/.

The stack, topmost first:
  top     the Linux source from Debian's linux-source package, unpacked under
          usr/src/ (all but drivers/ and arch/ in the full profile, two
          directories in the quick one);
  middle  overrides and deletes a few hundred files of the bottom layer with
          overlay whiteouts (0/0 character devices), whites out whole
          directories, makes some directories opaque, and contains the large
          data files under srv/bench-data/;
  bottom  the Debian minbase root filesystem from scripts/rootfs.sh.
Besides the stack: a flattened copy of the merged view (the plain-directory
baseline), a layer of about a million empty files for the memory walk, and
an uncompressed tarball of a source subtree for the extraction workload.
"""

import fcntl
import json
import os
import random
import shutil
import subprocess

from common import BENCH_CACHE, REPO_ROOT, BenchError, log, remove_tree, run, sh, unmount

LINUX_TARBALL = "/usr/src/linux-source-6.1.tar.xz"
LINUX_DIR = "linux-source-6.1"
DATA_DIR = "srv/bench-data"
STAMP = ".bench-layer-complete"
# Bump when the layer recipe changes, so that stale caches are rebuilt.
RECIPE_VERSION = 1

MiB = 1024 * 1024
GiB = 1024 * MiB

# Everything that differs between `--quick` and the full run.
PROFILES = {
    # drivers/ and arch/ hold 51k of the source's 84k entries; leaving them
    # out keeps the full run near 30 minutes on 2 CPUs.
    "full": {
        "linux_members": None,
        "linux_exclude": ["drivers", "arch"],
        "scaling_trees": ["fs", "include", "kernel", "mm", "net"],
        "rm_tree": "Documentation",
        "tarball_tree": "drivers/net",
        "seq_size": 2 * GiB,
        "copyup_size": 1 * GiB,
        "million_dirs": 1000,
        "files_per_dir": 1000,
    },
    "quick": {
        "linux_members": ["fs", "kernel"],
        "linux_exclude": [],
        "scaling_trees": ["fs", "kernel"],
        "rm_tree": "kernel",
        "tarball_tree": "lib",
        "seq_size": 128 * MiB,
        "copyup_size": 64 * MiB,
        "million_dirs": 50,
        "files_per_dir": 1000,
    },
}

# Bottom-layer directories whose regular files the middle layer overrides or
# deletes. They hold documentation and data, never programs or libraries that
# the chroot workloads load.
EDITABLE_TREES = ["usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/zoneinfo"]
# One editable file in OVERRIDE_EVERY is overridden and another one deleted.
OVERRIDE_EVERY = 10
WHITEOUT_DIR_COUNT = 5
OPAQUE_DIR_COUNT = 3
# The sparse copy-up file contains this many data extents of SPARSE_EXTENT bytes.
SPARSE_EXTENTS = 16
SPARSE_EXTENT = 64 * 1024


class Layers:
    """Paths of one profile's cached layers."""

    def __init__(self, profile_name, bottom):
        self.profile_name = profile_name
        self.profile = PROFILES[profile_name]
        self.root = os.path.join(BENCH_CACHE, f"layers-{profile_name}")
        self.bottom = bottom
        self.middle = os.path.join(self.root, "middle")
        self.top = os.path.join(self.root, "top")
        self.flat = os.path.join(self.root, "flat")
        self.million = os.path.join(self.root, "million")
        self.tarball = os.path.join(self.root, "extract.tar")
        self.linux_rel = os.path.join("usr/src", LINUX_DIR)

    @property
    def lowerdirs(self):
        """The image layers, topmost first, as lowerdir= takes them."""
        return [self.top, self.middle, self.bottom]

    @property
    def rm_tree(self):
        return os.path.join(self.linux_rel, self.profile["rm_tree"])

    def build(self):
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._build_step(self.top, self._build_top, ["linux_members", "linux_exclude"])
            self._build_step(self.middle, self._build_middle, ["seq_size", "copyup_size"])
            self._build_step(self.tarball, self._build_tarball, ["tarball_tree"])
            self._build_step(self.flat, self._build_flat, ["linux_members", "linux_exclude", "seq_size", "copyup_size"])
            self._build_step(self.million, self._build_million, ["million_dirs", "files_per_dir"])

    def _build_step(self, final, builder, setting_names):
        """Builds FINAL unless its stamp records the same recipe and profile settings."""
        stamp = final + STAMP if final.endswith(".tar") else os.path.join(final, STAMP)
        expected = {"recipe": RECIPE_VERSION, "settings": {name: self.profile[name] for name in setting_names}}
        if os.path.exists(stamp):
            with open(stamp) as stamp_file:
                if json.load(stamp_file) == expected:
                    return
        log(f"building {final} (cached afterwards)")
        remove_tree(final)
        if os.path.exists(stamp):
            os.unlink(stamp)
        builder(final)
        with open(stamp, "w") as stamp_file:
            json.dump(expected, stamp_file)

    def _build_top(self, final):
        if not os.path.exists(LINUX_TARBALL):
            raise BenchError(f"{LINUX_TARBALL} not found. Install it with: apt-get install linux-source")
        target = os.path.join(final, "usr/src")
        os.makedirs(target)
        members = []
        if self.profile["linux_members"]:
            members = [f"{LINUX_DIR}/{name}" for name in self.profile["linux_members"]]
        excludes = [f"--exclude={LINUX_DIR}/{name}" for name in self.profile["linux_exclude"]]
        run(["tar", "-C", target, *excludes, "-xJf", LINUX_TARBALL, *members])

    def _build_middle(self, final):
        os.makedirs(final)
        candidates = self._editable_files()
        whiteout_dirs = self._pick_dirs("usr/share/locale", WHITEOUT_DIR_COUNT)
        opaque_dirs = self._pick_dirs("usr/share/man", OPAQUE_DIR_COUNT)
        hidden = whiteout_dirs + opaque_dirs
        candidates = [path for path in candidates if not any(path.startswith(d + "/") for d in hidden)]

        overridden = deleted = 0
        for index, path in enumerate(candidates):
            if index % OVERRIDE_EVERY == 0:
                destination = os.path.join(final, path)
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                shutil.copy2(os.path.join(self.bottom, path), destination)
                with open(destination, "ab") as copy:
                    copy.write(b"\noverridden by the benchmark's middle layer\n")
                overridden += 1
            elif index % OVERRIDE_EVERY == OVERRIDE_EVERY // 2:
                make_whiteout(os.path.join(final, path))
                deleted += 1

        for directory in whiteout_dirs:
            make_whiteout(os.path.join(final, directory))
        for directory in opaque_dirs:
            path = os.path.join(final, directory)
            os.makedirs(path, exist_ok=True)
            os.setxattr(path, "trusted.overlay.opaque", b"y")
            with open(os.path.join(path, "README"), "w") as readme:
                readme.write("this opaque directory hides the bottom layer's entries\n")
        copy_directory_metadata(self.bottom, final)
        log(f"middle layer: {overridden} files overridden, {deleted} deleted, "
            f"{len(whiteout_dirs)} directories deleted, {len(opaque_dirs)} made opaque")

        self._write_data_files(os.path.join(final, DATA_DIR))

    def _editable_files(self):
        files = []
        for tree in EDITABLE_TREES:
            for directory, _, names in os.walk(os.path.join(self.bottom, tree)):
                for name in names:
                    path = os.path.join(directory, name)
                    if os.path.isfile(path) and not os.path.islink(path):
                        files.append(os.path.relpath(path, self.bottom))
        if not files:
            raise BenchError(f"no files to override under {EDITABLE_TREES} in {self.bottom}")
        return sorted(files)

    def _pick_dirs(self, parent, count):
        entries = sorted(os.listdir(os.path.join(self.bottom, parent)))
        dirs = [os.path.join(parent, e) for e in entries if os.path.isdir(os.path.join(self.bottom, parent, e))]
        return dirs[:count]

    def _write_data_files(self, directory):
        os.makedirs(directory)
        profile = self.profile
        write_random_file(os.path.join(directory, "seq"), profile["seq_size"])
        write_random_file(os.path.join(directory, "dense"), profile["copyup_size"])
        # O_TRUNC and chmod get their own dense files, so that each copy-up
        # reads a file whose pages were not touched by another workload.
        write_random_file(os.path.join(directory, "dense-trunc"), profile["copyup_size"])
        write_random_file(os.path.join(directory, "dense-chmod"), profile["copyup_size"])
        sparse = os.path.join(directory, "sparse")
        with open(sparse, "wb") as sparse_file:
            sparse_file.truncate(profile["copyup_size"])
            stride = profile["copyup_size"] // SPARSE_EXTENTS
            for index in range(SPARSE_EXTENTS):
                sparse_file.seek(index * stride)
                sparse_file.write(os.urandom(SPARSE_EXTENT))

    def _build_tarball(self, final):
        staging = final + ".staging"
        remove_tree(staging)
        os.makedirs(staging)
        try:
            member = f"{LINUX_DIR}/{self.profile['tarball_tree']}"
            run(["tar", "-C", staging, "-xJf", LINUX_TARBALL, member])
            run(["tar", "-C", staging, "-cf", final, member])
        finally:
            remove_tree(staging)

    def _build_flat(self, final):
        """Copies the merged view, as kernel overlayfs shows it, to a plain directory."""
        mount_point = final + ".mnt"
        remove_tree(mount_point)
        os.makedirs(mount_point)
        os.makedirs(final)
        lowerdir = ":".join(self.lowerdirs)
        run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}", mount_point])
        try:
            sh(f'tar -C "{mount_point}" --xattrs --xattrs-include="*" --exclude=./{DATA_DIR} -cf - . '
               f'| tar -C "{final}" --xattrs --xattrs-include="*" -xpf -')
        finally:
            unmount(mount_point)
            os.rmdir(mount_point)
        # Hard links share the data files with the middle layer, so that the
        # plain directory reads the same page cache as the unions.
        data_dir = os.path.join(final, DATA_DIR)
        os.makedirs(data_dir)
        for name in os.listdir(os.path.join(self.middle, DATA_DIR)):
            os.link(os.path.join(self.middle, DATA_DIR, name), os.path.join(data_dir, name))

    def _build_million(self, final):
        os.makedirs(final)
        dirs = self.profile["million_dirs"]
        files = self.profile["files_per_dir"]
        for dir_index in range(dirs):
            directory = os.path.join(final, f"d{dir_index:04d}")
            os.mkdir(directory)
            fd = os.open(directory, os.O_DIRECTORY)
            try:
                for file_index in range(files):
                    os.close(os.open(f"f{file_index:04d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            finally:
                os.close(fd)
        log(f"million layer: {dirs} directories of {files} empty files")


def make_whiteout(path):
    """Creates an overlay whiteout (a 0/0 character device) at PATH."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))


def copy_directory_metadata(source_root, target_root):
    """Gives each directory of TARGET_ROOT the owner and mode of its SOURCE_ROOT twin."""
    for directory, _, _ in os.walk(target_root):
        relative = os.path.relpath(directory, target_root)
        source = os.path.join(source_root, relative)
        if os.path.isdir(source) and not os.path.islink(source):
            status = os.lstat(source)
            os.chown(directory, status.st_uid, status.st_gid)
            os.chmod(directory, status.st_mode & 0o7777)


def write_random_file(path, size):
    """Writes SIZE bytes of pseudo-random data, so that no layer stores holes."""
    generator = random.Random(size)
    chunk = generator.randbytes(4 * MiB)
    with open(path, "wb") as output:
        written = 0
        while written < size:
            piece = chunk[: min(len(chunk), size - written)]
            output.write(piece)
            written += len(piece)
            # Vary each chunk cheaply so that no two chunks are identical.
            chunk = chunk[1:] + chunk[:1]
        output.flush()
        os.fsync(output.fileno())


def find_bottom():
    """Builds or reuses the Debian minbase root with scripts/rootfs.sh."""
    result = subprocess.run([os.path.join(REPO_ROOT, "scripts/rootfs.sh"), "debian"],
                            stdout=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise BenchError("scripts/rootfs.sh debian failed; see its messages above")
    return result.stdout.decode().strip().splitlines()[-1]
