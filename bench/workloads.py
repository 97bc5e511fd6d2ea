"""The workloads: what each one runs on a mounted view and what it reports.

A workload's measure() returns {result key: value}. Times are wall-clock
seconds, and fio results are throughput (MiB/s) or IOPS. Every mount is
fresh, so the union's own caches start empty. The runner reads each
workload's warm_paths() into the page cache before mounting, and a cold
workload drops all caches right before its timed step.
"""

import json
import os
import subprocess
import time

from common import BenchError, drop_caches, run, sh
from layers import DATA_DIR

CLIENT_COUNTS = (1, 2, 4)
SMALL_FILE_SIZE = 64


class Result:
    """A result key's label, unit and direction (whether higher is better)."""

    def __init__(self, key, label, unit="s", higher_is_better=False):
        self.key = key
        self.label = label
        self.unit = unit
        self.higher_is_better = higher_is_better


class Workload:
    """One measured step. Subclasses set RESULTS and implement measure()."""

    group = ""
    results = []
    unions_only = False
    cold = False
    # Memory workloads run once, whatever the repetition count.
    single_run = False

    def __init__(self, context):
        self.context = context

    @property
    def name(self):
        return self.results[0].key

    def lowerdirs(self):
        return self.context.layers.lowerdirs

    def warm_paths(self, system):
        """Returns the files and directories to read into the page cache before each measurement.

        Other jobs on the machine can evict the layers at any time, so the
        runner reads these again, untimed, before mounting.
        """
        return []

    def upper_setup(self, upper):
        """Prepares the fresh upper layer before mounting; most workloads need nothing."""

    def prepare(self, mount):
        """Runs untimed on the fresh mount before measure()."""

    def measure(self, mount):
        raise NotImplementedError


def timed_shell(script):
    """Runs a bash script with pipefail and returns its wall-clock time in seconds."""
    start = time.perf_counter()
    sh(script)
    return time.perf_counter() - start


def write_dir(mount):
    """Creates and returns the directory that a workload writes new files to.

    It is inside the union, or beside the plain tree, which stays unchanged.
    """
    if mount.system.is_union:
        path = os.path.join(mount.root, "bench-out")
    else:
        path = os.path.join(mount.scratch, "out")
    os.makedirs(path, exist_ok=True)
    return path


def quote(path):
    return "'" + path.replace("'", "'\\''") + "'"


# Metadata -----------------------------------------------------------------

WALKS = {
    "find": ("find", "find {root} > /dev/null"),
    # GNU find lstat()s every entry to print its size, mode and owner.
    "stat": ("stat every entry", "find {root} -printf '%s %m %U\\n' > /dev/null"),
    "ls": ("ls -lR", "ls -lR {root} > /dev/null"),
    "du": ("du -s", "du -s {root} > /dev/null"),
}


def make_walk(kind):
    """Returns a workload that walks a fresh mount cold, then again warm."""
    label, command = WALKS[kind]

    class Walk(Workload):
        group = "Metadata"
        results = [Result(f"meta.{kind}.cold", f"{label}, cold"), Result(f"meta.{kind}.warm", f"{label}, warm")]
        cold = True

        def measure(self, mount):
            script = command.format(root=quote(mount.root))
            cold_time = timed_shell(script)
            warm_time = timed_shell(script)
            return {self.results[0].key: cold_time, self.results[1].key: warm_time}

    Walk.__name__ = f"Walk_{kind}"
    return Walk


# Data ---------------------------------------------------------------------

def data_path(context, name):
    """Returns the path of a data file in the middle layer, which the plain tree links to."""
    return os.path.join(context.layers.middle, DATA_DIR, name)


def linux_paths(context, system, names):
    """Returns the lower-layer paths of source subtrees, or their copies in the plain tree."""
    root = context.layers.top if system.is_union else context.layers.flat
    return [os.path.join(root, context.layers.linux_rel, name) for name in names]


class FioWorkload(Workload):
    group = "Data"

    def warm_paths(self, system):
        return [data_path(self.context, "seq")]


