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
    "DEFAULT_TASK_BUDGET_BYTES",
    "DEFAULT_TILE",
    "IMBALANCE_GOAL",
    "LOCAL_BUDGET_BYTES",
    "RUNNERS",
    "GramPlan",
    "GramTile",
    "Operand",
    "ProductPlan",
    "Tile",
    "TilePlan",
    "balanced_tile",
    "busiest_core_work",
    "chunk_cache_bytes",
    "effective_slab",
    "make_product_tiles",
    "make_tiles",
    "plan_gram",
    "plan_product",
    "tile_bounds",
    "zarr_output_tile",
    "zarr_slab",
]

#: Default rows (and columns) of an output tile.
DEFAULT_TILE = 5000
#: Default columns of X read per step.
DEFAULT_SLAB = 2000
#: Default memory budget of one task's data (accumulator and slab buffers): what the default
#: tile and slab of float64 take, so that a balanced tile never needs more than they did.
DEFAULT_TASK_BUDGET_BYTES = (DEFAULT_TILE ** 2 + 2 * DEFAULT_TILE * DEFAULT_SLAB) * 8
#: Memory budget of the one tile a run in this process computes at a time (``runner="local"``):
#: what two tasks of the default budget hold, so that on two cores both runners hold about the
#: same arrays, the local one without a JVM and worker processes beside them.
LOCAL_BUDGET_BYTES = 2 * DEFAULT_TASK_BUDGET_BYTES
#: Where the tiles of a run are computed: Spark tasks, or this process (one tile at a time,
#: every core on its BLAS, the next slabs read while BLAS runs).
RUNNERS = ("spark", "local")
#: The busiest core may carry at most this multiple of the mean work (balanced tiles).
IMBALANCE_GOAL = 1.15
#: Smallest tile the balancer proposes: below it per-task overheads and re-reads dominate.
MIN_BALANCED_TILE = 256

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


