"""Y = X X^T for a tall-and-wide X in HDF5, out of core, in memory bounded by two flags.

X is ``n x k`` with ``k`` (the long axis) possibly far larger than memory; Y is ``n x n``. The
work is planned from the shape, dtype and two sizes alone (:func:`plan_gram`), then executed on
Spark (:func:`gram_hdf5`):

* Y is cut into square **tiles** of ``tile`` rows; only tiles on or above the diagonal are
  computed. One Spark task computes one tile over the whole long axis: it reads **slabs** of
  ``slab`` columns of the two row blocks it needs straight from HDF5 (read-only, into two
  preallocated buffers, chunk cache sized to the slab) and accumulates them into its tile in
  place: ``?syrk`` with ``beta=1`` for a diagonal tile, ``?gemm`` with ``beta=1`` for the
  others, on a Fortran-ordered accumulator that BLAS updates without a copy. No array is ever
  allocated per slab product, so a task's memory is ``tile^2 + 2 tile slab`` elements whatever
  the length of X.
* A finished tile is saved by its task into a work folder beside the output (written under a
  temporary name, then renamed: a tile file either is complete or does not exist). These files
  are the durable record of progress; ``resume=True`` reuses them and computes only the
  missing tiles.
* The driver is the only writer of Y. When the output file is new, it streams tiles into a
  private file in the work folder while the tasks run and, at the end, links that file into
  place (atomically). When the output file exists (in particular when it is the input file),
  it is opened for writing once, after every task has finished reading X, and the tiles are
  streamed into Y and mirrored below the diagonal; Y's space is allocated when Y is created,
  so writing the tiles changes raw data only, never the file's metadata. A kill during that
  final step is recovered by ``resume=True``, which writes the same tiles again.
* An ``fcntl`` lock beside the output makes a second job on the same output file refuse.

With ``local[2]`` the defaults (``tile=5000``, ``slab=2000``) cut a 10,000-row X into three
tiles: one off-diagonal gemm tile (2 units of work) and two diagonal syrk tiles (1 unit each).
Tiles are submitted largest first, so the two cores get 2 units each and finish together, each
running single-threaded BLAS, which is as fast per core as numpy's two-threaded syrk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import posixpath
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .errors import (
    InvalidInputError,
    InvalidParameterError,
    OutputExistsError,
    OutputNotWritableError,
)
from .io import hdf5

__all__ = [
    "DEFAULT_SLAB",
    "DEFAULT_TILE",
    "GramPlan",
    "GramProgress",
    "GramRequest",
    "GramResult",
    "GramTile",
    "check_gram_request",
    "compute_tile",
    "gram_hdf5",
    "plan_gram",
]

#: Default rows (and columns) of an output tile.
DEFAULT_TILE = 5000
#: Default columns of X read per step.
DEFAULT_SLAB = 2000

#: Supported dtypes of X (and Y): BLAS has syrk/gemm for these.
SUPPORTED_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))

# Resident memory of the processes themselves, measured on pyspark 4.3 / Java 17 (local mode,
# after a job): the driver JVM, the Python driver with pyspark+numpy+scipy+h5py imported, the
# pyspark daemon and one Python worker with numpy, scipy.linalg.blas and h5py imported.
JVM_BYTES = 450 << 20
DRIVER_BASE_BYTES = 120 << 20
DAEMON_BYTES = 40 << 20
WORKER_BASE_BYTES = 120 << 20
#: Bytes the driver reads from a tile file at a time while writing Y.
WRITE_BAND_BYTES = 32 << 20
#: Seconds between progress updates written by a task.
TASK_PROGRESS_INTERVAL = 1.0

_TILE_FILE = re.compile(r"^tile-(\d+)-(\d+)\.npy$")
_STATE_VERSION = 1


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GramTile:
    """One output tile ``Y[r0:r1, c0:c1]`` with ``(i, j)`` its tile indices, ``i <= j``."""

    i: int
    j: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def diagonal(self) -> bool:
        """Whether the tile is on the diagonal (computed with syrk)."""
        return self.i == self.j

    @property
    def rows(self) -> int:
        """Rows of the tile."""
        return self.r1 - self.r0

    @property
    def cols(self) -> int:
        """Columns of the tile."""
        return self.c1 - self.c0

    @property
    def name(self) -> str:
        """File name of the finished tile in the work folder."""
        return f"tile-{self.i:05d}-{self.j:05d}.npy"

    def flops(self, k: int) -> int:
        """Floating-point operations over a long axis of length ``k`` (syrk: half a gemm)."""
        if self.diagonal:
            return self.rows * (self.rows + 1) * k
        return 2 * self.rows * self.cols * k

    def read_elements(self, k: int) -> int:
        """Elements of X the tile's task reads."""
        return (self.rows if self.diagonal else self.rows + self.cols) * k


def make_tiles(n: int, tile: int) -> list[GramTile]:
    """Tiles on or above the diagonal of an ``n x n`` result, largest work first.

    Off-diagonal tiles cost twice a diagonal one; submitting them first is the
    longest-processing-time rule that keeps every core busy to the end.

    >>> [(t.i, t.j) for t in make_tiles(10, 5)]
    [(0, 1), (0, 0), (1, 1)]
    >>> [(t.i, t.j, t.rows, t.cols) for t in make_tiles(7, 3)][:4]
    [(0, 1, 3, 3), (0, 0, 3, 3), (1, 1, 3, 3), (0, 2, 3, 1)]
    """
    bounds = [(s, min(s + tile, n)) for s in range(0, n, tile)]
    tiles = [GramTile(i, j, *bounds[i], *bounds[j])
             for i in range(len(bounds)) for j in range(i, len(bounds))]
    return sorted(tiles, key=lambda t: (-t.flops(1), t.i, t.j))


