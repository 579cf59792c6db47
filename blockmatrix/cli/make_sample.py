"""Write a random matrix into an HDF5 dataset, block by block, never all in memory.

Usage::

    python jobs/make_sample.py OUT.h5::/NAME --rows R --cols C [--seed S]
        [--dtype float64|float32] [--chunks r,c] [--density D] [--overwrite]

Entries are standard normal; with ``--density D`` each entry is kept with probability D and is
zero otherwise. The matrix is generated in blocks of at most 1024 x 8192 entries, each from its
own generator seeded with ``(seed, block row, block column)``, so the same arguments give the
same matrix whatever the storage layout, and memory stays near 64 MB for any size. Bad arguments
print one line on stderr and exit with code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import posixpath
import time

import h5py
import numpy as np

from blockmatrix.cli.common import OneLineArgumentParser, positive_int, program, run
from blockmatrix.errors import InvalidParameterError
from blockmatrix.io import hdf5
from blockmatrix.samples import random_matrix

PROG = "make_sample.py"
#: Rows and columns of a generated block (64 MB of float64).
BLOCK_ROWS, BLOCK_COLS = 1024, 8192


def _chunks(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form ROWS,COLS (e.g. 100,1000)")
    return positive_int(parts[0].strip()), positive_int(parts[1].strip())


def _density(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]: give a fraction such as 0.1")
    return value


def parse_args(argv):
    """Parse the command line."""
    parser = OneLineArgumentParser(prog=program(PROG), description=__doc__.split("\n\n")[0])
    parser.add_argument("output", metavar="OUT.h5::/NAME", help="where the matrix goes")
    parser.add_argument("--rows", type=positive_int, required=True, help="number of rows")
    parser.add_argument("--cols", type=positive_int, required=True, help="number of columns")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="element type (default float64)")
    parser.add_argument("--chunks", type=_chunks, default=None, metavar="r,c",
                        help="HDF5 chunk shape (default: contiguous storage)")
    parser.add_argument("--density", type=_density, default=1.0,
                        help="fraction of nonzero entries (default 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the dataset if it exists")
    return parser.parse_args(argv)


def sample_block(seed: int, bi: int, bj: int, shape: tuple[int, int], dtype,
                 density: float) -> np.ndarray:
    """Slab ``(bi, bj)`` of the sample matrix: the shared generator, seeded ``[seed, bi, bj]``.

    Seeding each slab apart is what lets the job write any size in bounded memory: no slab
    depends on the random draws of another (:func:`blockmatrix.samples.random_matrix`).

    >>> a = sample_block(1, 0, 0, (2, 3), "float64", 1.0)
    >>> b = sample_block(1, 0, 0, (2, 3), "float64", 1.0)
    >>> bool((a == b).all()), a.shape
    (True, (2, 3))
    """
    return random_matrix(shape, shape, [seed, bi, bj], fill=density, dtype=dtype)


def write_sample(path: str, dataset: str, rows: int, cols: int, seed: int = 0,
                 dtype: str = "float64", chunks: tuple[int, int] | None = None,
                 density: float = 1.0, overwrite: bool = False) -> None:
    """Write the sample matrix into ``path::dataset`` block by block (see the module doc)."""
    with h5py.File(path, "a") as f:
        if dataset in f:
            del f[dataset]
        f.require_group(posixpath.dirname(dataset) or "/")
        out = f.create_dataset(dataset, shape=(rows, cols), dtype=dtype, chunks=chunks)
        for bi, r0 in enumerate(range(0, rows, BLOCK_ROWS)):
            r1 = min(r0 + BLOCK_ROWS, rows)
            for bj, c0 in enumerate(range(0, cols, BLOCK_COLS)):
                c1 = min(c0 + BLOCK_COLS, cols)
                out[r0:r1, c0:c1] = sample_block(seed, bi, bj, (r1 - r0, c1 - c0), dtype,
                                                 density)


def main(argv=None) -> int:
    """Run the generator; returns the process exit code."""
    args = parse_args(argv)
    path, dataset = hdf5.parse_location(args.output, "OUT")
    if args.chunks is not None and (args.chunks[0] > args.rows or args.chunks[1] > args.cols):
        raise InvalidParameterError(
            f"--chunks ({args.chunks[0]},{args.chunks[1]}) exceeds the matrix shape "
            f"({args.rows},{args.cols}): give chunks no larger than --rows,--cols")
    hdf5.check_output(path, dataset, overwrite=args.overwrite, param="OUT")
    start = time.perf_counter()
    write_sample(path, dataset, args.rows, args.cols, args.seed, args.dtype, args.chunks,
                 args.density, args.overwrite)
    size = args.rows * args.cols * np.dtype(args.dtype).itemsize
    print(f"wrote {args.output}: {args.rows} x {args.cols} {args.dtype} "
          f"({size / 2**20:,.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


def cli(argv=None) -> int:
    """The command line: ``main(argv)`` with refusals as one stderr line and exit code 2."""
    return run(main, argv, program(PROG))
