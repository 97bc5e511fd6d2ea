"""Runs the benchmark: builds the cached layers, measures every system on every
workload with the systems interleaved, and writes the results page.

Run it through bench/run.sh, which installs the dependencies and builds
unionfs first.
"""

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time

import report
import systems
import workloads
from common import BENCH_CACHE, REPO_ROOT, BenchError, drop_caches, log, remove_tree, sh, unmount_below
from layers import DATA_DIR, LINUX_DIR, Layers, find_bottom
from workloads import quote

SCRATCH_ROOT = os.path.join(BENCH_CACHE, "scratch")
RESULTS_DIR = os.path.join(BENCH_CACHE, "results")
DEFAULT_PAGE = os.path.join(REPO_ROOT, "docs/benchmarks.md")

# Settings that differ between the full run and --quick, besides the layers.
RUN_SETTINGS = {
    "full": {"reps": 3, "fio_seconds": 2, "small_files": 20000},
    # One repetition: a smoke test and a first look, too noisy to judge targets.
    "quick": {"reps": 1, "fio_seconds": 1, "small_files": 1000},
}


class Context:
    """The layers and run settings that workloads need besides the mount."""

    def __init__(self, layers, settings):
        self.layers = layers
        self.reps = settings["reps"]
        self.fio_seconds = settings["fio_seconds"]
        self.small_files = settings["small_files"]
        self._partitions = {}

    def label_values(self):
        profile = self.layers.profile
        million = profile["million_dirs"] * (profile["files_per_dir"] + 1) + 1
        return {
            "copyup": format_size(profile["copyup_size"]),
            "small": f"{self.small_files // 1000}k",
            "rm_tree": f"linux/{profile['rm_tree']}, {count_entries(os.path.join(self.layers.top, self.layers.rm_tree)):,} entries",
            "scaling": f"linux/{{{','.join(profile['scaling_trees'])}}}",
            "tarball": f"linux/{profile['tarball_tree']}, {format_size(os.path.getsize(self.layers.tarball))}",
            "million": f"{million:,}",
        }

    def partition_lists(self, clients, directory):
        """Splits the source tree into CLIENTS lists of paths of about equal entry counts.

        Each list is written to a file in DIRECTORY, one path relative to the
        merged view's root per line, and the file names are returned.
        """
        if clients not in self._partitions:
            self._partitions[clients] = self._partition(clients)
        paths = []
        for index, members in enumerate(self._partitions[clients]):
            path = os.path.join(directory, f"client-{clients}-{index}.list")
            with open(path, "w") as listing:
                listing.write("".join(member + "\n" for member in members))
            paths.append(path)
        return paths

    def _partition(self, clients):
        linux = os.path.join(self.layers.top, self.layers.linux_rel)
        units = []
        for entry in self.layers.profile["scaling_trees"]:
            path = os.path.join(linux, entry)
            for child in sorted(os.listdir(path)):
                units.append((os.path.join(entry, child), count_entries(os.path.join(path, child))))
        # Greedy: the largest unit goes to the client with the fewest entries so far.
        bins = [[0, []] for _ in range(clients)]
        for name, weight in sorted(units, key=lambda unit: -unit[1]):
            smallest = min(bins, key=lambda item: item[0])
            smallest[0] += weight
            smallest[1].append(os.path.join(self.layers.linux_rel, name))
        return [sorted(members) for _, members in bins]


def count_entries(path):
    if not os.path.isdir(path) or os.path.islink(path):
        return 1
    total = 1
    for _, dirs, files in os.walk(path):
        total += len(dirs) + len(files)
    return total


def describe_layers(layers):
    """Returns [name, entry count] for each layer of the stack and the extra trees."""
    profile = layers.profile
    if profile["linux_members"]:
        linux = "the Linux 6.1 source, only " + ", ".join(f"{name}/" for name in profile["linux_members"])
    else:
        linux = "the Linux 6.1 source without " + " and ".join(f"{name}/" for name in profile["linux_exclude"])
    return [
        [f"top: {linux}", count_entries(layers.top)],
        [f"middle: overrides, whiteouts, opaque directories; data files of {format_size(profile['seq_size'])} "
         f"and {format_size(profile['copyup_size'])}", count_entries(layers.middle)],
        ["bottom: Debian 12 minbase", count_entries(layers.bottom)],
        ["plain directory: the merged view, flattened", count_entries(layers.flat)],
        ["million-entry layer (memory walk only)", count_entries(layers.million)],
    ]


