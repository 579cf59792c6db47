"""HDF5 input and output: validation on the driver, block reads in tasks, one streaming writer.

Inputs are only ever opened read-only. Every check that can reject a request runs before any
output file is created or opened for writing, so a rejected request changes nothing on disk.

Locations are written ``FILE.h5::/dataset`` on command lines (see :func:`parse_location`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np

from ..errors import (
    InputNotFoundError,
    InvalidInputError,
    InvalidParameterError,
    OutputExistsError,
    OutputNotWritableError,
)

LOCATION_SEPARATOR = "::"


def parse_location(spec: str, param: str = "location") -> tuple[str, str]:
    """Split ``FILE::/dataset`` into a file path and an absolute dataset name.

    >>> parse_location("data/x.h5::/X")
    ('data/x.h5', '/X')
    >>> parse_location("x.h5::grp/Y")
    ('x.h5', '/grp/Y')
    """
    path, sep, dataset = spec.partition(LOCATION_SEPARATOR)
    if not sep or not path or not dataset.strip("/"):
        raise InvalidParameterError(
            f"{param} ({spec!r}) is not of the form FILE.h5::/dataset: "
            f"give the file and the dataset, e.g. 'data.h5::/X'")
    return path, "/" + dataset.strip("/")


def _check_real_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "biuf":
        raise InvalidInputError(
            f"{where} has dtype {dtype}, which is not a real number type: "
            f"store it as float64 or float32 (complex, string and compound data are not supported)")


def inspect_input(path: str | os.PathLike, dataset: str, param: str = "input",
                  float_only: bool = False) -> tuple[tuple[int, int], np.dtype, tuple | None]:
    """Check that ``path::dataset`` is a readable 2-D real dataset and return its layout.

    Opens the file read-only and reads metadata only.

    Parameters
    ----------
    path, dataset : str
        The HDF5 file and the dataset name inside it.
    param : str
        The parameter name to put in error messages.
    float_only : bool
        Reject integer and boolean data too (for computations that need floating point).

    Returns
    -------
    shape : tuple of int
    dtype : numpy.dtype
    chunks : tuple of int or None
        The dataset's chunk shape, or None for contiguous storage.

    Raises
    ------
    InputNotFoundError
        The file or the dataset does not exist.
    InvalidInputError
        The file is not HDF5, the object is not a dataset, or the data are not 2-D real numbers.
    """
    location = f"{param} {path}::{dataset}"
    if not Path(path).is_file():
        raise InputNotFoundError(f"{param} file {path!r} does not exist: check the path")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInputError(
            f"{param} file {path!r} cannot be read as HDF5 ({exc}): give an HDF5 file") from exc
    with f:
        if dataset not in f:
            found = ", ".join(sorted(f.keys())[:8]) or "none"
            raise InputNotFoundError(
                f"{param} dataset {dataset!r} is not in {path!r} (top-level names: {found}): "
                f"check the dataset name after '::'")
        obj = f[dataset]
        if not isinstance(obj, h5py.Dataset):
            raise InvalidInputError(f"{location} is a group, not a dataset: name a dataset")
        if obj.ndim != 2:
            raise InvalidInputError(
                f"{location} has {obj.ndim} dimensions (shape {obj.shape}), not 2: "
                f"give a 2-D dataset")
        dtype = obj.dtype
        _check_real_dtype(dtype, location)
        if float_only and dtype.kind != "f":
            raise InvalidInputError(
                f"{location} has dtype {dtype}, not a floating-point type: "
                f"convert it to float64 or float32 first")
        return tuple(int(n) for n in obj.shape), dtype, obj.chunks


def check_output(path: str | os.PathLike, dataset: str, overwrite: bool = False,
                 param: str = "output") -> None:
    """Check, without writing anything, that ``path::dataset`` can be written.

    Raises
    ------
    OutputExistsError
        The dataset exists and ``overwrite`` is False.
    OutputNotWritableError
        The folder does not exist or is not writable, or the file is not writable.
    InvalidInputError
        The file exists but is not HDF5 (it is never clobbered).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputNotWritableError(
            f"{param} folder {str(folder)!r} does not exist: create it or choose another path")
    if not target.exists():
        if not can_create_in(folder):
            raise OutputNotWritableError(
                f"{param} folder {str(folder)!r} is not writable: choose a writable location")
        return
    if not target.is_file():
        raise OutputNotWritableError(f"{param} {str(target)!r} exists and is not a file")
    try:
        with open(target, "ab"):  # append mode: opens for writing, changes nothing
            pass
    except OSError as exc:
        raise OutputNotWritableError(
            f"{param} file {str(target)!r} is not writable ({exc.strerror}): fix its "
            f"permissions or choose another file") from exc
    try:
        f = h5py.File(target, "r")
    except OSError as exc:
        raise InvalidInputError(
            f"{param} file {str(target)!r} exists but is not HDF5 ({exc}); it will not be "
            f"overwritten: remove it or choose another file") from exc
    with f:
        if dataset in f and not overwrite:
            raise OutputExistsError(
                f"{param} dataset {dataset!r} already exists in {str(target)!r}: "
                f"pass overwrite=True (--overwrite) to replace it, or choose another name")


