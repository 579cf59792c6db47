"""Broadcast multiply: the smaller operand is broadcast, the larger one is never shuffled.

The smaller operand (by stored bytes; B on a tie) is collected to the driver and broadcast as a
dict keyed by its inner block index. Each task of the larger operand then multiplies its own
blocks by the broadcast ones and accumulates the products per output key in place. If B is
broadcast, a task holding A blocks ``(i, k)`` produces partial blocks ``(i, j)`` summed over
*its* ``k``; if A is broadcast, a task holding B blocks ``(k, j)`` produces ``(i, j)`` summed
over its ``k``.

**The zero-shuffle condition, and the trade-off.** The sum over ``k`` is complete inside a task
only when every block row ``i`` of A (column ``j`` of B, when A is broadcast) that meets a
counterpart lies in a single partition. The planner checks this from the layout fact
:attr:`BlockLayout.key_partitions` (the partition of every stored block), which
``BlockMatrix.from_numpy`` and ``from_hdf5`` record: they parallelize row-major key lists, so
the condition holds when the slices happen to cut between block rows (e.g. 4 x 4 blocks in 2
or 4 partitions) and for one-partition matrices. Then the multiply runs with **no shuffle**:
one small collect job for the broadcast operand and one map over the larger one. When a block
row is split over partitions, or the partitions are unknown (a matrix whose layout was
computed by a job, or a product), the partial blocks are summed in place after one
``partitionBy`` on the result's ``GridPartitioner`` (:func:`._common.sum_partials`): **one
shuffle** of at most ``partitions x |C|`` blocks (the larger operand is still never shuffled),
which the plan predicts and counts. Re-partitioning the larger operand by block row instead
would shuffle the larger operand itself, the very thing this strategy exists to avoid.

**The memory budget.** The broadcast operand is held by the driver (as it is collected and
pickled) and by every Python worker that runs a task, next to that task's accumulators. The
plan refuses (``execute`` raises :class:`~blockmatrix.errors.InvalidParameterError` before any
job) when the broadcast operand is larger than ``MultiplyOptions.memory_budget_bytes``. The
default, :func:`blockmatrix.sparkconf.default_memory_budget`, is a quarter of
``spark.executor.memory``
(``spark.driver.memory`` in local mode, where the driver is the executor), leaving room for the
driver's copy, the pickled copy and the worker's accumulators.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.sparse as sp

from .. import blocks as bk
from .. import held
from ..cost import (
    DRIVER_FILE_WRITE_BYTES_PER_S,
    RECORD_OVERHEAD_BYTES,
    ProductModel,
    Rates,
    grid_bytes,
    grouped_sums,
    result_blocks,
    stage_seconds_terms,
    task_seconds,
)
from ..errors import InvalidParameterError
from ..layout import BlockLayout, check_multiplicable
from ..metrics import file_read_counter
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ..planner import result_grid
from ..units import format_bytes
from ._common import (
    LEFT,
    RIGHT,
    FileReader,
    driver_array_file,
    file_sources,
    side_name,
    sum_partials,
)
from .registry import Strategy, register


@dataclass(frozen=True, kw_only=True)
class BroadcastPlan(MultiplyPlan):
    """Which operand is broadcast, against which budget, and whether partials need a sum."""

    side: int
    operand_bytes: int
    budget_bytes: int
    split_blocks: int
    partitions_known: bool
    delivery: str = "collect"

    @property
    def collected_bytes(self) -> int:
        """Bytes collected to the driver first (only when the operand lives only in Spark)."""
        return self.operand_bytes if self.delivery == "collect" else 0

    @property
    def lineage_operands(self) -> tuple[bool, bool]:
        """Only the larger operand: the broadcast one is collected, copied or read from file."""
        return (self.side == RIGHT, self.side == LEFT)

    @property
    def needs_partial_sums(self) -> bool:
        """Whether some result blocks get partials from several partitions (one shuffle)."""
        return self.split_blocks > 0

    @property
    def result_partition_bytes(self) -> list[int]:
        """Without partial sums the product keeps the larger operand's partitions."""
        if self.needs_partial_sums:
            return super().result_partition_bytes
        return [self.max_task_output_bytes]

    @property
    def broadcast_bytes(self) -> int:
        """Bytes of the broadcast operand (0 when every task reads it from a file)."""
        return 0 if self.delivery in READ_FROM_FILE else self.operand_bytes

    @property
    def fits_budget(self) -> bool:
        """Whether the broadcast operand is within the memory budget it was planned with."""
        return self.operand_bytes <= self.budget_bytes

    def fits(self, budget_bytes: int) -> bool:
        """Within ``budget_bytes``: the operand it broadcasts and its largest task."""
        return self.operand_bytes <= budget_bytes and super().fits(budget_bytes)

    @property
    def note(self) -> str:
        """What is broadcast, and why the plan shuffles (or not)."""
        what, size = side_name(self.side), format_bytes(self.operand_bytes)
        if not self.fits_budget:
            return (f"{what} ({size}) exceeds the memory budget "
                    f"({format_bytes(self.budget_bytes)}): broadcast refused")
        how = DELIVERIES[self.delivery]
        if not self.needs_partial_sums:
            return (f"broadcast {what} ({size}, {how}); each block "
                    f"{'row of A' if self.side == RIGHT else 'column of B'} lies in one "
                    f"partition: no shuffle")
        return (f"broadcast {what} ({size}, {how}); {self.split_blocks} result blocks get partial "
                f"sums from several partitions "
                f"({'split rows/columns' if self.partitions_known else 'partitions unknown'}): "
                f"one |C|-sized shuffle")

    def seconds_terms(self, cores: int, rates: Rates) -> dict[str, float]:
        """Spark's stage terms, with a driver-file operand written by the driver alone.

        :func:`blockmatrix.cost.stage_seconds_terms` prices written bytes as tasks write them,
        on every core; the driver writes the operand by itself, at
        :data:`~blockmatrix.cost.DRIVER_FILE_WRITE_BYTES_PER_S` (scaled as the file rate is).
        """
        terms = stage_seconds_terms(self, cores, rates)
        if self.delivery == "driver-file":  # its spilled bytes: the operand the driver wrote
            terms["read"] = self.read_bytes / (rates.disk_bytes_per_core_s * cores)
            terms["driver write"] = (self.spilled_bytes * rates.read_scale
                                     / DRIVER_FILE_WRITE_BYTES_PER_S)
        return terms

    def check_runnable(self) -> None:
        """Raise :class:`InvalidParameterError` if the broadcast operand exceeds the budget."""
        super().check_runnable()
        if not self.fits_budget:
            raise InvalidParameterError(
                f"strategy='broadcast' would broadcast {side_name(self.side)} "
                f"({self.operand_bytes} bytes), more than memory_budget_bytes "
                f"({self.budget_bytes} bytes): raise memory_budget_bytes to at least "
                f"{self.operand_bytes}, or use strategy='inner' or 'auto'")