def effective_slab(slab: int, k: int, chunks: tuple[int, int] | None) -> int:
    """Columns per read: ``slab`` capped at ``k``, cut to whole chunks when chunks fit in it.

    >>> effective_slab(2000, 80000, None)
    2000
    >>> effective_slab(2000, 80000, (100, 300))
    1800
    >>> effective_slab(2000, 500, (100, 3000))
    500
    """
    width = max(1, min(slab, k))
    if chunks is not None and chunks[1] <= width:
        width -= width % chunks[1]
    return width


def chunk_cache_bytes(chunks: tuple[int, int] | None, rows: int, slab: int,
                      itemsize: int) -> int:
    """HDF5 chunk cache of a task reading ``rows x slab`` blocks of X.

    When the slab is a whole number of chunks wide (what :func:`effective_slab` arranges when
    a chunk is not wider than the slab), every chunk is read once per task and the cache only
    needs room for the partial chunks at a block's edges: two chunks. When chunks are wider
    than the slab, a chunk serves several consecutive slabs; the cache then keeps the chunks of
    both row blocks, but never more than the two slab buffers themselves (beyond that a chunk
    is read again for each slab it overlaps). Contiguous data need no chunk cache (0).

    >>> chunk_cache_bytes(None, 5000, 2000, 8)
    0
    >>> chunk_cache_bytes((1000, 1000), 5000, 2000, 8) // 2**20
    15
    >>> chunk_cache_bytes((100, 10000), 5000, 2000, 8) // 2**20
    160
    """
    if chunks is None:
        return 0
    cr, cc = chunks
    chunk = cr * cc * itemsize
    if cc <= slab:
        return 2 * chunk
    wanted = 2 * (math.ceil(rows / cr) + 1) * chunk
    return min(wanted, 2 * rows * slab * itemsize + chunk)


@dataclass(frozen=True)
class GramPlan:
    """What :func:`gram_hdf5` will do, computed from shapes and flags alone.

    Attributes
    ----------
    shape : tuple of int
        ``(n, k)``, the shape of X.
    dtype : str
        dtype of X and Y.
    tile, slab : int
        Rows of a tile and columns read per step (slab after alignment to X's chunks).
    concurrent_tasks : int
        Tasks that run at once (Spark task slots).
    threads_per_task : int
        BLAS threads in each task (``spark.task.cpus``).
    chunks : tuple of int or None
        X's HDF5 chunk shape.
    tiles : tuple of GramTile
        Every tile on or above the diagonal, in submission order.
    done : frozenset of (int, int)
        Tiles already finished by an interrupted run (not computed again).
    """

    shape: tuple[int, int]
    dtype: str
    tile: int
    slab: int
    concurrent_tasks: int
    threads_per_task: int
    chunks: tuple[int, int] | None
    tiles: tuple[GramTile, ...]
    done: frozenset = field(default_factory=frozenset)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return np.dtype(self.dtype).itemsize

    @property
    def todo(self) -> tuple[GramTile, ...]:
        """Tiles still to compute, in submission order."""
        return tuple(t for t in self.tiles if (t.i, t.j) not in self.done)

    @property
    def num_slabs(self) -> int:
        """Slabs along the long axis."""
        return math.ceil(self.shape[1] / self.slab) if self.shape[1] else 0

    @property
    def flops(self) -> int:
        """Floating-point operations of all tiles."""
        return sum(t.flops(self.shape[1]) for t in self.tiles)

    @property
    def todo_flops(self) -> int:
        """Floating-point operations of the tiles still to compute."""
        return sum(t.flops(self.shape[1]) for t in self.todo)

    @property
    def x_bytes(self) -> int:
        """Size of X."""
        return self.shape[0] * self.shape[1] * self.itemsize

    @property
    def y_bytes(self) -> int:
        """Size of Y."""
        return self.shape[0] ** 2 * self.itemsize

    @property
    def read_bytes(self) -> int:
        """Bytes of X read by all tasks together (X is read once per tile row block pair)."""
        return sum(t.read_elements(self.shape[1]) for t in self.tiles) * self.itemsize

    @property
    def tile_rows(self) -> int:
        """Rows of the largest tile (the tile size capped at n)."""
        return min(self.tile, self.shape[0])

    @property
    def cache_bytes(self) -> int:
        """HDF5 chunk cache of one task."""
        return chunk_cache_bytes(self.chunks, self.tile_rows, self.slab, self.itemsize)

    @property
    def task_bytes(self) -> int:
        """Predicted peak memory of one task: accumulator, two slab buffers, chunk cache."""
        t, b = self.tile_rows, self.itemsize
        return t * t * b + 2 * t * self.slab * b + self.cache_bytes

    @property
    def worker_bytes(self) -> int:
        """Predicted peak resident memory of one Python worker process."""
        return WORKER_BASE_BYTES + self.task_bytes

    @property
    def driver_bytes(self) -> int:
        """Predicted peak resident memory of the Python driver (the single writer)."""
        return DRIVER_BASE_BYTES + 3 * WRITE_BAND_BYTES

    @property
    def total_bytes(self) -> int:
        """Predicted peak resident memory of all processes: JVM, driver, daemon, workers."""
        return (JVM_BYTES + self.driver_bytes + DAEMON_BYTES
                + self.concurrent_tasks * self.worker_bytes)

    @property
    def scratch_bytes(self) -> int:
        """Disk used by finished tiles in the work folder (removed at the end)."""
        return sum(t.rows * t.cols for t in self.tiles) * self.itemsize

    def __str__(self) -> str:
        """A printable summary: work, reads, memory per process and in total."""
        mib = 2**20
        n, k = self.shape
        diag = sum(t.diagonal for t in self.tiles)
        lines = [
            f"Y = X X^T: X {n} x {k} {self.dtype} ({self.x_bytes / mib:,.0f} MiB), "
            f"Y {n} x {n} ({self.y_bytes / mib:,.0f} MiB)",
            f"  tiles      {len(self.tiles)} on/above the diagonal ({diag} syrk, "
            f"{len(self.tiles) - diag} gemm) of {self.tile_rows} rows; "
            f"{len(self.done)} already done, {len(self.todo)} to compute",
            f"  slabs      {self.num_slabs} of {self.slab} columns"
            + (f" (X chunks {self.chunks[0]} x {self.chunks[1]})" if self.chunks else
               " (X contiguous)"),
            f"  work       {self.flops / 1e9:,.1f} GFLOP in all, "
            f"{self.todo_flops / 1e9:,.1f} GFLOP to do",
            f"  reads      {self.read_bytes / mib:,.0f} MiB of X "
            f"({self.read_bytes / max(1, self.x_bytes):.2f} x X)",
            f"  tasks      {self.concurrent_tasks} at once x {self.threads_per_task} BLAS "
            f"thread(s)",
            f"  memory     per task {self.task_bytes / mib:,.0f} MiB (tile "
            f"{self.tile_rows ** 2 * self.itemsize / mib:,.0f} + slabs "
            f"{2 * self.tile_rows * self.slab * self.itemsize / mib:,.0f} + chunk cache "
            f"{self.cache_bytes / mib:,.0f}); worker {self.worker_bytes / mib:,.0f}, driver "
            f"{self.driver_bytes / mib:,.0f}, JVM {JVM_BYTES / mib:,.0f}, daemon "
            f"{DAEMON_BYTES / mib:,.0f}",
            f"  predicted peak resident memory of all processes: "
            f"{self.total_bytes / mib:,.0f} MiB (independent of k)",
            f"  scratch    {self.scratch_bytes / mib:,.0f} MiB of finished tiles beside the "
            f"output",
        ]
        return "\n".join(lines)