@dataclass(frozen=True, kw_only=True)
class TilePlan:
    """What an out-of-core run does, from shapes and flags alone: the part both kinds share.

    A run cuts its output into tiles, each computed by one task over the whole inner dimension
    ``k``, slab by slab; subclasses (:class:`GramPlan`, :class:`ProductPlan`) say what the
    operands are, which tiles there are and what a task holds.

    Attributes
    ----------
    dtype : str
        dtype of the output (and of the buffers the slabs are read into).
    slab : int
        Elements of the inner dimension read per step (aligned to the operands' chunks).
    concurrent_tasks, threads_per_task : int
        Spark task slots and BLAS threads per task (``spark.task.cpus``); 1 and the cores for
        a run in this process.
    tiles : tuple of Tile
        Every tile computed, in submission order.
    done : frozenset of (int, int)
        Tiles already finished by an interrupted run (not computed again).
    runner : {"spark", "local"}
        Spark tasks, or this process: one tile at a time, its next slabs read into a second
        pair of buffers while BLAS runs.
    """

    dtype: str
    slab: int
    concurrent_tasks: int
    threads_per_task: int
    tiles: tuple[Tile, ...]
    done: frozenset = field(default_factory=frozenset)
    runner: str = "spark"

    #: Whether the output is symmetric (only tiles on or above the diagonal are computed).
    symmetric = False

    @property
    def k(self) -> int:
        """The inner dimension every tile is computed over."""
        raise NotImplementedError

    @property
    def task_bytes(self) -> int:
        """Predicted peak memory of one task (accumulator, slab buffers, chunk caches)."""
        raise NotImplementedError

    @property
    def in_process(self) -> bool:
        """Whether the tiles are computed in this process (no Spark), with read-ahead."""
        return self.runner == "local"

    @property
    def slab_pairs(self) -> int:
        """Pairs of slab buffers a task holds: two when it reads ahead."""
        return 2 if self.in_process else 1

    @property
    def slab_bytes(self) -> int:
        """Slab buffers of one task (both operands, every pair)."""
        raise NotImplementedError

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return np.dtype(self.dtype).itemsize

    @property
    def todo(self) -> tuple[Tile, ...]:
        """Tiles still to compute, in submission order."""
        return tuple(t for t in self.tiles if (t.i, t.j) not in self.done)

    @property
    def num_slabs(self) -> int:
        """Slabs along the inner dimension."""
        return math.ceil(self.k / self.slab) if self.k else 0

    @property
    def flops(self) -> int:
        """Floating-point operations of all tiles."""
        return sum(t.flops(self.k) for t in self.tiles)

    @property
    def todo_flops(self) -> int:
        """Floating-point operations of the tiles still to compute."""
        return sum(t.flops(self.k) for t in self.todo)

    @property
    def balance(self) -> float:
        """Busiest core's work over the mean when the tiles are dealt largest first."""
        return imbalance([t.flops(1) for t in self.tiles], self.concurrent_tasks)

    @property
    def read_bytes(self) -> int:
        """Bytes of the operands read by all tasks together."""
        return sum(t.read_elements(self.k) for t in self.tiles) * self.itemsize

    @property
    def worker_bytes(self) -> int:
        """Predicted peak resident memory of one Python worker process (none in process)."""
        return 0 if self.in_process else WORKER_BASE_BYTES + self.task_bytes

    @property
    def driver_bytes(self) -> int:
        """Predicted peak resident memory of the Python driver (the single writer).

        In process it also computes the tiles, one at a time.
        """
        own = self.task_bytes if self.in_process else 0
        return DRIVER_BASE_BYTES + 3 * WRITE_BAND_BYTES + own

    @property
    def total_bytes(self) -> int:
        """Predicted peak resident memory of all processes: JVM, driver, daemon, workers.

        A worker per task slot that has a tile to compute: fewer tiles than slots start
        fewer workers. In process, the driver alone.
        """
        if self.in_process:
            return self.driver_bytes
        workers = min(self.concurrent_tasks, max(1, len(self.tiles)))
        return JVM_BYTES + self.driver_bytes + DAEMON_BYTES + workers * self.worker_bytes

    def _run_lines(self, tile_bytes: int) -> list[str]:
        """The printed lines on tasks, memory and scratch (the same for both kinds)."""
        mib = 2**20
        parts = (f"tile {tile_bytes / mib:,.0f} + slabs {self.slab_bytes / mib:,.0f} + chunk "
                 f"cache {self.cache_bytes / mib:,.0f}")
        if self.in_process:
            tasks = (f"  tasks      in this process, no Spark: one tile at a time x "
                     f"{self.threads_per_task} BLAS thread(s), the next slabs read while BLAS "
                     f"runs")
            memory = (f"  memory     per tile {self.task_bytes / mib:,.0f} MiB ({parts}); this "
                      f"process {self.driver_bytes / mib:,.0f}")
        else:
            tasks = (f"  tasks      {self.concurrent_tasks} at once x {self.threads_per_task} "
                     f"BLAS thread(s)")
            memory = (f"  memory     per task {self.task_bytes / mib:,.0f} MiB ({parts}); worker "
                      f"{self.worker_bytes / mib:,.0f}, driver {self.driver_bytes / mib:,.0f}, "
                      f"JVM {JVM_BYTES / mib:,.0f}, daemon {DAEMON_BYTES / mib:,.0f}")
        return [
            tasks,
            memory,
            f"  predicted peak resident memory of all processes: "
            f"{self.total_bytes / mib:,.0f} MiB (independent of k)",
            f"  scratch    {self.scratch_bytes / mib:,.0f} MiB of finished tiles beside the "
            f"output",
        ]


