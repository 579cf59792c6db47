"""C = A B for matrices in HDF5 files, Zarr arrays or Parquet tables, on Spark.

Usage::

    python jobs/multiply.py A.h5::/A B.h5::/B C.h5::/C --block-size 1024 [--strategy auto]
        [--master URL] [--num-mid-splits S] [--num-partitions P] [--overwrite] [--verify]
        [--tile N] [--slab N] [--resume]
    spark-submit --properties-file conf/spark-defaults.conf jobs/multiply.py ...

A, B and C are each ``FILE.h5::/dataset``, ``zarr:URL`` (a local folder or object storage such
as ``zarr:s3://bucket/a.zarr``, credentials from the environment; the ``zarr`` extra) or
``parquet:PATH`` (a table of coordinates ``i, j, v`` or rows ``i, vector``, as
``BlockMatrix.to_coordinates`` / ``to_rows`` write it; C is written as coordinates). Every
output is published only when complete.

Every check (arguments, input files and datasets, shapes, the output location) runs before
Spark starts and before anything is written; a Parquet table's columns and shape are checked
once Spark read it, still before anything is written. A rejected request prints one line on
stderr and exits with code 2. The job prints the plan, then what it did, and the wall time.
``--verify`` reads A, B and C back on the driver and compares C with numpy.

When the operands and C are HDF5 files, ``auto`` (the default) runs the out-of-core strategy ``ooc``
for floating-point operands: tiles of C computed from slabs of A and B read straight from the
files, written by the driver as they finish, in memory set by ``--tile`` and ``--slab``
(printed before the start), never through the JVM heap; a killed run continues with
``--resume``. With a local master (the default) the tiles are computed in this process, one at
a time on every core, and Spark is not started at all; ``--runner spark`` makes them Spark
tasks. Other strategies (``--strategy inner``, ...) read the blocks through Spark and
report the stages and shuffle bytes Spark measured.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from blockmatrix import STRATEGIES
from blockmatrix.cli import locations
from blockmatrix.cli.common import (
    PROGRESS_CHOICES,
    OneLineArgumentParser,
    add_runner_argument,
    given_flags,
    in_process_cores,
    positive_int,
    program,
    progress_conf,
    run,
    where_it_ran,
)
from blockmatrix.errors import InvalidParameterError, raised_from_tasks
from blockmatrix.io import hdf5
from blockmatrix.memory import STREAM, MemoryConf, check_exit, check_plan
from blockmatrix.metrics import record
from blockmatrix.ooc import DEFAULT_SLAB, check_matmul_request, matmul_hdf5
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
    where = "FILE.h5::/dataset, zarr:URL or parquet:PATH"
    parser.add_argument("a", metavar="A", help=f"left operand: {where}")
    parser.add_argument("b", metavar="B", help=f"right operand: {where}")
    parser.add_argument("c", metavar="C", help=f"output: {where}")
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
    add_runner_argument(parser)
    parser.add_argument("--progress", choices=PROGRESS_CHOICES, default="lines",
                        help="lines: one line per finished tile or stage (default); spark: "
                             "Spark's console progress bar instead")
    return parser


def parse_args(argv):
    """Parse the command line."""
    return make_parser().parse_args(argv)


OOC_FLAGS = ("tile", "slab", "resume", "runner")


def check_request(args):
    """Validate the locations, shapes and the output; nothing is written.

    Returns the three locations and the out-of-core request (None on the Spark path). A
    Parquet operand's shape is known only once Spark read it: :func:`read_operands` checks it.
    """
    a, b, c = (locations.parse(spec, name) for spec, name in ((args.a, "A"), (args.b, "B"),
                                                             (args.c, "C")))
    a_meta, b_meta = a.inspect("A"), b.inspect("B")
    if a_meta is not None and b_meta is not None:
        locations.check_shapes(a_meta[0], b_meta[0])
    for name, operand in (("A", a), ("B", b)):
        if c.same_as(operand):
            raise InvalidParameterError(
                f"C ({args.c}) is {operand.describe_input(name)}: writing it would destroy an "
                f"input; choose another output {'dataset' if c.kind == 'hdf5' else 'path'}")
    files = locations.out_of_core(a, b, c)
    floating = files and a_meta[1].kind == "f" and b_meta[1].kind == "f"
    if args.strategy not in ("ooc", "auto") or not floating:
        if args.resume:
            raise InvalidParameterError(
                f"--resume continues an out-of-core run (--strategy ooc or auto, floating-point "
                f"operands in HDF5 files or Zarr arrays; here {args.strategy}, "
                f"A {_kind_of(a, a_meta)}, "
                f"B {_kind_of(b, b_meta)}): run without --resume")
        shape = None if a_meta is None or b_meta is None else (a_meta[0][0], b_meta[0][1])
        dtype = None if shape is None else np.result_type(a_meta[1], b_meta[1])
        # One writer per output: refused now if another job holds C's lock (the writer takes it).
        c.check_output(shape, dtype, overwrite=args.overwrite, param="C", job="multiply")
        return a, b, c, None
    # Checked before Spark starts: the output, the resume state, another job's lock.
    ooc_request = check_matmul_request(a.ooc_operand(), b.ooc_operand(), *c.ooc_pair(), args.tile,
                                       args.slab, args.resume, args.overwrite)
    return a, b, c, ooc_request


def _kind_of(location, meta) -> str:
    return location.kind if meta is None else str(meta[1])


def refuse_ooc_flags(args, strategy: str) -> None:
    """--tile, --slab, --resume and --runner mean nothing to a Spark strategy: refuse them."""
    given = given_flags(args, OOC_FLAGS)
    if given:
        raise InvalidParameterError(
            f"{', '.join(given)} apply to the out-of-core strategy only, and the chosen "
            f"strategy is {strategy}: pass --strategy ooc, or drop {', '.join(given)}")


def run_out_of_core(sc, args, request, start: float, cores: int | None = None) -> int:
    """C = A @ B file to file (blockmatrix.ooc.matmul_hdf5); prints the tiles and the run.

    ``sc`` None computes the tiles in this process on ``cores`` BLAS threads. The plan printed
    is the run's own (its tiles are square and need not follow the blocks, since C goes
    straight to the file), not the strategy's plan of block-aligned tiles that auto weighed:
    that one describes C as an RDD of blocks.
    """
    c = request.output_zarr or (request.output_path, request.output_dataset)
    result = matmul_hdf5(sc, request.operands[0], request.operands[1], c, request=request,
                         progress=lambda report: print(f"multiply: {report}", flush=True),
                         on_plan=lambda tiles: print(
                             f"plan:\n  strategy: ooc, file to file, no shuffle\n{tiles}",
                             flush=True), cores=cores)
    wall = time.perf_counter() - start
    print(result)
    print(f"predicted peak resident memory {result.plan.total_bytes / 2**20:,.0f} MiB; wall "
          f"time {wall:.2f} s ({where_it_ran(cores, sc)})")
    return 0


def verify(sc, a, b, c) -> float:
    """Largest relative error of C against numpy's A @ B (reads all three on the driver).

    NaN and infinite entries must sit where numpy's are (``inf`` if they differ); the error is
    measured on the finite entries.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        expected = a.load(sc) @ b.load(sc)
    actual = c.load(sc)
    finite = np.isfinite(expected)
    same_non_finite = np.array_equal(np.isnan(actual), np.isnan(expected)) and np.array_equal(
        actual[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    if not same_non_finite:
        return float("inf")
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    return float(np.abs(actual[finite] - expected[finite]).max(initial=0.0)) / scale


def read_operands(sc, a, b, block_size: int):
    """A and B as block matrices; a Parquet operand's shape is checked here, once read."""
    A = a.read(sc, block_size, block_size)  # noqa: N806
    B = b.read(sc, block_size, block_size)  # noqa: N806
    locations.check_shapes(A.shape, B.shape)
    return A, B


def main(argv=None) -> int:
    """Run the job; returns the process exit code."""
    args = parse_args(argv)
    a, b, c, ooc_request = check_request(args)
    if ooc_request is None:
        refuse_ooc_flags(args, args.strategy)
    elif ooc_request.complete:  # --resume of a finished run: nothing to do, no Spark
        print(ooc_request.note)
        return 0
    elif ooc_request.note:
        print(ooc_request.note, flush=True)
    cores = None if ooc_request is None else in_process_cores(args.runner, args.master)
    if cores is not None:  # file to file on this machine: no Spark at all
        return multiply(None, args, a, b, c, ooc_request, cores)
    sc = spark_context(args.master, app_name="blockmatrix multiply",
                       extra_conf=progress_conf(args.progress))
    try:
        return multiply(sc, args, a, b, c, ooc_request)
    finally:
        sc.stop()


def multiply(sc, args, a, b, c, ooc_request, cores: int | None = None) -> int:
    """Plan with the chosen strategy, run it, write C, report and verify.

    ``sc`` is None for an out-of-core run in this process (on ``cores`` BLAS threads).
    """
    start = time.perf_counter()
    # File to file, auto means ooc (check_request made an out-of-core request only for ooc and
    # auto on floating-point files): the plans' cost model does not price C's trip through the
    # driver and the JVM heap that every other strategy's to_hdf5 takes (an OutOfMemoryError
    # at n = 8192 with the shipped 2g), and ooc's writer never takes it.
    if ooc_request is not None:
        status = run_out_of_core(sc, args, ooc_request, start, cores)
        dtype = np.dtype(ooc_request.dtype)
    else:
        A, B = read_operands(sc, a, b, args.block_size)  # noqa: N806
        conf = sc.getConf()
        options = MultiplyOptions.merged(
            multiply_defaults(sc, conf), {"num_partitions": args.num_partitions,
                                          "num_mid_splits": args.num_mid_splits})
        plan = get_strategy(args.strategy).plan(A.layout(), B.layout(), options)
        refuse_ooc_flags(args, plan.strategy)
        plan.check_runnable()  # e.g. ooc on integer data: one line, before anything is written
        # An HDF5 C streams through the driver's JVM heap one partition at a time (to_hdf5):
        # refuse now, in one line, what would end in an OutOfMemoryError after the multiply.
        memory = MemoryConf.from_conf(conf)
        check_plan(plan, memory)
        if c.kind == "hdf5":
            ooc_possible = a.kind == b.kind == "hdf5" and \
                np.dtype(A.dtype).kind == "f" and np.dtype(B.dtype).kind == "f"
            check_exit(plan, STREAM, memory, num_partitions_flag="--num-partitions",
                       fallback="use --strategy ooc, which writes C from the files without "
                                "passing it through the JVM heap" if ooc_possible else "")
        spill = local_spill_folder(conf)
        need = f"{format_bytes(plan.shuffle_bytes)} of shuffle files"
        if spill is not None:
            hdf5.check_space(spill, plan.shuffle_bytes, f"the {plan.strategy} multiply's "
                             f"shuffle", param="spill")
        lines = StageProgress(sc, plan.flops) if args.progress == "lines" else nullcontext()
        with record(sc, f"multiply ({args.strategy})") as measured, \
                raised_from_tasks(spill, need), lines:
            C = A.multiply(B, strategy=args.strategy, num_partitions=args.num_partitions,
                           num_mid_splits=args.num_mid_splits)
            written = c.write(C, overwrite=args.overwrite)
        wall = time.perf_counter() - start
        print(f"plan:\n{C.plan}")
        print(measured)
        print(f"wrote {written} of C ({C.shape[0]}x{C.shape[1]}) to {args.c} "
              f"in {wall:.2f} s (master {sc.master})")
        status = 0
        dtype = np.dtype(C.layout().dtype)
    if args.verify:
        error = verify(sc, a, b, c)
        tol = 1e-4 if dtype == np.float32 else 1e-9
        ok = error <= tol
        print(f"verified against numpy: max relative error {error:.2e} "
              f"({'OK' if ok else 'MISMATCH'}, tolerance {tol:.0e})")
        status = 0 if ok else 1
    return status


def cli(argv=None) -> int:
    """The command line: ``main(argv)`` with refusals as one stderr line and exit code 2."""
    return run(main, argv, program(PROG))
