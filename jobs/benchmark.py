"""Benchmark every strategy against numpy / scipy.sparse and Spark MLlib, side by side.

Usage::

    python jobs/benchmark.py [--cases dense-2048,dense-4096,...] [--repeats 3]
        [--contenders inner,outer,pasa,broadcast,auto,numpy,mllib] [--out bench.json]
        [--master local[2]] [--conf KEY=VALUE ...] [--long-run 60] [--warm-up 1] [--interleave]
        [--quick]
    spark-submit --properties-file conf/spark-defaults.conf jobs/benchmark.py ...

For each case the job builds seeded random operands once, distributes them as persisted
BlockMatrix operands (and, for MLlib, as the same blocks converted with ``to_mllib()`` and
persisted in the JVM), and then, in this one process, on the same inputs and the same cores:

* ``numpy`` (``scipy`` for sparse cases): ``a @ b`` in this single process, the limit;
* every strategy of ours and ``auto``: ``A.multiply(B, strategy)`` computed to the end
  (``count()`` of the product's blocks, which runs the whole multiply in the workers);
  ``inner-ref`` and ``broadcast-ref`` are ``inner`` and ``broadcast`` with
  ``by_reference=True`` (:mod:`blockmatrix.spilled`: blocks shuffled by reference; the
  driver's array written to a file the tasks read instead of broadcast);
* ``mllib``: ``pyspark.mllib``'s ``BlockMatrix.multiply``, computed to the end on the JVM.

On an in-process case each contender first runs ``--warm-up`` times untimed (default once:
MLlib's JVM took 10.4 and 8.5 s for its first two products at n = 4096, then 3.6-4.8 s).
Every contender's product is collected once, after its first run (outside the timing), and
compared with the single-process result; a wrong product stops the job. Times are the median
of ``--repeats`` runs (fewer when a run takes longer than ``--long-run`` seconds). Shuffle bytes
are what Spark measured (:mod:`blockmatrix.metrics`); peak memory is the summed resident memory
of the whole process tree (driver, JVM, Python workers; ``jobs/_support/memory.py``) while the
contender ran, and the CPU seconds per run of each kind of process (the JVM, the Python
workers, the Python driver): where the seconds go.
The job prints a table and writes JSON (``--out``).

With ``--interleave`` the runs are made in rounds, every contender once per round, in an order
turned by one each round, and each ratio is the median of the ratios within a round: on a
shared machine, whose speed drifts from one minute to the next, both sides of a ratio then ran
under the same conditions. (Without it, each contender's runs follow one another, and at
n = 8192 the same code's median moved from 6.9 to 8.3 s between two such blocks of one run.)
Peak RSS is then that of the contender's own runs, while the others' operands are held too.

Cases (``--quick`` swaps them for small ones that run in well under a minute):

* ``dense-N`` (N = 2048, 4096, 8192): dense square float64 in 1024-blocks;
* ``long-inner``: A 1 x 64 blocks times B 64 x 1 blocks, blocks 1024 x 1024;
* ``sparse-dD-sxd`` / ``sparse-dD-sxs`` (D = 1, 10): A 16384 x 16384 in 512-blocks with D% of
  its blocks stored (CSR, 10% filled), times a dense 16384 x 2048 B (``sxd``) or a B like A
  (``sxs``); the limit is scipy.sparse;
* ``report``: the default sweep of ``jobs/shuffle_report.py`` (square, tall-skinny, 1xN;
  blocks 100 and 200; 4-block grid; block densities 1 and 0.5; seed 0), so notebook and
  benchmark agree;
* ``spark-only-4096``: dense 4096^2 operands that live nowhere but in Spark (each the persisted
  product of an earlier multiply), so no strategy can read them from where they already are;
* file to file, whole processes (``file-N`` for N = 4096, 8192; ``long-inner-files``, 1 x 64
  by 64 x 1 blocks of 1024; ``gram-RxC`` and ``gram-RxC-chunked`` for 6000 x 30000 and
  10000 x 40000, chunks (500, 2000)): ``auto`` is the job itself (``jobs/multiply.py
  A.h5::/A B.h5::/B C.h5::/C --block-size 1024``, or ``jobs/gram.py X.h5::/X X.h5::/Y``, with
  the shipped defaults) and ``numpy`` a script that reads the same files, multiplies and writes
  the result; both timed from start to exit with the peak RSS of their whole process tree, run
  before this job starts its own Spark. The inputs are generated once into ``--data`` (seeded,
  block by block) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
from _support.memory import TreePeakRSS
from _support.processes import measure, warm_page_cache
from py4j.protocol import Py4JJavaError

from blockmatrix import BlockMatrix, strategies
from blockmatrix.cli.common import OneLineArgumentParser, non_negative_int, positive_int, run
from blockmatrix.errors import InvalidParameterError
from blockmatrix.interop import mllib as mllib_interop
from blockmatrix.metrics import record
from blockmatrix.samples import random_matrix
from blockmatrix.session import spark_context, under_spark_submit
from blockmatrix.units import format_bytes

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_gram  # noqa: E402
import make_sample  # noqa: E402
import shuffle_report  # noqa: E402

PROG = "benchmark.py"
#: Every registered strategy that multiplies driver-held operands (the cases' from_numpy ones),
#: selectors such as ``auto`` included, in registration order.
STRATEGIES = tuple(s.name for s in strategies.STRATEGIES.values()
                   if s.selector or "driver" in s.operand_sources)
#: MLlib runs right after the limit, while the JVM heap holds little else: converting blocks
#: to MLlib goes through a DataFrame of boxed doubles, which needs heap room.
#: Contenders that run a strategy with options: name -> (strategy, multiply's keywords).
VARIANTS = {"inner-ref": ("inner", {"by_reference": True}),
            "broadcast-ref": ("broadcast", {"by_reference": True})}

CONTENDERS = ("numpy", "mllib") + STRATEGIES + tuple(VARIANTS)


def strategy_of(name: str) -> tuple[str, dict]:
    """The strategy a contender runs and the keywords it passes to ``multiply``."""
    return VARIANTS.get(name, (name, {}))


def takes(strategy: str, source: str) -> bool:
    """Whether a contender's strategy multiplies operands held at ``source``.

    numpy, MLlib and ``auto`` take any.
    """
    registered = strategies.STRATEGIES.get(strategy)
    return registered is None or registered.selector or source in registered.operand_sources


#: Where the CPU time goes, by kind of process (``TreePeakRSS.cpu_seconds_by_kind``).
CPU_KINDS = ("jvm", "python workers", "python")

#: A strategy whose plan runs more tasks than this in one stage is skipped (and says so): pasa
#: runs one task per (i, k, j) block triple.
MAX_TASKS = 1024


@dataclass(frozen=True)
class Case:
    """One benchmark case: how to build A and B (seeded), and their block size."""

    name: str
    a_shape: tuple[int, int]
    b_shape: tuple[int, int]
    block: int
    a_density: float = 1.0  # fraction of blocks stored
    b_density: float = 1.0
    sparse_a: bool = False  # CSR blocks, ``fill`` of each stored block non-zero
    sparse_b: bool = False
    fill: float = 0.1
    partitions: int | None = None  # of each operand; default sc.defaultParallelism
    spark_only: bool = False  # operands persisted products of an earlier multiply

    @property
    def is_sparse(self) -> bool:
        """Whether either operand has CSR blocks (the limit is then scipy.sparse)."""
        return self.sparse_a or self.sparse_b


def _sparse_cases(n: int, cols: int, block: int) -> list[Case]:
    out = []
    for pct in (1, 10):
        d = pct / 100
        out.append(Case(f"sparse-d{pct}-sxd", (n, n), (n, cols), block, a_density=d,
                        sparse_a=True))
        out.append(Case(f"sparse-d{pct}-sxs", (n, n), (n, n), block, a_density=d, b_density=d,
                        sparse_a=True, sparse_b=True))
    return out


def report_cases(block_sizes=(100, 200), grid=4, densities=(1.0, 0.5)) -> list[Case]:
    """The default sweep of ``jobs/shuffle_report.py`` as benchmark cases."""
    out = []
    for shape in shuffle_report.SHAPES:
        (ra, ca), (rb, cb) = shuffle_report.grid_of(shape, grid)
        for block in block_sizes:
            for density in densities:
                out.append(Case(f"report:{shape} b={block} d={density:g}",
                                (ra * block, ca * block), (rb * block, cb * block), block,
                                a_density=density, b_density=density, partitions=2))
    return out


@dataclass(frozen=True)
class FileCase:
    """A file-to-file case: the job and a numpy script as whole processes on the same files.

    ``kind`` is ``"multiply"`` (C = A @ B, A and B in files of their own) or ``"gram"``
    (Y = X X^T written into X's file; ``b_shape`` unused).
    """

    name: str
    kind: str
    a_shape: tuple[int, int]
    b_shape: tuple[int, int] | None = None
    block: int = 1024
    chunks: tuple[int, int] | None = None

    is_sparse = False


FULL_CASES = {c.name: c for c in [
    Case("dense-2048", (2048, 2048), (2048, 2048), 1024),
    Case("dense-4096", (4096, 4096), (4096, 4096), 1024),
    Case("dense-8192", (8192, 8192), (8192, 8192), 1024),
    Case("long-inner", (1024, 64 * 1024), (64 * 1024, 1024), 1024),
    *_sparse_cases(16384, 2048, 512),
    Case("spark-only-4096", (4096, 4096), (4096, 4096), 1024, spark_only=True),
    FileCase("file-4096", "multiply", (4096, 4096), (4096, 4096)),
    FileCase("file-8192", "multiply", (8192, 8192), (8192, 8192)),
    FileCase("long-inner-files", "multiply", (1024, 64 * 1024), (64 * 1024, 1024)),
    *(FileCase(f"gram-{r}x{c}{tag}", "gram", (r, c), chunks=chunks)
      for r, c in ((6000, 30000), (10000, 40000))
      for tag, chunks in (("", None), ("-chunked", (500, 2000)))),
]}
FULL_GROUPS = {"report": report_cases()}

QUICK_CASES = {c.name: c for c in [
    Case("dense-256", (256, 256), (256, 256), 64),
    Case("long-inner", (64, 8 * 64), (8 * 64, 64), 64),
    Case("sparse-d50-sxd", (256, 256), (256, 128), 64, a_density=0.5, sparse_a=True),
    Case("sparse-d50-sxs", (256, 256), (256, 256), 64, a_density=0.5, b_density=0.5,
         sparse_a=True, sparse_b=True),
    Case("spark-only-256", (256, 256), (256, 256), 64, spark_only=True),
    FileCase("file-256", "multiply", (256, 256), (256, 256), block=64),
    FileCase("gram-200x1000-chunked", "gram", (200, 1000), chunks=(50, 200)),
]}
QUICK_GROUPS = {"report": report_cases(block_sizes=(20,), grid=2, densities=(1.0,))}

DEFAULT_CASES = ("dense-2048", "dense-4096", "dense-8192", "long-inner", "sparse-d1-sxd",
                 "sparse-d1-sxs", "sparse-d10-sxd", "sparse-d10-sxs", "report",
                 "spark-only-4096", "file-4096", "file-8192", "long-inner-files",
                 "gram-6000x30000", "gram-6000x30000-chunked", "gram-10000x40000",
                 "gram-10000x40000-chunked")


def _list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty list")
    return items


def parse_args(argv):
    """Parse the command line."""
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=_list, default=None,
                        help=f"comma-separated cases (default {','.join(DEFAULT_CASES)})")
    parser.add_argument("--contenders", type=_list, default=list(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed runs per contender; the median is reported (default 3)")
    parser.add_argument("--interleave", action="store_true",
                        help="run the contenders in rounds, each once per round, and compare "
                             "times round by round (default: each contender's runs in a row)")
    parser.add_argument("--warm-up", type=non_negative_int, default=None,
                        help="untimed runs of each contender on a case before its timed ones "
                             "(default 1; 0 with --quick)")
    parser.add_argument("--long-run", type=float, default=60.0,
                        help="stop repeating a contender after a run longer than this many "
                             "seconds (default 60)")
    parser.add_argument("--out", default=None, help="JSON file for every figure")
    parser.add_argument("--master", default="local[2]",
                        help="Spark master URL (default local[2]; ignored under spark-submit)")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Spark property (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--data", default="bench-data",
                        help="folder for the file cases' inputs and outputs (default bench-data)")
    parser.add_argument("--quick", action="store_true",
                        help="small cases, 1 run each: a smoke test in well under a minute")
    args = parser.parse_args(argv)
    cases, groups = (QUICK_CASES, QUICK_GROUPS) if args.quick else (FULL_CASES, FULL_GROUPS)
    names = args.cases or (list(cases) + list(groups))
    chosen = []
    for name in names:
        if name in cases:
            chosen.append(cases[name])
        elif name in groups:
            chosen.extend(groups[name])
        else:
            parser.error(f"unknown case {name!r}: choose from "
                         f"{', '.join(list(cases) + list(groups))}")
    args.case_list = chosen
    for name in args.contenders:
        if name not in CONTENDERS:
            parser.error(f"unknown contender {name!r}: choose from {', '.join(CONTENDERS)}")
    if args.quick and "--repeats" not in " ".join(argv or []):
        args.repeats = 1
    if args.warm_up is None:
        args.warm_up = 0 if args.quick else 1
    extra = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--conf {item!r} is not KEY=VALUE")
        extra[key] = value
    args.extra_conf = extra
    return args


# ---------------------------------------------------------------------------------- operands
def make_operands(case: Case, rng) -> tuple:
    """A then B of a case, from ``rng``: dense, or CSR with stored blocks ``fill`` full."""
    return tuple(random_matrix(shape, case.block, rng, stored=density,
                               fill=case.fill if sparse else 1.0,
                               format="csr" if sparse else "dense")
                 for shape, density, sparse in ((case.a_shape, case.a_density, case.sparse_a),
                                                (case.b_shape, case.b_density, case.sparse_b)))


def _root_pid() -> int:
    # Under spark-submit the Python driver is a child of the JVM, which forks the workers.
    return os.getppid() if under_spark_submit() else os.getpid()


def _max_abs(x) -> float:
    if sp.issparse(x):
        return float(abs(x).max()) if x.nnz else 0.0
    return float(np.abs(x).max(initial=0.0))


def check(got, expected) -> float:
    """Largest absolute difference between a product and the reference."""
    if sp.issparse(expected):
        got = got if sp.issparse(got) else sp.csr_matrix(got)
        return _max_abs(sp.csr_matrix(got) - expected)
    got = got.toarray() if sp.issparse(got) else got
    return _max_abs(got - expected)


# ---------------------------------------------------------------------------------- timing
def one_run(fn, sc=None, label: str = "") -> dict:
    """One timed run of ``fn``: wall seconds, peak tree RSS, CPU by kind, Spark's figures."""
    with TreePeakRSS(_root_pid(), interval=0.05) as peak:
        if sc is None:
            start = time.perf_counter()
            fn()
            wall, metrics = time.perf_counter() - start, None
        else:
            with record(sc, label) as metrics:
                fn()
            wall = metrics.wall_time_s
    return {"wall_s": wall, "peak_rss_bytes": peak.peak_bytes,
            "cpu": peak.cpu_seconds_by_kind(), "metrics": metrics}


def summary(runs: list[dict]) -> dict:
    """A row's figures from its runs: times, their median, peak RSS, CPU per run, shuffle."""
    times = [r["wall_s"] for r in runs]
    out = {"times_s": [round(t, 6) for t in times], "median_s": statistics.median(times),
           "runs": len(times), "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
           "cpu_s_per_run": {kind: round(sum(r["cpu"].get(kind, 0.0) for r in runs)
                                         / len(runs), 3) for kind in CPU_KINDS}}
    metrics = runs[-1]["metrics"]
    if metrics is not None:
        out.update(shuffle_stages=metrics.shuffle_stages,
                   shuffle_write_bytes=metrics.shuffle_write_bytes,
                   spark_tasks=metrics.num_tasks)
    if "round" in runs[0]:
        out["rounds"] = [r["round"] for r in runs]
    return out


@dataclass
class Contender:
    """One contender of a case, ready to run: a run to time, then a check of its product.

    ``run`` computes the product to the end (what is timed) and keeps it in ``kept``;
    ``check`` compares the product of the first run with the reference (untimed) and returns
    the largest absolute error, which must be at most ``tolerance``. No product outlives its
    run and check; ``close`` releases what else the contender holds.
    """

    name: str
    row: dict
    run: object
    check: object
    tolerance: float
    sc: object = None
    close: object = None
    kept: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    warm_runs: int = 0
    finished: bool = False

    def finish(self) -> None:
        """Release what the contender holds and put its runs' figures in its row (once)."""
        if self.finished:
            return
        self.finished = True
        if self.close is not None:
            self.close()
        if self.runs:
            self.row.update(summary(self.runs), warm_up_runs=self.warm_runs)
            print(f"{self.row['case']:<28} {self.row['contender']:<10} median "
                  f"{self.row['median_s']:8.3f} s ({self.row['runs']} runs)  peak "
                  f"{format_bytes(self.row['peak_rss_bytes'])}", flush=True)
        elif "refused" in self.row:
            print(f"{self.row['case']:<28} {self.name:<10} {self.row['refused']}", flush=True)

    def attempt(self, round_number: int | None = None, warm_up: int = 0) -> bool:
        """One timed run, after ``warm_up`` untimed ones if none ran yet; False on failure.

        The first product, timed or not, is checked against the reference. A failure (the
        row says why) ends the contender; the runs before it stand.
        """
        while self.warm_runs < warm_up:
            if self.run_once(timed=False) is None:
                return False
            self.warm_runs += 1
        result = self.run_once(timed=True)
        if result is None:
            return False
        self.runs.append(result if round_number is None else dict(result, round=round_number))
        return True

    def run_once(self, timed: bool) -> dict | None:
        """One run (measured by :func:`one_run` when ``timed``), its product checked if first."""
        label = f"{self.row['case']} {self.name}"
        try:
            if timed:
                result = one_run(partial(self.run, self.kept), self.sc, label)
            else:
                result = {}
                self.run(self.kept)
            if "checked" not in self.row:
                self.row.update(max_abs_error=self.check(self.kept), checked=True)
        except InvalidParameterError as exc:  # e.g. broadcast over the memory budget
            return self.failed(f"refused: {exc}")
        except Py4JJavaError as exc:  # e.g. MLlib's one reducer out of JVM heap
            if mllib_interop.context_stopped(self.sc):
                raise
            return self.failed(f"failed: {str(exc.java_exception).splitlines()[0]}"[:200])
        finally:
            self.kept.clear()
        if self.row["max_abs_error"] > self.tolerance:  # a wrong product stops the job
            raise AssertionError(
                f"{label}: wrong product (max abs error {self.row['max_abs_error']:.3e}, "
                f"more than {self.tolerance:.3e})")
        return result

    def failed(self, why: str) -> None:
        """Record why a run failed (the runs before it stand)."""
        self.row.update(refused=why)
        self.row.setdefault("checked", False)


def schedule(contenders: list, repeats: int, interleave: bool) -> list[tuple]:
    """``(round, contender)`` in the order they run (round None without ``interleave``).

    >>> schedule("ab", 2, False), schedule("abc", 2, True)
    ([(None, 'a'), (None, 'a'), (None, 'b'), (None, 'b')], \
[(0, 'a'), (0, 'b'), (0, 'c'), (1, 'b'), (1, 'c'), (1, 'a')])
    """
    contenders = list(contenders)
    if not interleave:
        return [(None, c) for c in contenders for _ in range(repeats)]
    turns = [contenders[r % len(contenders):] + contenders[:r % len(contenders)]
             for r in range(repeats)] if contenders else []
    return [(r, c) for r, turn in enumerate(turns) for c in turn]


def run_contenders(contenders: list[Contender], args) -> None:
    """Time every contender ``--repeats`` times, one after the other or in rounds.

    Without ``--interleave``, each contender's runs follow one another and it is closed before
    the next starts. With it, each round runs every contender once, the order turned by one
    each round (:func:`schedule`), so that a shared machine's drift (another process, a slower
    minute) falls on all of them alike; each row records the round of each run. A contender
    stops repeating after a run over ``--long-run`` seconds.
    """
    stopped = set()
    try:
        for round_number, c in schedule(contenders, args.repeats, args.interleave):
            if c.name in stopped:
                continue
            if not c.attempt(round_number, args.warm_up) or \
                    c.runs[-1]["wall_s"] > args.long_run:
                stopped.add(c.name)
            if args.interleave and c.runs and c.runs[-1].get("round") == round_number:
                print(f"{c.row['case']:<28} {c.name:<10} round {round_number + 1}: "
                      f"{c.runs[-1]['wall_s']:8.3f} s", flush=True)
            elif not args.interleave and (c.name in stopped or len(c.runs) == args.repeats):
                c.finish()  # before the next contender starts
    finally:
        for c in contenders:
            c.finish()


def run_case(sc, case: Case, args, rng) -> list[dict]:
    """Every contender on one case; one row each."""
    a, b = make_operands(case, rng)
    expected = a @ b
    if sp.issparse(expected):
        expected = sp.csr_matrix(expected)
    scale = max(1.0, _max_abs(expected))
    parts = case.partitions or sc.defaultParallelism
    A = BlockMatrix.from_numpy(sc, a, case.block, case.block, num_partitions=parts).persist()
    B = BlockMatrix.from_numpy(sc, b, case.block, case.block, num_partitions=parts).persist()
    A.blocks.count()
    B.blocks.count()
    if case.spark_only:
        A, B = spark_only(A), spark_only(B)
    rows, contenders = [], []
    limit = "scipy" if case.is_sparse else "numpy"
    for name in args.contenders:
        strategy, _ = strategy_of(name)
        if not takes(strategy, "spark" if case.spark_only else "driver"):
            print(f"{case.name:<28} {name:<10} not run: its operands live only in Spark, and "
                  f"{strategy} multiplies arrays the driver holds", flush=True)
            continue
        row = {"case": case.name, "contender": limit if name == "numpy" else name,
               "ran": name}
        rows.append(row)
        tasks = A.explain_multiply(B, strategy=strategy)[strategy].num_tasks \
            if strategy in STRATEGIES else 0
        if tasks > MAX_TASKS:
            row.update(refused=f"skipped: {name} would run {tasks} tasks in one stage "
                               f"(> {MAX_TASKS})", checked=False)
            print(f"{case.name:<28} {name:<10} {row['refused']}", flush=True)
            continue
        contenders.append(contender(sc, name, row, (A, B), (a, b), case, expected,
                                    tolerance=1e-8 * scale))
    run_contenders(contenders, args)
    A.unpersist()
    B.unpersist()
    add_ratios(rows)
    return rows


def contender(sc, name: str, row: dict, matrices: tuple, arrays: tuple, case: Case, expected,
              tolerance: float) -> Contender:
    """The run and the check of one contender on a case's operands.

    ``matrices``: the BlockMatrix operands; ``arrays``: the same as numpy / scipy arrays.
    MLlib's operands are converted and persisted in the JVM here, once, untimed; a product is
    checked after the first run and released before the next run.
    """
    (A, B), (a, b) = matrices, arrays  # noqa: N806
    if name == "numpy":
        row.update(reference=True)
        return Contender(name, row, run=lambda kept: a @ b, check=lambda kept: 0.0,
                         tolerance=0.0)
    if name == "mllib":
        mA, mB = A.to_mllib(), B.to_mllib()
        for m in (mA, mB):
            m.persist(_storage_level())
            mllib_interop.java_blocks(m).count()

        def run_mllib(kept):
            kept["product"] = product = mA.multiply(mB)
            mllib_interop.java_blocks(product).count()

        def check_mllib(kept):
            got = BlockMatrix.from_mllib(kept["product"])
            return check(got.to_scipy() if case.is_sparse else got.to_numpy(), expected)

        def unpersist_mllib():
            for m in (mA, mB):
                mllib_interop.java_blocks(m).unpersist(True)

        return Contender(name, row, run_mllib, check_mllib, tolerance, sc, unpersist_mllib)
    strategy, keywords = strategy_of(name)

    def run_ours(kept):
        kept["product"] = product = A.multiply(B, strategy=strategy, **keywords)
        product.blocks.count()

    def check_ours(kept):
        product = kept["product"]
        plan = product.plan
        by_reference = getattr(plan, "by_reference", False) or \
            getattr(plan, "delivery", "") == "driver-file"
        row.update(ran=plan.strategy + (" ref" if by_reference else ""),
                   predicted_shuffle_bytes=plan.shuffle_bytes)
        return check(product.to_scipy() if case.is_sparse else product.to_numpy(), expected)

    return Contender(name, row, run_ours, check_ours, tolerance, sc)


def spark_only(matrix: BlockMatrix) -> BlockMatrix:
    """The same matrix as the persisted product ``matrix @ I`` of a multiply (computed here).

    Its blocks live nowhere but in Spark: no strategy can read them from the driver or a file.
    The identity is CSR, so the product's blocks are exactly the operand's.
    """
    n = matrix.shape[1]
    eye = BlockMatrix.from_numpy(matrix.blocks.context, sp.identity(n, format="csr"),
                                 matrix.cols_per_block, matrix.cols_per_block,
                                 num_partitions=matrix.blocks.getNumPartitions())
    product = matrix.multiply(eye, strategy="inner").persist()
    product.blocks.count()
    matrix.unpersist()
    return product


# ------------------------------------------------------------------------ file to file cases
NUMPY_MULTIPLY = """
import sys, h5py
(a_path, a_name), (b_path, b_name), (c_path, c_name) = (s.split("::") for s in sys.argv[1:4])
with h5py.File(a_path, "r") as f:
    a = f[a_name][()]
with h5py.File(b_path, "r") as f:
    b = f[b_name][()]
c = a @ b
del a, b
with h5py.File(c_path, "a") as f:
    if c_name in f:
        del f[c_name]
    f.create_dataset(c_name, data=c)
"""


def ensure_input(path: Path, dataset: str, shape, chunks, seed: int) -> None:
    """Generate ``path::dataset`` (seeded, block by block) unless it is already there."""
    if path.exists():
        with h5py.File(path, "r") as f:
            if (dataset in f and f[dataset].shape == tuple(shape)
                    and f[dataset].chunks == (tuple(chunks) if chunks else None)):
                return
        path.unlink()
    make_sample.write_sample(str(path), dataset, *shape, seed=seed, chunks=chunks)


def file_commands(case: FileCase, folder: Path, master: str) -> tuple[dict, list[Path], tuple]:
    """Each contender's command line, the input files, and where each writes its result."""
    if case.kind == "gram":
        x = folder / f"{case.name}.h5"
        ours = [sys.executable, str(HERE / "gram.py"), f"{x}::/X", f"{x}::/Y_auto",
                "--overwrite", "--master", master]
        numpy = [sys.executable, "-c", bench_gram.NUMPY_SCRIPT, str(x), "/X", "/Y_numpy"]
        return {"auto": ours, "numpy": numpy}, [x], ((x, "/Y_auto"), (x, "/Y_numpy"))
    a, b = folder / f"{case.name}-A.h5", folder / f"{case.name}-B.h5"
    outs = {name: folder / f"{case.name}-C-{name}.h5" for name in ("auto", "numpy")}
    ours = [sys.executable, str(HERE / "multiply.py"), f"{a}::/A", f"{b}::/B",
            f"{outs['auto']}::/C", "--block-size", str(case.block), "--overwrite",
            "--master", master]
    numpy = [sys.executable, "-c", NUMPY_MULTIPLY, f"{a}::/A", f"{b}::/B",
             f"{outs['numpy']}::/C"]
    return ({"auto": ours, "numpy": numpy}, [a, b],
            ((outs["auto"], "/C"), (outs["numpy"], "/C")))


def relative_difference(got: tuple, expected: tuple, band: int = 1024) -> float:
    """Largest ``|got - expected|`` over ``max |expected|``, read band by band."""
    with h5py.File(got[0], "r") as fg, h5py.File(expected[0], "r") as fe:
        g, e = fg[got[1]], fe[expected[1]]
        diff = scale = 0.0
        for r0 in range(0, e.shape[0], band):
            eb = e[r0:r0 + band]
            diff = max(diff, float(np.abs(g[r0:r0 + band] - eb).max(initial=0.0)))
            scale = max(scale, float(np.abs(eb).max(initial=0.0)))
    return diff / max(scale, 1.0)


def run_file_case(case: FileCase, args) -> list[dict]:
    """The job and numpy on one file case, each as whole processes; one row each."""
    folder = Path(args.data).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    commands, inputs, (ours_out, numpy_out) = file_commands(case, folder, args.master)
    if case.kind == "gram":
        ensure_input(inputs[0], "/X", case.a_shape, case.chunks, args.seed)
    else:
        ensure_input(inputs[0], "/A", case.a_shape, case.chunks, args.seed)
        ensure_input(inputs[1], "/B", case.b_shape, case.chunks, args.seed + 1)
    rows = []
    names = [name for name in ("numpy", "auto") if name in args.contenders]  # the limit first
    runs = {name: [] for name in names}
    for round_number, name in schedule(names, args.repeats, args.interleave):
        if runs[name] and runs[name][-1]["wall_s"] > args.long_run:
            continue
        warm_page_cache(*inputs)
        log = folder / f"{case.name}-{name}-{len(runs[name])}.log"
        runs[name].append(dict(measure(commands[name], log), round=round_number))
    for name in names:
        times = [r["wall_s"] for r in runs[name]]
        row = {"case": case.name, "contender": name,
               "ran": f"{case.kind} job" if name == "auto" else "numpy script",
               "times_s": [round(t, 6) for t in times], "median_s": statistics.median(times),
               "runs": len(times), "peak_rss_bytes": max(r["peak_rss"] for r in runs[name]),
               "cpu_s_per_run": {"total": round(statistics.mean(
                   r["cpu_s"] for r in runs[name]), 3)},
               "checked": name == "numpy", "max_abs_error": 0.0,
               "reference": name == "numpy",
               "processes": max(r["processes"] for r in runs[name])}
        if args.interleave:
            row["rounds"] = [r["round"] for r in runs[name]]
        if name == "auto" and "numpy" in args.contenders:
            row["max_abs_error"] = relative_difference(ours_out, numpy_out)
            row["checked"] = True
            if row["max_abs_error"] > 1e-9:
                raise AssertionError(f"{case.name}: the job's result differs from numpy's "
                                     f"(relative {row['max_abs_error']:.2e})")
        rows.append(row)
        print(f"{case.name:<28} {name:<10} median {row['median_s']:8.3f} s "
              f"({row['runs']} runs)  peak {format_bytes(row['peak_rss_bytes'])}", flush=True)
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Each row's time over the reference's (``x_numpy``) and MLlib's over it.

    Runs interleaved in rounds (rows with ``rounds``) are compared round by round.
    """
    base = next((r for r in rows if r.get("reference") and "median_s" in r), None)
    mllib = next((r for r in rows if r["contender"] == "mllib" and "median_s" in r), None)
    for row in rows:
        if "median_s" in row:
            row["x_numpy"] = ratio(row, base)
            row["mllib_speedup"] = ratio(mllib, row)


def ratio(slower: dict | None, faster: dict | None) -> float | None:
    """``slower``'s time over ``faster``'s, or None when either is missing.

    The median of the ratios of runs made in the same round when both ran in rounds, else
    the ratio of their medians.

    >>> ratio({"median_s": 3.0, "times_s": [2.0, 4.0, 3.0], "rounds": [0, 1, 2]},
    ...       {"median_s": 2.0, "times_s": [1.0, 4.0, 2.0], "rounds": [0, 1, 2]})
    1.5
    >>> ratio({"median_s": 3.0}, {"median_s": 2.0}), ratio({"median_s": 3.0}, None)
    (1.5, None)
    """
    if slower is None or faster is None or not faster["median_s"]:
        return None
    if "rounds" in slower and "rounds" in faster:
        by_round = dict(zip(faster["rounds"], faster["times_s"], strict=True))
        pairs = [t / by_round[r] for r, t in zip(slower["rounds"], slower["times_s"],
                                                 strict=True) if by_round.get(r)]
        if pairs:
            return round(statistics.median(pairs), 3)
    return round(slower["median_s"] / faster["median_s"], 3)


def blas_in_use() -> str:
    """Which BLAS numpy runs, for the figures: ratios to MLlib (Java BLAS) depend on it.

    ``OPENBLAS_CORETYPE`` in the environment overrides OpenBLAS's choice of kernels for the
    CPU (on the reference machine, ``Haswell``'s AVX2 ran a float64 matmul at 100-110 GFLOP/s
    on two cores against 155-180 with the AVX-512 kernels OpenBLAS picks there by itself).
    Every contender here and in its child processes (numpy, the jobs, Spark's Python
    workers) loads the same BLAS with the same environment; MLlib's JVM does not use it.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl is not installed)"
    libraries = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}"
                 for i in threadpool_info() if i.get("user_api") == "blas"]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return (", ".join(libraries) or "none loaded") + (
        f" (OPENBLAS_CORETYPE={forced} in the environment)" if forced else "")