def format_size(size):
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller layers and data files, 1 s fio runs, one repetition (a few minutes)")
    parser.add_argument("--reps", type=int, help="repetitions of each measurement (default: 3, 1 with --quick)")
    parser.add_argument("--only", help="comma-separated prefixes of result keys to run, e.g. meta.,data.tar")
    parser.add_argument("--systems", help="comma-separated systems to run (default: all): "
                        + ",".join(system.name for system in systems.ALL_SYSTEMS))
    parser.add_argument("--page", help="results page to write (default: docs/benchmarks.md for a full run, "
                        "none for --quick)")
    parser.add_argument("--command", default="sudo bench/run.sh", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    return args


def select_systems(names):
    if not names:
        return list(systems.ALL_SYSTEMS)
    by_name = {system.name: system for system in systems.ALL_SYSTEMS}
    chosen = []
    for name in names.split(","):
        if name not in by_name:
            raise BenchError(f"unknown system '{name}'; expected one of {', '.join(by_name)}")
        chosen.append(by_name[name])
    if systems.KernelOverlay not in chosen:
        chosen.insert(0, systems.KernelOverlay)
        log("adding kernel overlayfs, the reference for every ratio")
    return chosen


def collect_metadata(args, profile_name, settings, system_classes):
    def command_output(args_list):
        result = subprocess.run(args_list, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
        return result.stdout.decode(errors="replace").strip()

    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": os.uname().release,
        "cpu": f"{cpu}, {os.cpu_count()} CPUs",
        "memory": command_output(["free", "-g"]).splitlines()[1].split()[1] + " GiB",
        "commit": command_output(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]),
        "command": args.command,
        "profile": profile_name,
        "reps": settings["reps"],
        "load_start": os.getloadavg(),
        "versions": {system.name: systems.version_of(system) for system in system_classes},
        "labels": {system.name: system.label for system in system_classes},
    }


