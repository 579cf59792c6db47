"""Y = X X^T for a matrix X in HDF5, written into HDF5 (possibly X's own file), on Spark.

Usage::

    python jobs/gram.py INPUT.h5::/X OUTPUT.h5::/Y [--tile N] [--slab N] [--resume]
        [--overwrite] [--master URL] [--report FILE.json]
    spark-submit --properties-file conf/spark-defaults.conf jobs/gram.py ...

Memory is bounded by --tile and --slab, not by the length of X: the job prints its prediction
of the peak resident memory of all its processes before it starts. Every check runs before
Spark starts and before anything is written; a rejected request prints one line on stderr and
exits with code 2. A killed run continues with --resume without computing its finished tiles
again. ``python jobs/gram.py`` runs embedded local Spark (``--master``, default ``local[*]``);
under spark-submit the file must be on storage every executor can read.
"""

from __future__ import annotations

import json
import os
import time

from blockmatrix.cli.common import (
    PROGRESS_CHOICES,
    OneLineArgumentParser,
    positive_int,
    program,
    progress_conf,
    run,
)
from blockmatrix.errors import OutputNotWritableError
from blockmatrix.io import hdf5
from blockmatrix.ooc import (
    DEFAULT_SLAB,
    DEFAULT_TILE,
    check_gram_request,
    gram_hdf5,
)
from blockmatrix.session import spark_context

PROG = "gram.py"


def parse_args(argv):
    """Parse the command line."""
    parser = OneLineArgumentParser(prog=program(PROG), description=__doc__.split("\n\n")[0])
    parser.add_argument("input", metavar="INPUT.h5::/X", help="the matrix X (n x k)")
    parser.add_argument("output", metavar="OUTPUT.h5::/Y",
                        help="where Y = X X^T (n x n) goes; may be in INPUT's file")
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
    in_path, in_name = hdf5.parse_location(args.input, "INPUT")
    out_path, out_name = hdf5.parse_location(args.output, "OUTPUT")
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
    sc = spark_context(args.master, app_name="blockmatrix gram",
                       extra_conf=progress_conf(args.progress))
    try:
        result = gram_hdf5(sc, in_path, in_name, out_path, out_name, request=request,
                           progress=_print_progress,
                           on_plan=lambda plan: print(f"plan:\n{plan}", flush=True))
        master = sc.master
    finally:
        sc.stop()
    print(result)
    print(f"wall time {time.perf_counter() - start:.2f} s (including Spark start-up), "
          f"master {master}")
    if args.report is not None:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=1)
    return 0


def cli(argv=None) -> int:
    """The command line: ``main(argv)`` with refusals as one stderr line and exit code 2."""
    return run(main, argv, program(PROG))