def warm_up(sc, contenders) -> None:
    """Start the Python workers and load every code path once, untimed."""
    a = np.arange(64.0).reshape(8, 8)
    A = BlockMatrix.from_numpy(sc, a, 2, 2, num_partitions=sc.defaultParallelism)
    for name in contenders:
        if name in STRATEGIES or name in VARIANTS:
            strategy, keywords = strategy_of(name)
            A.multiply(A, strategy=strategy, **keywords).blocks.count()
        elif name == "mllib":
            m = A.to_mllib()
            mllib_interop.java_blocks(m.multiply(m)).count()


def _storage_level():
    from pyspark import StorageLevel

    return StorageLevel.MEMORY_AND_DISK


# ---------------------------------------------------------------------------------- output
def table(rows: list[dict]) -> str:
    """A plain-text table of the rows."""
    head = (f"{'case':<28} {'contender':<10} {'ran':<10} {'median s':>9} {'x numpy':>8} "
            f"{'MLlib/x':>8} {'shuffle':>11} {'peak RSS':>10} {'max err':>9} "
            f"{'CPU s/run: JVM':>14} {'workers':>7} {'driver':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "median_s" not in r:
            lines.append(f"{r['case']:<28} {r['contender']:<10} {r.get('refused', '')[:70]}")
            continue
        shuffle = format_bytes(r["shuffle_write_bytes"]) if "shuffle_write_bytes" in r else "-"
        cpu = {kind: r["cpu_s_per_run"].get(kind, float("nan")) for kind in CPU_KINDS}
        lines.append(
            f"{r['case']:<28} {r['contender']:<10} {r['ran']:<10} {r['median_s']:>9.3f} "
            f"{_fmt(r.get('x_numpy'))} {_fmt(r.get('mllib_speedup'))} {shuffle:>11} "
            f"{format_bytes(r['peak_rss_bytes']):>10} {r['max_abs_error']:>9.1e} "
            f"{cpu['jvm']:>14.2f} {cpu['python workers']:>7.2f} {cpu['python']:>6.2f}")
    return "\n".join(lines)


def _fmt(x) -> str:
    return f"{x:>8.2f}" if x is not None else f"{'-':>8}"


def write_json(path: str, meta: dict, rows: list[dict], started: float) -> None:
    """Write the figures so far (with the machine's load average, since it may be shared)."""
    meta = dict(meta, duration_s=round(time.time() - started, 1),
                load_average=os.getloadavg())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)


