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
``partitionBy`` on the result's ``GridPartitioner`` (:func:`.base.sum_partials`): **one
shuffle** of at most ``partitions x |C|`` blocks (the larger operand is still never shuffled),
which the plan predicts and counts. Re-partitioning the larger operand by block row instead
would shuffle the larger operand itself, the very thing this strategy exists to avoid.

**The memory budget.** The broadcast operand is held by the driver (as it is collected and
pickled) and by every Python worker that runs a task, next to that task's accumulators. The
plan refuses (``execute`` raises :class:`~blockmatrix.errors.InvalidParameterError` before any
job) when the broadcast operand is larger than ``MultiplyOptions.memory_budget_bytes``. The
default, :func:`default_memory_budget`, is a quarter of ``spark.executor.memory``
(``spark.driver.memory`` in local mode, where the driver is the executor), leaving room for the
driver's copy, the pickled copy and the worker's accumulators.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial

from .. import blocks as bk
from ..errors import InvalidParameterError
from ..planner import (
    RECORD_OVERHEAD_BYTES,
    BlockLayout,
    MultiplyPlan,
    ShuffleEstimate,
    check_multiplicable,
    compute_estimate,
    dense_flops,
    format_bytes,
    result_grid,
)
from .base import MultiplyOptions, sum_partials
from .inner import LEFT, RIGHT
from .outer import (
    accumulated_nbytes,
    block_density,
    product_density,
    result_itemsize,
    result_shell,
)

#: Fraction of the executor memory a task may use for its data by default.
BUDGET_FRACTION = 0.25


def default_memory_budget(sc) -> int:
    """A quarter of ``spark.executor.memory`` (``spark.driver.memory`` in local mode), in bytes.

    Spark's own default for either setting is 1g, giving 256 MiB.
    """
    from ..matrix import parse_memory

    conf = sc.getConf()
    local = (conf.get("spark.master", "") or "").startswith("local")
    setting = "spark.driver.memory" if local else "spark.executor.memory"
    return int(parse_memory(conf.get(setting, "1g") or "1g") * BUDGET_FRACTION)


