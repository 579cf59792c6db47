"""The outer-product multiply: A's block columns meet B's block rows on ``k``, then a reduction.

``C = sum_k A[:, k] B[k, :]``. Two shuffles:

1. **join on k**: every A block ``(i, k)`` and every B block ``(k, j)`` is tagged with its side
   and keyed by ``k``; one ``union`` + ``partitionBy`` delivers column ``k`` of A and row ``k``
   of B to the same task. By default there is one task per inner block index ``k`` (the
   formulation's full concurrency, and the seed formula ``m (n + k + n k / r)``);
   ``num_partitions`` caps the number of tasks, a task then taking several ``k``.
   Only inner indices present on both sides are shuffled (a block column of A whose block row
   of B is empty meets nothing).
2. **reduce by (i, j)**: each task multiplies its slices one ``k`` at a time and accumulates the
   partial products per output key in place (BLAS ``gemm`` with ``beta = 1``,
   :func:`blockmatrix.blocks.matmul_accumulate`), so it writes one partial block per ``(i, j)``
   it touched, whatever the number of its ``k``. A ``partitionBy`` on the result's
   :class:`~blockmatrix.partitioner.GridPartitioner` sums them in place
   (:func:`~blockmatrix.strategies.base.sum_partials`; ``reduceByKey``'s map-side combine
   would find nothing to combine): the second shuffle, of at most ``tasks x |C|`` blocks.

The join task's memory is its accumulators (up to all of C for a dense product) plus one
``k``-slice of inputs; that is this formulation's weakness on dense inputs, and its strength on
block-sparse ones, where the partial products are few.

The helpers :func:`block_density`, :func:`product_density` and :func:`accumulated_nbytes`
predict the size of product blocks from block sizes alone (exact for dense blocks, an estimate
for CSR x CSR products, whose fill cannot be known without the data); ``pasa`` and
``broadcast`` use them too.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial

import numpy as np

from .._spill import grouped_by_key
from ..planner import (
    _INDEX_BYTES,
    RECORD_OVERHEAD_BYTES,
    BlockLayout,
    MultiplyPlan,
    ShuffleEstimate,
    block_density,
    check_multiplicable,
    compute_estimate,
    dense_flops,
    result_grid,
)
from .base import MultiplyOptions, sum_partials
from .inner import LEFT, RIGHT, accumulate_slice, record_nbytes

# ---------------------------------------------------------------------- size model


def product_density(a: float | None, b: float | None, inner: int) -> float | None:
    """Density of a block product: None (dense) if either factor is dense.

    For CSR x CSR, independent fill: ``1 - (1 - a b) ** inner``.

    >>> product_density(None, 0.1, 10) is None
    True
    >>> round(product_density(0.1, 0.1, 10), 4)
    0.0956
    """
    if a is None or b is None:
        return None
    return 1.0 - (1.0 - a * b) ** inner


def accumulated_nbytes(rows: int, cols: int, itemsize: int, densities) -> int:
    """Bytes of a sum of product blocks of the given densities (None = dense).

    >>> accumulated_nbytes(2, 2, 8, [None, 0.5])
    32
    >>> accumulated_nbytes(10, 10, 8, [0.5])
    644
    """
    densities = list(densities)
    if any(d is None for d in densities):
        return rows * cols * itemsize
    empty = 1.0
    for d in densities:
        empty *= 1.0 - d
    nnz = round(rows * cols * (1.0 - empty))
    return nnz * (itemsize + _INDEX_BYTES) + (rows + 1) * _INDEX_BYTES


def result_itemsize(left: BlockLayout, right: BlockLayout) -> int:
    """Bytes per element of the product."""
    return np.result_type(left.dtype, right.dtype).itemsize


def result_shell(left: BlockLayout, right: BlockLayout) -> BlockLayout:
    """Layout of the product without blocks (for block shapes)."""
    return BlockLayout((left.shape[0], right.shape[1]), left.rows_per_block,
                       right.cols_per_block, {}, np.result_type(left.dtype, right.dtype))


def _by_inner(left: BlockLayout, right: BlockLayout):
    rows_of_k, cols_of_k = defaultdict(list), defaultdict(list)
    for i, k in left.keys:
        rows_of_k[k].append(i)
    for k, j in right.keys:
        cols_of_k[k].append(j)
    return rows_of_k, cols_of_k


# ---------------------------------------------------------------------- plan


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> MultiplyPlan:
    """Plan the outer-product multiply and predict both shuffles, per-task input and memory."""
    check_multiplicable(left, right)
    rows_of_k, cols_of_k = _by_inner(left, right)
    active = sorted(set(rows_of_k) & set(cols_of_k))
    num_tasks = max(1, len(active) if options.num_partitions is None
                    else min(len(active), options.num_partitions))
    ranks = {k: r for r, k in enumerate(active)}
    itemsize = result_itemsize(left, right)
    shell = result_shell(left, right)

    task_input = [0] * num_tasks
    slices: dict[tuple[int, int], int] = defaultdict(int)
    records = 0
    for k in active:
        task = ranks[k] % num_tasks
        for i in rows_of_k[k]:
            size = left.block_nbytes[(i, k)] + RECORD_OVERHEAD_BYTES
            task_input[task] += size
            slices[(task, k)] += size
        for j in cols_of_k[k]:
            size = right.block_nbytes[(k, j)] + RECORD_OVERHEAD_BYTES
            task_input[task] += size
            slices[(task, k)] += size
        records += len(rows_of_k[k]) + len(cols_of_k[k])
    largest_slice = [0] * num_tasks
    for (task, _), size in slices.items():
        largest_slice[task] = max(largest_slice[task], size)

    # Partial products, accumulated per (task, i, j); the final blocks per (i, j).
    partial_densities: dict[tuple[int, int, int], list] = defaultdict(list)
    for k in active:
        task = ranks[k] % num_tasks
        for i in rows_of_k[k]:
            a = block_density(left, (i, k))
            inner = left.block_shape(i, k)[1]
            for j in cols_of_k[k]:
                partial_densities[(task, i, j)].append(
                    product_density(a, block_density(right, (k, j)), inner))
    task_output = [0] * num_tasks
    final_densities: dict[tuple[int, int], list] = defaultdict(list)
    partial_bytes = 0
    for (task, i, j), densities in partial_densities.items():
        size = accumulated_nbytes(*shell.block_shape(i, j), itemsize, densities)
        task_output[task] += size
        partial_bytes += size + RECORD_OVERHEAD_BYTES
        final_densities[(i, j)].extend(densities)

    grid = result_grid(left, right, options.num_partitions)
    reduce_output = [0] * grid.num_partitions
    for (i, j), densities in final_densities.items():
        reduce_output[grid.partition_of(i, j)] += accumulated_nbytes(
            *shell.block_shape(i, j), itemsize, densities)

    memory = [task_output[t] + min(task_input[t], options.task_buffer_bytes) + largest_slice[t]
              for t in range(num_tasks)]
    shuffles = (
        ShuffleEstimate("join A columns and B rows on k", records, sum(task_input)),
        ShuffleEstimate("reduce partial products by (i, j)", len(partial_densities),
                        partial_bytes),
    )
    return MultiplyPlan(
        strategy="outer", left=left, right=right, shuffles=shuffles,
        max_task_input_bytes=max(task_input + [max(reduce_output, default=0)]),
        max_task_memory_bytes=max(memory + reduce_output),
        max_task_output_bytes=max(task_output + reduce_output),
        flops=dense_flops(left, right),
        **compute_estimate(left, right, lambda i, k, j: ranks[k] % num_tasks),
        details={"ranks": ranks, "num_tasks": num_tasks, "grid": grid})


# ---------------------------------------------------------------------- execute


def execute(plan: MultiplyPlan, left, right, options: MultiplyOptions):
    """Run an outer-product plan: join on k (shuffle 1), reduce by (i, j) (shuffle 2)."""
    from ..matrix import BlockMatrix

    ranks, num_tasks, grid = (plan.details[name] for name in ("ranks", "num_tasks", "grid"))
    routed = left.blocks.flatMap(partial(route_by_inner, side=LEFT, ranks=ranks)).union(
        right.blocks.flatMap(partial(route_by_inner, side=RIGHT, ranks=ranks)))
    delivered = routed.partitionBy(num_tasks, task_of_rank)
    partials = delivered.mapPartitions(
        partial(accumulate_task, budget_bytes=options.task_buffer_bytes))
    summed = sum_partials(partials, grid)
    return BlockMatrix.from_blocks(summed, plan.result_shape, left.rows_per_block,
                                   right.cols_per_block)


def task_of_rank(rank: int) -> int:
    """Partition function of the join: the rank of ``k`` (PySpark takes it modulo the tasks)."""
    return rank


def route_by_inner(item, side: int, ranks: dict):
    """Key a block by the rank of its inner index ``k``; blocks whose ``k`` meets nothing drop."""
    (row, col), block = item
    k, index = (col, row) if side == LEFT else (row, col)
    rank = ranks.get(k)
    return [] if rank is None else [(rank, (side, index, block))]


def _record_rank(record) -> int:
    return record[0]


def accumulate_task(records, budget_bytes: int):
    """Multiply a task's slices one ``k`` at a time; yield one partial block per ``(i, j)``."""
    acc: dict = {}
    for _, group in grouped_by_key(records, _record_rank, record_nbytes, budget_bytes):
        accumulate_slice(acc, group)
    return iter(acc.items())