def plan_gram(shape: tuple[int, int], dtype, tile: int = DEFAULT_TILE,
              slab: int = DEFAULT_SLAB, concurrent_tasks: int = 2, threads_per_task: int = 1,
              chunks: tuple[int, int] | None = None,
              done: frozenset | set = frozenset()) -> GramPlan:
    """Plan Y = X X^T from X's shape, dtype and chunking and the two size flags.

    Parameters
    ----------
    shape : tuple of int
        ``(n, k)``.
    dtype : dtype-like
        float64 or float32.
    tile : int
        Rows (and columns) of an output tile.
    slab : int
        Columns of X read per step.
    concurrent_tasks : int
        Spark task slots (tasks running at once).
    threads_per_task : int
        BLAS threads per task.
    chunks : tuple of int, optional
        X's chunk shape; ``None`` for contiguous storage.
    done : set of (int, int)
        Tiles already finished.

    Returns
    -------
    GramPlan

    Examples
    --------
    >>> plan = plan_gram((10_000, 80_000), "float64")
    >>> len(plan.tiles), plan.num_slabs, round(plan.read_bytes / plan.x_bytes, 2)
    (3, 40, 2.0)
    >>> plan.total_bytes < 2.5e9
    True
    >>> plan_gram((10_000, 160_000), "float64").total_bytes == plan.total_bytes
    True
    """
    _check_positive(tile=tile, slab=slab, concurrent_tasks=concurrent_tasks,
                    threads_per_task=threads_per_task)
    n, k = (int(s) for s in shape)
    return GramPlan(shape=(n, k), dtype=np.dtype(dtype).name, tile=int(tile),
                    slab=effective_slab(int(slab), k, chunks),
                    concurrent_tasks=int(concurrent_tasks),
                    threads_per_task=int(threads_per_task),
                    chunks=tuple(chunks) if chunks is not None else None,
                    tiles=tuple(make_tiles(n, int(tile))), done=frozenset(done))


