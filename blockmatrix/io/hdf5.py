"""HDF5 input and output: validation on the driver, block reads in tasks, one streaming writer.

Inputs are only ever opened read-only. Every check that can reject a request runs before any
output file is created or opened for writing, so a rejected request changes nothing on disk.

Locations are written ``FILE.h5::/dataset`` on command lines (see :func:`parse_location`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np

from .._testhooks import pause
from ..errors import (
    InputNotFoundError,
    InsufficientSpaceError,
    InvalidInputError,
    InvalidParameterError,
    OutputExistsError,
    OutputNotWritableError,
    unreadable_in_task,
)
from .lock import lock_path_of, output_lock

LOCATION_SEPARATOR = "::"

#: Attributes of every published output: its shape, dtype and what produced it.
SHAPE_ATTR, DTYPE_ATTR, PRODUCER_ATTR = ("blockmatrix_shape", "blockmatrix_dtype",
                                         "blockmatrix_producer")
#: Marks a dataset being written (an interrupted write leaves it): never an output.
INCOMPLETE_ATTR = "blockmatrix_gram_incomplete"
#: Tag of the staging file and staging dataset names.
STAGING_TAG = "blockmatrix-staging"


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


def _check_native_order(dtype: np.dtype, where: str) -> None:
    if not dtype.isnative:
        order = "big" if dtype.byteorder == ">" else "little"
        native = dtype.newbyteorder("=")
        raise InvalidInputError(
            f"{where} has dtype {dtype.str} ({order}-endian), not this machine's byte order "
            f"({native.str}): convert it first, e.g. with h5py "
            f"dst[...] = src[...].astype('{native.str}')")


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
        _check_native_order(dtype, location)
        if INCOMPLETE_ATTR in obj.attrs:
            raise InvalidInputError(
                f"{location} is marked incomplete (its writer was interrupted): finish that "
                f"run (--resume) or write the dataset again before reading it")
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
    try:
        f = h5py.File(path, "r")
        data = f[dataset]
    except (OSError, KeyError) as exc:
        raise unreadable_in_task(f"{path}::{dataset}", exc) from None
    with f:
        shape = data.shape
        for i, j in keys:
            rows, cols = block_slices(i, j, shape, rows_per_block, cols_per_block)
            try:
                block = np.ascontiguousarray(data[rows, cols])
            except OSError as exc:
                raise unreadable_in_task(f"{path}::{dataset}", exc) from None
            yield (i, j), block


def write_blocks(path: str, dataset: str, shape: tuple[int, int], dtype: np.dtype,
                 blocks: Iterable[tuple[tuple[int, int], object]], rows_per_block: int,
                 cols_per_block: int, overwrite: bool = False, producer: str = "") -> int:
    """Stream ``((i, j), block)`` pairs into a new dataset (driver side, the single writer).

    Blocks that never arrive stay at the dataset's fill value, zero. Sparse blocks are written
    densely, block by block. The dataset is written under its name at once: use
    :func:`write_output` for a user's output, which stages and publishes it.

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
            pause("hdf5.writer")
            rows, cols = block_slices(i, j, shape, rows_per_block, cols_per_block)
            dense = block.toarray() if hasattr(block, "toarray") else block
            out[rows, cols] = dense
            written += 1
        mark_published(out, producer)
    return written


# ------------------------------------------------------------- staged, atomic outputs


def staging_file_path(path: str | os.PathLike) -> str:
    """The staging file of a new output file, beside it (one per output: the lock guards it).

    >>> staging_file_path("/data/c.h5")
    '/data/.c.h5.blockmatrix-staging.h5'
    """
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{STAGING_TAG}.h5")


def staging_dataset_name(dataset: str) -> str:
    """The name a dataset is written under, in its own group, until it is complete.

    >>> staging_dataset_name("/grp/C")
    '/grp/.C.blockmatrix-staging'
    """
    parent, name = posixpath.split("/" + dataset.strip("/"))
    return posixpath.join(parent, f".{name}.{STAGING_TAG}")


def mark_published(data: h5py.Dataset, producer: str = "") -> None:
    """Record what ``data`` is and what produced it, and clear its incomplete mark."""
    data.attrs[SHAPE_ATTR] = np.asarray(data.shape, dtype=np.int64)
    data.attrs[DTYPE_ATTR] = np.dtype(data.dtype).str
    data.attrs[PRODUCER_ATTR] = producer or "blockmatrix"
    if INCOMPLETE_ATTR in data.attrs:
        del data.attrs[INCOMPLETE_ATTR]