class Runner:
    def __init__(self, context, system_classes, only, results_path):
        self.context = context
        self.systems = [system_class(SCRATCH_ROOT) for system_class in system_classes]
        self.only = only.split(",") if only else None
        self.results_path = results_path
        self.records = []
        self.mounts = []

    def selected(self, workload_class):
        if not self.only:
            return True
        keys = [result.key for result in workload_class.results]
        return any(key.startswith(prefix) for key in keys for prefix in self.only)

    @staticmethod
    def warm_page_cache(paths):
        """Reads PATHS into the page cache, skipping the data files under a layer's srv/bench-data."""
        for path in paths:
            if os.path.isdir(path):
                sh(f"tar -C {quote(path)} --exclude=./{DATA_DIR} -cf - . | wc -c > /dev/null")
            else:
                sh(f"cat {quote(path)} > /dev/null")

    def record(self, values):
        self.records.append(values)
        with open(self.results_path, "a") as results:
            results.write(json.dumps(values) + "\n")

    def run(self, workload_classes):
        plan = [w for w in workload_classes if self.selected(w)]
        total = sum((1 if w.single_run else self.context.reps) *
                    sum(1 for s in self.systems if s.is_union or not w.unions_only) for w in plan)
        done = 0
        started = time.monotonic()
        for workload_class in plan:
            workload = workload_class(self.context)
            reps = 1 if workload.single_run else self.context.reps
            for rep in range(reps):
                # Rotating the order spreads slow phases of a noisy machine over all systems.
                shift = rep % len(self.systems)
                for system in self.systems[shift:] + self.systems[:shift]:
                    if workload.unions_only and not system.is_union:
                        continue
                    done += 1
                    self.measure_one(workload, system, rep, f"[{done}/{total} {time.monotonic() - started:.0f} s]")

    def measure_one(self, workload, system, rep, progress):
        record = {"workload": workload.name, "system": system.name, "rep": rep}
        mount = None
        started = time.monotonic()
        try:
            self.warm_page_cache(workload.warm_paths(system))
            mount = system.mount(workload.lowerdirs(), flat=self.context.layers.flat,
                                 upper_setup=workload.upper_setup)
            self.mounts.append(mount)
            workload.prepare(mount)
            if workload.cold:
                drop_caches()
            values = workload.measure(mount)
            memory = mount.memory()
            if memory:
                record["hwm_mib"] = memory["VmHWM"] / 1024
            record["values"] = values
            summary = ", ".join(f"{key} {value:.3f}" for key, value in values.items())
            log(f"{progress} {system.name}: {summary}")
        except BenchError as error:
            record["error"] = str(error)
            log(f"{progress} {system.name}: {workload.name} failed: {error}")
        finally:
            if mount is not None:
                try:
                    system.unmount(mount)
                except BenchError as error:
                    log(f"warning: cleaning up {mount.root} failed: {error}")
                self.mounts.remove(mount)
        record["wall_s"] = time.monotonic() - started
        self.record(record)

    def cleanup(self):
        for mount in list(self.mounts):
            if mount.process is not None and mount.process.poll() is None:
                log(f"stopping {mount.system.name} daemon {mount.pid}")
            try:
                mount.system.unmount(mount)
            except BenchError as error:
                log(f"warning: cleaning up {mount.root} failed: {error}")
        self.mounts.clear()
        unmount_below(SCRATCH_ROOT)


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise BenchError("the benchmark mounts filesystems and drops caches, so it must run as root. "
                         "Run: sudo bench/run.sh")
    profile_name = "quick" if args.quick else "full"
    settings = dict(RUN_SETTINGS[profile_name])
    if args.reps:
        settings["reps"] = args.reps
    system_classes = select_systems(args.systems)

    layers = Layers(profile_name, find_bottom())
    layers.build()
    if not os.path.isdir(os.path.join(layers.top, "usr/src", LINUX_DIR)):
        raise BenchError(f"the top layer {layers.top} has no usr/src/{LINUX_DIR}")

    remove_tree(SCRATCH_ROOT)
    os.makedirs(SCRATCH_ROOT)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    systems.use_private_unionfs_copy(SCRATCH_ROOT)

    available, excluded = [], {}
    for system_class in system_classes:
        reason = systems.check_system(system_class, SCRATCH_ROOT, layers.lowerdirs, layers.flat)
        if reason:
            log(f"warning: leaving out {system_class.label}: {reason}")
            excluded[system_class.name] = reason
        else:
            available.append(system_class)
    if systems.KernelOverlay not in available:
        raise BenchError(f"kernel overlayfs, the reference, does not mount: {excluded[systems.REFERENCE]}")

    context = Context(layers, settings)
    metadata = collect_metadata(args, profile_name, settings, system_classes)
    metadata["excluded"] = excluded
    metadata["label_values"] = context.label_values()
    metadata["layers"] = describe_layers(layers)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results_path = os.path.join(RESULTS_DIR, f"{stamp}-{profile_name}.jsonl")
    with open(results_path, "w") as results:
        results.write(json.dumps({"metadata": metadata}) + "\n")
    log(f"recording raw results in {results_path}")

    runner = Runner(context, available, args.only, results_path)
    started = time.monotonic()
    try:
        runner.run(workloads.build_workloads(context))
    finally:
        runner.cleanup()
        remove_tree(SCRATCH_ROOT)

    metadata["load_end"] = os.getloadavg()
    metadata["duration_s"] = time.monotonic() - started
    with open(results_path, "a") as results:
        results.write(json.dumps({"metadata_end": {"load_end": metadata["load_end"],
                                                   "duration_s": metadata["duration_s"]}}) + "\n")

    page_path = args.page or (None if args.quick else DEFAULT_PAGE)
    text = report.render_text(metadata, runner.records, workloads.build_workloads(context))
    print(text)
    if page_path:
        with open(page_path, "w") as page:
            page.write(report.render_page(metadata, runner.records, workloads.build_workloads(context)))
        log(f"wrote {page_path}")
    log(f"raw results: {results_path}; rebuild the page with: bench/report.py {results_path}")


def handle_signal(number, _frame):
    raise KeyboardInterrupt(f"signal {number}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, handle_signal)
    signal.signal(signal.SIGHUP, handle_signal)
    try:
        main(sys.argv[1:])
    except BenchError as error:
        log(f"error: {error}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted; mounts and daemons were cleaned up")
        sys.exit(130)