def _check_positive(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidParameterError(
                f"{name} ({value!r}) must be a positive integer: give {name} >= 1")


# --------------------------------------------------------------------------------------------
# Executor side: one task computes one tile
# --------------------------------------------------------------------------------------------

def _blas_kernels(dtype: np.dtype):
    from scipy.linalg import blas

    if dtype == np.float64:
        return blas.dsyrk, blas.dgemm
    return blas.ssyrk, blas.sgemm


def _mirror_upper(acc: np.ndarray, band: int = 256) -> None:
    """Copy the upper triangle of a square array onto its lower triangle, in place."""
    t = acc.shape[0]
    for j0 in range(0, t, band):
        j1 = min(j0 + band, t)
        block = acc[j0:j1, j0:j1]
        lower = np.tril_indices(j1 - j0, -1)
        block[lower] = block.T[lower]
        acc[j1:, j0:j1] = acc[j0:j1, j1:].T


def _write_progress(path: str, done: int, total: int) -> None:
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{done} {total}\n")
    os.replace(tmp, path)


def _save_tile(acc: np.ndarray, work_dir: str, tile: GramTile) -> str:
    """Write a finished tile under a temporary name, then rename it into place."""
    final = os.path.join(work_dir, tile.name)
    tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        np.lib.format.write_array(f, acc, allow_pickle=False)
    os.replace(tmp, final)
    return final


def _accumulate(data, tile: GramTile, acc: np.ndarray, slab: int, buffers, kernels,
                progress_path: str, throttle: float) -> tuple[float, float]:
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
        if not tile.diagonal:
            b = buffers[1][: tile.cols * width].reshape(tile.cols, width)
            data.read_direct(b, np.s_[tile.c0:tile.c1, s0:s1])
        t1 = time.perf_counter()
        # a is C-ordered (rows x width): a.T is Fortran-ordered and BLAS takes it without copy.
        if tile.diagonal:
            out = syrk(1.0, a.T, beta=1.0, c=acc, trans=1, lower=0, overwrite_c=1)
        else:
            out = gemm(1.0, a.T, b.T, beta=1.0, c=acc, trans_a=1, overwrite_c=1)
        if out is not acc and not np.shares_memory(out, acc):
            raise RuntimeError("BLAS copied the accumulator: it must be Fortran-ordered")
        compute_s += time.perf_counter() - t1
        read_s += t1 - t0
        if throttle:
            time.sleep(throttle)
        now = time.monotonic()
        if now - last_note >= TASK_PROGRESS_INTERVAL:
            _write_progress(progress_path, s + 1, n_slabs)
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


def compute_tile(tile: GramTile, *, path: str, dataset: str, dtype: str, slab: int,
                 threads: int, work_dir: str, cache_bytes: int, throttle: float = 0.0) -> dict:
    """Compute one tile of X X^T from HDF5 and save it in ``work_dir`` (runs in a task).

    Module-level so that Spark pickles only this function and its ``functools.partial``
    arguments. The input is opened read-only; the tile's accumulator is the only array whose
    size depends on the tile, the two slab buffers are reused for every slab.

    Parameters
    ----------
    tile : GramTile
        The tile to compute.
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
    throttle : float
        Seconds to sleep after each slab (for tests that interrupt a run).

    Returns
    -------
    dict
        Statistics: tile indices, seconds reading and computing, bytes read, flops, pid.
    """
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    dt = np.dtype(dtype)
    width = max(1, slab)
    buffers = (np.empty(tile.rows * width, dtype=dt),
               np.empty(0 if tile.diagonal else tile.cols * width, dtype=dt))
    acc = np.zeros((tile.rows, tile.cols), dtype=dt, order="F")
    progress_path = os.path.join(work_dir, tile.name[:-4] + ".progress")
    with threadpool_limits(limits=threads, user_api="blas"), \
            open_for_reading(path, cache_bytes) as f:
        data = f[dataset]
        k = int(data.shape[1])
        read_s, compute_s = _accumulate(data, tile, acc, width, buffers, _blas_kernels(dt),
                                        progress_path, throttle)
    del buffers
    if tile.diagonal:
        _mirror_upper(acc)
    _save_tile(acc, work_dir, tile)
    with contextlib.suppress(OSError):
        os.unlink(progress_path)
    return {"i": tile.i, "j": tile.j, "read_s": read_s, "compute_s": compute_s,
            "seconds": time.perf_counter() - start, "flops": tile.flops(k),
            "read_bytes": tile.read_elements(k) * dt.itemsize, "pid": os.getpid()}



# --------------------------------------------------------------------------------------------
# Request: every check before anything is written
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GramRequest:
    """A validated request: where X is, where Y goes, the sizes, and the interrupted run's state.

    Built by :func:`check_gram_request`, which reads metadata only and writes nothing.
    """

    input_path: str
    input_dataset: str
    output_path: str
    output_dataset: str
    shape: tuple[int, int]
    dtype: str
    chunks: tuple[int, int] | None
    tile: int
    slab: int
    resume: bool
    overwrite: bool
    same_file: bool
    work_dir: str
    lock_path: str
    state: dict | None = None

    @property
    def input_location(self) -> str:
        """``FILE::/dataset`` of X."""
        return f"{self.input_path}::{self.input_dataset}"

    @property
    def output_location(self) -> str:
        """``FILE::/dataset`` of Y."""
        return f"{self.output_path}::{self.output_dataset}"


def work_paths(output_path: str, output_dataset: str) -> tuple[str, str]:
    """The work folder and the lock file of a run, both beside the output file.

    >>> work_paths("/data/x.h5", "/grp/Y")
    ('/data/.x.h5.grp__Y.gram-work', '/data/.x.h5.gram-lock')
    """
    folder, base = os.path.split(os.path.abspath(output_path))
    tag = output_dataset.strip("/").replace("/", "__")
    return (os.path.join(folder, f".{base}.{tag}.gram-work"),
            os.path.join(folder, f".{base}.gram-lock"))


def _input_stamp(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _read_state(work_dir: str) -> dict | None:
    try:
        with open(os.path.join(work_dir, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if state.get("version") == _STATE_VERSION else None


def _write_state(work_dir: str, state: dict) -> None:
    final = os.path.join(work_dir, "state.json")
    tmp = f"{final}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _check_state(state: dict, input_path: str, input_dataset: str, output_path: str,
                 shape, dtype, tile: int | None, slab: int | None) -> None:
    """Refuse to resume a run whose state does not belong to this request."""
    expected = {"input": os.path.abspath(input_path), "input_dataset": input_dataset,
                "output": os.path.abspath(output_path), "shape": list(shape),
                "dtype": np.dtype(dtype).name}
    for key, value in expected.items():
        if state.get(key) != value:
            raise InvalidParameterError(
                f"resume: the interrupted run had {key} {state.get(key)!r}, this request has "
                f"{value!r}: repeat the interrupted request, or run without --resume to start "
                f"over")
    for name, given in (("tile", tile), ("slab", slab)):
        if given is not None and given != state[name]:
            raise InvalidParameterError(
                f"resume: --{name} ({given}) differs from the interrupted run's ({state[name]}): "
                f"omit --{name} to continue with {state[name]}, or run without --resume")
    if state.get("phase") == "computing" and state.get("input_stamp") != _input_stamp(
            input_path):
        raise InvalidInputError(
            f"resume: input file {input_path!r} changed since the interrupted run (size or "
            f"modification time): its finished tiles cannot be reused; run without --resume")


def check_gram_request(input_path: str, input_dataset: str, output_path: str,
                       output_dataset: str, tile: int | None = None, slab: int | None = None,
                       resume: bool = False, overwrite: bool = False) -> GramRequest:
    """Validate a Y = X X^T request without writing anything.

    Parameters
    ----------
    input_path, input_dataset : str
        Location of X (2-D, float64 or float32).
    output_path, output_dataset : str
        Location of Y; the file may be the input file.
    tile, slab : int, optional
        Sizes; ``None`` means the default, or the interrupted run's value when resuming.
    resume : bool
        Continue an interrupted run from its finished tiles.
    overwrite : bool
        Replace an existing Y.

    Returns
    -------
    GramRequest

    Raises
    ------
    InvalidParameterError
        A size is not positive, Y would replace X, or a resumed run does not match.
    InputNotFoundError, InvalidInputError
        X is missing, not 2-D, not float32/float64, or changed since the interrupted run.
    OutputExistsError
        Y exists and ``overwrite`` is False.
    OutputNotWritableError
        The output file or its folder cannot be written.
    """
    _check_positive(**{k: v for k, v in (("tile", tile), ("slab", slab)) if v is not None})
    shape, dtype, chunks = hdf5.inspect_input(input_path, input_dataset, "input",
                                              float_only=True)
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise InvalidInputError(
            f"input {input_path}::{input_dataset} has dtype {dtype}: BLAS computes X X^T in "
            f"float64 or float32 only; convert X to one of them first")
    if shape[0] == 0:
        raise InvalidInputError(
            f"input {input_path}::{input_dataset} has no rows (shape {shape}): Y would be empty")
    same_file = os.path.exists(output_path) and os.path.samefile(input_path, output_path)
    if same_file and output_dataset == input_dataset:
        raise InvalidParameterError(
            f"output ({output_path}::{output_dataset}) is the input dataset X: writing Y there "
            f"would destroy X; choose another output dataset name")
    work_dir, lock_path = work_paths(output_path, output_dataset)
    state = _read_state(work_dir) if resume else None
    if state is not None:
        _check_state(state, input_path, input_dataset, output_path, shape, dtype, tile, slab)
        tile, slab = state["tile"], state["slab"]
        overwrite = overwrite or state.get("overwrite", False) or state.get("y_ours", False)
    try:
        hdf5.check_output(output_path, output_dataset, overwrite=overwrite, param="output")
    except OutputExistsError as exc:
        if not resume and _read_state(work_dir) is not None:
            raise OutputExistsError(
                f"{exc}; it may be the incomplete Y of an interrupted run, whose work is in "
                f"{work_dir!r}: pass --resume to finish that run") from None
        raise
    folder = os.path.dirname(os.path.abspath(output_path))
    if not hdf5.can_create_in(folder):
        raise OutputNotWritableError(
            f"output folder {folder!r} is not writable: the job keeps its finished tiles and "
            f"lock beside the output; choose an output in a writable folder")
    return GramRequest(
        input_path=str(input_path), input_dataset=input_dataset, output_path=str(output_path),
        output_dataset=output_dataset, shape=tuple(shape), dtype=np.dtype(dtype).name,
        chunks=tuple(chunks) if chunks is not None else None,
        tile=int(tile if tile is not None else DEFAULT_TILE),
        slab=int(slab if slab is not None else DEFAULT_SLAB), resume=resume,
        overwrite=overwrite, same_file=same_file, work_dir=work_dir, lock_path=lock_path,
        state=state)


# --------------------------------------------------------------------------------------------
# Lock, work folder, finished tiles
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def output_lock(lock_path: str, output_path: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock for the output file, or refuse at once.

    The lock file holds the owner's pid; it is removed on release. A killed job's lock is
    released by the kernel, so a stale lock file never blocks.

    Raises
    ------
    OutputNotWritableError
        Another job holds the lock.
    """
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            owner = _lock_owner(lock_path)
            raise OutputNotWritableError(
                f"output file {output_path!r} is being written by another gram job{owner}: "
                f"wait for it to finish, or choose another output file") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and flock: try again
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def _lock_owner(lock_path: str) -> str:
    try:
        pid = Path(lock_path).read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def npy_header(path: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of a ``.npy`` file (reads the header only)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        return tuple(shape), bool(fortran), np.dtype(dtype), f.tell()


def _tile_file_ok(path: str, tile: GramTile, dtype: np.dtype) -> bool:
    """Whether ``path`` holds a complete tile of the right shape and dtype."""
    try:
        shape, _, file_dtype, offset = npy_header(path)
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return False
    return (tuple(shape) == (tile.rows, tile.cols) and np.dtype(file_dtype) == dtype
            and size == offset + tile.rows * tile.cols * dtype.itemsize)


def finished_tiles(work_dir: str, tiles, dtype) -> set[tuple[int, int]]:
    """Indices of the tiles whose files in ``work_dir`` are complete."""
    by_name = {t.name: t for t in tiles}
    dt = np.dtype(dtype)
    try:
        names = os.listdir(work_dir)
    except FileNotFoundError:
        return set()
    return {(by_name[n].i, by_name[n].j) for n in names
            if n in by_name and _tile_file_ok(os.path.join(work_dir, n), by_name[n], dt)}


def _clean_partial_files(work_dir: str) -> None:
    """Remove what killed tasks and writers left half-done (temporary tiles, progress notes)."""
    for name in os.listdir(work_dir):
        if ".tmp-" in name or name.endswith(".progress") or name == "output.h5":
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(work_dir, name))


def _task_progress(work_dir: str, plan: GramPlan, done: set) -> float:
    """Flops done by running tasks, from the notes they leave in ``work_dir``."""
    k = plan.shape[1]
    flops = 0.0
    for t in plan.todo:
        if (t.i, t.j) in done:
            continue
        try:
            slabs, total = Path(work_dir, t.name[:-4] + ".progress").read_text().split()
            flops += t.flops(k) * int(slabs) / max(1, int(total))
        except (OSError, ValueError):
            continue
    return flops


# --------------------------------------------------------------------------------------------
# The single writer
# --------------------------------------------------------------------------------------------

INCOMPLETE_ATTR = "blockmatrix_gram_incomplete"


class YWriter:
    """The single writer of Y: creates it with all its space allocated, then raw writes only.

    Y is contiguous and allocated when created (no fill), and marked with the attribute
    ``blockmatrix_gram_incomplete`` until :meth:`close` removes it; so after the creation
    (which is flushed at once) writing tiles never changes the file's metadata, and a kill
    while tiles are being written leaves a consistent file whose Y is marked incomplete.

    Parameters
    ----------
    path, dataset : str
        Where Y goes.
    n : int
        Rows and columns of Y.
    dtype : dtype-like
        dtype of Y.
    mode : {"a", "w-"}
        ``"a"`` for an existing file, ``"w-"`` for a new one.
    throttle : float
        Seconds to sleep after each tile (for tests that interrupt a run).
    """

    def __init__(self, path: str, dataset: str, n: int, dtype, mode: str = "a",
                 throttle: float = 0.0):
        self.dtype = np.dtype(dtype)
        self.throttle = throttle
        try:
            self.file = h5py.File(path, mode)
        except OSError as exc:
            raise OutputNotWritableError(
                f"output file {path!r} cannot be opened for writing ({exc}); if another "
                f"process has it open, close that process and finish with --resume") from exc
        try:
            self.data = self._create(dataset, n)
            self.file.flush()
        except BaseException:
            self.file.close()
            raise

    def _create(self, dataset: str, n: int) -> h5py.Dataset:
        f = self.file
        if dataset in f:
            old = f[dataset]
            if (isinstance(old, h5py.Dataset) and old.shape == (n, n)
                    and old.dtype == self.dtype and old.chunks is None
                    and old.id.get_storage_size() == n * n * self.dtype.itemsize):
                old.attrs[INCOMPLETE_ATTR] = 1  # same layout: rewrite in place
                return old
            del f[dataset]
        f.require_group(posixpath.dirname(dataset) or "/")
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        data = f.create_dataset(dataset, shape=(n, n), dtype=self.dtype, dcpl=dcpl)
        data.attrs[INCOMPLETE_ATTR] = 1
        return data

    def write_tile(self, tile: GramTile, tile_path: str) -> None:
        """Copy a finished tile into Y and mirror it below the diagonal, band by band."""
        _, fortran, _, offset = npy_header(tile_path)
        if not fortran:
            raise ValueError(f"tile file {tile_path} is not Fortran-ordered")
        rows = tile.rows
        band = max(1, WRITE_BAND_BYTES // max(1, rows * self.dtype.itemsize))
        for c0 in range(0, tile.cols, band):
            c1 = min(c0 + band, tile.cols)
            # Columns c0:c1 of the Fortran-ordered tile are rows c0:c1 of its transpose.
            block = np.fromfile(tile_path, dtype=self.dtype, count=(c1 - c0) * rows,
                                offset=offset + c0 * rows * self.dtype.itemsize)
            block = block.reshape(c1 - c0, rows)
            self.data[tile.c0 + c0:tile.c0 + c1, tile.r0:tile.r1] = block
            if not tile.diagonal:
                self.data[tile.r0:tile.r1, tile.c0 + c0:tile.c0 + c1] = \
                    np.ascontiguousarray(block.T)
        if self.throttle:
            time.sleep(self.throttle)

    def close(self, complete: bool = True) -> None:
        """Mark Y complete (when ``complete``), flush and close the file."""
        try:
            if complete and INCOMPLETE_ATTR in self.data.attrs:
                del self.data.attrs[INCOMPLETE_ATTR]
            self.file.flush()
        finally:
            self.file.close()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GramProgress:
    """A progress report: tiles finished, work done in this run, rate and time left."""

    tiles_done: int
    tiles_total: int
    flops_done: float
    flops_todo: float
    elapsed: float

    @property
    def rate(self) -> float:
        """Floating-point operations per second in this run so far."""
        return self.flops_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None before any work is measured)."""
        if self.rate <= 0:
            return None
        return max(0.0, (self.flops_todo - self.flops_done) / self.rate)

    def __str__(self) -> str:
        """One line: ``tiles 1/3 done (48% of the work), 81.2 GFLOP/s, ETA 26 s``."""
        share = 100.0 * self.flops_done / self.flops_todo if self.flops_todo else 100.0
        eta = "?" if self.eta is None else f"{self.eta:.0f} s"
        return (f"tiles {self.tiles_done}/{self.tiles_total} done ({share:.0f}% of the work), "
                f"{self.rate / 1e9:.1f} GFLOP/s, elapsed {self.elapsed:.0f} s, ETA {eta}")


@dataclass
class GramResult:
    """What a run did and measured.

    Attributes
    ----------
    plan : GramPlan
    output : str
        ``FILE::/dataset`` of Y.
    computed : list of (int, int)
        Tiles computed by this run.
    reused : list of (int, int)
        Tiles taken from an interrupted run.
    seconds : float
        Wall time of the run (from the start of the tasks to Y complete).
    compute_seconds : float
        Wall time of the Spark job.
    write_seconds : float
        Wall time of the final write of Y after the Spark job.
    task_stats : list of dict
        Per task: seconds reading and computing, bytes read, flops, worker pid.
    """

    plan: GramPlan
    output: str
    computed: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    seconds: float = 0.0
    compute_seconds: float = 0.0
    write_seconds: float = 0.0
    task_stats: list = field(default_factory=list)

    @property
    def gflops(self) -> float:
        """GFLOP/s of this run's tiles over its whole wall time."""
        flops = sum(s["flops"] for s in self.task_stats)
        return flops / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        """A short summary of the run."""
        read = sum(s["read_s"] for s in self.task_stats)
        comp = sum(s["compute_s"] for s in self.task_stats)
        return (f"wrote {self.output} in {self.seconds:.2f} s ({self.gflops:.1f} GFLOP/s): "
                f"tiles computed {len(self.computed)}, reused {len(self.reused)}, total "
                f"{len(self.plan.tiles)}; Spark job {self.compute_seconds:.2f} s, final write "
                f"{self.write_seconds:.2f} s; task time reading {read:.1f} s, BLAS {comp:.1f} s")

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {"output": self.output, "computed": self.computed, "reused": self.reused,
                "seconds": self.seconds, "compute_seconds": self.compute_seconds,
                "write_seconds": self.write_seconds, "gflops": self.gflops,
                "predicted_total_bytes": self.plan.total_bytes,
                "tiles": len(self.plan.tiles), "tile": self.plan.tile, "slab": self.plan.slab,
                "task_stats": self.task_stats}


def spark_slots(sc) -> tuple[int, int]:
    """Task slots and BLAS threads per task of a SparkContext.

    Threads per task is ``spark.task.cpus`` (default 1) and slots are the default parallelism
    divided by it, so that tasks x threads = cores.
    """
    threads = max(1, int(sc.getConf().get("spark.task.cpus", "1")))
    return max(1, sc.defaultParallelism // threads), threads


def plan_request(request: GramRequest, concurrent_tasks: int = 2,
                 threads_per_task: int = 1) -> GramPlan:
    """The plan of a validated request, counting the tiles an interrupted run finished."""
    plan = plan_gram(request.shape, request.dtype, request.tile, request.slab,
                     concurrent_tasks, threads_per_task, request.chunks)
    if request.resume and request.state is not None:
        done = finished_tiles(request.work_dir, plan.tiles, request.dtype)
        plan = plan_gram(request.shape, request.dtype, request.tile, request.slab,
                         concurrent_tasks, threads_per_task, request.chunks, done)
    return plan


def _collect(rdd, box: dict, description: str) -> None:
    try:
        rdd.context.setJobDescription(description)  # local properties are per thread
        box["stats"] = rdd.collect()
    except BaseException as exc:  # re-raised on the driver's main thread
        box["error"] = exc


def _start_tasks(sc, request: GramRequest, plan: GramPlan, throttle: float):
    """Start the Spark job computing ``plan.todo`` in a background thread."""
    box: dict = {}
    if not plan.todo:
        return None, box
    fn = functools.partial(
        compute_tile, path=os.path.abspath(request.input_path), dataset=request.input_dataset,
        dtype=plan.dtype, slab=plan.slab, threads=plan.threads_per_task,
        work_dir=request.work_dir, cache_bytes=plan.cache_bytes, throttle=throttle)
    rdd = sc.parallelize(list(plan.todo), len(plan.todo)).map(fn)
    description = f"gram: {len(plan.todo)} tiles of {request.input_location}"
    thread = threading.Thread(target=_collect, args=(rdd, box, description), name="gram-job",
                              daemon=True)
    thread.start()
    return thread, box


def _initial_state(request: GramRequest, plan: GramPlan) -> dict:
    return {"version": _STATE_VERSION, "input": os.path.abspath(request.input_path),
            "input_dataset": request.input_dataset,
            "output": os.path.abspath(request.output_path),
            "output_dataset": request.output_dataset, "shape": list(plan.shape),
            "dtype": plan.dtype, "tile": request.tile, "slab": request.slab,
            "overwrite": request.overwrite, "input_stamp": _input_stamp(request.input_path),
            "phase": "computing", "y_ours": False}


def _prepare_work_dir(request: GramRequest, plan: GramPlan) -> dict:
    """Create (or, when resuming, clean) the work folder and return the run's state."""
    if request.state is not None:
        _clean_partial_files(request.work_dir)
        return dict(request.state)
    if os.path.isdir(request.work_dir):
        shutil.rmtree(request.work_dir)  # an interrupted run not resumed: start over
    os.makedirs(request.work_dir)
    state = _initial_state(request, plan)
    _write_state(request.work_dir, state)
    return state


def gram_hdf5(sc, input_path: str, input_dataset: str, output_path: str, output_dataset: str,
              tile: int | None = None, slab: int | None = None, resume: bool = False,
              overwrite: bool = False, progress: Callable[[GramProgress], None] | None = None,
              *, on_plan: Callable[[GramPlan], None] | None = None,
              request: GramRequest | None = None, throttle: float = 0.0,
              progress_interval: float = 5.0) -> GramResult:
    """Compute Y = X X^T from ``input_path::input_dataset`` into ``output_path::output_dataset``.

    Parameters
    ----------
    sc : pyspark.SparkContext
        The context to run the tasks on; its task slots and ``spark.task.cpus`` set how many
        tasks run at once and with how many BLAS threads.
    input_path, input_dataset : str
        X, ``n x k``, float64 or float32; opened read-only by the tasks.
    output_path, output_dataset : str
        Y, ``n x n``, same dtype as X; the file may be the input file.
    tile : int, optional
        Rows of an output tile (default :data:`DEFAULT_TILE`, or the interrupted run's).
    slab : int, optional
        Columns of X read per step (default :data:`DEFAULT_SLAB`, or the interrupted run's).
    resume : bool
        Continue an interrupted run: its finished tiles are not computed again.
    overwrite : bool
        Replace an existing Y.
    progress : callable, optional
        Called with a :class:`GramProgress` when a tile finishes and every
        ``progress_interval`` seconds.
    on_plan : callable, optional
        Called with the :class:`GramPlan` before any task starts.
    request : GramRequest, optional
        An already validated request (from :func:`check_gram_request`); the location
        arguments must match it.
    throttle : float
        Seconds each task sleeps after each slab and the writer after each tile; only for
        tests that interrupt a run.
    progress_interval : float
        Seconds between progress reports.

    Returns
    -------
    GramResult

    Raises
    ------
    BlockMatrixError
        Any refusal of :func:`check_gram_request`, or another job holding the output's lock;
        nothing is written then.
    """
    if request is None:
        request = check_gram_request(input_path, input_dataset, output_path, output_dataset,
                                     tile, slab, resume, overwrite)
    slots, threads = spark_slots(sc)
    with output_lock(request.lock_path, request.output_path):
        plan = plan_request(request, slots, threads)
        if on_plan is not None:
            on_plan(plan)
        state = _prepare_work_dir(request, plan)
        return _run(sc, request, plan, state, progress, throttle, progress_interval)


def _run(sc, request: GramRequest, plan: GramPlan, state: dict, progress, throttle: float,
         progress_interval: float) -> GramResult:
    start = time.perf_counter()
    result = GramResult(plan=plan, output=request.output_location,
                        reused=sorted(plan.done))
    stream = not os.path.exists(request.output_path)
    staged = os.path.join(request.work_dir, "output.h5")
    writer = (YWriter(staged, request.output_dataset, plan.shape[0], plan.dtype, "w-",
                      throttle) if stream else None)
    written: set = set()
    thread, box = _start_tasks(sc, request, plan, throttle)
    try:
        _watch(thread, request, plan, writer, written, progress, start, progress_interval)
    except BaseException:
        if thread is not None and thread.is_alive():
            sc.cancelAllJobs()
        if writer is not None:
            writer.close(complete=False)
        raise
    if "error" in box:
        if writer is not None:
            writer.close(complete=False)
        raise box["error"]
    result.task_stats = sorted(box.get("stats", []), key=lambda s: (s["i"], s["j"]))
    result.computed = [(s["i"], s["j"]) for s in result.task_stats]
    result.compute_seconds = time.perf_counter() - start
    _finish(request, plan, state, writer, written, staged, throttle)
    result.seconds = time.perf_counter() - start
    result.write_seconds = result.seconds - result.compute_seconds
    shutil.rmtree(request.work_dir, ignore_errors=True)
    return result


def _watch(thread, request, plan, writer, written, progress, start, interval) -> None:
    """Wait for the tasks; stream finished tiles to ``writer``; report progress."""
    by_key = {(t.i, t.j): t for t in plan.tiles}
    last_report = -math.inf
    reported_done = -1
    while thread is not None:
        thread.join(0.5)
        alive = thread.is_alive()
        done = finished_tiles(request.work_dir, plan.tiles, plan.dtype)
        if writer is not None:
            for key in sorted(done - written):
                writer.write_tile(by_key[key], os.path.join(request.work_dir,
                                                            by_key[key].name))
                written.add(key)
        now = time.perf_counter()
        if progress is not None and (len(done) != reported_done
                                     or now - last_report >= interval):
            new = done - plan.done
            flops = sum(by_key[key].flops(plan.shape[1]) for key in new)
            flops += _task_progress(request.work_dir, plan, done)
            progress(GramProgress(len(done), len(plan.tiles), flops, plan.todo_flops,
                                  now - start))
            last_report, reported_done = now, len(done)
        if not alive:
            break


def _finish(request: GramRequest, plan: GramPlan, state: dict, writer: YWriter | None,
            written: set, staged: str, throttle: float) -> None:
    """Write the tiles not yet written and put Y in place.

    The state is marked ``finalizing`` (Y is ours to rewrite on resume) before the output
    file is touched.
    """
    by_key = {(t.i, t.j): t for t in plan.tiles}
    missing = set(by_key) - finished_tiles(request.work_dir, plan.tiles, plan.dtype)
    if missing:
        raise RuntimeError(f"tiles {sorted(missing)} were not computed: run again with resume")
    state.update(phase="finalizing", y_ours=True)
    _write_state(request.work_dir, state)
    if writer is None:
        writer = YWriter(request.output_path, request.output_dataset, plan.shape[0],
                         plan.dtype, "a", throttle)
        staged = None
    for key in sorted(set(by_key) - written):
        writer.write_tile(by_key[key], os.path.join(request.work_dir, by_key[key].name))
    writer.close()
    if staged is not None:
        _link_into_place(staged, request.output_path)


def _link_into_place(staged: str, output_path: str) -> None:
    """Put the staged new output file in place atomically, never replacing a file."""
    try:
        os.link(staged, output_path)
    except FileExistsError:
        raise OutputExistsError(
            f"output file {output_path!r} was created by someone else during the run: the "
            f"result is kept in {staged!r}") from None
    except OSError:
        if os.path.exists(output_path):
            raise
        os.rename(staged, output_path)
        return
    os.unlink(staged)