def publish_dataset(f: h5py.File, staged: str, dataset: str) -> None:
    """Put the complete staged dataset under its name: the old one goes, one link move.

    HDF5 cannot move a link over another, so an old dataset is unlinked first: a kill between
    the two leaves no dataset under the name (never a partial one) and the staged one complete.
    """
    pause("hdf5.publish")
    if dataset in f:
        del f[dataset]
    f.require_group(posixpath.dirname(dataset) or "/")
    f.move(staged, dataset)
    f.flush()


def clean_leftovers(path: str | os.PathLike, dataset: str) -> list[str]:
    """Remove what an interrupted writer of ``path::dataset`` left; say what was removed.

    The staging file beside ``path`` and the staging dataset inside it are never an output:
    call this holding the output's lock, so that no live writer owns them.
    """
    removed = []
    staged = staging_file_path(path)
    if os.path.exists(staged):
        os.unlink(staged)
        removed.append(staged)
    if os.path.isfile(path):
        name = staging_dataset_name(dataset)
        try:
            with h5py.File(path, "r") as f:
                present = name in f
        except OSError:
            present = False
        if present:
            with h5py.File(path, "a") as f:
                del f[name]
            removed.append(f"{path}::{name}")
    return removed


def dense_nbytes(shape: tuple[int, ...], dtype) -> int:
    """Bytes of a dense array of ``shape`` and ``dtype``."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def format_mib(nbytes: float) -> str:
    """``nbytes`` in MiB, one decimal."""
    return f"{nbytes / 2**20:,.1f} MiB"


def check_space(folder: str | os.PathLike, need: int, what: str, param: str = "output") -> None:
    """Refuse, before writing, a folder with less free space than ``need`` bytes.

    Raises
    ------
    InsufficientSpaceError
        ``folder`` has less than ``need`` bytes free.
    """
    free = shutil.disk_usage(folder).free
    if need > free:
        raise InsufficientSpaceError(
            f"{param} folder {str(folder)!r} has {format_mib(free)} free and {what} needs "
            f"{format_mib(need)} there: free {format_mib(need - free)} or choose another "
            f"folder")


def check_output_space(path: str | os.PathLike, dataset: str, shape: tuple[int, int],
                       dtype) -> None:
    """Refuse, before anything runs, an output folder without room for :func:`write_output`.

    A new file needs the staging file; an existing one also the copy made inside it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    copies = 2 if os.path.exists(path) else 1
    check_space(folder, dense_nbytes(shape, dtype) * copies,
                f"writing {dataset} ({shape[0]}x{shape[1]} {np.dtype(dtype).name})")


def is_disk_full(exc: BaseException, folder: str | os.PathLike) -> bool:
    """Whether the OSError ``exc`` is a full disk (ENOSPC, or a short write on a full folder).

    numpy's short writes carry no errno, so a folder with (almost) no space left counts too.
    """
    if not isinstance(exc, OSError):
        return False
    if exc.errno == errno.ENOSPC or "No space left" in str(exc):
        return True
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def disk_full(folder: str | os.PathLike, need: int, what: str,
              param: str = "output") -> InsufficientSpaceError:
    """The one-line error of a write that ran out of space in ``folder``."""
    free = shutil.disk_usage(folder).free
    return InsufficientSpaceError(
        f"{param} folder {str(folder)!r} ran out of space ({format_mib(free)} free) while "
        f"{what} needed {format_mib(need)} there; nothing was published: free space or "
        f"choose another folder, and run again")