class TarRead(Workload):
    group = "Data"
    results = [Result("data.tar", "read every file: tar cf - | wc -c")]

    def warm_paths(self, system):
        return self.context.layers.lowerdirs if system.is_union else [self.context.layers.flat]

    def measure(self, mount):
        script = f"tar -C {quote(mount.root)} --exclude=./{DATA_DIR} -cf - . | wc -c > /dev/null"
        return {self.name: timed_shell(script)}


def run_fio(job_args):
    """Runs one fio job and returns its JSON report."""
    args = ["fio", "--output-format=json", "--ioengine=psync", "--invalidate=0", "--fallocate=none",
            "--group_reporting", *job_args]
    result = run(args, stdout=subprocess.PIPE)
    text = result.stdout.decode(errors="replace")
    # fio prints notes such as "fio: file hash not empty on exit" before the JSON.
    return json.loads(text[text.index("{"):])


def fio_throughput(report, direction):
    """Returns the bandwidth in MiB/s and the IOPS of a group-reported job."""
    job = report["jobs"][0][direction]
    return job["bw_bytes"] / (1024 * 1024), job["iops"]


class FioSeqReadLower(FioWorkload):
    results = [Result("data.seqread.lower", "fio sequential read, 1 MiB blocks, lower file", "MiB/s", True)]

    def measure(self, mount):
        size = self.context.layers.profile["seq_size"]
        path = os.path.join(mount.root, DATA_DIR, "seq")
        report = run_fio(["--name=seqread", f"--filename={path}", "--rw=read", "--bs=1M", f"--size={size}"])
        return {self.name: fio_throughput(report, "read")[0]}


class FioSeqReadUpper(FioWorkload):
    """Reads a file of the upper layer, which unionfs serves by passthrough."""

    results = [Result("data.seqread.upper", "fio sequential read, 1 MiB blocks, upper file", "MiB/s", True)]

    def upper_setup(self, upper):
        # A hard link puts the cached data file in the fresh upper layer at no cost.
        os.link(os.path.join(self.context.layers.middle, DATA_DIR, "seq"), os.path.join(upper, "seq-upper"))

    def measure(self, mount):
        size = self.context.layers.profile["seq_size"]
        name = "seq-upper" if mount.system.is_union else os.path.join(DATA_DIR, "seq")
        path = os.path.join(mount.root, name)
        report = run_fio(["--name=seqread", f"--filename={path}", "--rw=read", "--bs=1M", f"--size={size}"])
        return {self.name: fio_throughput(report, "read")[0]}


class FioRandRead(FioWorkload):
    results = [Result("data.randread", "fio random 4 KiB reads, lower file", "IOPS", True)]

    def measure(self, mount):
        report = run_fio(fio_randread_args(self.context, mount, clients=1))
        return {self.name: fio_throughput(report, "read")[1]}


def fio_randread_args(context, mount, clients):
    size = context.layers.profile["seq_size"]
    path = os.path.join(mount.root, DATA_DIR, "seq")
    return ["--name=randread", f"--filename={path}", "--rw=randread", "--bs=4k", f"--size={size}",
            f"--numjobs={clients}", "--time_based", f"--runtime={context.fio_seconds}",
            "--randrepeat=0"]


class FioSeqWrite(FioWorkload):
    results = [Result("data.seqwrite", "fio sequential write, 1 MiB blocks, new file", "MiB/s", True)]

    def measure(self, mount):
        size = self.context.layers.profile["seq_size"]
        path = os.path.join(write_dir(mount), "seqwrite")
        report = run_fio(["--name=seqwrite", f"--filename={path}", "--rw=write", "--bs=1M", f"--size={size}"])
        return {self.name: fio_throughput(report, "write")[0]}


# Copy-up ------------------------------------------------------------------