#: How the broadcast operand reaches the tasks, by where its blocks are (``layout.source_kind``).
DELIVERIES = {
    "collect": "collected to the driver, then broadcast",
    "driver": "broadcast from the driver's own array",
    "driver-file": "put once by the driver in a file every task reads (in memory on a local "
                   "master)",
    "file": "read by every task from its file",
}

#: Deliveries in which the tasks read the operand from a file (nothing broadcast).
READ_FROM_FILE = ("file", "driver-file")


def delivery_of(layout: BlockLayout, by_reference: bool = False) -> str:
    """The fastest way the operand's blocks reach every task (see :data:`DELIVERIES`).

    ``by_reference``: a dense array the driver holds is put in a file the tasks read
    (:func:`blockmatrix.strategies._common.driver_array_file`) rather than pickled into a
    broadcast.
    """
    kind = layout.source_kind
    if kind == "driver" and by_reference and not sp.issparse(layout.source.array):
        return "driver-file"
    return {"spark": "collect", "driver": "driver", "file": "file"}[kind]


def broadcast_side(left: BlockLayout, right: BlockLayout) -> int:
    """Which operand to broadcast: the one with fewer stored bytes (``RIGHT`` on a tie)."""
    return LEFT if left.nbytes < right.nbytes else RIGHT


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> BroadcastPlan:
    """Plan the broadcast multiply: what is broadcast, whether a partial-sum shuffle is needed."""
    check_multiplicable(left, right)
    side = broadcast_side(left, right)
    small, large = (right, left) if side == RIGHT else (left, right)
    broadcast_bytes = small.nbytes
    model = ProductModel(left, right)

    # The large operand's blocks by partition (unknown partitions: dealt round-robin in key
    # order, the worst case for splits), and what each partition's products sum into.
    known = large.key_partitions is not None
    parts = max(1, large.num_partitions)
    rank = {key: n for n, key in enumerate(sorted(large.block_nbytes))}
    part_of = np.array([large.key_partitions.get(key, 0) if known else rank[key] % parts
                        for key in large.block_nbytes], dtype=np.int64)
    part_input = np.bincount(part_of, weights=large.key_array[2], minlength=parts)
    sums = grouped_sums(left, right, part_of, parts, side="left" if side == RIGHT else "right")
    part_output, split = sums.group_bytes, sums.split_blocks
    # Read from its file, the operand's blocks each partition meets: the rows (columns) k
    # of the small operand for every k among the partition's blocks.
    large_k = large.key_array[1] if side == RIGHT else large.key_array[0]
    small_k = small.key_array[0] if side == RIGHT else small.key_array[1]
    bytes_of_k = np.bincount(small_k, weights=small.key_array[2],
                             minlength=max(left.num_col_blocks, 1))
    met = np.unique(np.stack([part_of, large_k]), axis=1) if len(part_of) else np.zeros((2, 0))
    read_per_part = int(bytes_of_k[met[1].astype(np.int64)].sum()) if met.size else 0

    grid = result_grid(left, right, options.num_partitions)
    shuffles: tuple[ShuffleEstimate, ...] = ()
    reduce_output = [0]
    if split:
        records = int(sums.group_blocks.sum())
        shuffles = (ShuffleEstimate("sum partial blocks of split rows/columns", records,
                                    int(part_output.sum()) + records * RECORD_OVERHEAD_BYTES),)
        reduce_output = grid_bytes(grid, *result_blocks(left, right))
    largest_block = max(large.block_nbytes.values(), default=0)
    present = np.flatnonzero(np.bincount(part_of, minlength=parts))
    task_memory = (broadcast_bytes + part_output[present] + largest_block).astype(np.int64)
    delivery = delivery_of(small, options.by_reference)
    read = read_per_part if delivery in READ_FROM_FILE else 0
    return BroadcastPlan(
        strategy="broadcast", left=left, right=right, grid=grid,
        num_tasks=max(parts, grid.num_partitions if split else 0), shuffles=shuffles,
        max_task_input_bytes=max([int(broadcast_bytes + part_input.max(initial=0))]
                                 + reduce_output),
        max_task_memory_bytes=max(task_memory.tolist() + reduce_output + [broadcast_bytes]),
        max_task_output_bytes=max([int(part_output.max(initial=0))] + reduce_output),
        flops=model.flops, compute_seconds=model.total_seconds(),
        max_task_compute_seconds=task_seconds(
            model.seconds_by_left_block() if side == RIGHT else model.seconds_by_right_block(),
            part_of),
        side=side, operand_bytes=broadcast_bytes, budget_bytes=options.budget_bytes,
        split_blocks=split, partitions_known=known, delivery=delivery, read_bytes=read,
        spilled_bytes=broadcast_bytes if delivery == "driver-file" else 0)


