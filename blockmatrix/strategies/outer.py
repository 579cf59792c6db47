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

**Blocks in a file are read, not joined.** An operand read by ``from_hdf5`` is left out of
the first shuffle: the driver deals the references of its blocks to the join tasks as the plan
assigns their inner indices, and each task reads its blocks from the file when their ``k``
comes (:class:`~._common.FileReader`). The plan counts them as
:attr:`~blockmatrix.plan.MultiplyPlan.read_bytes`; with both operands in files the join moves
nothing and only the reduce shuffles.

The join task's memory is its accumulators (up to all of C for a dense product) plus one
``k``-slice of inputs; that is this formulation's weakness on dense inputs, and its strength on
block-sparse ones, where the partial products are few.

The size of product blocks is predicted by :mod:`blockmatrix.cost` from block sizes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from .. import held
from ..cost import (
    RECORD_OVERHEAD_BYTES,
    ProductModel,
    TaskLoads,
    grid_bytes,
    grouped_sums,
    inner_slices,
    result_blocks,
    task_seconds,
)
from ..layout import BlockLayout, check_multiplicable
from ..metrics import file_read_counter
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ..planner import result_grid
from ._common import (
    LEFT,
    RIGHT,
    FileRef,
    accumulate_by_inner_index,
    deliver,
    file_sources,
    inner_and_outer,
    multiply_with_file_refs,
    sum_partials,
)
from .registry import Strategy, register


@dataclass(frozen=True, kw_only=True)
class OuterPlan(MultiplyPlan):
    """The join's tasks: the rank of every inner index that meets something on both sides."""

    ranks: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    join_tasks: int = 1


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> OuterPlan:
    """Plan the outer-product multiply and predict both shuffles, per-task input and memory.

    The partial products of a task are sized with :class:`~blockmatrix.cost.PartialSums`, one
    numpy outer product per inner index: no Python loop over block triples.
    """
    check_multiplicable(left, right)
    a_slices, b_slices = inner_slices(left, axis=1), inner_slices(right, axis=0)
    active = sorted(set(a_slices) & set(b_slices))
    num_tasks = max(1, len(active) if options.num_partitions is None
                    else min(len(active), options.num_partitions))
    ranks = {k: r for r, k in enumerate(active)}

    # Every active k goes, with A's column k and B's row k, to task rank(k) mod num_tasks.
    # An operand in a file is read there by that task: its blocks carry no record overhead.
    ks = np.array(active, dtype=np.int64)
    counts = np.array([len(sl[k].index) for k in active for sl in (a_slices, b_slices)],
                      dtype=np.int64)
    slice_bytes = np.array([int(sl[k].nbytes.sum()) for k in active
                            for sl in (a_slices, b_slices)], dtype=np.int64)
    in_file = np.tile([left.source_kind == "file", right.source_kind == "file"], len(active))
    routed = slice_bytes + RECORD_OVERHEAD_BYTES * counts * ~in_file
    loads = TaskLoads(num_tasks)
    loads.deliver(np.repeat(np.arange(len(active)) % num_tasks, 2), np.repeat(ks, 2), routed)
    records = int(counts[~in_file].sum())
    read = int(slice_bytes[in_file].sum())

    # Partial products, accumulated per (task, i, j); the final blocks per (i, j).
    ak = left.key_array[1]
    task_of_block = np.array([ranks.get(int(k), 0) % num_tasks for k in ak], dtype=np.int64)
    sums = grouped_sums(left, right, task_of_block, num_tasks)
    loads.accumulate(np.arange(num_tasks), sums.group_bytes.astype(np.int64))
    partial_records = int(sums.group_blocks.sum())
    partial_bytes = int(sums.group_bytes.sum()) + RECORD_OVERHEAD_BYTES * partial_records

    grid = result_grid(left, right, options.num_partitions)
    reduce_output = grid_bytes(grid, *result_blocks(left, right))

    join = ShuffleEstimate(_join_name(left, right), records, int(routed[~in_file].sum()))
    shuffles = ((join,) if not (left.source_kind == right.source_kind == "file") else ()) + (
        ShuffleEstimate("reduce partial products by (i, j)", partial_records, partial_bytes),)
    model = ProductModel(left, right)
    by_inner = model.seconds_by_inner()
    k_tasks = np.array([ranks[k] % num_tasks if k in ranks else 0
                        for k in range(len(by_inner))], dtype=np.int64)
    return OuterPlan(
        strategy="outer", left=left, right=right, grid=grid,
        num_tasks=max(num_tasks, grid.num_partitions), shuffles=shuffles,
        max_task_input_bytes=max([loads.max_input()] + reduce_output),
        max_task_memory_bytes=max([loads.max_memory(options.task_buffer_bytes)]
                                  + reduce_output),
        max_task_output_bytes=max([loads.max_output()] + reduce_output),
        flops=model.flops, compute_seconds=model.total_seconds(),
        max_task_compute_seconds=task_seconds(by_inner, k_tasks), read_bytes=read,
        ranks=ranks, join_tasks=num_tasks)


def _join_name(left: BlockLayout, right: BlockLayout) -> str:
    """The join shuffle's name, saying which operand is read from its file instead."""
    read = [name for name, lay in (("A", left), ("B", right)) if lay.source_kind == "file"]
    return "join A columns and B rows on k" + (f" ({read[0]} read from its file)" if read else "")


def execute(plan: OuterPlan, left, right, options: MultiplyOptions):
    """Run an outer-product plan: join on k (shuffle 1), reduce by (i, j) (shuffle 2).

    An operand in a file is not joined: each join task reads the blocks of its own inner
    indices from the file (the references are dealt on the driver, from the plan).
    """
    sc = left.context
    in_files = file_sources({LEFT: plan.left, RIGHT: plan.right})
    routed = [blocks.flatMap(partial(route_by_inner, side=side, ranks=plan.ranks))
              for side, blocks in ((LEFT, left), (RIGHT, right)) if side not in in_files]
    delivered = deliver(sc, routed, plan.join_tasks, task_of_rank)
    if in_files:
        refs = held.broadcast(sc, file_refs_by_task(plan, in_files))
        partials = delivered.mapPartitionsWithIndex(
            partial(multiply_with_file_blocks, refs=refs, sources=in_files,
                    budget_bytes=options.task_buffer_bytes, counter=file_read_counter(sc)))
    else:
        partials = delivered.mapPartitions(
            partial(accumulate_by_inner_index, k_of=_record_rank,
                    budget_bytes=options.task_buffer_bytes))
    return sum_partials(partials, plan.grid)


def file_refs_by_task(plan: OuterPlan, in_files) -> dict[int, list]:
    """``{task: [(rank, side, key), ...]}``: the file blocks each join task reads.

    The blocks ``route_by_inner`` would send it: those of its inner indices that meet
    something on both sides.
    """
    out: dict[int, list] = {}
    layouts = {LEFT: plan.left, RIGHT: plan.right}
    for side in in_files:
        for key in layouts[side].keys:
            rank = plan.ranks.get(inner_and_outer(key, side)[0])
            if rank is not None:
                out.setdefault(rank % plan.join_tasks, []).append((rank, side, key))
    return out


def multiply_with_file_blocks(task: int, records, refs, sources: dict, budget_bytes: int,
                              counter=None):
    """A join task: its delivered records and its file blocks, one inner index at a time."""
    mine = ((rank, (side, inner_and_outer(key, side)[1], FileRef(key)))
            for rank, side, key in refs.value.get(task, ()))
    return multiply_with_file_refs(records, mine, sources, _record_rank, budget_bytes, counter)


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
