"""``ooc``: the out-of-core product, for operands read from HDF5 files or Zarr. No shuffle.

C is cut into tiles of whole blocks, balanced over the cores
(:func:`blockmatrix.ooc.tiles.balanced_block_tile`); one task computes one tile over the whole
inner dimension, reading slabs of A's row block and B's column block straight from the files
(read-only, into two reused buffers) and accumulating them with ``?gemm`` (``beta = 1``) into
the tile (:func:`blockmatrix.ooc.kernels.compute_tile_blocks`). Nothing is shuffled and
nothing goes through the driver: the tasks return C's blocks.

Both operands must be file-backed (:class:`~blockmatrix.sources.HDF5Dataset`, from
``BlockMatrix.from_hdf5``, or :class:`~blockmatrix.sources.ZarrArray`, from
``BlockMatrix.from_zarr``, or their transposes) and floating-point (a Zarr operand's slab is
at least one of its chunks along the inner dimension, :func:`blockmatrix.ooc.tiles.zarr_slab`);
otherwise the plan is
:attr:`~OocPlan.unavailable` and ``auto`` passes it over, saying why. Written to HDF5
(``(A @ B).to_hdf5``, ``jobs/multiply.py``) or to Zarr (``(A @ B).to_zarr``), the product
goes file to file instead (:func:`blockmatrix.ooc.matmul_hdf5`): the same tiles, the single
writer (HDF5) or the tasks writing their tiles (Zarr), ``--resume``.

The predicted time is the busiest core's when the tiles are dealt largest first: each tile's
compute at :data:`blockmatrix.cost.DENSE_FLOPS_PER_CORE_S` plus its reads at
:data:`HDF5_READ_BYTES_PER_CORE_S`, plus one stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .. import cost
from ..layout import BlockLayout, check_multiplicable
from ..ooc.kernels import compute_tile_blocks
from ..ooc.tiles import (
    DEFAULT_SLAB,
    DEFAULT_TASK_BUDGET_BYTES,
    Operand,
    ProductPlan,
    balanced_block_tile,
    busiest_core_work,
    plan_product,
    product_slab,
    zarr_slab,
)
from ..plan import MultiplyOptions, MultiplyPlan
from ..planner import result_grid
from ..units import format_bytes
from .registry import Strategy, register

#: Bytes per second one task reads from an HDF5 file in the page cache (measured with
#: read_direct into a reused buffer, sieve buffer off: ~3.8 GB/s on the reference machine).
HDF5_READ_BYTES_PER_CORE_S = 3.8e9

_HELD_BY = {"spark": "held only by Spark", "driver": "held by the driver (from_numpy)"}


def unavailable_reason(left: BlockLayout, right: BlockLayout) -> str:
    """Why the out-of-core product cannot run on these operands ("" when it can)."""
    for name, layout in (("A", left), ("B", right)):
        kind = layout.source_kind
        if kind != "file":
            return (f"{name} is {_HELD_BY.get(kind, kind)}: the out-of-core product needs both "
                    f"operands read from HDF5 or Zarr")
        if getattr(layout.source, "format", "hdf5") not in ("hdf5", "zarr"):
            return (f"{name} is a {layout.source.format} array: the out-of-core product reads "
                    f"HDF5 files and Zarr arrays only")
    for name, layout in (("A", left), ("B", right)):
        if np.dtype(layout.dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
            return (f"{name} is {np.dtype(layout.dtype).name}: the out-of-core product "
                    f"multiplies float64 or float32 only")
    return ""


@dataclass(frozen=True, kw_only=True)
class OocPlan(MultiplyPlan):
    """The tile plan of C, what the tasks read from the files, and why it may not run.

    Parameters
    ----------
    tiles : ProductPlan or None
        Tiles of whole blocks, the slab, the per-task memory (printable on its own); None
        when the plan is unavailable.
    read_bytes : int
        Bytes the tasks read from the operands' files together.
    read_seconds : float
        Predicted single-core seconds of those reads.
    busiest_core_seconds : float
        Predicted seconds (compute and reads) of the busiest core.
    why_unavailable : str
        Why the plan cannot run ("" when it can).
    """

    tiles: ProductPlan | None = field(repr=False)
    read_bytes: int
    read_seconds: float
    busiest_core_seconds: float
    why_unavailable: str = ""

    @property
    def unavailable(self) -> str:
        """Why the plan cannot run on these operands ("" when both are floating-point files)."""
        return self.why_unavailable

    @property
    def note(self) -> str:
        """Tiles, reads, and that nothing is shuffled."""
        if self.unavailable:
            return f"not possible: {self.unavailable}"
        t = self.tiles
        return (f"out of core: {len(t.tiles)} tiles of {t.tile_rows} x {t.tile_cols} (busiest "
                f"core {t.balance:.2f}x the mean), slabs of {t.slab}; reads "
                f"{format_bytes(self.read_bytes)} from the files, no shuffle")

    def seconds_terms(self, cores: int, rates: cost.Rates) -> dict[str, float]:
        """One stage plus the busiest core's compute and reads, the tiles dealt to ``cores``.

        At the default rates and the planned cores that is :attr:`busiest_core_seconds`;
        otherwise the tiles are dealt again with their compute and reads rescaled.
        """
        busiest = self.busiest_core_seconds
        scales = (rates.compute_scale(self), rates.read_scale)
        planned = self.tiles is None or (scales == (1.0, 1.0)
                                         and cores == self.tiles.concurrent_tasks)
        if not planned:
            busiest = busiest_core_work(
                tile_seconds(self.tiles, self.left.shape[1], *scales), cores)[0]
        return {"stages": cost.STAGE_SECONDS, "busiest core": busiest}

    def __str__(self) -> str:
        return "\n".join([super().__str__(),
                          f"  reads from files: {format_bytes(self.read_bytes)}",
                          f"  note: {self.note}"])


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> OocPlan:
    """Tiles of whole blocks of C balanced over ``options.cores``, from shapes alone.

    Operands that are not both floating-point files get an unavailable plan at once: the tile
    plan of a product that cannot run out of core is not worth its time (a 10^6 x 10^6 one
    has millions of tiles).
    """
    check_multiplicable(left, right)
    why = unavailable_reason(left, right)
    if why:
        return OocPlan(strategy="ooc", left=left, right=right,
                       grid=result_grid(left, right, options.num_partitions), num_tasks=0,
                       shuffles=(), max_task_input_bytes=0, max_task_memory_bytes=0,
                       max_task_output_bytes=0, flops=0, tiles=None, read_bytes=0,
                       read_seconds=0.0, busiest_core_seconds=0.0, why_unavailable=why)
    m, k = left.shape
    p = right.shape[1]
    dtype = np.result_type(left.dtype, right.dtype)
    if dtype.kind != "f":
        dtype = np.dtype(np.float64)  # only for the printed plan: it is unavailable
    cores = options.cores
    budget = min(options.budget_bytes, DEFAULT_TASK_BUDGET_BYTES)
    a_chunks, b_chunks = (_zarr_chunks(layout.source) for layout in (left, right))
    slab = zarr_slab(product_slab(DEFAULT_SLAB, k, a_chunks, b_chunks), k,
                     [c for c in ((a_chunks or (0, 0))[1], (b_chunks or (0, 0))[0]) if c])
    tile = balanced_block_tile(max(m, 1), max(p, 1), left.rows_per_block,
                               right.cols_per_block, cores, slab, dtype.itemsize, budget)
    tiles = plan_product((m, k, p), dtype, tile, slab, cores)
    itemsize = dtype.itemsize
    busiest, _ = busiest_core_work(tile_seconds(tiles, k), cores)
    largest = max(tiles.tiles, key=lambda t: t.rows * t.cols, default=None)
    return OocPlan(
        strategy="ooc", left=left, right=right, grid=result_grid(left, right,
                                                                 options.num_partitions),
        num_tasks=len(tiles.tiles), shuffles=(),
        max_task_input_bytes=max((t.read_elements(k) * itemsize for t in tiles.tiles),
                                 default=0),
        max_task_memory_bytes=tiles.task_bytes,
        max_task_output_bytes=largest.rows * largest.cols * itemsize if largest else 0,
        flops=tiles.flops, compute_seconds=tiles.flops / cost.DENSE_FLOPS_PER_CORE_S,
        max_task_compute_seconds=max((t.flops(k) / cost.DENSE_FLOPS_PER_CORE_S
                                      for t in tiles.tiles), default=0.0),
        tiles=tiles, read_bytes=tiles.read_bytes,
        read_seconds=tiles.read_bytes / HDF5_READ_BYTES_PER_CORE_S,
        busiest_core_seconds=busiest)


def tile_seconds(tiles: ProductPlan, k: int, compute_scale: float = 1.0,
                 read_scale: float = 1.0) -> list[float]:
    """Every tile's compute at the dense rate plus its reads at the HDF5 rate, rescaled."""
    itemsize = np.dtype(tiles.dtype).itemsize
    return [compute_scale * t.flops(k) / cost.DENSE_FLOPS_PER_CORE_S
            + read_scale * t.read_elements(k) * itemsize / HDF5_READ_BYTES_PER_CORE_S
            for t in tiles.tiles]


