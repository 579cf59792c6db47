"""Y = X X^T for a matrix X in HDF5, Zarr or Parquet, into any of them (even X's own file).

Usage::

    python jobs/gram.py INPUT.h5::/X OUTPUT.h5::/Y [--tile N] [--slab N] [--resume]
        [--overwrite] [--master URL] [--report FILE.json]
    python jobs/gram.py parquet:X.parquet parquet:Y.parquet [--block-size N] ...
    spark-submit --properties-file conf/spark-defaults.conf jobs/gram.py ...

Between HDF5 datasets and Zarr arrays (``zarr:URL``: a local folder or object storage such as
``zarr:s3://bucket/x.zarr``, credentials from the environment) the job runs out of core
(:func:`blockmatrix.ooc.gram_hdf5`; a Zarr output is written by the tasks, tile by tile, and
published when complete). Memory is bounded by --tile and --slab, not by the length of X:
the job prints its prediction of the peak resident memory of all its processes before it
starts. With a local master (the default) the tiles are computed in this process, one at a time
on every core, and Spark is not started at all (``--runner spark`` makes them Spark tasks).
Every check runs before Spark starts and before anything is written; a rejected
request prints one line on stderr and exits with code 2. A killed run continues with
--resume without computing its finished tiles again. With a Parquet input or output
(``parquet:PATH``, a table of coordinates ``i, j, v`` or rows ``i, vector``) it computes
``X @ X.T`` with the Spark strategies, in blocks of ``--block-size``, and writes Y (Parquet
as coordinates), published when complete.
``python jobs/gram.py`` runs embedded local Spark (``--master``, default ``local[*]``);
under spark-submit the file must be on storage every executor can read.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext

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
from blockmatrix.errors import InvalidParameterError, OutputNotWritableError, raised_from_tasks
from blockmatrix.io import hdf5
from blockmatrix.metrics import record
from blockmatrix.ooc import (
    DEFAULT_SLAB,
    DEFAULT_TILE,
    check_gram_request,
    gram_hdf5,
)
from blockmatrix.progress import StageProgress
from blockmatrix.session import spark_context

PROG = "gram.py"

#: Block size of the Spark path (a Parquet input or output) when --block-size is not given.
SPARK_BLOCK_SIZE = 1024

#: Flags of the out-of-core path only.
OOC_FLAGS = ("tile", "slab", "resume", "report", "runner")


def parse_args(argv):
    """Parse the command line."""
    parser = OneLineArgumentParser(prog=program(PROG), description=__doc__.split("\n\n")[0])
    parser.add_argument("input", metavar="INPUT",
                        help="the matrix X (n x k): FILE.h5::/dataset, zarr:URL or "
                             "parquet:PATH")
    parser.add_argument("output", metavar="OUTPUT",
                        help="where Y = X X^T (n x n) goes: FILE.h5::/dataset (may be in "
                             "INPUT's file), zarr:URL or parquet:PATH")
    parser.add_argument("--block-size", type=positive_int, default=None,
                        help=f"with a Parquet input or output: rows and columns of a block "
                             f"(default {SPARK_BLOCK_SIZE})")
    parser.add_argument("--tile", type=positive_int, default=None,
                        help=f"rows of an output tile (default {DEFAULT_TILE}; with --resume, "
                             f"the interrupted run's)")
    parser.add_argument("--slab", type=positive_int, default=None,
                        help=f"columns of X read per step (default {DEFAULT_SLAB}; with "
                             f"--resume, the interrupted run's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its finished tiles")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing Y")
    parser.add_argument("--master", default=None,
                        help="Spark master URL (default local[*]; ignored under spark-submit)")
    add_runner_argument(parser)
    parser.add_argument("--progress", choices=PROGRESS_CHOICES, default="lines",
                        help="lines: one line per finished tile or stage (default); spark: "
                             "Spark's console progress bar instead")
    parser.add_argument("--report", default=None, metavar="FILE.json",
                        help="also write the run's figures (tiles computed, times) as JSON")
    return parser.parse_args(argv)


def _print_progress(report) -> None:
    print(f"gram: {report}", flush=True)


def _check_report(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not hdf5.can_create_in(folder):
        raise OutputNotWritableError(
            f"--report folder {folder!r} is not writable: choose another report file")


def main(argv=None) -> int:
    """Run the job; returns the process exit code."""
    args = parse_args(argv)
    x, y = locations.parse(args.input, "INPUT"), locations.parse(args.output, "OUTPUT")
    if not locations.out_of_core(x, y):
        return gram_on_spark(args, x, y)
    if args.block_size is not None:
        raise InvalidParameterError(
            f"--block-size ({args.block_size}) applies to a Parquet input or output; between "
            f"HDF5 files and Zarr arrays the job runs out of core in tiles: drop --block-size "
            f"(or use --tile)")
    (in_path, in_name), (out_path, out_name) = x.ooc_pair(), y.ooc_pair()
    if args.report is not None:
        _check_report(args.report)
    # Refuses, among the rest, a second job on the same output before Spark's start-up (the
    # request probes the output's lock; gram_hdf5 takes it again, for the whole run).
    request = check_gram_request(in_path, in_name, out_path, out_name, args.tile, args.slab,
                                 args.resume, args.overwrite)
    if request.complete:  # --resume of a finished run: nothing to do, no Spark
        print(request.note)
        return 0
    if request.note:
        print(request.note, flush=True)
    start = time.perf_counter()
    cores = in_process_cores(args.runner, args.master)
    sc = None if cores is not None else spark_context(
        args.master, app_name="blockmatrix gram", extra_conf=progress_conf(args.progress))
    try:
        result = gram_hdf5(sc, in_path, in_name, out_path, out_name, request=request,
                           progress=_print_progress,
                           on_plan=lambda plan: print(f"plan:\n{plan}", flush=True),
                           cores=cores)
        where = where_it_ran(cores, sc)
    finally:
        if sc is not None:
            sc.stop()
    print(result)
    print(f"wall time {time.perf_counter() - start:.2f} s"
          f"{' (including Spark start-up)' if sc is not None else ''}, {where}")
    if args.report is not None:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=1)
    return 0


def gram_on_spark(args, x, y) -> int:
    """Y = X X^T through the Spark strategies, for a Parquet input or output."""
    given = given_flags(args, OOC_FLAGS)
    if given:
        raise InvalidParameterError(
            f"{', '.join(given)} apply out of core only (HDF5 and Zarr), and here the "
            f"input is {x.kind} and the output {y.kind}: drop {', '.join(given)}")
    meta = x.inspect("INPUT")
    shape = None if meta is None else (meta[0][0], meta[0][0])
    y.check_output(shape, None if meta is None else meta[1], overwrite=args.overwrite,
                   param="OUTPUT", job="gram")
    if y.same_as(x):
        raise InvalidParameterError(
            f"OUTPUT ({args.output}) is the input ({args.input}): writing it would destroy "
            f"the input; choose another output")
    block = args.block_size or SPARK_BLOCK_SIZE
    start = time.perf_counter()
    sc = spark_context(args.master, app_name="blockmatrix gram",
                       extra_conf=progress_conf(args.progress))
    try:
        X = x.read(sc, block, block)  # noqa: N806
        lines = StageProgress(sc, 2.0 * X.shape[0] ** 2 * X.shape[1]) \
            if args.progress == "lines" else nullcontext()
        with record(sc, "gram (X @ X.T)") as measured, raised_from_tasks(), lines:
            Y = X @ X.T  # noqa: N806
            written = y.write(Y, overwrite=args.overwrite)
        print(f"plan:\n{Y.plan}")
        print(measured)
        print(f"wrote {written} of Y ({Y.shape[0]}x{Y.shape[1]}) to {args.output}; wall time "
              f"{time.perf_counter() - start:.2f} s (including Spark start-up), master "
              f"{sc.master}")
    finally:
        sc.stop()
    return 0


def cli(argv=None) -> int:
    """The command line: ``main(argv)`` with refusals as one stderr line and exit code 2."""
    return run(main, argv, program(PROG))