@dataclass(frozen=True, kw_only=True)
class GramPlan(TilePlan):
    """What :func:`~blockmatrix.ooc.gram_hdf5` will do, computed from shapes and flags alone.

    Attributes
    ----------
    shape : tuple of int
        ``(n, k)``, the shape of X.
    tile : int
        Rows of a tile.
    chunks : tuple of int or None
        X's HDF5 chunk shape.
    tiles : tuple of GramTile
        Every tile on or above the diagonal, in submission order.

    The other attributes are :class:`TilePlan`'s.
    """

    shape: tuple[int, int]
    tile: int
    chunks: tuple[int, int] | None

    symmetric = True

    @property
    def out_shape(self) -> tuple[int, int]:
        """Shape of Y, ``(n, n)``."""
        return self.shape[0], self.shape[0]

    @property
    def k(self) -> int:
        """Length of the long axis every tile is computed over."""
        return self.shape[1]

    @property
    def x_bytes(self) -> int:
        """Size of X."""
        return self.shape[0] * self.shape[1] * self.itemsize

    @property
    def y_bytes(self) -> int:
        """Size of Y."""
        return self.shape[0] ** 2 * self.itemsize

    @property
    def tile_rows(self) -> int:
        """Rows of the largest tile (the tile size capped at n)."""
        return min(self.tile, self.shape[0])

    @property
    def cache_bytes(self) -> int:
        """HDF5 chunk cache of one task."""
        return chunk_cache_bytes(self.chunks, self.tile_rows, self.slab, self.itemsize)

    @property
    def dataset_cache_bytes(self) -> int:
        """HDF5 chunk cache of X in a task (X is the only dataset read)."""
        return self.cache_bytes

    @property
    def task_bytes(self) -> int:
        """Predicted peak memory of one task: accumulator, slab buffers, chunk cache."""
        t = self.tile_rows
        return t * t * self.itemsize + self.slab_bytes + self.cache_bytes

    @property
    def slab_bytes(self) -> int:
        """Slab buffers of one task: a row block of X on each side, per pair."""
        return 2 * self.slab_pairs * self.tile_rows * self.slab * self.itemsize

    @property
    def scratch_bytes(self) -> int:
        """Disk used by finished tiles in the work folder (removed at the end)."""
        return sum(t.rows * t.cols for t in self.tiles) * self.itemsize

    def __str__(self) -> str:
        """A printable summary: work, reads, memory per process and in total."""
        mib = 2**20
        n, k = self.shape
        t, b = self.tile_rows, self.itemsize
        syrk = sum(t.uses_syrk for t in self.tiles)
        lines = [
            f"Y = X X^T: X {n} x {k} {self.dtype} ({self.x_bytes / mib:,.0f} MiB), "
            f"Y {n} x {n} ({self.y_bytes / mib:,.0f} MiB)",
            f"  tiles      {len(self.tiles)} on/above the diagonal ({syrk} syrk, "
            f"{len(self.tiles) - syrk} gemm) of {self.tile_rows} rows; "
            f"{len(self.done)} already done, {len(self.todo)} to compute; busiest core "
            f"{self.balance:.2f}x the mean work",
            f"  slabs      {self.num_slabs} of {self.slab} columns"
            + (f" (X chunks {self.chunks[0]} x {self.chunks[1]})" if self.chunks else
               " (X contiguous)"),
            f"  work       {self.flops / 1e9:,.1f} GFLOP in all, "
            f"{self.todo_flops / 1e9:,.1f} GFLOP to do",
            f"  reads      {self.read_bytes / mib:,.0f} MiB of X "
            f"({self.read_bytes / max(1, self.x_bytes):.2f} x X)",
        ]
        return "\n".join(lines + self._run_lines(t * t * b))


