"""C = A B for matrices in HDF5 files, on Spark.

Usage::

    python jobs/multiply.py A.h5::/A B.h5::/B C.h5::/C --block-size 1024 [--strategy inner]
        [--master URL] [--num-mid-splits S] [--num-partitions P] [--overwrite] [--verify]
    spark-submit --properties-file conf/spark-defaults.conf jobs/multiply.py ...

Every check (arguments, input files and datasets, shapes, the output location) runs before
Spark starts and before anything is written; a rejected request prints one line on stderr and
exits with code 2. The job prints the plan, the stages and shuffle bytes Spark measured, and the
wall time. ``--verify`` reads A, B and C back on the driver and compares C with numpy.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from _support.cli import OneLineArgumentParser, positive_int, run

from blockmatrix import STRATEGIES, BlockMatrix
from blockmatrix.errors import InvalidParameterError, ShapeMismatchError
from blockmatrix.io import hdf5
from blockmatrix.metrics import record
from blockmatrix.session import spark_context

PROG = "multiply.py"


def make_parser() -> OneLineArgumentParser:
    """The command line's parser (the bad-input tests check every flag has a refusal row)."""
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("a", metavar="A.h5::/A", help="left operand")
    parser.add_argument("b", metavar="B.h5::/B", help="right operand")
    parser.add_argument("c", metavar="C.h5::/C", help="output dataset")
    parser.add_argument("--block-size", type=positive_int, required=True,
                        help="rows and columns of a block")
    parser.add_argument("--strategy", default="inner", choices=sorted(STRATEGIES),
                        help="multiplication strategy (default: inner)")
    parser.add_argument("--master", default=None,
                        help="Spark master URL (default local[*]; ignored under spark-submit)")
    parser.add_argument("--num-mid-splits", type=positive_int, default=1,
                        help="split the inner dimension over this many reducers (default 1)")
    parser.add_argument("--num-partitions", type=positive_int, default=None,
                        help="suggested number of result partitions")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing C")
    parser.add_argument("--verify", action="store_true",
                        help="compare C with numpy's A @ B on the driver afterwards")
    return parser


def parse_args(argv):
    """Parse the command line."""
    return make_parser().parse_args(argv)


def check_request(args):
    """Validate files, shapes and the output location; nothing is written."""
    a_path, a_name = hdf5.parse_location(args.a, "A")
    b_path, b_name = hdf5.parse_location(args.b, "B")
    c_path, c_name = hdf5.parse_location(args.c, "C")
    a_shape, _, _ = hdf5.inspect_input(a_path, a_name, "A")
    b_shape, _, _ = hdf5.inspect_input(b_path, b_name, "B")
    if a_shape[1] != b_shape[0]:
        raise ShapeMismatchError(
            f"A.shape[1] ({a_shape[1]}) != B.shape[0] ({b_shape[0]}): A is "
            f"{a_shape[0]}x{a_shape[1]} and B is {b_shape[0]}x{b_shape[1]}, so A B is undefined")
    for name, (path, dataset) in (("A", (a_path, a_name)), ("B", (b_path, b_name))):
        if os.path.exists(c_path) and os.path.samefile(path, c_path) and dataset == c_name:
            raise InvalidParameterError(
                f"C ({args.c}) is the input dataset {name} ({path}::{dataset}): writing it would "
                f"destroy an input; choose another output dataset")
    hdf5.check_output(c_path, c_name, overwrite=args.overwrite, param="C")
    return (a_path, a_name), (b_path, b_name), (c_path, c_name)


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
    a_loc, b_loc, c_loc = check_request(args)
    sc = spark_context(args.master, app_name="blockmatrix multiply")
    start = time.perf_counter()
    A = BlockMatrix.from_hdf5(sc, *a_loc, args.block_size, args.block_size)
    B = BlockMatrix.from_hdf5(sc, *b_loc, args.block_size, args.block_size)
    with record(sc, f"multiply ({args.strategy})") as measured:
        C = A.multiply(B, strategy=args.strategy, num_partitions=args.num_partitions,
                       num_mid_splits=args.num_mid_splits)
        written = C.to_hdf5(*c_loc, overwrite=args.overwrite)
    wall = time.perf_counter() - start
    print(f"plan:\n{C.plan}")
    print(measured)
    print(f"wrote {written} blocks of C ({C.shape[0]}x{C.shape[1]}) to {args.c} "
          f"in {wall:.2f} s (master {sc.master})")
    status = 0
    if args.verify:
        error = verify(a_loc, b_loc, c_loc)
        tol = 1e-4 if np.dtype(C.layout().dtype) == np.float32 else 1e-9
        ok = error <= tol
        print(f"verified against numpy: max relative error {error:.2e} "
              f"({'OK' if ok else 'MISMATCH'}, tolerance {tol:.0e})")
        status = 0 if ok else 1
    sc.stop()
    return status


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:], PROG))