def write_output(path: str, dataset: str, shape: tuple[int, int], dtype: np.dtype,
                 blocks: Iterable[tuple[tuple[int, int], object]], rows_per_block: int,
                 cols_per_block: int, overwrite: bool = False, producer: str = "",
                 job: str = "to_hdf5") -> int:
    """Write a user's output atomically: staged, then published in one step when complete.

    Holds the output's lock (:func:`~blockmatrix.io.lock.output_lock`) throughout, and first
    removes what an interrupted writer left (:func:`clean_leftovers`). The blocks go into a
    staging file beside ``path``; once all are written, a new output file is linked into
    place (one ``link``), and an existing one receives the data under a staging name (space
    allocated and flushed first, then raw writes only) moved to its own name in one link move
    (:func:`publish_dataset`). Killed at any point, it leaves no dataset under the name that
    is not complete: at most the staging file and a staging dataset, which the next write
    removes. The published dataset records its shape, dtype and ``producer``.

    ``blocks`` may be computed while they are written (a Spark job's ``toLocalIterator``): the
    file at ``path`` is opened only after the last block arrived, so it may be an input.

    Raises
    ------
    OutputExistsError
        The dataset exists and ``overwrite`` is False (checked again under the lock).
    OutputNotWritableError
        Another job holds the output's lock.
    InsufficientSpaceError
        The output folder has less free space than the staging file and the output need, or
        ran out of it while writing; nothing was published.

    Returns
    -------
    int
        The number of blocks written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    nbytes = dense_nbytes(shape, dtype)
    with output_lock(lock_path_of(path), path, job=job):
        check_output(path, dataset, overwrite=overwrite)
        clean_leftovers(path, dataset)
        exists = os.path.exists(path)
        # The staging file, and for an existing file a second copy inside it.
        need = nbytes * (2 if exists else 1)
        what = f"writing {dataset} ({shape[0]}x{shape[1]} {np.dtype(dtype).name})"
        check_output_space(path, dataset, shape, dtype)
        staged = staging_file_path(path)
        try:
            count = write_blocks(staged, dataset, shape, dtype, blocks, rows_per_block,
                                 cols_per_block, producer=producer)
            if exists:
                transplant(staged, path, dataset, producer)
            else:
                pause("hdf5.publish")
                link_new_file(staged, path)
        except OSError as exc:
            if isinstance(exc, InsufficientSpaceError) or not is_disk_full(exc, folder):
                raise
            raise disk_full(folder, need, what) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(staged)
    return count


def link_new_file(staged: str, path: str) -> None:
    """Put the staged new output file in place atomically, never replacing a file."""
    try:
        os.link(staged, path)
    except FileExistsError:
        raise OutputExistsError(
            f"output file {path!r} was created by someone else during the run: the "
            f"result is kept in {staged!r}") from None
    except OSError:
        if os.path.exists(path):
            raise
        os.rename(staged, path)
        return
    os.unlink(staged)


#: Bytes copied per step from a staging file into an existing output file.
TRANSPLANT_BAND_BYTES = 32 << 20


def transplant(source_path: str, target_path: str, dataset: str, producer: str = "") -> None:
    """Copy the complete ``dataset`` of the staging file into an existing file, atomically.

    The copy is made under :func:`staging_dataset_name`, contiguous with its space allocated
    and the file flushed at creation, so that the copy itself is raw writes only (a kill
    leaves a consistent file); then :func:`publish_dataset` moves it to its name.
    """
    staged_name = staging_dataset_name(dataset)
    with h5py.File(source_path, "r") as src, h5py.File(target_path, "a") as dst:
        data = src[dataset]
        if staged_name in dst:
            del dst[staged_name]
        out = create_allocated(dst, staged_name, data.shape, data.dtype)
        rows = max(1, TRANSPLANT_BAND_BYTES // max(1, data.shape[1] * data.dtype.itemsize))
        for r0 in range(0, data.shape[0], rows):
            pause("hdf5.writer")
            out[r0:r0 + rows] = data[r0:r0 + rows]
        mark_published(out, producer)
        dst.flush()
        publish_dataset(dst, staged_name, dataset)


def create_allocated(f: h5py.File, name: str, shape, dtype) -> h5py.Dataset:
    """A contiguous dataset with all its space allocated at once and marked incomplete.

    The file is flushed here: afterwards, writing the data changes none of its metadata.
    """
    f.require_group(posixpath.dirname(name) or "/")
    if 0 in tuple(shape):
        data = f.create_dataset(name, shape=shape, dtype=dtype)
    else:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        data = f.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)
    data.attrs[INCOMPLETE_ATTR] = 1
    f.flush()
    reserve_storage(data)
    return data


def reserve_storage(data: h5py.Dataset) -> None:
    """Reserve the disk blocks of a contiguous dataset's storage (``posix_fallocate``).

    HDF5 allocates space by moving the end of its address space; the file system gives blocks
    only when they are written. Reserved now, a full disk fails here, before any data is
    written, and never in the middle of the writes or in the closing flush (where HDF5 cannot
    recover from it).

    Raises
    ------
    OSError
        ``ENOSPC``: the file system cannot hold the dataset.
    """
    offset, size = data.id.get_offset(), data.id.get_storage_size()
    if offset is None or not size or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(data.file.filename, os.O_WRONLY)
    try:
        os.posix_fallocate(fd, offset, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


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