class CopyUp(Workload):
    """Changes a lower data file once and reports how much data reached the upper layer."""

    group = "Copy-up"
    unions_only = True
    file_name = ""

    def operate(self, path):
        raise NotImplementedError

    def warm_paths(self, system):
        return [data_path(self.context, self.file_name)]

    def measure(self, mount):
        path = os.path.join(mount.root, DATA_DIR, self.file_name)
        start = time.perf_counter()
        self.operate(path)
        elapsed = time.perf_counter() - start
        upper_copy = os.path.join(mount.upper, DATA_DIR, self.file_name)
        status = os.lstat(upper_copy)
        return {self.name: elapsed, self.name + ".allocated": status.st_blocks * 512 / (1024 * 1024)}


def append_byte(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


class AppendDense(CopyUp):
    results = [Result("copyup.append", "append 1 byte to a {copyup} lower file"),
               Result("copyup.append.allocated", "  data in the upper copy", "MiB")]
    file_name = "dense"

    def operate(self, path):
        append_byte(path)


class AppendSparse(CopyUp):
    results = [Result("copyup.sparse", "append 1 byte to a sparse {copyup} lower file (1 MiB data)"),
               Result("copyup.sparse.allocated", "  data in the upper copy", "MiB")]
    file_name = "sparse"

    def operate(self, path):
        append_byte(path)


class OpenTrunc(CopyUp):
    results = [Result("copyup.otrunc", "open a {copyup} lower file with O_TRUNC"),
               Result("copyup.otrunc.allocated", "  data in the upper copy", "MiB")]
    file_name = "dense-trunc"

    def operate(self, path):
        os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))


class Chmod(CopyUp):
    results = [Result("copyup.chmod", "chmod a {copyup} lower file"),
               Result("copyup.chmod.allocated", "  data in the upper copy", "MiB")]
    file_name = "dense-chmod"

    def operate(self, path):
        os.chmod(path, 0o600)


# Namespace changes --------------------------------------------------------

