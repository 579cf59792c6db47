"""Where a matrix's blocks can be read without Spark: the driver's own array, or a shared file.

A :class:`~blockmatrix.layout.BlockLayout` carries its matrix's source when there is one:

- :class:`DriverArray`: the array ``from_numpy`` distributed, still held by the driver, so a
  strategy can broadcast it from there instead of collecting its RDD back;
- :class:`HDF5Dataset`: the dataset ``from_hdf5`` reads, on storage every executor sees, so a
  task can read the blocks it needs straight from the file instead of receiving them through a
  shuffle;
- :class:`ZarrArray`: the same for the Zarr array ``from_zarr`` reads (a shared folder or
  object storage);
- :class:`RawArrayFile`: a driver's dense array written raw into a file every task reads, for
  an operand a strategy delivers by reference (:mod:`blockmatrix.spilled`);
- None: the blocks exist nowhere but in Spark (a product, a ``from_blocks`` RDD).

A transpose keeps its operand's source (:meth:`transpose`): the blocks are read transposed.
Sources are small, picklable values (a path and a dataset name; the driver's array stays on
the driver and is never pickled into a plan that is shipped to executors).

Sources of kind ``"file"`` share one protocol, which a task's reader
(:class:`~blockmatrix.strategies._common.FileReader`) uses: ``open()`` returns a handle with
``close()``, ``read_block(handle, i, j, rows_per_block, cols_per_block)`` reads one block,
``read_errors`` are the exceptions a failed read raises, ``location`` names the data in
messages, ``check_unchanged()`` refuses data rewritten since the matrix was made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .errors import InputChangedError
from .layout import block_extent


def file_stamp(path: str) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file: what changes when someone rewrites it."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class HDF5Dataset:
    """A 2-D HDF5 dataset every task can read (the file is only ever opened read-only).

    Parameters
    ----------
    path : str
        Absolute path of the file.
    dataset : str
        Absolute name of the dataset.
    shape : (int, int)
        Shape of the dataset as stored (before any transpose).
    dtype : numpy.dtype
        Element type as stored.
    stamp : (int, int)
        ``(size, mtime_ns)`` of the file when it was opened (:func:`file_stamp`).
    transposed : bool
        Whether the matrix is the dataset's transpose.
    """

    path: str
    dataset: str
    shape: tuple[int, int]
    dtype: np.dtype
    stamp: tuple[int, int]
    transposed: bool = False

    kind = "file"
    format = "hdf5"
    #: What a failed read raises (a task turns them into a one-line error).
    read_errors = (OSError, KeyError)

    @property
    def location(self) -> str:
        """``path::dataset``, as messages name it."""
        return f"{self.path}::{self.dataset}"

    def open(self) -> _HDF5Handle:
        """The dataset, opened read-only (executor side); close the handle when done."""
        import h5py

        f = h5py.File(self.path, "r")
        try:
            return _HDF5Handle(f, f[self.dataset])
        except BaseException:
            f.close()
            raise

    def transpose(self) -> HDF5Dataset:
        """The same dataset, read transposed."""
        return HDF5Dataset(self.path, self.dataset, self.shape, self.dtype, self.stamp,
                           not self.transposed)

    def check_unchanged(self) -> None:
        """Raise :class:`InputChangedError` if the file changed since it was opened."""
        try:
            now = file_stamp(self.path)
        except OSError as exc:
            raise InputChangedError(
                f"input {self.path} can no longer be read ({exc.strerror}) since "
                f"BlockMatrix.from_hdf5 opened it: restore it, or open it again") from None
        if now != tuple(self.stamp):
            raise InputChangedError(
                f"input {self.path} changed since BlockMatrix.from_hdf5 opened it (size, mtime "
                f"{tuple(self.stamp)} -> {now}): its blocks would not match the plan; open it "
                f"again with BlockMatrix.from_hdf5")

    def read_block(self, data, i: int, j: int, rows_per_block: int,
                   cols_per_block: int) -> np.ndarray:
        """Block ``(i, j)`` of the matrix from :meth:`open`'s handle (executor side).

        ``data`` may also be the h5py dataset itself.
        """
        data = getattr(data, "data", data)
        if self.transposed:
            return np.ascontiguousarray(
                self._read(data, j, i, cols_per_block, rows_per_block).T)
        return self._read(data, i, j, rows_per_block, cols_per_block)

    def _read(self, data, i: int, j: int, rows_per_block: int,
              cols_per_block: int) -> np.ndarray:
        rows = block_extent(i, self.shape[0], rows_per_block)
        cols = block_extent(j, self.shape[1], cols_per_block)
        out = np.empty((rows, cols), dtype=data.dtype)
        r0, c0 = i * rows_per_block, j * cols_per_block
        data.read_direct(out, np.s_[r0:r0 + rows, c0:c0 + cols])
        return out


class _HDF5Handle:
    """An HDF5 file opened read-only and the dataset read from it."""

    def __init__(self, file, data):
        self.file, self.data = file, data

    def close(self) -> None:
        """Close the file."""
        self.file.close()


@dataclass(frozen=True)
class ZarrArray:
    """A 2-D Zarr (format 3) array every task can read: a shared folder or object storage.

    Parameters
    ----------
    url : str
        The canonical location (:func:`blockmatrix.io.zarr_store.parse_url`): an absolute
        local path or ``protocol://bucket/key``. Storage options come from the environment
        on every executor.
    shape : (int, int)
        Shape of the array as stored (before any transpose).
    dtype : numpy.dtype
        Element type, native byte order.
    stamp : tuple
        What identified the array's metadata when it was opened
        (:func:`blockmatrix.io.zarr_store.metadata_stamp`).
    transposed : bool
        Whether the matrix is the array's transpose.
    """

    url: str
    shape: tuple[int, int]
    dtype: np.dtype
    stamp: tuple
    transposed: bool = False

    kind = "file"
    format = "zarr"
    #: What a failed read raises: storage errors are OSErrors; zarr's own, ValueErrors.
    read_errors = (OSError, KeyError, ValueError)

    @property
    def location(self) -> str:
        """The URL, as messages name it."""
        return self.url

    def open(self):
        """A read-only handle on the array (executor side)."""
        from .io import zarr_store

        return zarr_store.open_input(self.url)

    def transpose(self) -> ZarrArray:
        """The same array, read transposed."""
        return ZarrArray(self.url, self.shape, self.dtype, self.stamp, not self.transposed)

    def check_unchanged(self) -> None:
        """Raise :class:`InputChangedError` if the array was rewritten since it was opened.

        Compares its ``zarr.json``'s file information (one metadata request).
        """
        from .io import zarr_store

        try:
            now = zarr_store.metadata_stamp(self.url)
        except OSError as exc:
            raise InputChangedError(
                f"input {self.url} can no longer be read ({exc}) since BlockMatrix.from_zarr "
                f"opened it: restore it, or open it again") from None
        if tuple(now) != tuple(self.stamp):
            raise InputChangedError(
                f"input {self.url} was rewritten since BlockMatrix.from_zarr opened it "
                f"({dict(self.stamp)} -> {dict(now)}): its blocks would not match the plan; "
                f"open it again with BlockMatrix.from_zarr")

    def read_block(self, handle, i: int, j: int, rows_per_block: int,
                   cols_per_block: int) -> np.ndarray:
        """Block ``(i, j)`` of the matrix from :meth:`open`'s handle (executor side)."""
        from .io import zarr_store

        array = handle.array
        if self.transposed:
            return np.ascontiguousarray(
                zarr_store.read_block(array, j, i, cols_per_block, rows_per_block).T)
        return zarr_store.read_block(array, i, j, rows_per_block, cols_per_block)


