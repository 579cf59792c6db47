"""C = A B for matrices in HDF5 files, on Spark.

Usage::

    python jobs/multiply.py A.h5::/A B.h5::/B C.h5::/C --block-size 1024 [--strategy auto]
        [--master URL] [--num-mid-splits S] [--num-partitions P] [--overwrite] [--verify]
        [--tile N] [--slab N] [--resume]
    spark-submit --properties-file conf/spark-defaults.conf jobs/multiply.py ...

Every check (arguments, input files and datasets, shapes, the output location) runs before
Spark starts and before anything is written; a rejected request prints one line on stderr and
exits with code 2. The job prints the plan, then what it did, and the wall time.
``--verify`` reads A, B and C back on the driver and compares C with numpy.

Both operands and C are files, so ``auto`` (the default) runs the out-of-core strategy ``ooc``
for floating-point operands: tiles of C computed by tasks that read slabs of A and B straight from
the files, written by the driver as they finish, in memory set by ``--tile`` and ``--slab``
(printed before the start), never through the JVM heap; a killed run continues with
``--resume``. Other strategies (``--strategy inner``, ...) read the blocks through Spark and
report the stages and shuffle bytes Spark measured.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext

import numpy as np

from blockmatrix import STRATEGIES, BlockMatrix
from blockmatrix.cli.common import (
    PROGRESS_CHOICES,
    OneLineArgumentParser,
    positive_int,
    program,
    progress_conf,
    run,
)
from blockmatrix.errors import InvalidParameterError, ShapeMismatchError, raised_from_tasks
from blockmatrix.io import hdf5
from blockmatrix.metrics import record
from blockmatrix.ooc import DEFAULT_SLAB, check_matmul_request, matmul_hdf5, output_lock
from blockmatrix.plan import MultiplyOptions
from blockmatrix.progress import StageProgress
from blockmatrix.session import spark_context
from blockmatrix.sparkconf import local_spill_folder, multiply_defaults
from blockmatrix.strategies import get_strategy
from blockmatrix.units import format_bytes

PROG = "multiply.py"


def make_parser() -> OneLineArgumentParser:
    """The command line's parser (the bad-input tests check every flag has a refusal row)."""
    parser = OneLineArgumentParser(prog=program(PROG), description=__doc__.split("\n\n")[0])
    parser.add_argument("a", metavar="A.h5::/A", help="left operand")
    parser.add_argument("b", metavar="B.h5::/B", help="right operand")
    parser.add_argument("c", metavar="C.h5::/C", help="output dataset")
    parser.add_argument("--block-size", type=positive_int, required=True,
                        help="rows and columns of a block")
    parser.add_argument("--strategy", default="auto", choices=sorted(STRATEGIES),
                        help="multiplication strategy (default: auto, which picks ooc for "
                             "floating-point files)")
    parser.add_argument("--master", default=None,
                        help="Spark master URL (default local[*]; ignored under spark-submit)")
    parser.add_argument("--num-mid-splits", type=positive_int, default=1,
                        help="split the inner dimension over this many reducers (default 1)")
    parser.add_argument("--num-partitions", type=positive_int, default=None,
                        help="suggested number of result partitions")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing C")
    parser.add_argument("--verify", action="store_true",
                        help="compare C with numpy's A @ B on the driver afterwards")
    parser.add_argument("--tile", type=positive_int, default=None,
                        help="ooc: rows and columns of a tile of C (default: balanced over the "
                             "cores; with --resume, the interrupted run's)")
    parser.add_argument("--slab", type=positive_int, default=None,
                        help=f"ooc: elements of the inner dimension read per step (default "
                             f"{DEFAULT_SLAB}; with --resume, the interrupted run's)")
    parser.add_argument("--resume", action="store_true",
                        help="ooc: continue an interrupted run from its finished tiles")
    parser.add_argument("--progress", choices=PROGRESS_CHOICES, default="lines",
                        help="lines: one line per finished tile or stage (default); spark: "
                             "Spark's console progress bar instead")
    return parser


def parse_args(argv):
    """Parse the command line."""
    return make_parser().parse_args(argv)


