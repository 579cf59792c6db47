"""The executor side: one task computes one tile of X X^T from HDF5.

A task reads **slabs** of ``slab`` columns of the row blocks it needs straight from HDF5
(read-only, into two buffers allocated once, chunk cache sized to the slab) and accumulates
them into its tile in place: ``?syrk`` with ``beta=1`` for a diagonal tile, ``?gemm`` with
``beta=1`` for the others, on a Fortran-ordered accumulator that BLAS updates without a copy. No
array is allocated per slab product, so a task's memory is ``tile^2 + 2 tile slab`` elements
whatever the length of X.

Everything here is module-level: Spark pickles :func:`compute_tile` and the arguments bound to
it with :func:`functools.partial`, never a closure over driver state.

BLAS threads are pinned per task (``spark.task.cpus``) with threadpoolctl when it is installed
(``pip install 'blockmatrix[ooc]'``); without it the tasks run with BLAS's own thread count and
the driver warns (:func:`warn_if_blas_unpinned`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings

import h5py
import numpy as np

from .._testhooks import pause
from ..errors import PerformanceWarning
from .tiles import Tile
from .workdir import note_path, save_tile, write_progress_note

__all__ = ["compute_tile", "mirror_upper", "open_for_reading", "warn_if_blas_unpinned"]

#: Seconds between progress notes written by a task.
TASK_PROGRESS_INTERVAL = 1.0


def blas_kernels(dtype: np.dtype):
    """``(syrk, gemm)`` of scipy's BLAS for ``dtype`` (float64 or float32)."""
    from scipy.linalg import blas

    if dtype == np.float64:
        return blas.dsyrk, blas.dgemm
    return blas.ssyrk, blas.sgemm