def _zarr_chunks(source) -> tuple[int, int] | None:
    """A Zarr source's chunks oriented as the operand (one metadata read); None for HDF5."""
    if getattr(source, "format", None) != "zarr":
        return None
    from ..io import zarr_store

    chunks = zarr_store.inspect_input(source.url, "operand")[2]
    return tuple(chunks[::-1]) if source.transposed else tuple(chunks)


def operand_of_source(source) -> Operand:
    """The :class:`~blockmatrix.ooc.tiles.Operand` a task reads for a file-backed source."""
    if getattr(source, "format", None) == "zarr":
        return Operand(source.url, "", tuple(source.shape), np.dtype(source.dtype).name, None,
                       bool(source.transposed), store="zarr")
    return Operand(source.path, source.dataset, tuple(source.shape), np.dtype(source.dtype).name,
                   None, bool(source.transposed))


def execute(plan: OocPlan, left, right, options: MultiplyOptions):
    """One task per tile, reading its slabs from the files; returns C's blocks (no shuffle).

    The operands' RDDs are not used: their files are. A file that changed since its matrix
    was opened is refused here, before any task reads it.
    """
    plan.check_runnable()
    for source in (plan.left.source, plan.right.source):
        source.check_unchanged()
    sc = left.context
    threads = max(1, int(sc.getConf().get("spark.task.cpus", "1")))
    t = plan.tiles
    compute = partial(compute_tile_blocks,
                      operands=(operand_of_source(plan.left.source),
                                operand_of_source(plan.right.source)),
                      dtype=t.dtype, slab=t.slab, threads=threads,
                      cache_bytes=t.dataset_cache_bytes,
                      rows_per_block=plan.left.rows_per_block,
                      cols_per_block=plan.right.cols_per_block)
    tiles = list(t.tiles)
    return sc.parallelize(tiles, max(1, len(tiles))).flatMap(compute)


STRATEGY = register(Strategy(
    name="ooc", plan=plan, execute=execute, plan_type=OocPlan,
    summary="out of core: tiles of C read slab by slab from both operands' HDF5 files or "
            "Zarr arrays, no shuffle (file-backed operands only)",
    operand_sources=("file",)))