OOC_FLAGS = ("tile", "slab", "resume")


def check_request(args):
    """Validate files, shapes and the output location; nothing is written."""
    a_path, a_name = hdf5.parse_location(args.a, "A")
    b_path, b_name = hdf5.parse_location(args.b, "B")
    c_path, c_name = hdf5.parse_location(args.c, "C")
    a_shape, a_dtype, _ = hdf5.inspect_input(a_path, a_name, "A")
    b_shape, b_dtype, _ = hdf5.inspect_input(b_path, b_name, "B")
    if a_shape[1] != b_shape[0]:
        raise ShapeMismatchError(
            f"A.shape[1] ({a_shape[1]}) != B.shape[0] ({b_shape[0]}): A is "
            f"{a_shape[0]}x{a_shape[1]} and B is {b_shape[0]}x{b_shape[1]}, so A B is undefined")
    for name, (path, dataset) in (("A", (a_path, a_name)), ("B", (b_path, b_name))):
        if os.path.exists(c_path) and os.path.samefile(path, c_path) and dataset == c_name:
            raise InvalidParameterError(
                f"C ({args.c}) is the input dataset {name} ({path}::{dataset}): writing it would "
                f"destroy an input; choose another output dataset")
    floating = a_dtype.kind == "f" and b_dtype.kind == "f"
    if args.strategy not in ("ooc", "auto") or not floating:
        if args.resume:
            raise InvalidParameterError(
                f"--resume continues an out-of-core run (--strategy ooc or auto, floating-point "
                f"operands; here {args.strategy}, A {a_dtype}, B {b_dtype}): run without "
                f"--resume")
        hdf5.check_output(c_path, c_name, overwrite=args.overwrite, param="C")
        hdf5.check_output_space(c_path, c_name, (a_shape[0], b_shape[1]),
                                np.result_type(a_dtype, b_dtype))
        # One writer per output: refuse now if another job holds C's lock (to_hdf5 takes it).
        with output_lock(hdf5.lock_path_of(c_path), c_path, job="multiply"):
            pass
        return (a_path, a_name), (b_path, b_name), (c_path, c_name), None
    # Checked before Spark starts: the output, the resume state, another job's lock.
    ooc_request = check_matmul_request((a_path, a_name), (b_path, b_name), c_path, c_name,
                                       args.tile, args.slab, args.resume, args.overwrite)
    return (a_path, a_name), (b_path, b_name), (c_path, c_name), ooc_request


def refuse_ooc_flags(args, strategy: str) -> None:
    """--tile, --slab and --resume mean nothing to a Spark strategy: refuse before writing."""
    given = [f"--{name}" for name in OOC_FLAGS if getattr(args, name) not in (None, False)]
    if given:
        raise InvalidParameterError(
            f"{', '.join(given)} apply to the out-of-core strategy only, and the chosen "
            f"strategy is {strategy}: pass --strategy ooc, or drop {', '.join(given)}")


def run_out_of_core(sc, args, request, start: float) -> int:
    """C = A @ B file to file (blockmatrix.ooc.matmul_hdf5); prints the tiles and the run.

    The plan printed is the run's own (its tiles are square and need not follow the blocks,
    since C goes straight to the file), not the strategy's plan of block-aligned tiles that
    auto weighed: that one describes C as an RDD of blocks.
    """
    result = matmul_hdf5(sc, request.operands[0], request.operands[1],
                         (request.output_path, request.output_dataset), request=request,
                         progress=lambda report: print(f"multiply: {report}", flush=True),
                         on_plan=lambda tiles: print(
                             f"plan:\n  strategy: ooc, file to file, no shuffle\n{tiles}",
                             flush=True))
    wall = time.perf_counter() - start
    print(result)
    print(f"predicted peak resident memory {result.plan.total_bytes / 2**20:,.0f} MiB; wall "
          f"time {wall:.2f} s (master {sc.master})")
    return 0


