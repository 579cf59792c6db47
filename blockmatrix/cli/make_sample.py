"""Write a random matrix into an HDF5 dataset or a Zarr array, block by block, never all in memory.

Usage::

    python jobs/make_sample.py OUT.h5::/NAME --rows R --cols C [--seed S]
        [--dtype float64|float32] [--chunks r,c] [--density D] [--overwrite]
    python jobs/make_sample.py zarr:URL --rows R --cols C ...

A ``zarr:URL`` output (a local folder or object storage such as ``zarr:s3://bucket/x.zarr``,
credentials from the environment; the ``zarr`` extra) is staged and published when complete,
in chunks of ``--chunks`` (default at most 1024 x 1024).

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

from blockmatrix.cli import locations
from blockmatrix.cli.common import OneLineArgumentParser, positive_int, program, run
from blockmatrix.errors import InvalidParameterError
from blockmatrix.io import zarr_store
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
    parser.add_argument("output", metavar="OUT",
                        help="where the matrix goes: OUT.h5::/NAME or zarr:URL")
    parser.add_argument("--rows", type=positive_int, required=True, help="number of rows")
    parser.add_argument("--cols", type=positive_int, required=True, help="number of columns")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="element type (default float64)")
    parser.add_argument("--chunks", type=_chunks, default=None, metavar="r,c",
                        help="chunk shape (HDF5 default: contiguous storage; Zarr default: at "
                             "most 1024 x 1024)")
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
        for rows_, cols_, block in sample_blocks(rows, cols, seed, dtype, density):
            out[rows_, cols_] = block


def sample_blocks(rows: int, cols: int, seed: int, dtype: str, density: float):
    """``(rows slice, cols slice, block)`` of the sample matrix, block by block."""
    for bi, r0 in enumerate(range(0, rows, BLOCK_ROWS)):
        r1 = min(r0 + BLOCK_ROWS, rows)
        for bj, c0 in enumerate(range(0, cols, BLOCK_COLS)):
            c1 = min(c0 + BLOCK_COLS, cols)
            yield (slice(r0, r1), slice(c0, c1),
                   sample_block(seed, bi, bj, (r1 - r0, c1 - c0), dtype, density))


def write_zarr_sample(url, rows: int, cols: int, seed: int = 0, dtype: str = "float64",
                      chunks: tuple[int, int] | None = None, density: float = 1.0,
                      overwrite: bool = False) -> None:
    """Write the sample matrix into a Zarr array, staged and published when complete."""
    chunks = chunks or (min(rows, 1024), min(cols, 1024))
    with zarr_store.staged_output(url, (rows, cols), np.dtype(dtype), chunks,
                                  overwrite=overwrite, producer="blockmatrix make_sample",
                                  job="make_sample", param="OUT") as staged:
        out = zarr_store.open_array(staged.staging_url, mode="r+")
        for rows_, cols_, block in sample_blocks(rows, cols, seed, dtype, density):
            out[rows_, cols_] = block
        staged.publish()


def main(argv=None) -> int:
    """Run the generator; returns the process exit code."""
    args = parse_args(argv)
    location = locations.parse(args.output, "OUT")
    if location.kind not in locations.OUT_OF_CORE_KINDS:
        raise InvalidParameterError(
            f"OUT ({args.output}) is a {location.kind} location: make_sample writes an HDF5 "
            f"dataset (OUT.h5::/NAME) or a Zarr array (zarr:URL)")
    if args.chunks is not None and (args.chunks[0] > args.rows or args.chunks[1] > args.cols):
        raise InvalidParameterError(
            f"--chunks ({args.chunks[0]},{args.chunks[1]}) exceeds the matrix shape "
            f"({args.rows},{args.cols}): give chunks no larger than --rows,--cols")
    location.check_output((args.rows, args.cols), np.dtype(args.dtype), args.overwrite, "OUT",
                          "make_sample")
    start = time.perf_counter()
    if location.kind == "zarr":
        write_zarr_sample(location.location, args.rows, args.cols, args.seed, args.dtype,
                          args.chunks, args.density, args.overwrite)
    else:
        write_sample(location.path, location.dataset, args.rows, args.cols, args.seed,
                     args.dtype, args.chunks, args.density, args.overwrite)
    size = args.rows * args.cols * np.dtype(args.dtype).itemsize
    print(f"wrote {args.output}: {args.rows} x {args.cols} {args.dtype} "
          f"({size / 2**20:,.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


def cli(argv=None) -> int:
    """The command line: ``main(argv)`` with refusals as one stderr line and exit code 2."""
    return run(main, argv, program(PROG))
