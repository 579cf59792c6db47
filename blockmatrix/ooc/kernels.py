"""The executor side: one task computes one tile of X X^T, or of A @ B, from HDF5.

A task reads **slabs** of ``slab`` elements of the long axis of the two blocks it needs (a row
block of A, a column block of B; for X X^T, row blocks of X) straight from HDF5 (read-only,
into two buffers allocated once, chunk cache sized to the slab) and accumulates them into its
tile in place: ``?syrk`` with ``beta=1`` for a diagonal tile of X X^T, ``?gemm`` with ``beta=1``
for the others, on a Fortran-ordered accumulator that BLAS updates without a copy. No array is
allocated per slab product, so a task's memory is ``rows cols + (rows + cols) slab`` elements
whatever the length of the long axis.

An operand read transposed (:attr:`~blockmatrix.ooc.tiles.Operand.transposed`) is read as
stored, and BLAS's ``trans`` flags do the transpose: a slab is never copied.

Everything here is module-level: Spark pickles :func:`compute_tile` and the arguments bound to
it with :func:`functools.partial`, never a closure over driver state.

BLAS threads are pinned per task (``spark.task.cpus``) with threadpoolctl when it is installed
(``pip install 'blockmatrix[ooc]'``); without it the tasks run with BLAS's own thread count and
the driver warns (:func:`warn_if_blas_unpinned`).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from concurrent import futures
from pathlib import Path

import h5py
import numpy as np

from .._testhooks import pause
from ..errors import READ_ERROR_MARK, PerformanceWarning, TaskReadError
from ..io.hdf5 import is_disk_full
from . import blas
from .tiles import Tile
from .workdir import note_path, save_tile, write_progress_note

__all__ = ["READ_ERROR_MARK", "compute_tile", "compute_tile_blocks", "mirror_upper",
           "open_for_reading", "warn_if_blas_unpinned"]

#: Seconds between progress notes written by a task.
TASK_PROGRESS_INTERVAL = 1.0

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


class SlabReader:
    """Reads one operand's slabs into one reused buffer, in the orientation BLAS wants.

    ``read(lo, hi, s0, s1)`` reads rows ``lo:hi`` (of A; columns of B) over the long axis
    ``s0:s1`` and returns ``(array, trans)``: a Fortran-ordered view for ``?gemm`` and its
    ``trans`` flag, so that no slab is ever copied.
    """

    def __init__(self, data, *, left: bool, transposed: bool, extent: int, slab: int, dtype,
                 location: str):
        self.data, self.left, self.transposed = data, left, transposed
        self.buffer = np.empty(extent * slab, dtype=dtype)
        self.location = location

    def read(self, lo: int, hi: int, s0: int, s1: int):
        n, w = hi - lo, s1 - s0
        # The stored dataset is (extent x long axis) for A and for a transposed B, and
        # (long axis x extent) for B and for a transposed A.
        along_rows = self.left != self.transposed
        if along_rows:
            buf = self.buffer[: n * w].reshape(n, w)
            selection = np.s_[lo:hi, s0:s1]
        else:
            buf = self.buffer[: w * n].reshape(w, n)
            selection = np.s_[s0:s1, lo:hi]
        try:
            self.data.read_direct(buf, selection)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise TaskReadError(
                f"{READ_ERROR_MARK}reading {self.location} failed in a task "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): the "
                f"file changed or is damaged; restore it and run again") from None
        # buf.T is Fortran-ordered. A's slab is (n x w): buf.T is A^T when buf is A, A itself
        # when buf is A^T; B's slab is (w x n) the other way round.
        trans = 1 if along_rows == self.left else 0
        return buf.T, trans


def _read_slabs(readers, tile: Tile, s0: int, s1: int):
    """The slabs ``s0:s1`` of a tile's two operands (the right one None for a syrk tile)."""
    left, right = readers
    a = left.read(tile.r0, tile.r1, s0, s1)
    b = None if tile.uses_syrk else right.read(tile.c0, tile.c1, s0, s1)
    return a, b


class TileStoppedError(Exception):
    """A tile's computation was asked to stop (the run in process is being cancelled)."""