def execute(plan: BroadcastPlan, left, right, options: MultiplyOptions):
    """Broadcast the smaller operand and map over the larger one (no shuffle if aligned)."""
    plan.check_runnable()
    side = plan.side
    small_blocks, large = (right, left) if side == RIGHT else (left, right)
    small = plan.right if side == RIGHT else plan.left
    if plan.delivery == "driver-file":
        small = dataclasses.replace(
            small, source=driver_array_file(large.context, options, small.source))
    if plan.delivery in READ_FROM_FILE:
        table = FileTable(small, side, file_read_counter(large.context))
    else:
        blocks = (small_blocks.collect() if plan.delivery == "collect"
                  else _driver_blocks(small))
        table = held.broadcast(large.context, _table(blocks, side))
    products = large.mapPartitions(partial(multiply_with_broadcast, table=table, side=side))
    if plan.needs_partial_sums:
        products = sum_partials(products, plan.grid)
    return products


def _by_inner(keys, side: int) -> dict[int, list]:
    """The broadcast operand's keys by inner index ``k``: B's rows, or A's columns."""
    by_k = defaultdict(list)
    for row, col in keys:
        by_k[row if side == RIGHT else col].append((row, col))
    return dict(by_k)


def _table(items, side: int) -> dict[int, list]:
    """``{k: [(other index, block), ...]}`` of the broadcast operand's ``((row, col), block)``."""
    table = defaultdict(list)
    for (row, col), block in items:
        if side == RIGHT:
            table[row].append((col, block))  # B (k, j) by k
        else:
            table[col].append((row, block))  # A (i, k) by k
    return dict(table)