def main(argv=None) -> int:
    """Run the benchmark; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.time()
    file_cases = [c for c in args.case_list if isinstance(c, FileCase)]
    spark_cases = [c for c in args.case_list if not isinstance(c, FileCase)]
    meta = {"command": " ".join(["python", "jobs/benchmark.py", *argv]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "repeats": args.repeats, "contenders": args.contenders, "quick": args.quick,
            "interleave": args.interleave, "warm_up": args.warm_up,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas_in_use(),
            "cases": [c.__dict__ for c in args.case_list]}
    print(f"BLAS: {meta['blas']}", flush=True)
    rows = []
    # Whole processes first, while this job has no JVM of its own taking memory.
    for case in file_cases:
        rows.extend(run_file_case(case, args))
        if args.out:  # after every case, so a long run that is stopped keeps its figures
            write_json(args.out, meta, rows, started)
    if spark_cases:
        rows.extend(run_spark_cases(spark_cases, args, meta, rows, started))
    if args.interleave:
        print("x numpy and MLlib/x: medians of the ratios of runs made in the same round")
    print(table(rows))
    if args.out:
        write_json(args.out, meta, rows, started)
        print(f"wrote {args.out}")
    return 0


def run_spark_cases(cases, args, meta: dict, rows_so_far: list, started: float) -> list[dict]:
    """The in-process cases on this job's own Spark; their rows."""
    sc = spark_context(args.master, app_name="blockmatrix benchmark",
                       extra_conf={"spark.ui.showConsoleProgress": "false", **args.extra_conf})
    meta["spark_conf"] = {k: v for k, v in sc.getConf().getAll()
                          if k.startswith(("spark.shuffle", "spark.python", "spark.driver.memory",
                                           "spark.executor.memory", "spark.buffer",
                                           "spark.master", "spark.default.parallelism"))}
    rng = np.random.default_rng(args.seed)
    rows = []
    try:
        warm_up(sc, args.contenders)
        for case in cases:
            rows.extend(run_case(sc, case, args, rng))
            if args.out:
                write_json(args.out, meta, rows_so_far + rows, started)
    finally:
        sc.stop()
    return rows


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:], PROG))