@dataclass(frozen=True)
class RawArrayFile:
    """A dense array the driver wrote raw (C order) into a file every task reads.

    Made by :func:`blockmatrix.spilled.spill_array` from the driver's own array, so that a
    task reads the blocks it needs from the page cache instead of receiving them pickled
    through the JVM. The file goes with the product that wrote it.

    Parameters
    ----------
    path : str
        Absolute path of the file.
    shape : (int, int)
        Shape of the array as written (before any transpose).
    dtype : numpy.dtype
    stamp : (int, int)
        ``(size, mtime_ns)`` of the file once written (:func:`file_stamp`).
    transposed : bool
        Whether the matrix is the array's transpose.
    """

    path: str
    shape: tuple[int, int]
    dtype: np.dtype
    stamp: tuple[int, int]
    transposed: bool = False

    kind = "file"
    format = "raw"
    read_errors = (OSError, ValueError)

    @property
    def location(self) -> str:
        """The file, as messages name it."""
        return self.path

    def open(self) -> _OpenFile:
        """The file opened read-only (executor side)."""
        return _OpenFile(os.open(self.path, os.O_RDONLY))

    def transpose(self) -> RawArrayFile:
        """The same array, read transposed."""
        return RawArrayFile(self.path, self.shape, self.dtype, self.stamp, not self.transposed)

    def check_unchanged(self) -> None:
        """Raise :class:`InputChangedError` if the file is gone or was rewritten."""
        try:
            now = file_stamp(self.path)
        except OSError as exc:
            raise InputChangedError(
                f"the driver's array written to {self.path} can no longer be read "
                f"({exc.strerror}): multiply again") from None
        if now != tuple(self.stamp):
            raise InputChangedError(
                f"the driver's array written to {self.path} changed since it was written "
                f"(size, mtime {tuple(self.stamp)} -> {now}): multiply again")

    def read_block(self, handle, i: int, j: int, rows_per_block: int,
                   cols_per_block: int) -> np.ndarray:
        """Block ``(i, j)`` of the matrix, read row by row into a new array (executor side).

        ``pread`` into the block's rows rather than a memory mapping: a mapping would count
        the pages a task touched in its resident memory as well as the block it copies.
        """
        if self.transposed:
            i, j, rows_per_block, cols_per_block = j, i, cols_per_block, rows_per_block
        rows = block_extent(i, self.shape[0], rows_per_block)
        cols = block_extent(j, self.shape[1], cols_per_block)
        itemsize = np.dtype(self.dtype).itemsize
        out = np.empty((rows, cols), dtype=self.dtype)
        first = (i * rows_per_block * self.shape[1] + j * cols_per_block) * itemsize
        if cols == self.shape[1]:  # whole rows: one read
            _read_exactly(handle.fd, out.reshape(-1), first)
        else:
            for r in range(rows):
                _read_exactly(handle.fd, out[r], first + r * self.shape[1] * itemsize)
        return np.ascontiguousarray(out.T) if self.transposed else out