def plan_gram(shape: tuple[int, int], dtype, tile: int = DEFAULT_TILE,
              slab: int = DEFAULT_SLAB, concurrent_tasks: int = 2, threads_per_task: int = 1,
              chunks: tuple[int, int] | None = None,
              done: frozenset | set = frozenset(), runner: str = "spark") -> GramPlan:
    """Plan Y = X X^T from X's shape, dtype and chunking and the two size flags.

    Parameters
    ----------
    shape : tuple of int
        ``(n, k)``.
    dtype : dtype-like
        float64 or float32.
    tile : int or None
        Rows (and columns) of an output tile; None: the balanced tile
        (:func:`balanced_gram_tile`).
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
    runner : {"spark", "local"}
        Spark tasks, or this process (one tile at a time, reading ahead: its balanced tile
        fits :data:`LOCAL_BUDGET_BYTES` with two pairs of slab buffers).

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
    slab = check_positive(slab, "slab")
    concurrent_tasks = check_positive(concurrent_tasks, "concurrent_tasks")
    threads_per_task = check_positive(threads_per_task, "threads_per_task")
    runner = check_runner(runner)
    n, k = (int(s) for s in shape)
    if tile is None:
        width, budget = _sizing(runner, effective_slab(slab, k, chunks))
        tile = balanced_gram_tile(n, concurrent_tasks, width, np.dtype(dtype).itemsize, budget)
    tile = check_positive(tile, "tile")
    return GramPlan(shape=(n, k), dtype=np.dtype(dtype).name, tile=tile,
                    slab=effective_slab(slab, k, chunks), concurrent_tasks=concurrent_tasks,
                    threads_per_task=threads_per_task,
                    chunks=tuple(chunks) if chunks is not None else None,
                    tiles=tuple(make_tiles(n, tile)), done=frozenset(done), runner=runner)


def check_runner(runner: str) -> str:
    """``runner`` if it is one of :data:`RUNNERS`, else InvalidParameterError."""
    if runner not in RUNNERS:
        from ..errors import InvalidParameterError

        raise InvalidParameterError(
            f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}: pass runner='local' "
            f"to compute the tiles in this process, or 'spark' for Spark tasks")
    return runner


def _sizing(runner: str, slab: int) -> tuple[int, int]:
    """``(slab width, budget)`` a balanced tile is sized with.

    A run in process reads ahead into a second pair of slab buffers: it sizes its tile as if
    the slab were twice as wide, within :data:`LOCAL_BUDGET_BYTES`.
    """
    if runner == "local":
        return 2 * slab, LOCAL_BUDGET_BYTES
    return slab, DEFAULT_TASK_BUDGET_BYTES


def check_positive(value, name: str) -> int:
    """``value`` as an int, or :class:`~blockmatrix.errors.InvalidParameterError`.

    >>> check_positive(0, "tile")
    Traceback (most recent call last):
    ...
    blockmatrix.errors.InvalidParameterError: tile must be a positive integer, got 0: give tile >= 1
    """
    return check_int(value, name, fix=f"give {name} >= 1")


# ------------------------------------------------------------------------ balanced tiles

def busiest_core_work(works, cores: int) -> tuple[float, float]:
    """``(busiest, mean)`` work per core when ``works`` are dealt largest first.

    Each tile goes to the core with the least work so far (the longest-processing-time rule,
    which is what Spark does with tasks submitted largest first).

    >>> busiest_core_work([12.5, 5, 0.5], 2)
    (12.5, 9.0)
    >>> busiest_core_work([2, 1, 1], 2)
    (2, 2.0)
    """
    cores = max(1, int(cores))
    loads = [0] * cores
    for w in sorted(works, reverse=True):
        at = loads.index(min(loads))
        loads[at] += w
    return max(loads), sum(loads) / cores


def imbalance(works, cores: int) -> float:
    """Busiest core's work over the mean (1.0 is perfect; see :func:`busiest_core_work`).

    >>> round(imbalance([12.5, 5, 0.5], 2), 3)
    1.389
    """
    busiest, mean = busiest_core_work(works, cores)
    return busiest / mean if mean > 0 else 1.0


def largest_tile_within(budget_bytes: int, slab: int, itemsize: int) -> int:
    """Largest square tile ``t`` whose accumulator and two slab buffers fit ``budget_bytes``.

    ``t^2 + 2 t slab`` elements; at least 1.

    >>> largest_tile_within(DEFAULT_TASK_BUDGET_BYTES, DEFAULT_SLAB, 8)
    5000
    """
    elements = budget_bytes // itemsize
    t = math.isqrt(slab * slab + elements) - slab
    while (t + 1) ** 2 + 2 * (t + 1) * slab <= elements:
        t += 1
    while t > 1 and t * t + 2 * t * slab > elements:
        t -= 1
    return max(1, t)


def _split_sizes(n: int, t_max: int, limit: int = 64) -> list[int]:
    """Tile sizes ``ceil(n / q)`` from the largest within ``t_max`` down (distinct, >= 1).

    Equal splits: a tile size that cuts ``n`` into ``q`` nearly equal parts leaves no small
    ragged tile whose core would idle.
    """
    q0 = max(1, math.ceil(n / max(1, t_max)))
    q1 = max(q0, math.ceil(n / MIN_BALANCED_TILE))
    sizes = []
    for q in range(q0, min(q1, q0 + limit) + 1):
        t = math.ceil(n / q)
        if t not in sizes:
            sizes.append(t)
    return sizes


def balanced_tile(candidates, cores: int, works_of, goal: float = IMBALANCE_GOAL):
    """The first candidate tile whose busiest core carries at most ``goal`` x the mean work.

    Candidates come largest first: the first one that meets the goal reads the operands the
    fewest times (reading is the one cost that grows as tiles shrink) and makes the fewest
    tasks. When none meets it (fewer tiles than cores at any size), the best balanced one.

    Parameters
    ----------
    candidates : sequence
        Tile sizes (anything ``works_of`` takes), largest first, all within the budget.
    cores : int
        Tasks that run at once.
    works_of : callable
        The work of every tile of a candidate.
    goal : float
        The bound on the busiest core's work over the mean.
    """
    best = None
    for c in candidates:
        ratio = imbalance(works_of(c), cores)
        if ratio <= goal:
            return c
        if best is None or ratio < best[0]:
            best = (ratio, c)
    return best[1]


def balanced_gram_tile(n: int, cores: int, slab: int, itemsize: int,
                       budget_bytes: int = DEFAULT_TASK_BUDGET_BYTES) -> int:
    """Tile rows of Y = X X^T that balance the work of ``cores`` within ``budget_bytes``.

    With 6000 rows on 2 cores the old default (5000) made tiles of work 12.5 : 5 : 0.5; the
    balanced tile is 3000 (work 2 : 1 : 1, dealt 2 | 1 + 1).

    >>> balanced_gram_tile(6000, 2, 2000, 8)
    3000
    >>> balanced_gram_tile(10_000, 2, 2000, 8)
    5000
    """
    t_max = min(n, largest_tile_within(budget_bytes, slab, itemsize))
    return balanced_tile(
        _split_sizes(n, t_max), cores,
        works_of=lambda t: [tl.flops(1) for tl in make_tiles(n, t)])


def balanced_product_tile(m: int, p: int, cores: int, slab: int, itemsize: int,
                          budget_bytes: int = DEFAULT_TASK_BUDGET_BYTES) -> int:
    """Square tile of ``C = A @ B`` (``m x p``) that balances ``cores`` within the budget.

    >>> balanced_product_tile(8192, 8192, 2, 2000, 8)
    4096
    >>> balanced_product_tile(1024, 1024, 2, 2000, 8)
    512
    """
    t_max = min(max(m, p), largest_tile_within(budget_bytes, slab, itemsize))
    sizes = sorted(set(_split_sizes(m, min(m, t_max))) | set(_split_sizes(p, min(p, t_max))),
                   reverse=True)
    return balanced_tile(
        sizes, cores,
        works_of=lambda t: [tl.flops(1) for tl in make_product_tiles(m, p, t, t)])


def balanced_block_tile(m: int, p: int, rows_per_block: int, cols_per_block: int, cores: int,
                        slab: int, itemsize: int,
                        budget_bytes: int = DEFAULT_TASK_BUDGET_BYTES) -> tuple[int, int]:
    """``(rows, cols)`` of a tile made of whole blocks that balances ``cores`` (strategy).

    A tile of whole blocks is cut into the product's blocks without a shuffle.

    >>> balanced_block_tile(8192, 8192, 1024, 1024, 2, 2000, 8)
    (4096, 4096)
    """
    nrb, ncb = max(1, math.ceil(m / rows_per_block)), max(1, math.ceil(p / cols_per_block))
    elements = budget_bytes // itemsize
    sizes = []
    for a in range(1, nrb + 1):
        for b in range(1, ncb + 1):
            tr, tc = min(m, a * rows_per_block), min(p, b * cols_per_block)
            if (tr, tc) not in sizes and tr * tc + (tr + tc) * slab <= elements:
                sizes.append((tr, tc))
    if not sizes:
        sizes = [(min(m, rows_per_block), min(p, cols_per_block))]
    # Fewest reads first (A is read once per tile column, B once per tile row), then fewest
    # tiles, then the most even cut.
    sizes.sort(key=lambda s: (math.ceil(p / s[1]) * m + math.ceil(m / s[0]) * p,
                              math.ceil(m / s[0]) * math.ceil(p / s[1]),
                              -min(m % s[0] or s[0], p % s[1] or s[1])))
    return balanced_tile(
        sizes, cores, works_of=lambda s: [tl.flops(1) for tl in make_product_tiles(m, p, *s)])


# ------------------------------------------------------------------------- C = A @ B

@dataclass(frozen=True)
class Operand:
    """An operand of an out-of-core product: a 2-D HDF5 dataset or Zarr array, maybe transposed.

    Parameters
    ----------
    path, dataset : str
        Location (the path absolute). For a Zarr array (``store="zarr"``), ``path`` is its
        canonical URL (:func:`blockmatrix.io.zarr_store.parse_url`: an absolute local path
        or ``protocol://bucket/key``) and ``dataset`` is ``""``.
    shape : (int, int)
        Shape as stored.
    dtype : str
        dtype as stored.
    chunks : (int, int) or None
        Chunk shape as stored; None for contiguous data.
    transposed : bool
        Whether the operand is the dataset's transpose.
    store : {"hdf5", "zarr"}
        What holds the data.

    >>> op = Operand("/d/x.h5", "/X", (3, 5), "float64", (1, 5), transposed=True)
    >>> op.matrix_shape, op.oriented_chunks, op.location
    ((5, 3), (5, 1), '/d/x.h5::/X')
    >>> Operand("s3://b/x.zarr", "", (3, 5), "float32", (3, 5), store="zarr").location
    's3://b/x.zarr'
    """

    path: str
    dataset: str
    shape: tuple[int, int]
    dtype: str
    chunks: tuple[int, int] | None = None
    transposed: bool = False
    store: str = "hdf5"

    @property
    def is_zarr(self) -> bool:
        """Whether the operand is a Zarr array (read with zarr, never opened for writing)."""
        return self.store == "zarr"

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """Shape of the operand (the dataset's, transposed when read transposed)."""
        return self.shape[::-1] if self.transposed else tuple(self.shape)

    @property
    def oriented_chunks(self) -> tuple[int, int] | None:
        """Chunk shape in the operand's orientation (rows, columns of the operand)."""
        if self.chunks is None:
            return None
        return tuple(self.chunks[::-1]) if self.transposed else tuple(self.chunks)

    @property
    def location(self) -> str:
        """``FILE::/dataset``, or a Zarr array's URL."""
        return self.path if self.is_zarr else f"{self.path}::{self.dataset}"

    def same_dataset(self, other: Operand) -> bool:
        """Whether both read the same dataset of the same file."""
        return (self.path, self.dataset) == (other.path, other.dataset)


def make_product_tiles(m: int, p: int, tile_rows: int, tile_cols: int) -> list[Tile]:
    """Every tile of an ``m x p`` product, largest work first.

    >>> [(t.i, t.j, t.rows, t.cols) for t in make_product_tiles(5, 3, 3, 2)]
    [(0, 0, 3, 2), (1, 0, 2, 2), (0, 1, 3, 1), (1, 1, 2, 1)]
    """
    rows, cols = tile_bounds(m, tile_rows), tile_bounds(p, tile_cols)
    tiles = [Tile(i, j, *rows[i], *cols[j]) for i in range(len(rows)) for j in range(len(cols))]
    return sorted(tiles, key=lambda t: (-t.flops(1), t.i, t.j))


def product_slab(slab: int, k: int, a_chunks, b_chunks) -> int:
    """Columns of A (rows of B) read per step, aligned to both operands' chunks along k.

    ``a_chunks`` / ``b_chunks`` are oriented as the operands (A: rows x k, B: k x columns).

    >>> product_slab(2000, 10_000, (100, 300), (500, 100))
    1500
    >>> product_slab(2000, 10_000, None, (700, 100))
    1400
    """
    width = max(1, min(slab, k))
    units = [u for u in ((a_chunks or (0, 0))[1], (b_chunks or (0, 0))[0]) if u]
    lcm = math.lcm(*units) if units else 0
    for unit in ([lcm] if lcm else []) + units:
        if unit <= width:
            return width - width % unit
    return width


@dataclass(frozen=True, kw_only=True)
class ProductPlan(TilePlan):
    """What :func:`~blockmatrix.ooc.matmul_hdf5` will do, from shapes and flags alone.

    Attributes
    ----------
    shape : (int, int, int)
        ``(m, k, p)``: A is ``m x k``, B ``k x p``, C ``m x p``.
    tile_rows, tile_cols : int
        Rows and columns of a tile of C.
    a_chunks, b_chunks : (int, int) or None
        Chunk shapes oriented as the operands (A: rows x k, B: k x columns).

    The other attributes are :class:`TilePlan`'s.
    """

    shape: tuple[int, int, int]
    tile_rows: int
    tile_cols: int
    a_chunks: tuple[int, int] | None
    b_chunks: tuple[int, int] | None

    @property
    def out_shape(self) -> tuple[int, int]:
        """Shape of C."""
        return self.shape[0], self.shape[2]

    @property
    def k(self) -> int:
        """The inner dimension every tile is computed over."""
        return self.shape[1]

    @property
    def tile(self) -> int:
        """The tile size (rows; a file-to-file product's tiles are square)."""
        return self.tile_rows

    @property
    def a_bytes(self) -> int:
        """Size of A."""
        return self.shape[0] * self.shape[1] * self.itemsize

    @property
    def b_bytes(self) -> int:
        """Size of B."""
        return self.shape[1] * self.shape[2] * self.itemsize

    @property
    def c_bytes(self) -> int:
        """Size of C."""
        return self.shape[0] * self.shape[2] * self.itemsize

    @property
    def _tile_shape(self) -> tuple[int, int]:
        """Rows and columns of the largest tile (the tile sizes capped at C's)."""
        return min(self.tile_rows, self.shape[0]), min(self.tile_cols, self.shape[2])

    @property
    def dataset_cache_bytes(self) -> int:
        """HDF5 chunk cache a task gives each dataset it reads (the larger operand's need)."""
        rows, cols = self._tile_shape
        b_chunks = self.b_chunks[::-1] if self.b_chunks is not None else None  # cols x k
        return max(chunk_cache_bytes(self.a_chunks, rows, self.slab, self.itemsize),
                   chunk_cache_bytes(b_chunks, cols, self.slab, self.itemsize))

    @property
    def cache_bytes(self) -> int:
        """HDF5 chunk caches of one task (one per operand's dataset)."""
        return 2 * self.dataset_cache_bytes

    @property
    def task_bytes(self) -> int:
        """Predicted peak memory of one task: accumulator, slab buffers, chunk caches."""
        rows, cols = self._tile_shape
        return rows * cols * self.itemsize + self.slab_bytes + self.cache_bytes

    @property
    def slab_bytes(self) -> int:
        """Slab buffers of one task: A's row block and B's column block, per pair."""
        rows, cols = self._tile_shape
        return self.slab_pairs * (rows + cols) * self.slab * self.itemsize

    @property
    def scratch_bytes(self) -> int:
        """Disk used by finished tiles in the work folder (removed at the end)."""
        return self.c_bytes

    def __str__(self) -> str:
        """A printable summary: work, reads, memory per process and in total."""
        mib = 2**20
        m, k, p = self.shape
        rows, cols = self._tile_shape
        chunks = ", ".join(f"{name} chunks {c[0]} x {c[1]}" for name, c in
                           (("A", self.a_chunks), ("B", self.b_chunks)) if c) or "contiguous"
        lines = [
            f"C = A @ B: A {m} x {k}, B {k} x {p} {self.dtype} "
            f"({self.a_bytes / mib:,.0f} + {self.b_bytes / mib:,.0f} MiB), C {m} x {p} "
            f"({self.c_bytes / mib:,.0f} MiB)",
            f"  tiles      {len(self.tiles)} of {rows} x {cols}; {len(self.done)} already "
            f"done, {len(self.todo)} to compute; busiest core {self.balance:.2f}x the mean work",
            f"  slabs      {self.num_slabs} of {self.slab} along the inner dimension ({chunks})",
            f"  work       {self.flops / 1e9:,.1f} GFLOP in all, "
            f"{self.todo_flops / 1e9:,.1f} GFLOP to do",
            f"  reads      {self.read_bytes / mib:,.0f} MiB of A and B "
            f"({self.read_bytes / max(1, self.a_bytes + self.b_bytes):.2f} x A + B)",
        ]
        b = self.itemsize
        return "\n".join(lines + self._run_lines(rows * cols * b))


def plan_product(shape: tuple[int, int, int], dtype, tile: int | tuple[int, int] | None = None,
                 slab: int = DEFAULT_SLAB, concurrent_tasks: int = 2,
                 threads_per_task: int = 1, a_chunks=None, b_chunks=None,
                 done: frozenset | set = frozenset(),
                 budget_bytes: int | None = None, runner: str = "spark") -> ProductPlan:
    """Plan ``C = A @ B`` from the shapes, dtype, chunking and the two size flags.

    Parameters
    ----------
    shape : (int, int, int)
        ``(m, k, p)``.
    dtype : dtype-like
        dtype of C.
    tile : int or (int, int), optional
        Rows (and columns) of a tile; None: balanced over the cores within ``budget_bytes``
        (:func:`balanced_product_tile`).
    slab : int
        Elements of the inner dimension read per step.
    concurrent_tasks, threads_per_task : int
        Spark task slots and BLAS threads per task.
    a_chunks, b_chunks : (int, int), optional
        Chunk shapes oriented as the operands.
    done : set of (int, int)
        Tiles already finished.
    budget_bytes : int, optional
        Memory a task's accumulator and slabs may take, for the balanced tile (default
        :data:`DEFAULT_TASK_BUDGET_BYTES`, or :data:`LOCAL_BUDGET_BYTES` in process).
    runner : {"spark", "local"}
        Spark tasks, or this process (one tile at a time, reading ahead into a second pair of
        slab buffers).

    Examples
    --------
    >>> plan = plan_product((8192, 8192, 8192), "float64")
    >>> len(plan.tiles), plan.tile_rows, plan.balance, round(plan.read_bytes / 2**30)
    (4, 4096, 1.0, 2)
    >>> plan_product((8192, 16384, 8192), "float64").total_bytes == plan.total_bytes
    True
    """
    slab = check_positive(slab, "slab")
    concurrent_tasks = check_positive(concurrent_tasks, "concurrent_tasks")
    threads_per_task = check_positive(threads_per_task, "threads_per_task")
    m, k, p = (int(s) for s in shape)
    a_chunks = tuple(a_chunks) if a_chunks is not None else None
    b_chunks = tuple(b_chunks) if b_chunks is not None else None
    slab = product_slab(slab, k, a_chunks, b_chunks)
    itemsize = np.dtype(dtype).itemsize
    runner = check_runner(runner)
    if tile is None:
        width, budget = _sizing(runner, slab)
        tile = balanced_product_tile(m, p, concurrent_tasks, width, itemsize,
                                     budget if budget_bytes is None else budget_bytes)
    rows, cols = (tile, tile) if not isinstance(tile, tuple) else tile
    rows, cols = check_positive(rows, "tile"), check_positive(cols, "tile")
    return ProductPlan(shape=(m, k, p), dtype=np.dtype(dtype).name, tile_rows=rows,
                       tile_cols=cols, slab=slab, concurrent_tasks=concurrent_tasks,
                       threads_per_task=threads_per_task, a_chunks=a_chunks, b_chunks=b_chunks,
                       tiles=tuple(make_product_tiles(m, p, rows, cols)), done=frozenset(done),
                       runner=runner)


# ------------------------------------------------------------------------- Zarr sizes

#: Largest side of a chunk of a Zarr output (1024 x 1024 float64 is 8 MiB: a good object).
ZARR_OUTPUT_CHUNK = 1024


def zarr_output_tile(tile: int, chunk: int = ZARR_OUTPUT_CHUNK) -> tuple[int, int]:
    """``(tile, chunk)`` of a Zarr output: the tile cut into equal chunks of at most ``chunk``.

    The tile is split into ``q = ceil(tile / chunk)`` chunks of ``c = ceil(tile / q)`` and
    becomes ``q c`` (at most ``q - 1`` larger): every tile boundary is then a chunk boundary,
    so each task writes whole chunks no other task touches (the array's last tile and chunk
    may be cut by its edge).

    >>> zarr_output_tile(3000), zarr_output_tile(4999), zarr_output_tile(700)
    ((3000, 1000), (5000, 1000), (700, 700))
    """
    q = max(1, math.ceil(tile / chunk))
    c = math.ceil(tile / q)
    return q * c, c


def zarr_slab(slab: int, k: int, k_chunks) -> int:
    """Slab of a run reading Zarr: at least one whole chunk along the long axis.

    Zarr has no chunk cache: a slab narrower than a chunk would decode that chunk once per
    slab it overlaps. ``k_chunks`` are the Zarr operands' chunk extents along the long axis;
    the slab is raised to the largest (capped at ``k``); the plan then aligns it to them.

    >>> zarr_slab(2000, 100_000, [4096]), zarr_slab(2000, 3000, [4096]), zarr_slab(2000, 10, [])
    (4096, 3000, 2000)
    """
    widest = max((int(c) for c in k_chunks), default=0)
    return max(slab, min(widest, k))