def can_create_in(folder: str | os.PathLike) -> bool:
    """Whether a file can be created in ``folder``.

    Tried for real: ``os.access`` says yes to root, even on pseudo file systems such as /proc.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".blockmatrix-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def block_slices(i: int, j: int, shape: tuple[int, int], rows_per_block: int,
                 cols_per_block: int) -> tuple[slice, slice]:
    """Row and column slices of block ``(i, j)`` in a matrix of ``shape``.

    >>> block_slices(1, 2, (5, 7), 2, 3)
    (slice(2, 4, None), slice(6, 7, None))
    """
    r0, c0 = i * rows_per_block, j * cols_per_block
    return (slice(r0, min(r0 + rows_per_block, shape[0])),
            slice(c0, min(c0 + cols_per_block, shape[1])))


def read_blocks(keys: Iterable[tuple[int, int]], path: str, dataset: str,
                rows_per_block: int,
                cols_per_block: int) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Yield ``((i, j), block)`` for ``keys``, read from ``path::dataset`` (executor side).

    The file is opened read-only once for all the keys of a task. Every block is yielded, all-zero
    ones included: the driver planned them from the dataset's shape alone.
    """
    with h5py.File(path, "r") as f:
        data = f[dataset]
        shape = data.shape
        for i, j in keys:
            rows, cols = block_slices(i, j, shape, rows_per_block, cols_per_block)
            yield (i, j), np.ascontiguousarray(data[rows, cols])


def write_blocks(path: str, dataset: str, shape: tuple[int, int], dtype: np.dtype,
                 blocks: Iterable[tuple[tuple[int, int], object]], rows_per_block: int,
                 cols_per_block: int, overwrite: bool = False) -> int:
    """Stream ``((i, j), block)`` pairs into a new dataset (driver side, the single writer).

    Blocks that never arrive stay at the dataset's fill value, zero. Sparse blocks are written
    densely, block by block. Call :func:`check_output` first when the request comes from a user.

    Returns
    -------
    int
        The number of blocks written.
    """
    written = 0
    with h5py.File(path, "a") as f:
        if dataset in f:
            if not overwrite:
                raise OutputExistsError(
                    f"output dataset {dataset!r} already exists in {path!r}: pass overwrite=True "
                    f"to replace it")
            del f[dataset]
        out = f.create_dataset(dataset, shape=shape, dtype=dtype, fillvalue=0,
                               chunks=_write_chunks(shape, rows_per_block, cols_per_block))
        for (i, j), block in blocks:
            rows, cols = block_slices(i, j, shape, rows_per_block, cols_per_block)
            dense = block.toarray() if hasattr(block, "toarray") else block
            out[rows, cols] = dense
            written += 1
    return written


def _write_chunks(shape: tuple[int, int], rows_per_block: int,
                  cols_per_block: int) -> tuple[int, int] | None:
    """HDF5 chunk shape for a block-written dataset: one block, its rows halved past 4 MiB.

    The row count is halved until ``rows * cols * 8`` bytes is at most 4 MiB. The 8 is the size
    of a float64 whatever the dataset's dtype (float32 chunks stop at half the bytes), and the
    columns are never cut: a block row wider than 4 MiB gives one-row chunks larger than that.
    """
    if shape[0] == 0 or shape[1] == 0:
        return None
    rows = max(1, min(rows_per_block, shape[0]))
    cols = max(1, min(cols_per_block, shape[1]))
    while rows * cols * 8 > 4 << 20 and rows > 1:
        rows = (rows + 1) // 2
    return rows, cols


@contextlib.contextmanager
def staging_file(path: str | os.PathLike) -> Iterator[str]:
    """A private temporary HDF5 path beside ``path``, removed on exit whatever happens."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, staged = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".staging.h5",
                                  dir=folder)
    os.close(fd)
    os.unlink(staged)
    try:
        yield staged
    finally:
        if os.path.exists(staged):
            os.unlink(staged)


def copy_dataset(source_path: str, target_path: str, dataset: str,
                 overwrite: bool = False) -> None:
    """Copy ``dataset`` from one HDF5 file into another (replacing it only with ``overwrite``)."""
    with h5py.File(source_path, "r") as src, h5py.File(target_path, "a") as dst:
        if dataset in dst:
            if not overwrite:
                raise OutputExistsError(
                    f"output dataset {dataset!r} already exists in {target_path!r}: pass "
                    f"overwrite=True to replace it")
            del dst[dataset]
        parent = posixpath.dirname(dataset) or "/"
        dst.require_group(parent)
        src.copy(src[dataset], dst[parent], name=posixpath.basename(dataset))
