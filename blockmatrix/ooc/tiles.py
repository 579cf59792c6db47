"""Tile and slab planning of an out-of-core product, from shapes and sizes alone.

Nothing here touches Spark or HDF5: a plan is computed (and printed, and tested) before any
file is opened or any task starts.

An output is cut into **tiles**, each an output row range times a column range
(:class:`Tile`), computed by one task over the whole long axis, which it reads in **slabs** of
columns (:func:`effective_slab`, :func:`chunk_cache_bytes`). A general product needs every
tile; the symmetric product Y = X X^T needs only the tiles on or above the diagonal, and a
diagonal tile multiplies one row block by its own transpose, which ``?syrk`` does in half the
work of ``?gemm`` (:class:`GramTile`, :func:`make_tiles`, :func:`plan_gram`).

With ``local[2]`` the defaults (``tile=5000``, ``slab=2000``) cut a 10,000-row X into three
tiles: one off-diagonal gemm tile (2 units of work) and two diagonal syrk tiles (1 unit each).
Tiles are submitted largest first, so the two cores get 2 units each and finish together, each
running single-threaded BLAS, which is as fast per core as numpy's two-threaded syrk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._checks import check_int

__all__ = [
    "DEFAULT_SLAB",
    "DEFAULT_TILE",
    "GramPlan",
    "GramTile",
    "Tile",
    "chunk_cache_bytes",
    "effective_slab",
    "make_tiles",
    "plan_gram",
    "tile_bounds",
]

#: Default rows (and columns) of an output tile.
DEFAULT_TILE = 5000
#: Default columns of X read per step.
DEFAULT_SLAB = 2000

# Resident memory of the processes themselves, measured on pyspark 4.3 / Java 17 (local mode,
# after a job): the driver JVM, the Python driver with pyspark+numpy+scipy+h5py imported, the
# pyspark daemon and one Python worker with numpy, scipy.linalg.blas and h5py imported.
JVM_BYTES = 450 << 20
DRIVER_BASE_BYTES = 120 << 20
DAEMON_BYTES = 40 << 20
WORKER_BASE_BYTES = 120 << 20
#: Bytes the driver reads from a tile file at a time while writing Y.
WRITE_BAND_BYTES = 32 << 20


@dataclass(frozen=True)
class Tile:
    """One output tile ``C[r0:r1, c0:c1]`` of a product, with ``(i, j)`` its tile indices.

    A task computes the tile over the whole long axis by ``?gemm``: it reads the row block
    ``r0:r1`` of the left operand and the column block ``c0:c1`` of the right one.

    >>> t = Tile(0, 1, 0, 5, 5, 8)
    >>> t.rows, t.cols, t.diagonal, t.uses_syrk, t.flops(10), t.read_elements(10)
    (5, 3, False, False, 300, 80)
    >>> t.name
    'tile-00000-00001.npy'
    """

    i: int
    j: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def diagonal(self) -> bool:
        """Whether the tile is on the output's diagonal (same row and column range)."""
        return (self.r0, self.r1) == (self.c0, self.c1)

    @property
    def uses_syrk(self) -> bool:
        """Whether the tile is computed with ``?syrk`` (only diagonal tiles of X X^T are)."""
        return False

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
        if self.uses_syrk:
            return self.rows * (self.rows + 1) * k
        return 2 * self.rows * self.cols * k

    def read_elements(self, k: int) -> int:
        """Elements of the operands the tile's task reads (syrk reads one block)."""
        return (self.rows if self.uses_syrk else self.rows + self.cols) * k


@dataclass(frozen=True)
class GramTile(Tile):
    """A tile of Y = X X^T, on or above the diagonal (``i <= j``).

    A diagonal tile is ``X[r0:r1] X[r0:r1]^T``: ``?syrk`` computes its upper triangle from one
    read of the row block, in half the work of ``?gemm``.

    >>> t = GramTile(1, 1, 5, 8, 5, 8)
    >>> t.diagonal, t.uses_syrk, t.flops(10), t.read_elements(10)
    (True, True, 120, 30)
    """

    @property
    def uses_syrk(self) -> bool:
        """Whether the tile is computed with ``?syrk``: diagonal tiles are."""
        return self.diagonal


def tile_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each tile along an axis of length ``n`` cut every ``size``.

    >>> tile_bounds(7, 3)
    [(0, 3), (3, 6), (6, 7)]
    """
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def make_tiles(n: int, tile: int) -> list[GramTile]:
    """Tiles on or above the diagonal of an ``n x n`` result, largest work first.

    Off-diagonal tiles cost twice a diagonal one; submitting them first is the
    longest-processing-time rule that keeps every core busy to the end.

    >>> [(t.i, t.j) for t in make_tiles(10, 5)]
    [(0, 1), (0, 0), (1, 1)]
    >>> [(t.i, t.j, t.rows, t.cols) for t in make_tiles(7, 3)][:4]
    [(0, 1, 3, 3), (0, 0, 3, 3), (1, 1, 3, 3), (0, 2, 3, 1)]
    """
    bounds = tile_bounds(n, tile)
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
    """What :func:`~blockmatrix.ooc.gram_hdf5` will do, computed from shapes and flags alone.

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
        syrk = sum(t.uses_syrk for t in self.tiles)
        lines = [
            f"Y = X X^T: X {n} x {k} {self.dtype} ({self.x_bytes / mib:,.0f} MiB), "
            f"Y {n} x {n} ({self.y_bytes / mib:,.0f} MiB)",
            f"  tiles      {len(self.tiles)} on/above the diagonal ({syrk} syrk, "
            f"{len(self.tiles) - syrk} gemm) of {self.tile_rows} rows; "
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
    tile = check_positive(tile, "tile")
    slab = check_positive(slab, "slab")
    concurrent_tasks = check_positive(concurrent_tasks, "concurrent_tasks")
    threads_per_task = check_positive(threads_per_task, "threads_per_task")
    n, k = (int(s) for s in shape)
    return GramPlan(shape=(n, k), dtype=np.dtype(dtype).name, tile=tile,
                    slab=effective_slab(slab, k, chunks), concurrent_tasks=concurrent_tasks,
                    threads_per_task=threads_per_task,
                    chunks=tuple(chunks) if chunks is not None else None,
                    tiles=tuple(make_tiles(n, tile)), done=frozenset(done))


def check_positive(value, name: str) -> int:
    """``value`` as an int, or :class:`~blockmatrix.errors.InvalidParameterError`.

    >>> check_positive(0, "tile")
    Traceback (most recent call last):
    ...
    blockmatrix.errors.InvalidParameterError: tile must be a positive integer, got 0: give tile >= 1
    """
    return check_int(value, name, fix=f"give {name} >= 1")
