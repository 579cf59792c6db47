"""Blocks shuffled by reference: written once to files, read by the tasks that need them.

PySpark's shuffle moves every block through a Python worker's pickler, the JVM's shuffle
writer and reader, and another worker's unpickler; DESIGN.md measures that pipe at about
222 MB/s on two cores, two thirds of its CPU in the JVM, and no setting moves it. Where every
task can read the files every other task writes (a local master; or a cluster folder on
shared storage, ``spark.blockmatrix.referenceDir``), a strategy can instead have each map task
write its partition's blocks once, raw, into one file of a per-product folder
(:func:`spill_partition`), and shuffle only :class:`SpilledRef` records (a file number, an
offset, a shape: tens of bytes); a reducer reads the blocks it is given straight from the page
cache (:func:`read_spilled`). Spark's destinations and partitioner are unchanged, so the plan
is the same one shuffle; only its payload is a reference.

The folder lives as long as the product (:func:`blockmatrix.held.folder`): the shuffle's
references stay valid whenever Spark reuses the map output to compute the product again.
A dense array the driver holds reaches the tasks the same way, as one raw file
(:func:`spill_array`); on a local master that file is in memory instead
(:func:`share_array`, :func:`memory_file_source`). Measured for 512 MiB: written to the local
disk 0.11 s, or 1.4-1.6 s once the page cache's write-back throttles the writer (as in a run
of products, each writing its own); written into memory 0.21 s, always, and never written
back. The ``driver`` strategy has BLAS write C there directly.
Everything here that runs in a task is module-level.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from .errors import READ_ERROR_MARK, TaskReadError
from .sparkconf import REFERENCE_DIR_CONF

#: Prefix of a product's folder of spilled blocks.
FOLDER_PREFIX = "blockmatrix-refs-"


class SpilledRef(NamedTuple):
    """Where one block was written: the file (in the product's folder), offset and layout.

    ``kind`` is ``"dense"`` (C order) or ``"csr"`` (data, indices, indptr one after the other,
    indices and indptr int32 or int64 as ``index_dtype`` says).
    """

    folder: str
    file: str
    offset: int
    kind: str
    shape: tuple[int, int]
    dtype: str
    nnz: int = 0
    index_dtype: str = ""


def new_folder(parent: str) -> str:
    """A fresh folder for one product's spilled blocks, under ``parent``."""
    return tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=parent)


def _write(f, array: np.ndarray) -> None:
    """The array's bytes, without a copy when it is C-contiguous (none for an empty one)."""
    if array.size:
        f.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def spill_partition(index: int, items, folder: str):
    """Write a partition's blocks ``(key, block)`` into one file; yield ``(key, SpilledRef)``.

    The file is named by the task attempt (Spark's id, unique in the application), so that
    the partitions of two RDDs mapped in one stage, and a retried or speculative attempt,
    never write into one file; it is closed before the map task ends, hence before any
    reducer reads it.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    attempt = context.taskAttemptId() if context is not None else os.getpid()
    name = f"p{index}-t{attempt}.bin"
    with open(os.path.join(folder, name), "wb") as f:
        for key, block in items:
            offset = f.tell()
            if sp.issparse(block):
                csr = block.tocsr()
                for part in (csr.data, csr.indices, csr.indptr):
                    _write(f, part)
                yield key, SpilledRef(folder, name, offset, "csr", tuple(csr.shape),
                                      csr.dtype.str, int(csr.nnz), csr.indices.dtype.str)
            else:
                _write(f, block)
                yield key, SpilledRef(folder, name, offset, "dense", tuple(block.shape),
                                      np.asarray(block).dtype.str)


def read_spilled(ref: SpilledRef):
    """The block ``ref`` points at (a fresh array read from the file; executor side)."""
    path = os.path.join(ref.folder, ref.file)
    try:
        if ref.kind == "dense":
            rows, cols = ref.shape
            return np.fromfile(path, dtype=ref.dtype, count=rows * cols,
                               offset=ref.offset).reshape(ref.shape)
        dtype, index = np.dtype(ref.dtype), np.dtype(ref.index_dtype)
        with open(path, "rb") as f:
            f.seek(ref.offset)
            data = np.fromfile(f, dtype=dtype, count=ref.nnz)
            indices = np.fromfile(f, dtype=index, count=ref.nnz)
            indptr = np.fromfile(f, dtype=index, count=ref.shape[0] + 1)
        return sp.csr_matrix((data, indices, indptr), shape=ref.shape)
    except (OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TaskReadError(
            f"{READ_ERROR_MARK}reading {path}, a block shuffled by reference, failed in a task "
            f"({detail}): its folder must stay readable by every executor while the product "
            f"is in use (a local master, or {REFERENCE_DIR_CONF} on shared storage); or "
            f"multiply with by_reference=False") from None


def memory_file_path(fd: int) -> str:
    """The path other processes of this machine open this process's descriptor ``fd`` by."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def memory_file_array(fd: int, shape: tuple[int, int], dtype) -> np.ndarray:
    """The zeroed C-order array the in-memory file ``fd`` holds, mapped into this process.

    ``fd`` comes from :func:`blockmatrix.held.memory_file`, of the array's size. Whatever is
    stored in the array is what the tasks read: nothing is written anywhere.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.ndarray(shape, dtype=dtype, buffer=mmap.mmap(fd, nbytes))


def memory_file_source(fd: int, array: np.ndarray, transposed: bool = False):
    """The in-memory file ``fd`` holding ``array`` as a source every local task reads.

    Returns
    -------
    blockmatrix.sources.RawArrayFile
        Its path is ``/proc/<pid>/fd/<fd>``: only processes of this machine can open it.
    """
    return _raw_source(memory_file_path(fd), array, transposed)


def spill_array(folder: str, source):
    """The driver's dense array of ``source`` (a DriverArray), written raw into ``folder``.

    Returns
    -------
    blockmatrix.sources.RawArrayFile
        The file as a source of kind ``"file"``, transposed as ``source`` is.
    """
    array = np.ascontiguousarray(source.array)
    fd, path = tempfile.mkstemp(prefix="driver-array-", suffix=".raw", dir=folder)
    with os.fdopen(fd, "wb") as f:
        _write(f, array)
    return _raw_source(path, array, source.transposed)


def share_array(fd: int, source):
    """The driver's dense array of ``source`` written into the in-memory file ``fd``.

    ``fd`` comes from :func:`blockmatrix.held.memory_file`, of the array's size; the result
    is a source the tasks of a local master read.
    """
    # write(), not a copy through a mapping: 0.21 s against 0.37 s for 512 MiB here (the
    # kernel fills the file's pages without a page fault for each).
    with open(fd, "wb", closefd=False) as f:
        _write(f, source.array)
    return memory_file_source(fd, source.array, source.transposed)


def _raw_source(path: str, array: np.ndarray, transposed: bool):
    from .sources import RawArrayFile, file_stamp

    return RawArrayFile(path, tuple(array.shape), array.dtype, file_stamp(path), transposed)