def _threadpool_limits():
    """The function ``threadpoolctl.threadpool_limits``, or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits


def blas_threads(threads: int):
    """A context in which BLAS uses ``threads`` threads (unpinned without threadpoolctl)."""
    limits = _threadpool_limits()
    if limits is None:
        return contextlib.nullcontext()
    return limits(limits=threads, user_api="blas")


def warn_if_blas_unpinned(threads_per_task: int) -> None:
    """Warn with :class:`PerformanceWarning` when tasks cannot pin their BLAS threads.

    Called on the driver, once per run; the executors are assumed to have the same packages.
    """
    if _threadpool_limits() is None:
        warnings.warn(
            f"BLAS threads are not pinned per task (threadpoolctl is not installed): each "
            f"task's BLAS may start one thread per core instead of {threads_per_task}, and the "
            f"tasks then compete for the cores: pip install 'blockmatrix[ooc]'",
            PerformanceWarning, stacklevel=3)


def mirror_upper(acc: np.ndarray, band: int = 256) -> None:
    """Copy the upper triangle of a square array onto its lower triangle, in place.

    >>> a = np.triu(np.arange(1.0, 10.0).reshape(3, 3))
    >>> mirror_upper(a, band=2)
    >>> a
    array([[1., 2., 3.],
           [2., 5., 6.],
           [3., 6., 9.]])
    """
    t = acc.shape[0]
    for j0 in range(0, t, band):
        j1 = min(j0 + band, t)
        block = acc[j0:j1, j0:j1]
        lower = np.tril_indices(j1 - j0, -1)
        block[lower] = block.T[lower]
        acc[j1:, j0:j1] = acc[j0:j1, j1:].T


def accumulate_slabs(data, tile: Tile, acc: np.ndarray, slab: int, buffers, kernels,
                     progress_path: str) -> tuple[float, float]:
    """Stream the slabs of X through BLAS into ``acc``; return (read, compute) seconds."""
    syrk, gemm = kernels
    k = data.shape[1]
    n_slabs = math.ceil(k / slab)
    read_s = compute_s = 0.0
    last_note = time.monotonic()
    for s, s0 in enumerate(range(0, k, slab)):
        s1 = min(s0 + slab, k)
        width = s1 - s0
        t0 = time.perf_counter()
        a = buffers[0][: tile.rows * width].reshape(tile.rows, width)
        data.read_direct(a, np.s_[tile.r0:tile.r1, s0:s1])
        if not tile.uses_syrk:
            b = buffers[1][: tile.cols * width].reshape(tile.cols, width)
            data.read_direct(b, np.s_[tile.c0:tile.c1, s0:s1])
        t1 = time.perf_counter()
        # a is C-ordered (rows x width): a.T is Fortran-ordered and BLAS takes it without copy.
        if tile.uses_syrk:
            out = syrk(1.0, a.T, beta=1.0, c=acc, trans=1, lower=0, overwrite_c=1)
        else:
            out = gemm(1.0, a.T, b.T, beta=1.0, c=acc, trans_a=1, overwrite_c=1)
        if out is not acc and not np.shares_memory(out, acc):
            raise RuntimeError("BLAS copied the accumulator: it must be Fortran-ordered")
        compute_s += time.perf_counter() - t1
        read_s += t1 - t0
        pause("gram.slab")
        now = time.monotonic()
        if now - last_note >= TASK_PROGRESS_INTERVAL:
            write_progress_note(progress_path, s + 1, n_slabs)
            last_note = now
    return read_s, compute_s


def open_for_reading(path: str, cache_bytes: int) -> h5py.File:
    """Open an HDF5 file read-only for streaming slabs out of it.

    The chunk cache is ``cache_bytes`` (evicting fully read chunks first), and the data sieve
    buffer is off: with the default 64 KiB sieve, every row of a narrower slab of a contiguous
    dataset would cost a 64 KiB read (measured: 1.4 GB/s instead of 3.8 GB/s from the page
    cache). File locking is used where the file system supports it.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    fapl.set_sieve_buf_size(0)
    slots = max(521, 10 * max(1, cache_bytes // (1 << 20)) + 1)
    fapl.set_cache(0, slots, max(cache_bytes, 1 << 20), 1.0)
    with contextlib.suppress(AttributeError):
        fapl.set_file_locking(True, True)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=fapl)
    return h5py.File(fid)


def compute_tile(tile: Tile, *, path: str, dataset: str, dtype: str, slab: int,
                 threads: int, work_dir: str, cache_bytes: int) -> dict:
    """Compute one tile of X X^T from HDF5 and save it in ``work_dir`` (runs in a task).

    The input is opened read-only; the tile's accumulator is the only array whose size depends
    on the tile, the two slab buffers are reused for every slab.

    Parameters
    ----------
    tile : Tile
        The tile to compute (a :class:`~blockmatrix.ooc.tiles.GramTile`).
    path, dataset : str
        Location of X.
    dtype : str
        dtype of X and of the accumulator.
    slab : int
        Columns read per step.
    threads : int
        BLAS threads for this task.
    work_dir : str
        Folder for finished tiles and progress notes.
    cache_bytes : int
        HDF5 chunk cache size.

    Returns
    -------
    dict
        Statistics: tile indices, seconds reading and computing, bytes read, flops, pid.
    """
    start = time.perf_counter()
    dt = np.dtype(dtype)
    width = max(1, slab)
    buffers = (np.empty(tile.rows * width, dtype=dt),
               np.empty(0 if tile.uses_syrk else tile.cols * width, dtype=dt))
    acc = np.zeros((tile.rows, tile.cols), dtype=dt, order="F")
    progress_path = note_path(work_dir, tile)
    with blas_threads(threads), open_for_reading(path, cache_bytes) as f:
        data = f[dataset]
        k = int(data.shape[1])
        read_s, compute_s = accumulate_slabs(data, tile, acc, width, buffers, blas_kernels(dt),
                                             progress_path)
    del buffers
    if tile.uses_syrk:
        mirror_upper(acc)  # syrk wrote the upper triangle only
    save_tile(acc, work_dir, tile)
    with contextlib.suppress(OSError):
        os.unlink(progress_path)
    return {"i": tile.i, "j": tile.j, "read_s": read_s, "compute_s": compute_s,
            "seconds": time.perf_counter() - start, "flops": tile.flops(k),
            "read_bytes": tile.read_elements(k) * dt.itemsize, "pid": os.getpid()}
