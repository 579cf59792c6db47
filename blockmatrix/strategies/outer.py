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
   (:func:`~blockmatrix.strategies._common.sum_partials`; ``reduceByKey``'s map-side combine
   would find nothing to combine): the second shuffle, of at most ``tasks x |C|`` blocks.

The join task's memory is its accumulators (up to all of C for a dense product) plus one
``k``-slice of inputs; that is this formulation's weakness on dense inputs, and its strength on
block-sparse ones, where the partial products are few.

The size of product blocks is predicted by :mod:`blockmatrix.cost` from block sizes alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial

from ..cost import (
    RECORD_OVERHEAD_BYTES,
    TaskLoads,
    accumulated_nbytes,
    block_density,
    compute_estimate,
    product_density,
    result_itemsize,
)
from ..layout import BlockLayout, check_multiplicable, result_layout
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ..planner import result_grid
from ._common import LEFT, RIGHT, accumulate_by_inner_index, inner_and_outer, sum_partials
from .registry import Strategy, register


@dataclass(frozen=True, kw_only=True)
class OuterPlan(MultiplyPlan):
    """The join's tasks: the rank of every inner index that meets something on both sides."""

    ranks: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    join_tasks: int = 1


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> OuterPlan:
    """Plan the outer-product multiply and predict both shuffles, per-task input and memory."""
    check_multiplicable(left, right)
    rows_of_k, cols_of_k = left.rows_of_col, right.cols_of_row
    active = sorted(set(rows_of_k) & set(cols_of_k))
    num_tasks = max(1, len(active) if options.num_partitions is None
                    else min(len(active), options.num_partitions))
    ranks = {k: r for r, k in enumerate(active)}
    itemsize = result_itemsize(left, right)
    shell = result_layout(left, right)

    loads = TaskLoads(num_tasks)
    records = 0
    for k in active:
        task = ranks[k] % num_tasks
        for i in rows_of_k[k]:
            loads.add(task, k, left.block_nbytes[(i, k)] + RECORD_OVERHEAD_BYTES)
        for j in cols_of_k[k]:
            loads.add(task, k, right.block_nbytes[(k, j)] + RECORD_OVERHEAD_BYTES)
        records += len(rows_of_k[k]) + len(cols_of_k[k])

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

    memory = loads.memory(task_output, options.task_buffer_bytes)
    shuffles = (
        ShuffleEstimate("join A columns and B rows on k", records, sum(loads.input)),
        ShuffleEstimate("reduce partial products by (i, j)", len(partial_densities),
                        partial_bytes),
    )
    return OuterPlan(
        strategy="outer", left=left, right=right, grid=grid,
        num_tasks=max(num_tasks, grid.num_partitions), shuffles=shuffles,
        max_task_input_bytes=max(loads.input + [max(reduce_output, default=0)]),
        max_task_memory_bytes=max(memory + reduce_output),
        max_task_output_bytes=max(task_output + reduce_output),
        **compute_estimate(left, right, lambda i, k, j: ranks[k] % num_tasks),
        ranks=ranks, join_tasks=num_tasks)


def execute(plan: OuterPlan, left, right, options: MultiplyOptions):
    """Run an outer-product plan: join on k (shuffle 1), reduce by (i, j) (shuffle 2)."""
    routed = left.flatMap(partial(route_by_inner, side=LEFT, ranks=plan.ranks)).union(
        right.flatMap(partial(route_by_inner, side=RIGHT, ranks=plan.ranks)))
    delivered = routed.partitionBy(plan.join_tasks, task_of_rank)
    partials = delivered.mapPartitions(
        partial(accumulate_by_inner_index, k_of=_record_rank,
                budget_bytes=options.task_buffer_bytes))
    return sum_partials(partials, plan.grid)


def task_of_rank(rank: int) -> int:
    """Partition function of the join: the rank of ``k`` (PySpark takes it modulo the tasks)."""
    return rank


def route_by_inner(item, side: int, ranks: dict):
    """Key a block by the rank of its inner index ``k``; blocks whose ``k`` meets nothing drop."""
    key, block = item
    k, index = inner_and_outer(key, side)
    rank = ranks.get(k)
    return [] if rank is None else [(rank, (side, index, block))]


def _record_rank(record) -> int:
    return record[0]


STRATEGY = register(Strategy(
    name="outer", plan=plan, execute=execute, plan_type=OuterPlan,
    summary="outer product: join A columns and B rows on k, partial products summed per "
            "task, reduce by (i, j): two shuffles"))