def create_small_files(directory, paths):
    data = b"x" * SMALL_FILE_SIZE
    for relative in paths:
        fd = os.open(os.path.join(directory, relative), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


class SmallFiles(Workload):
    """Creates small files, then removes them with rm -rf, both timed."""

    group = "Namespace"
    nested = False

    def file_layout(self):
        """Returns the directories to create and the files to create, relative paths."""
        count = self.context.small_files
        if not self.nested:
            return [], [f"f{index:05d}" for index in range(count)]
        # Nested: 20 directories of 10 subdirectories of COUNT/200 files each.
        per_leaf = max(1, count // 200)
        dirs, files = [], []
        for top in range(20):
            dirs.append(f"d{top:02d}")
            for sub in range(10):
                leaf = f"d{top:02d}/s{sub}"
                dirs.append(leaf)
                files.extend(f"{leaf}/f{index:03d}" for index in range(per_leaf))
        return dirs, files

    def measure(self, mount):
        base = os.path.join(write_dir(mount), "small")
        dirs, files = self.file_layout()
        start = time.perf_counter()
        os.mkdir(base)
        for directory in dirs:
            os.mkdir(os.path.join(base, directory))
        create_small_files(base, files)
        created = time.perf_counter() - start
        removed = timed_shell(f"rm -rf {quote(base)}")
        return {self.results[0].key: created, self.results[1].key: removed}


class SmallFilesFlat(SmallFiles):
    results = [Result("ns.create.flat", "create {small} small files in one directory"),
               Result("ns.rm.flat", "rm -rf them")]


class SmallFilesNested(SmallFiles):
    nested = True
    results = [Result("ns.create.nested", "create {small} small files in a nested tree"),
               Result("ns.rm.nested", "rm -rf them")]


class RemoveLowerTree(Workload):
    """rm -rf of a lower-layer tree: whiteouts only, no data copied."""

    group = "Namespace"
    results = [Result("ns.rm.lower", "rm -rf a lower tree ({rm_tree})")]

    def warm_paths(self, system):
        return linux_paths(self.context, system, [self.context.layers.profile["rm_tree"]])

    def prepare(self, mount):
        if not mount.system.is_union:
            # The plain directory removes a private copy of the same tree.
            source = os.path.join(mount.root, self.context.layers.rm_tree)
            mount.rm_copy = os.path.join(mount.scratch, "rm-copy")
            run(["cp", "-a", source, mount.rm_copy])

    def measure(self, mount):
        if mount.system.is_union:
            target = os.path.join(mount.root, self.context.layers.rm_tree)
        else:
            target = mount.rm_copy
        return {self.name: timed_shell(f"rm -rf {quote(target)}")}


class ExtractTarball(Workload):
    group = "Namespace"
    results = [Result("ns.extract", "extract a tarball ({tarball})")]

    def warm_paths(self, system):
        return [self.context.layers.tarball]

    def measure(self, mount):
        target = write_dir(mount)
        return {self.name: timed_shell(f"tar -C {quote(target)} -xf {quote(self.context.layers.tarball)}")}


# Programs -----------------------------------------------------------------

PROGRAMS = {
    "sh": ("sh -c true", "/bin/sh -c true"),
    "perl": ("perl -e 1", "/usr/bin/perl -e 1"),
    "dpkg": ("dpkg -l", "/usr/bin/dpkg -l"),
}
PROGRAM_RUNS = 100
CHROOT_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


def make_program(kind):
    label, command = PROGRAMS[kind]
    loop = f"i=0; while [ $i -lt {PROGRAM_RUNS} ]; do {command}; i=$((i+1)); done"

    class Program(Workload):
        group = "Programs"
        results = [Result(f"prog.{kind}", f"{label}, {PROGRAM_RUNS} times in a chroot")]

        def script(self, mount):
            return f"env -i {CHROOT_PATH} chroot {quote(mount.root)} /bin/sh -c {quote(loop)} > /dev/null"

        def prepare(self, mount):
            sh(f"env -i {CHROOT_PATH} chroot {quote(mount.root)} {command} > /dev/null")

        def measure(self, mount):
            return {self.name: timed_shell(self.script(mount))}

    Program.__name__ = f"Program_{kind}"
    return Program


# Scaling ------------------------------------------------------------------

def run_clients(commands):
    """Starts every bash command at once and returns the wall time until the last ends."""
    start = time.perf_counter()
    processes = [subprocess.Popen(["bash", "-o", "pipefail", "-ec", command], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for command in commands]
    failures = []
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode != 0:
            failures.append(stderr.decode(errors="replace").strip()[-500:])
    elapsed = time.perf_counter() - start
    if failures:
        raise BenchError(f"{len(failures)} of {len(commands)} clients failed: {failures[0]}")
    return elapsed


def make_scaling(kind, clients):
    labels = {"walk": "stat every entry of {scaling}", "read": "read every file of {scaling}",
              "randread": "fio random 4 KiB reads"}
    unit = "IOPS" if kind == "randread" else "s"

    class Scaling(Workload):
        group = "Scaling"
        results = [Result(f"scale.{kind}.{clients}", f"{labels[kind]}, {clients} client{'s' if clients > 1 else ''}",
                          unit, kind == "randread")]

        def warm_paths(self, system):
            if kind == "randread":
                return [data_path(self.context, "seq")]
            return linux_paths(self.context, system, self.context.layers.profile["scaling_trees"])

        def measure(self, mount):
            if kind == "randread":
                report = run_fio(fio_randread_args(self.context, mount, clients))
                return {self.name: fio_throughput(report, "read")[1]}
            lists = self.context.partition_lists(clients, mount.scratch)
            root = quote(mount.root)
            if kind == "walk":
                commands = [f"cd {root} && xargs -a {quote(path)} -d '\\n' sh -c 'find \"$@\" -printf \"%s %m\\n\"' find"
                            for path in lists]
            else:
                commands = [f"tar -C {root} -cf - -T {quote(path)} | wc -c" for path in lists]
            return {self.name: run_clients(commands)}

    Scaling.__name__ = f"Scaling_{kind}_{clients}"
    return Scaling


# Memory -------------------------------------------------------------------

STAT_WALK = "find {paths} -printf '%s %m\\n' > /dev/null"


def forget_all_inodes():
    """Drops dentries and inodes, so that the kernel sends FORGET for every inode of a FUSE mount."""
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("2\n")
    time.sleep(2)


class MemoryWalk(Workload):
    """Walks a tree once with stat and records the daemon's memory.

    The lower layers are walked directly first (untimed), so that the
    timed walk does not wait for the disk.
    """

    group = "Memory"
    single_run = True

    def prepare(self, mount):
        sh(STAT_WALK.format(paths=" ".join(quote(path) for path in self.lowerdirs())))
        if not mount.system.is_union:
            mount.root = self.plain_root()

    def plain_root(self):
        return self.context.layers.flat

    def measure(self, mount):
        values = {self.name: timed_shell(STAT_WALK.format(paths=quote(mount.root)))}
        memory = mount.memory()
        if memory:
            values[self.name + ".hwm"] = memory["VmHWM"] / 1024
        return values


class MemoryDebian(MemoryWalk):
    results = [Result("mem.debian", "stat walk of the Debian rootfs alone"),
               Result("mem.debian.hwm", "  daemon peak RSS (VmHWM)", "MiB")]

    def lowerdirs(self):
        return [self.context.layers.bottom]

    def plain_root(self):
        return self.context.layers.bottom


class MemoryFull(MemoryWalk):
    results = [Result("mem.full", "stat walk of the whole stack"),
               Result("mem.full.hwm", "  daemon peak RSS (VmHWM)", "MiB")]


class MemoryMillion(MemoryWalk):
    """Walks half of a layer of a million entries, lets the kernel forget every
    inode, then walks the other half.

    A daemon that frees forgotten inodes reuses their memory for the second
    half, so its peak RSS barely grows. A daemon that keeps them grows by
    about as much again as during the first half.
    """

    unions_only = True
    results = [Result("mem.million", "stat walk of {million} entries in two halves"),
               Result("mem.million.start", "  daemon RSS after mounting", "MiB"),
               Result("mem.million.half", "  daemon peak RSS after the first half", "MiB"),
               Result("mem.million.forgotten", "  daemon RSS after the kernel forgets every inode", "MiB"),
               Result("mem.million.hwm", "  daemon peak RSS after both halves", "MiB")]

    def lowerdirs(self):
        return [self.context.layers.million]

    def measure(self, mount):
        names = sorted(os.listdir(mount.root))
        middle = len(names) // 2
        halves = [names[:middle], names[middle:]]
        paths = [" ".join(quote(os.path.join(mount.root, name)) for name in half) for half in halves]
        values = {}
        memory = mount.memory()
        if memory:
            values[self.name + ".start"] = memory["VmRSS"] / 1024
        elapsed = timed_shell(STAT_WALK.format(paths=paths[0]))
        if memory:
            values[self.name + ".half"] = mount.memory()["VmHWM"] / 1024
        forget_all_inodes()
        if memory:
            values[self.name + ".forgotten"] = mount.memory()["VmRSS"] / 1024
        elapsed += timed_shell(STAT_WALK.format(paths=paths[1]))
        if memory:
            values[self.name + ".hwm"] = mount.memory()["VmHWM"] / 1024
        values[self.name] = elapsed
        return values


def build_workloads(context):
    """Returns the workload classes in the order they run.

    Workloads that drop the caches run last, so that the others seldom have
    to read the layers from disk again.
    """
    workloads = [TarRead, FioSeqReadLower, FioSeqReadUpper, FioRandRead, FioSeqWrite]
    workloads += [AppendDense, AppendSparse, OpenTrunc, Chmod]
    workloads += [SmallFilesFlat, SmallFilesNested, RemoveLowerTree, ExtractTarball]
    workloads += [make_program(kind) for kind in PROGRAMS]
    workloads += [make_scaling(kind, clients) for kind in ("walk", "read", "randread") for clients in CLIENT_COUNTS]
    workloads += [make_walk(kind) for kind in WALKS]
    workloads += [MemoryDebian, MemoryFull, MemoryMillion]
    return workloads