def _read_exactly(fd: int, row: np.ndarray, offset: int) -> None:
    """Fill ``row`` from ``fd`` at ``offset``; a short read (a truncated file) is an error."""
    if not row.size:
        return
    view = memoryview(row).cast("B")
    if os.preadv(fd, [view], offset) != len(view):
        raise OSError(f"the file ends before offset {offset + len(view)}")


class _OpenFile:
    """A file descriptor opened by :meth:`RawArrayFile.open` (``close`` closes it)."""

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class DriverArray:
    """The dense or CSR array the driver distributed (its blocks are slices of it).

    Only the driver uses it: pickling one (say, inside something shipped to executors) is an
    error, so that a 64 GiB array is never sent by accident.
    """

    array: object = field(repr=False, compare=False)
    transposed: bool = False

    kind = "driver"

    def transpose(self) -> DriverArray:
        """The same array, read transposed."""
        return DriverArray(self.array, not self.transposed)

    def block(self, i: int, j: int, rows_per_block: int, cols_per_block: int):
        """Block ``(i, j)`` of the matrix (a view where the format allows), or None if zero."""
        a = self.array.T if self.transposed else self.array
        block = a[i * rows_per_block:(i + 1) * rows_per_block,
                  j * cols_per_block:(j + 1) * cols_per_block]
        return block.tocsr() if sp.issparse(block) else np.ascontiguousarray(block)

    def __reduce__(self):
        raise TypeError("a DriverArray stays on the driver: ship the blocks, not the source")


Source = HDF5Dataset | ZarrArray | RawArrayFile | DriverArray
