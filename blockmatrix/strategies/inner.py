"""Spark's inner-product multiply in one shuffle.

Every block is routed, as Spark's ``simulateMultiply`` plans, only to the result partitions
where it has a counterpart. The routing key is an int that Spark's ``GridPartitioner`` maps to
its destination (``key % num_partitions``) and whose quotient is the block's inner index ``k``,
so one ``partitionBy`` with the result's grid partitioner both delivers the blocks and lets each
task take them in ``k`` order. A task then holds one ``k``-slice of inputs at a time and
accumulates its output blocks in place (BLAS ``gemm`` with ``beta = 1``). Its output keeps the
grid partitioner, so nothing is shuffled again: with ``num_mid_splits = 1`` the whole multiply
is one shuffle stage. With ``s = num_mid_splits > 1`` the inner dimension is striped over ``s``
sub-reducers per result partition and their partial blocks are summed by a second, |C|-sized
shuffle, as in Spark.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial

import numpy as np

from .. import blocks as bk
from .._spill import grouped_by_key
from ..planner import (
    RECORD_OVERHEAD_BYTES,
    BlockLayout,
    MultiplyPlan,
    ShuffleEstimate,
    check_multiplicable,
    compute_estimate,
    dense_flops,
    result_grid,
    simulate_multiply,
)
from .base import MultiplyOptions, sum_partials

LEFT, RIGHT = 0, 1


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> MultiplyPlan:
    """Plan ``left @ right`` as Spark does, and predict its shuffle and memory."""
    check_multiplicable(left, right)
    s = options.num_mid_splits
    grid = result_grid(left, right, options.num_partitions)
    left_dest, right_dest = simulate_multiply(left.keys, right.keys, grid, s)
    num_tasks = grid.num_partitions * s
    task_input = [0] * num_tasks
    slice_bytes: dict[tuple[int, int], int] = defaultdict(int)  # (task, k) -> bytes
    records = 0
    for layout, destinations, k_axis in ((left, left_dest, 1), (right, right_dest, 0)):
        for key, targets in destinations.items():
            size = layout.block_nbytes[key] + RECORD_OVERHEAD_BYTES
            for task in targets:
                task_input[task] += size
                slice_bytes[(task, key[k_axis])] += size
            records += len(targets)
    largest_slice = [0] * num_tasks
    for (task, _), size in slice_bytes.items():
        largest_slice[task] = max(largest_slice[task], size)

    itemsize = np.result_type(left.dtype, right.dtype).itemsize
    out_layout = BlockLayout((left.shape[0], right.shape[1]), left.rows_per_block,
                             right.cols_per_block, {}, np.result_type(left.dtype, right.dtype))
    task_output = [0] * num_tasks
    stripes = mid_split_stripes(left.keys, right.keys, s)
    for (i, j), residues in stripes.items():
        rows, cols = out_layout.block_shape(i, j)
        base = grid.partition_of(i, j) * s
        for r in residues:
            task_output[base + r] += rows * cols * itemsize
    partials = sum(len(residues) for residues in stripes.values())
    memory = [task_output[t] + min(task_input[t], options.task_buffer_bytes) + largest_slice[t]
              for t in range(num_tasks)]
    shuffles = [ShuffleEstimate("route blocks to result partitions", records, sum(task_input))]
    if s > 1:
        shuffles.append(ShuffleEstimate("sum partial blocks over mid splits", partials,
                                        sum(task_output) + partials * RECORD_OVERHEAD_BYTES))
    return MultiplyPlan(
        strategy="inner", left=left, right=right, shuffles=tuple(shuffles),
        max_task_input_bytes=max(task_input, default=0),
        max_task_memory_bytes=max(memory, default=0),
        max_task_output_bytes=max(task_output, default=0),
        flops=dense_flops(left, right),
        **compute_estimate(left, right, lambda i, k, j: grid.partition_of(i, j) * s + k % s),
        details={"grid": grid, "num_mid_splits": s, "left_destinations": left_dest,
                 "right_destinations": right_dest})


def mid_split_stripes(left_keys, right_keys, s: int) -> dict[tuple[int, int], set[int]]:
    """For every product block ``(i, j)``, the stripes ``k % s`` that hold a partial of it.

    >>> sorted(mid_split_stripes([(0, 0), (0, 1), (0, 2)], [(0, 0), (2, 0)], 2).items())
    [((0, 0), {0})]
    >>> mid_split_stripes([(0, 0), (0, 1)], [(0, 0), (1, 0)], 2)
    {(0, 0): {0, 1}}
    """
    cols_of_row = defaultdict(list)
    for k, j in right_keys:
        cols_of_row[k].append(j)
    stripes: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, k in set(left_keys):
        for j in cols_of_row.get(k, ()):
            stripes[(i, j)].add(k % s)
    return dict(stripes)


def execute(plan: MultiplyPlan, left, right, options: MultiplyOptions):
    """Run a plan made by :func:`plan` and return the product as a BlockMatrix."""
    from ..matrix import BlockMatrix

    grid = plan.details["grid"]
    s = plan.details["num_mid_splits"]
    num_tasks = grid.num_partitions * s
    sc = left.blocks.context
    left_dest = sc.broadcast(plan.details["left_destinations"])
    right_dest = sc.broadcast(plan.details["right_destinations"])
    routed = left.blocks.flatMap(partial(route_block, side=LEFT, destinations=left_dest,
                                         num_tasks=num_tasks)).union(
        right.blocks.flatMap(partial(route_block, side=RIGHT, destinations=right_dest,
                                     num_tasks=num_tasks)))
    # One shuffle: the routing key is an int, which GridPartitioner maps to key % num_tasks.
    delivered = routed.partitionBy(num_tasks, grid)
    products = delivered.mapPartitions(
        partial(multiply_delivered, num_tasks=num_tasks, budget_bytes=options.task_buffer_bytes),
        preservesPartitioning=(s == 1))
    if s > 1:
        products = sum_partials(products, grid)
    rows, cols = plan.result_shape
    return BlockMatrix.from_blocks(products, (rows, cols), left.rows_per_block,
                                   right.cols_per_block)


def route_block(item, side: int, destinations, num_tasks: int):
    """Copies of one block for each destination task, keyed ``k * num_tasks + task``."""
    (row, col), block = item
    k, index = (col, row) if side == LEFT else (row, col)
    return [(k * num_tasks + task, (side, index, block))
            for task in destinations.value.get((row, col), ())]


def _record_k(record, num_tasks: int) -> int:
    return record[0] // num_tasks


def record_nbytes(record) -> int:
    """Bytes of the block a routed record ``(key, (side, index, block))`` carries."""
    return bk.nbytes(record[1][2])


def multiply_delivered(records, num_tasks: int, budget_bytes: int):
    """Multiply the blocks delivered to one task, one inner index ``k`` at a time.

    Output blocks are accumulated in place; the task holds its accumulators, one k-slice of
    inputs, and at most ``budget_bytes`` of not-yet-used inputs (the rest waits on local disk).
    """
    acc: dict[tuple[int, int], object] = {}
    groups = grouped_by_key(records, partial(_record_k, num_tasks=num_tasks), record_nbytes,
                            budget_bytes)
    for _, group in groups:
        accumulate_slice(acc, group)
    return iter(acc.items())


def accumulate_slice(acc: dict, group) -> None:
    """Add the products of one k-slice (records ``(key, (side, index, block))``) to ``acc``.

    Blocks with the same index (duplicates) are all used, so duplicates are summed, as Spark's
    multiply does.
    """
    lefts, rights = defaultdict(list), defaultdict(list)
    for _, (side, index, block) in group:
        (lefts if side == LEFT else rights)[index].append(block)
    for i, left_blocks in lefts.items():
        for j, right_blocks in rights.items():
            for a in left_blocks:
                for b in right_blocks:
                    acc[(i, j)] = bk.matmul_accumulate(acc.get((i, j)), a, b)