def _driver_blocks(layout: BlockLayout):
    """The stored blocks of a driver-held operand, sliced from the driver's own array."""
    source, r, c = layout.source, layout.rows_per_block, layout.cols_per_block
    return ((key, source.block(*key, r, c)) for key in layout.keys)


class FileTable:
    """The broadcast operand read by a task from its file, block by block as its k is met.

    Shipped to the tasks in place of a broadcast (it holds the file's name and the operand's
    keys, no data); :attr:`value` behaves like the broadcast table.
    """

    def __init__(self, small: BlockLayout, side: int, counter):
        self.keys_by_k, self.side = _by_inner(small.keys, side), side
        self.sources, self.counter = file_sources({side: small}), counter

    @property
    def value(self) -> _FileLookup:
        """A lookup ``get(k, default)`` that reads and keeps the blocks of ``k``."""
        return _FileLookup(self)


class _FileLookup(FileReader):
    def __init__(self, table: FileTable):
        super().__init__(table.sources, table.counter)
        self._table, self._read = table, {}

    def get(self, k: int, default=()):
        keys = self._table.keys_by_k.get(k)
        if keys is None:
            return default
        if k not in self._read:
            side = self._table.side
            other = 1 if side == RIGHT else 0  # B (k, j) is listed by j, A (i, k) by i
            self._read[k] = [(key[other], self.read(side, key)) for key in keys]
        return self._read[k]


def multiply_with_broadcast(items, table, side: int):
    """Products of a task's blocks with the broadcast operand, accumulated per ``(i, j)``."""
    lookup = table.value
    acc: dict = {}
    for (row, col), block in items:
        if side == RIGHT:  # block is A (i, k); table holds B's row k as (j, block)
            for j, b in lookup.get(col, ()):
                acc[(row, j)] = bk.matmul_accumulate(acc.get((row, j)), block, b)
        else:  # block is B (k, j); table holds A's column k as (i, block)
            for i, a in lookup.get(row, ()):
                acc[(i, col)] = bk.matmul_accumulate(acc.get((i, col)), a, block)
    if isinstance(lookup, _FileLookup):
        lookup.close()
    return iter(acc.items())


def variants(left: BlockLayout, right: BlockLayout,
             options: MultiplyOptions) -> dict[str, MultiplyOptions]:
    """The by-reference variant ``auto`` weighs: a dense driver-held operand written to a file.

    Offered when there is a folder every task reads (``options.reference_parent``).
    """
    small = right if broadcast_side(left, right) == RIGHT else left
    if options.reference_parent is None or options.by_reference or \
            delivery_of(small, True) != "driver-file":
        return {}
    return {"broadcast, by reference": dataclasses.replace(options, by_reference=True)}


STRATEGY = register(Strategy(
    name="broadcast", plan=plan, execute=execute, plan_type=BroadcastPlan, variants=variants,
    summary="broadcast the smaller operand, map over the larger: no shuffle when its block "
            "rows lie in one partition each"))