def broadcast_side(left: BlockLayout, right: BlockLayout) -> int:
    """Which operand to broadcast: the one with fewer stored bytes (``RIGHT`` on a tie)."""
    return LEFT if left.nbytes < right.nbytes else RIGHT


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> MultiplyPlan:
    """Plan the broadcast multiply: what is broadcast, whether a partial-sum shuffle is needed."""
    check_multiplicable(left, right)
    side = broadcast_side(left, right)
    small, large = (right, left) if side == RIGHT else (left, right)
    budget = options.budget_bytes
    broadcast_bytes = small.nbytes
    itemsize = result_itemsize(left, right)
    shell = result_shell(left, right)

    # Counterparts in the broadcast operand, by inner index.
    small_by_k = defaultdict(list)
    for key in small.keys:
        small_by_k[key[1] if side == LEFT else key[0]].append(key)
    known = large.key_partitions is not None
    parts = max(1, large.num_partitions)
    part_input: dict[int, int] = defaultdict(int)
    part_of: dict[tuple[int, int], int] = {}
    partial_densities: dict[tuple[int, tuple[int, int]], list] = defaultdict(list)
    for n_key, (key, size) in enumerate(sorted(large.block_nbytes.items())):
        # Unknown partitions: assume the blocks dealt round-robin (the worst case for splits).
        p = large.key_partitions.get(key, 0) if known else n_key % parts
        part_of[key] = p
        part_input[p] += size
        k = key[1] if side == RIGHT else key[0]
        d_large = block_density(large, key)
        for other in small_by_k.get(k, ()):
            d_small = block_density(small, other)
            if side == RIGHT:
                out, inner = (key[0], other[1]), large.block_shape(*key)[1]
            else:
                out, inner = (other[0], key[1]), large.block_shape(*key)[0]
            partial_densities[(p, out)].append(product_density(d_large, d_small, inner))

    part_output: dict[int, int] = defaultdict(int)
    partials_of: dict[tuple[int, int], list] = defaultdict(list)
    for (p, out), densities in partial_densities.items():
        size = accumulated_nbytes(*shell.block_shape(*out), itemsize, densities)
        part_output[p] += size
        partials_of[out].append((size, densities))
    split = {out for out, partials in partials_of.items() if len(partials) > 1}

    grid = result_grid(left, right, options.num_partitions)
    shuffles: tuple[ShuffleEstimate, ...] = ()
    reduce_output = [0]
    if split:
        records = sum(len(p) for p in partials_of.values())
        shuffles = (ShuffleEstimate("sum partial blocks of split rows/columns", records,
                                    sum(s for p in partials_of.values() for s, _ in p)
                                    + records * RECORD_OVERHEAD_BYTES),)
        reduce_output = [0] * grid.num_partitions
        for out, partials in partials_of.items():
            reduce_output[grid.partition_of(*out)] += accumulated_nbytes(
                *shell.block_shape(*out), itemsize, [d for _, ds in partials for d in ds])
    largest_block = max(large.block_nbytes.values(), default=0)
    task_memory = [broadcast_bytes + part_output[p] + largest_block for p in part_input]
    fits = broadcast_bytes <= budget
    what = "B" if side == RIGHT else "A"
    if not fits:
        note = (f"{what} ({format_bytes(broadcast_bytes)}) exceeds the memory budget "
                f"({format_bytes(budget)}): broadcast refused")
    elif not split:
        note = (f"broadcast {what} ({format_bytes(broadcast_bytes)}); each block "
                f"{'row of A' if side == RIGHT else 'column of B'} lies in one partition: "
                f"no shuffle")
    else:
        note = (f"broadcast {what} ({format_bytes(broadcast_bytes)}); "
                f"{len(split)} result blocks get partial sums from several partitions "
                f"({'partitions unknown' if not known else 'split rows/columns'}): one "
                f"|C|-sized shuffle")
    return MultiplyPlan(
        strategy="broadcast", left=left, right=right, shuffles=shuffles,
        max_task_input_bytes=max([broadcast_bytes + v for v in part_input.values()]
                                 + reduce_output + [broadcast_bytes]),
        max_task_memory_bytes=max(task_memory + reduce_output + [broadcast_bytes]),
        max_task_output_bytes=max(list(part_output.values()) + reduce_output),
        flops=dense_flops(left, right),
        **compute_estimate(left, right, lambda i, k, j: part_of[(i, k) if side == RIGHT
                                                                else (k, j)]),
        details={"side": side, "broadcast_bytes": broadcast_bytes, "budget_bytes": budget,
                 "fits_budget": fits, "reduce": bool(split), "grid": grid,
                 "partitions_known": known, "note": note})


def check_fits(plan: MultiplyPlan) -> None:
    """Raise :class:`InvalidParameterError` if the broadcast operand exceeds the budget."""
    d = plan.details
    if not d["fits_budget"]:
        what = "B" if d["side"] == RIGHT else "A"
        raise InvalidParameterError(
            f"strategy='broadcast' would broadcast {what} ({d['broadcast_bytes']} bytes), more "
            f"than memory_budget_bytes ({d['budget_bytes']} bytes): raise memory_budget_bytes "
            f"to at least {d['broadcast_bytes']}, or use strategy='inner' or 'auto'")


def execute(plan: MultiplyPlan, left, right, options: MultiplyOptions):
    """Broadcast the smaller operand and map over the larger one (no shuffle if aligned)."""
    from ..matrix import BlockMatrix

    check_fits(plan)
    side = plan.details["side"]
    small, large = (right, left) if side == RIGHT else (left, right)
    table = defaultdict(list)
    for (row, col), block in small.blocks.collect():
        if side == RIGHT:
            table[row].append((col, block))  # B (k, j) by k
        else:
            table[col].append((row, block))  # A (i, k) by k
    shared = large.blocks.context.broadcast(dict(table))
    products = large.blocks.mapPartitions(
        partial(multiply_with_broadcast, table=shared, side=side))
    if plan.details["reduce"]:
        grid = plan.details["grid"]
        products = sum_partials(products, grid)
    return BlockMatrix.from_blocks(products, plan.result_shape, left.rows_per_block,
                                   right.cols_per_block)


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
    return iter(acc.items())
