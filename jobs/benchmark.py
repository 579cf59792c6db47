"""Benchmark every strategy against numpy / scipy.sparse and Spark MLlib, side by side.

Usage::

    python jobs/benchmark.py [--cases dense-2048,dense-4096,...] [--repeats 3]
        [--contenders inner,outer,pasa,broadcast,auto,numpy,mllib] [--out bench.json]
        [--master local[2]] [--conf KEY=VALUE ...] [--long-run 60] [--quick]
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

Every contender's product is collected once (outside the timing) and compared with the
single-process result; a wrong product stops the job. Times are the median of ``--repeats``
runs (fewer when a run takes longer than ``--long-run`` seconds). Shuffle bytes are what Spark
measured (:mod:`blockmatrix.metrics`); peak memory is the summed resident memory of the whole
process tree (driver, JVM, Python workers; ``jobs/_support/memory.py``) while the contender ran,
and the CPU seconds per run of each kind of process (the JVM, the Python workers, the Python
driver): where the seconds go.
The job prints a table and writes JSON (``--out``).

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
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
from _support.memory import TreePeakRSS
from _support.processes import measure, warm_page_cache
from py4j.protocol import Py4JJavaError

from blockmatrix import BlockMatrix, strategies
from blockmatrix.cli.common import OneLineArgumentParser, positive_int, run
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
def timed_runs(fn, repeats: int, long_run: float, sc=None, label: str = ""):
    """Run ``fn`` up to ``repeats`` times; times, peak tree RSS, Spark's shuffle figures."""
    times, metrics = [], None
    with TreePeakRSS(_root_pid(), interval=0.05) as peak:
        for _ in range(repeats):
            if sc is None:
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            else:
                with record(sc, label) as m:
                    fn()
                times.append(m.wall_time_s)
                metrics = m
            if times[-1] > long_run:
                break
    cpu = peak.cpu_seconds_by_kind()
    out = {"times_s": [round(t, 4) for t in times], "median_s": statistics.median(times),
           "runs": len(times), "peak_rss_bytes": peak.peak_bytes,
           "cpu_s_per_run": {kind: round(cpu.get(kind, 0.0) / len(times), 3)
                             for kind in CPU_KINDS}}
    if metrics is not None:
        out.update(shuffle_stages=metrics.shuffle_stages,
                   shuffle_write_bytes=metrics.shuffle_write_bytes,
                   spark_tasks=metrics.num_tasks)
    return out


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
    rows = []
    limit = "scipy" if case.is_sparse else "numpy"
    for name in args.contenders:
        strategy, keywords = strategy_of(name)
        if not takes(strategy, "spark" if case.spark_only else "driver"):
            print(f"{case.name:<28} {name:<10} not run: its operands live only in Spark, and "
                  f"{strategy} multiplies arrays the driver holds", flush=True)
            continue
        row = {"case": case.name, "contender": limit if name == "numpy" else name,
               "ran": name}
        tasks = A.explain_multiply(B, strategy=strategy)[strategy].num_tasks \
            if strategy in STRATEGIES else 0
        if tasks > MAX_TASKS:
            row.update(refused=f"skipped: {name} would run {tasks} tasks in one stage "
                               f"(> {MAX_TASKS})", checked=False)
            rows.append(row)
            print(f"{case.name:<28} {name:<10} {row['refused']}", flush=True)
            continue
        if name == "numpy":
            row.update(timed_runs(lambda: a @ b, args.repeats, args.long_run))
            row.update(max_abs_error=0.0, checked=True, reference=True)
        elif name == "mllib":
            mA, mB = A.to_mllib(), B.to_mllib()
            for m in (mA, mB):
                m.persist(_storage_level())
                mllib_interop.java_blocks(m).count()
            product = None

            def multiply_mllib(mA=mA, mB=mB):
                nonlocal product
                product = mA.multiply(mB)
                mllib_interop.java_blocks(product).count()

            try:
                row.update(timed_runs(multiply_mllib, args.repeats, args.long_run, sc,
                                      f"{case.name} mllib"))
            except Py4JJavaError as exc:  # e.g. MLlib's one reducer out of JVM heap
                cause = str(exc.java_exception).splitlines()[0]
                row.update(refused=f"failed: {cause}"[:200], checked=False)
                rows.append(row)
                print(f"{case.name:<28} {name:<10} {row['refused']}", flush=True)
                if mllib_interop.context_stopped(sc):
                    raise
                continue
            got = BlockMatrix.from_mllib(product)
            row["max_abs_error"] = check(got.to_scipy() if case.is_sparse else got.to_numpy(),
                                         expected)
            row["checked"] = True
            for m in (mA, mB):
                mllib_interop.java_blocks(m).unpersist(True)
        else:
            product = None

            def multiply_ours(strategy=strategy, keywords=keywords):
                nonlocal product
                product = A.multiply(B, strategy=strategy, **keywords)
                product.blocks.count()

            try:
                row.update(timed_runs(multiply_ours, args.repeats, args.long_run, sc,
                                      f"{case.name} {name}"))
            except InvalidParameterError as exc:  # e.g. broadcast over the memory budget
                row.update(refused=str(exc), checked=False)
                rows.append(row)
                print(f"{case.name:<28} {name:<10} refused: {exc}", flush=True)
                continue
            by_reference = getattr(product.plan, "by_reference", False) or \
                getattr(product.plan, "delivery", "") == "driver-file"
            row["ran"] = product.plan.strategy + (" ref" if by_reference else "")
            row["predicted_shuffle_bytes"] = product.plan.shuffle_bytes
            row["max_abs_error"] = check(
                product.to_scipy() if case.is_sparse else product.to_numpy(), expected)
            row["checked"] = True
        if row["max_abs_error"] > 1e-8 * scale:
            raise AssertionError(f"{case.name} {name}: wrong product "
                                 f"(max abs error {row['max_abs_error']:.3e}, scale {scale:.3e})")
        rows.append(row)
        print(f"{case.name:<28} {row['contender']:<10} median {row['median_s']:8.3f} s "
              f"({row['runs']} runs)  peak {format_bytes(row['peak_rss_bytes'])}", flush=True)
    A.unpersist()
    B.unpersist()
    add_ratios(rows)
    return rows


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
    for name in ("numpy", "auto"):  # the limit first, as in the other cases
        if name not in args.contenders:
            continue
        runs = []
        for rep in range(args.repeats):
            warm_page_cache(*inputs)
            runs.append(measure(commands[name], folder / f"{case.name}-{name}-{rep}.log"))
            if runs[-1]["wall_s"] > args.long_run:
                break
        times = [r["wall_s"] for r in runs]
        row = {"case": case.name, "contender": name,
               "ran": f"{case.kind} job" if name == "auto" else "numpy script",
               "times_s": [round(t, 4) for t in times], "median_s": statistics.median(times),
               "runs": len(runs), "peak_rss_bytes": max(r["peak_rss"] for r in runs),
               "cpu_s_per_run": {"total": round(statistics.mean(r["cpu_s"] for r in runs), 3)},
               "checked": name == "numpy", "max_abs_error": 0.0,
               "reference": name == "numpy", "processes": max(r["processes"] for r in runs)}
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
    """Each row's time over the reference's (``x_numpy``) and MLlib's over it."""
    base = next((r["median_s"] for r in rows if r.get("reference")), None)
    mllib = next((r["median_s"] for r in rows if r["contender"] == "mllib" and "median_s" in r),
                 None)
    for row in rows:
        if "median_s" not in row:
            continue
        row["x_numpy"] = round(row["median_s"] / base, 3) if base else None
        row["mllib_speedup"] = round(mllib / row["median_s"], 3) if mllib else None


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
            lines.append(f"{r['case']:<28} {r['contender']:<10} refused: "
                         f"{r.get('refused', '')[:60]}")
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