def accumulate_slabs(readers, tile: Tile, acc: np.ndarray, k: int, slab: int,
                     progress_path: str | None, spare=None, stop=None) -> tuple[float, float]:
    """Stream the slabs through BLAS into ``acc``; return (read, compute) seconds.

    ``readers`` is ``(left, right)``; for a syrk tile only the left one is read. ``spare`` is
    a second such pair with buffers of its own: given it, slab ``s + 1`` is read in a thread
    into one pair while BLAS (:mod:`~blockmatrix.ooc.blas`, which releases the GIL) multiplies
    slab ``s`` from the other, so reading costs only what BLAS does not hide. The read
    seconds returned are the time spent waiting for slabs. ``stop``, a
    :class:`threading.Event`, raises :class:`TileStoppedError` after the slab in hand once set.
    """
    bounds = [(s0, min(s0 + slab, k)) for s0 in range(0, k, slab)]
    pairs = (readers,) if spare is None else (readers, spare)
    read_s = compute_s = 0.0
    last_note = time.monotonic()
    with contextlib.ExitStack() as stack:
        pool = None if spare is None else stack.enter_context(
            futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slab-reader"))
        pending = None
        for s, (s0, s1) in enumerate(bounds):
            t0 = time.perf_counter()
            (a, trans_a), right = (pending.result() if pending is not None
                                   else _read_slabs(pairs[s % len(pairs)], tile, s0, s1))
            pending = None
            if pool is not None and s + 1 < len(bounds):
                pending = pool.submit(_read_slabs, pairs[(s + 1) % 2], tile, *bounds[s + 1])
            t1 = time.perf_counter()
            if tile.uses_syrk:
                # syrk's trans=1 computes a^T a; with a = A^T (trans_a 1) that is A A^T.
                blas.syrk(1.0, a, acc, trans=trans_a)
            else:
                b, trans_b = right
                blas.gemm(1.0, a, b, acc, trans_a=trans_a, trans_b=trans_b)
            compute_s += time.perf_counter() - t1
            read_s += t1 - t0
            pause("gram.slab")
            if stop is not None and stop.is_set():
                raise TileStoppedError(
                    f"tile {tile.name} stopped after {s + 1} of {len(bounds)} slabs")
            now = time.monotonic()
            if progress_path is not None and now - last_note >= TASK_PROGRESS_INTERVAL:
                with contextlib.suppress(OSError):  # a note is advice: a full disk must not fail
                    write_progress_note(progress_path, s + 1, len(bounds))
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


def _open_dataset(f: h5py.File, dataset: str, cache_bytes: int) -> h5py.Dataset:
    """``f[dataset]`` with its own chunk cache of ``cache_bytes``."""
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    slots = max(521, 10 * max(1, cache_bytes // (1 << 20)) + 1)
    dapl.set_chunk_cache(slots, max(cache_bytes, 1 << 20), 1.0)
    return h5py.Dataset(h5py.h5d.open(f.id, dataset.encode(), dapl=dapl))


class ZarrSlabs:
    """A read-only Zarr array with the one method :class:`SlabReader` calls on a dataset.

    ``read_direct(buf, selection)`` decodes the chunks of ``selection`` straight into the
    reused slab buffer (:func:`blockmatrix.io.zarr_store.read_region`), as h5py's does.
    """

    def __init__(self, url: str):
        from ..io import zarr_store

        self.array = zarr_store.open_array(url, "r")
        self.shape = tuple(self.array.shape)

    def read_direct(self, buf: np.ndarray, selection) -> None:
        from ..io import zarr_store

        zarr_store.read_region(self.array, selection[0], selection[1], out=buf)


def _open_zarr(op) -> ZarrSlabs:
    """The Zarr operand ``op`` opened read-only in a task, or a one-line TaskReadError."""
    try:
        return ZarrSlabs(op.path)
    except Exception as exc:  # storage errors are OSErrors; zarr's own are ValueErrors & co
        raise TaskReadError(
            f"{READ_ERROR_MARK}opening {op.location} failed in a task ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): the array must be on storage "
            f"every executor can read, with credentials in their environment") from None


def _gram_operands(path, dataset, operands):
    """The operands of a task: given, or X and X^T of a gram's ``path::dataset``."""
    if operands is not None:
        return tuple(operands)
    from .tiles import Operand

    x = Operand(path, dataset, (0, 0), "float64")
    return x, Operand(path, dataset, (0, 0), "float64", transposed=True)


def _tile_product(tile: Tile, operands, dt: np.dtype, slab: int, threads: int,
                  cache_bytes: int, progress_path: str | None, prefetch: bool = False,
                  stop=None):
    """The tile computed in memory: ``(acc, k, read seconds, compute seconds)``.

    With ``prefetch`` the next slabs are read while BLAS runs, into a second pair of buffers.
    """
    left_op, right_op = operands
    width = max(1, slab)
    acc = np.zeros((tile.rows, tile.cols), dtype=dt, order="F")
    with contextlib.ExitStack() as stack:
        stack.enter_context(blas_threads(threads))
        files: dict = {}
        datasets: dict = {}
        for op in (left_op, right_op):
            if op.is_zarr:
                if (op.path, op.dataset) not in datasets:
                    datasets[(op.path, op.dataset)] = _open_zarr(op)
                continue
            if op.path not in files:
                try:
                    files[op.path] = stack.enter_context(open_for_reading(op.path, 0))
                except OSError as exc:
                    raise TaskReadError(
                        f"{READ_ERROR_MARK}opening {op.path} failed in a task ({exc}): the "
                        f"file must be on storage every executor can read; check the path"
                    ) from None
            if (op.path, op.dataset) not in datasets:
                # One chunk cache per dataset: the same dataset on both sides (X X^T) shares
                # one, as the plan's cache_bytes counts.
                try:
                    datasets[(op.path, op.dataset)] = _open_dataset(
                        files[op.path], op.dataset, cache_bytes)
                except (OSError, KeyError) as exc:
                    raise TaskReadError(
                        f"{READ_ERROR_MARK}opening {op.location} failed in a task ({exc}): the "
                        f"file changed or is damaged; restore it and run again") from None
        left_data = datasets[(left_op.path, left_op.dataset)]
        k = int(left_data.shape[0 if left_op.transposed else 1])
        right_data = datasets[(right_op.path, right_op.dataset)]

        def reader_pair():
            left = SlabReader(left_data, left=True, transposed=left_op.transposed,
                              extent=tile.rows, slab=width, dtype=dt, location=left_op.location)
            right = SlabReader(right_data, left=False, transposed=right_op.transposed,
                               extent=0 if tile.uses_syrk else tile.cols, slab=width, dtype=dt,
                               location=right_op.location)
            return left, right

        read_s, compute_s = accumulate_slabs(reader_pair(), tile, acc, k, width, progress_path,
                                             spare=reader_pair() if prefetch else None,
                                             stop=stop)
    if tile.uses_syrk:
        mirror_upper(acc)  # syrk wrote the upper triangle only
    return acc, k, read_s, compute_s


def write_zarr_tile(acc: np.ndarray, tile: Tile, url: str, symmetric: bool) -> None:
    """Write a finished tile into the staging Zarr array at ``url`` (and its mirror).

    The tile covers whole chunks (:func:`~blockmatrix.ooc.tiles.zarr_output_tile`), which
    no other task writes; for X X^T an off-diagonal tile ``(i, j)`` is written at ``(j, i)``
    transposed too, whose chunks are just as much its own.
    """
    from ..io import zarr_store

    array = zarr_store.open_array(url, "r+")
    zarr_store.write_tile(array, tile.r0, tile.c0, acc)
    if symmetric and not tile.diagonal:
        zarr_store.write_tile(array, tile.c0, tile.r0, acc.T)


def mark_tile_done(marks: str, tile: Tile) -> None:
    """Record that ``tile`` is in the staging array: an empty object ``marks/NAME.done``.

    Written only after the tile's chunks are: a tile without its mark is computed again.
    """
    from ..io import zarr_store

    loc = zarr_store.as_location(marks)
    loc.filesystem().pipe_file(loc.key(Path(tile.name).stem + ".done"), b"")


def compute_tile(tile: Tile, *, dtype: str, slab: int, threads: int, work_dir: str | None,
                 cache_bytes: int, path: str | None = None, dataset: str | None = None,
                 operands=None, zarr_output: str | None = None, zarr_marks: str | None = None,
                 symmetric: bool = False, prefetch: bool = False, stop=None) -> dict:
    """Compute one tile of X X^T or A @ B from HDF5 and save it in ``work_dir`` (in a task).

    The inputs are opened read-only; the tile's accumulator is the only array whose size
    depends on the tile, the two slab buffers are reused for every slab.

    Parameters
    ----------
    tile : Tile
        The tile to compute (a :class:`~blockmatrix.ooc.tiles.GramTile` of X X^T).
    dtype : str
        dtype of the accumulator (the slabs are read in it).
    slab : int
        Elements of the long axis read per step.
    threads : int
        BLAS threads for this task.
    work_dir : str or None
        Folder for finished tiles and progress notes (None: no notes; a Zarr output only).
    cache_bytes : int
        HDF5 chunk cache size of each dataset.
    path, dataset : str, optional
        Location of X (for X X^T, when ``operands`` is not given).
    operands : (Operand, Operand), optional
        The left and right operands (X and X read transposed for X X^T).
    zarr_output : str, optional
        The staging Zarr array the tile is written into (no tile file then), by this task.
    zarr_marks : str, optional
        Where the tile's done mark goes once written (with ``zarr_output``).
    symmetric : bool
        Whether the output is X X^T (a Zarr output's off-diagonal tile is mirrored).
    prefetch : bool
        Read the next slabs while BLAS runs (a second pair of slab buffers): for a tile that
        has every core to itself, whose reads no other task overlaps.
    stop : threading.Event, optional
        In process only: once set, the tile stops after its current slab
        (:class:`TileStoppedError`).

    Returns
    -------
    dict
        Statistics: tile indices, seconds reading and computing, bytes read, flops, pid; or,
        when an input could not be read, the tile indices and ``error`` (one line).
    """
    start = time.perf_counter()
    dt = np.dtype(dtype)
    progress_path = note_path(work_dir, tile) if work_dir is not None else None
    try:
        acc, k, read_s, compute_s = _tile_product(
            tile, _gram_operands(path, dataset, operands), dt, slab, threads, cache_bytes,
            progress_path, prefetch, stop)
    except TaskReadError as exc:
        # Returned, not raised: a failed task makes Spark log its traceback on stderr, and the
        # user is owed one line (the driver raises it, see run.OocRun._compute).
        return {"i": tile.i, "j": tile.j, "error": str(exc)[len(READ_ERROR_MARK):]}
    if zarr_output is not None:
        try:
            write_zarr_tile(acc, tile, zarr_output, symmetric)
            mark_tile_done(zarr_marks, tile)
        except OSError as exc:
            # One line for the driver; the tile is computed again by a resumed run.
            return {"i": tile.i, "j": tile.j, "write_error": True,
                    "error": f"writing tile {tile.name} into {zarr_output} failed "
                             f"({type(exc).__name__}: {exc}); finish with --resume"}
        acc = None
    try:
        if acc is not None:
            save_tile(acc, work_dir, tile)
    except OSError as exc:
        if not is_disk_full(exc, work_dir):
            raise
        # One line for the driver (see TaskReadError): the tile folder is full.
        return {"i": tile.i, "j": tile.j, "disk_full": True,
                "error": f"no space left in {work_dir} for tile {tile.name}"}
    if progress_path is not None:
        with contextlib.suppress(OSError):
            os.unlink(progress_path)
    return {"i": tile.i, "j": tile.j, "read_s": read_s, "compute_s": compute_s,
            "seconds": time.perf_counter() - start, "flops": tile.flops(k),
            "read_bytes": tile.read_elements(k) * dt.itemsize, "pid": os.getpid()}


def compute_tile_blocks(tile: Tile, *, operands, dtype: str, slab: int, threads: int,
                        cache_bytes: int, rows_per_block: int, cols_per_block: int):
    """The blocks ``((i, j), block)`` of C in one tile of whole blocks (the ``ooc`` strategy).

    The tile is computed as :func:`compute_tile` does, in memory, then cut into C's blocks.
    """
    acc, _, _, _ = _tile_product(tile, operands, np.dtype(dtype), slab, threads, cache_bytes,
                                 None)
    for r in range(tile.r0, tile.r1, rows_per_block):
        for c in range(tile.c0, tile.c1, cols_per_block):
            block = np.ascontiguousarray(
                acc[r - tile.r0:min(r + rows_per_block, tile.r1) - tile.r0,
                    c - tile.c0:min(c + cols_per_block, tile.c1) - tile.c0])
            yield (r // rows_per_block, c // cols_per_block), block
