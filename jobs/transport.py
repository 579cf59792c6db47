"""How fast PySpark moves numpy blocks, and which process spends the CPU time.

Usage::

    python jobs/transport.py [--blocks 32] [--side 1024] [--fanout 4] [--repeats 3]
        [--master local[2]] [--conf KEY=VALUE ...] [--out transport.json]

The job caches ``--blocks`` float64 blocks of ``--side`` x ``--side`` (8 MiB at 1024) in
2 partitions and times, with nothing else in the run, the paths every strategy is made of:

* ``read``: the Python workers read the cached blocks from the JVM (a ``count``-like pass);
* ``shuffle``: each block is sent to ``--fanout`` partitions through ``partitionBy`` and read
  on the other side (as the ``inner`` strategy routes blocks), i.e. ``blocks x fanout``
  blocks pickled, written through the JVM's shuffle, read back and unpickled;
* ``shuffle-ref``: the same shuffle by reference (:mod:`blockmatrix.spilled`, what
  ``inner`` does with ``by_reference=True``): each block written once to a file in Spark's
  local folder, only references through ``partitionBy``, each copy read back from the file;
* ``collect``: the blocks are collected to the driver (the first half of a broadcast).

For each it prints the median wall time, the throughput, and the CPU seconds per run of the
JVM, of the Python workers and of the Python driver (``jobs/_support/memory.py``), which is
where the README's "where the seconds go" figures come from. Bad arguments print one line on
stderr and exit with code 2, before Spark starts.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from functools import partial

import numpy as np
from _support.memory import TreePeakRSS

from blockmatrix.cli.common import OneLineArgumentParser, positive_int, run
from blockmatrix.session import spark_context
from blockmatrix.sparkconf import reference_parent
from blockmatrix.spilled import new_folder, read_spilled, spill_partition
from blockmatrix.units import format_bytes

PROG = "transport.py"
KINDS = ("jvm", "python workers", "python")


def parse_args(argv):
    """Parse the command line."""
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=positive_int, default=32,
                        help="blocks cached (default 32)")
    parser.add_argument("--side", type=positive_int, default=1024,
                        help="rows and columns of a block (default 1024: 8 MiB)")
    parser.add_argument("--fanout", type=positive_int, default=4,
                        help="partitions each block is shuffled to (default 4)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed runs per path; the median is reported (default 3)")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Spark property (repeatable)")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    args.extra_conf = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--conf {item!r} is not KEY=VALUE")
        args.extra_conf[key] = value
    return args


def make_blocks(index, _, count: int, side: int):
    """Seeded random blocks of one of the 2 source partitions."""
    rng = np.random.default_rng(index)
    for n in range(index, count, 2):
        yield n, rng.standard_normal((side, side))


def fan_out(item, fanout: int):
    """One record per destination partition, keyed so that ``key % fanout`` is the partition."""
    key, block = item
    for destination in range(fanout):
        yield key * fanout + destination, block


def count_blocks(items):
    """Count the (unpickled) blocks of a partition."""
    yield sum(1 for _ in items)


def count_referenced_blocks(items):
    """Count the blocks of a partition of references, each read from its file."""
    yield sum(1 for _, ref in items if read_spilled(ref).size)


def shuffle_by_reference(sc, source, fanout: int) -> int:
    """The shuffle with blocks by reference, in a folder removed afterwards."""
    folder = new_folder(reference_parent(sc.getConf()))
    try:
        return source.mapPartitionsWithIndex(partial(spill_partition, folder=folder)) \
            .flatMap(partial(fan_out, fanout=fanout)) \
            .partitionBy(fanout, identity_partition) \
            .mapPartitions(count_referenced_blocks).sum()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def identity_partition(key: int) -> int:
    """Partition function of the shuffle: the key itself (PySpark takes it modulo)."""
    return key


def measure(fn, repeats: int) -> dict:
    """Median wall time and CPU seconds per run by kind of process."""
    times = []
    with TreePeakRSS(interval=0.02) as peak:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    cpu = peak.cpu_seconds_by_kind()
    return {"median_s": statistics.median(times), "times_s": [round(t, 3) for t in times],
            "cpu_s_per_run": {k: round(cpu.get(k, 0.0) / repeats, 3) for k in KINDS}}


def main(argv=None) -> int:
    """Run the four paths; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sc = spark_context(args.master, app_name="blockmatrix transport",
                       extra_conf={"spark.ui.showConsoleProgress": "false", **args.extra_conf})
    try:
        source = sc.parallelize(range(2), 2).mapPartitionsWithIndex(
            partial(make_blocks, count=args.blocks, side=args.side)).persist()
        source.count()
        block_bytes = args.side * args.side * 8
        paths = {
            "read": (lambda: source.mapPartitions(count_blocks).sum(), args.blocks),
            "shuffle": (lambda: source.flatMap(partial(fan_out, fanout=args.fanout))
                        .partitionBy(args.fanout, identity_partition)
                        .mapPartitions(count_blocks).sum(), args.blocks * args.fanout),
            "shuffle-ref": (lambda: shuffle_by_reference(sc, source, args.fanout),
                            args.blocks * args.fanout),
            "collect": (lambda: len(source.collect()), args.blocks),
        }
        rows = []
        for name, (fn, moved_blocks) in paths.items():
            fn()  # warm-up: workers started, code paths loaded
            row = {"path": name, "bytes": moved_blocks * block_bytes, **measure(fn, args.repeats)}
            row["mb_per_s"] = row["bytes"] / row["median_s"] / 1e6
            rows.append(row)
    finally:
        sc.stop()
    print(f"{'path':<11} {'moved':>10} {'median s':>9} {'MB/s':>7} "
          f"{'CPU s/run: JVM':>14} {'workers':>8} {'driver':>7}")
    for r in rows:
        cpu = r["cpu_s_per_run"]
        print(f"{r['path']:<11} {format_bytes(r['bytes']):>10} {r['median_s']:>9.2f} "
              f"{r['mb_per_s']:>7.0f} {cpu['jvm']:>14.2f} {cpu['python workers']:>8.2f} "
              f"{cpu['python']:>7.2f}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"command": " ".join(["python", "jobs/transport.py", *argv]),
                       "rows": rows}, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:], PROG))