def verify(a_loc, b_loc, c_loc) -> float:
    """Largest relative error of C against numpy's A @ B (reads all three on the driver).

    NaN and infinite entries must sit where numpy's are (``inf`` if they differ); the error is
    measured on the finite entries.
    """
    import h5py

    def load(loc):
        with h5py.File(loc[0], "r") as f:
            return f[loc[1]][()]

    with np.errstate(invalid="ignore", over="ignore"):
        expected = load(a_loc) @ load(b_loc)
    actual = load(c_loc)
    finite = np.isfinite(expected)
    same_non_finite = np.array_equal(np.isnan(actual), np.isnan(expected)) and np.array_equal(
        actual[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    if not same_non_finite:
        return float("inf")
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    return float(np.abs(actual[finite] - expected[finite]).max(initial=0.0)) / scale


def main(argv=None) -> int:
    """Run the job; returns the process exit code."""
    args = parse_args(argv)
    a_loc, b_loc, c_loc, ooc_request = check_request(args)
    if ooc_request is None:
        refuse_ooc_flags(args, args.strategy)
    elif ooc_request.complete:  # --resume of a finished run: nothing to do, no Spark
        print(ooc_request.note)
        return 0
    elif ooc_request.note:
        print(ooc_request.note, flush=True)
    sc = spark_context(args.master, app_name="blockmatrix multiply",
                       extra_conf=progress_conf(args.progress))
    try:
        return multiply(sc, args, a_loc, b_loc, c_loc, ooc_request)
    finally:
        sc.stop()


def multiply(sc, args, a_loc, b_loc, c_loc, ooc_request) -> int:
    """Plan with the chosen strategy, run it, write C, report and verify."""
    start = time.perf_counter()
    # File to file, auto means ooc (check_request made an out-of-core request only for ooc and
    # auto on floating-point files): the plans' cost model does not price C's trip through the
    # driver and the JVM heap that every other strategy's to_hdf5 takes (an OutOfMemoryError
    # at n = 8192 with the shipped 2g), and ooc's writer never takes it.
    if ooc_request is not None:
        status = run_out_of_core(sc, args, ooc_request, start)
        dtype = np.dtype(ooc_request.dtype)
    else:
        A = BlockMatrix.from_hdf5(sc, *a_loc, args.block_size, args.block_size)
        B = BlockMatrix.from_hdf5(sc, *b_loc, args.block_size, args.block_size)
        options = MultiplyOptions.merged(
            multiply_defaults(sc), {"num_partitions": args.num_partitions,
                                    "num_mid_splits": args.num_mid_splits})
        plan = get_strategy(args.strategy).plan(A.layout(), B.layout(), options)
        refuse_ooc_flags(args, plan.strategy)
        plan.check_runnable()  # e.g. ooc on integer data: one line, before anything is written
        spill = local_spill_folder(sc)
        need = f"{format_bytes(plan.shuffle_bytes)} of shuffle files"
        if spill is not None:
            hdf5.check_space(spill, plan.shuffle_bytes, f"the {plan.strategy} multiply's "
                             f"shuffle", param="spill")
        lines = StageProgress(sc, plan.flops) if args.progress == "lines" else nullcontext()
        with record(sc, f"multiply ({args.strategy})") as measured, \
                raised_from_tasks(spill, need), lines:
            C = A.multiply(B, strategy=args.strategy, num_partitions=args.num_partitions,
                           num_mid_splits=args.num_mid_splits)
            written = C.to_hdf5(*c_loc, overwrite=args.overwrite)
        wall = time.perf_counter() - start
        print(f"plan:\n{C.plan}")
        print(measured)
        print(f"wrote {written} blocks of C ({C.shape[0]}x{C.shape[1]}) to {args.c} "
              f"in {wall:.2f} s (master {sc.master})")
        status = 0
        dtype = np.dtype(C.layout().dtype)
    if args.verify:
        error = verify(a_loc, b_loc, c_loc)
        tol = 1e-4 if dtype == np.float32 else 1e-9
        ok = error <= tol
        print(f"verified against numpy: max relative error {error:.2e} "
              f"({'OK' if ok else 'MISMATCH'}, tolerance {tol:.0e})")
        status = 0 if ok else 1
    return status


def cli(argv=None) -> int:
    """The command line: ``main(argv)`` with refusals as one stderr line and exit code 2."""
    return run(main, argv, program(PROG))
