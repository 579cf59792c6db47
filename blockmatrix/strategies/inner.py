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

**Blocks in a file are read, not shuffled.** An operand read by ``from_hdf5`` lies on storage
every executor sees: its blocks are not routed through the shuffle at all. Each task is handed
the *references* of the blocks Spark's destinations give it (a broadcast of keys) and reads
them from the file when their ``k``-slice comes, so only what lives nowhere but in Spark moves
through the shuffle; with both operands in files nothing does (``num_mid_splits = 1``). The
plan counts the bytes read (:attr:`~blockmatrix.plan.MultiplyPlan.read_bytes`) beside the bytes
shuffled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import chain

from ..cost import RECORD_OVERHEAD_BYTES, TaskLoads, compute_estimate, result_itemsize
from ..layout import BlockLayout, check_multiplicable, result_layout
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ..planner import Destinations, layout_destinations, mid_split_stripes, result_grid
from ._common import (
    LEFT,
    RIGHT,
    FileReader,
    FileRef,
    accumulate_by_inner_index,
    file_sources,
    inner_and_outer,
    sum_partials,
)
from .registry import Strategy, register


@dataclass(frozen=True, kw_only=True)
class InnerPlan(MultiplyPlan):
    """Spark's plan: the destinations of every block, the inner dimension's stripes."""

    num_mid_splits: int = 1
    left_destinations: Destinations = field(default_factory=dict, repr=False, compare=False)
    right_destinations: Destinations = field(default_factory=dict, repr=False, compare=False)


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> InnerPlan:
    """Plan ``left @ right`` as Spark does, and predict its shuffle and memory."""
    check_multiplicable(left, right)
    s = options.num_mid_splits
    grid = result_grid(left, right, options.num_partitions)
    left_dest, right_dest = layout_destinations(left, right, grid, s)
    num_tasks = grid.num_partitions * s
    loads = TaskLoads(num_tasks)
    records = shuffled = read = 0
    for layout, destinations, side in ((left, left_dest, LEFT), (right, right_dest, RIGHT)):
        in_file = layout.source_kind == "file"
        for key, targets in destinations.items():
            size = layout.block_nbytes[key] + (0 if in_file else RECORD_OVERHEAD_BYTES)
            k, _ = inner_and_outer(key, side)
            for task in targets:
                loads.add(task, k, size)
            if in_file:
                read += size * len(targets)
            else:
                records += len(targets)
                shuffled += size * len(targets)

    itemsize = result_itemsize(left, right)
    shell = result_layout(left, right)
    task_output = [0] * num_tasks
    stripes = mid_split_stripes(left, right, s)
    for (i, j), residues in stripes.items():
        rows, cols = shell.block_shape(i, j)
        base = grid.partition_of(i, j) * s
        for r in residues:
            task_output[base + r] += rows * cols * itemsize
    partials = sum(len(residues) for residues in stripes.values())
    memory = loads.memory(task_output, options.task_buffer_bytes)
    shuffles = [ShuffleEstimate("route blocks to result partitions", records, shuffled)] \
        if records else []
    if s > 1:
        shuffles.append(ShuffleEstimate("sum partial blocks over mid splits", partials,
                                        sum(task_output) + partials * RECORD_OVERHEAD_BYTES))
    return InnerPlan(
        strategy="inner", left=left, right=right, grid=grid, num_tasks=num_tasks,
        shuffles=tuple(shuffles),
        max_task_input_bytes=max(loads.input, default=0),
        max_task_memory_bytes=max(memory, default=0),
        max_task_output_bytes=max(task_output, default=0),
        **compute_estimate(left, right, lambda i, k, j: grid.partition_of(i, j) * s + k % s),
        read_bytes=read, num_mid_splits=s, left_destinations=left_dest,
        right_destinations=right_dest)


def idle_core_variants(left: BlockLayout, right: BlockLayout,
                       options: MultiplyOptions) -> dict[str, MultiplyOptions]:
    """The inner dimension striped over idle cores, when the result has fewer tasks than cores.

    Offered to ``auto`` (Spark's ``numMidDimSplits``) only when no split was asked for.
    """
    tasks = result_grid(left, right, options.num_partitions).num_partitions
    if options.num_mid_splits != 1 or tasks >= options.cores:
        return {}
    s = -(-options.cores // tasks)
    return {f"inner, {s} mid splits": dataclasses.replace(options, num_mid_splits=s)}


def execute(plan: InnerPlan, left, right, options: MultiplyOptions):
    """Run a plan made by :func:`plan` on the operands' blocks RDDs; return the product's."""
    grid, s, num_tasks = plan.grid, plan.num_mid_splits, plan.num_tasks
    sc = left.context
    layouts = {LEFT: plan.left, RIGHT: plan.right}
    destinations = {LEFT: plan.left_destinations, RIGHT: plan.right_destinations}
    in_files = file_sources(layouts)
    routed = [blocks.flatMap(partial(route_block, side=side, num_tasks=num_tasks,
                                     destinations=sc.broadcast(destinations[side])))
              for side, blocks in ((LEFT, left), (RIGHT, right)) if side not in in_files]
    if routed:
        # One shuffle: the routing key is an int, which GridPartitioner maps to
        # key % num_tasks.
        delivered = (routed[0].union(routed[1]) if len(routed) == 2 else routed[0]) \
            .partitionBy(num_tasks, grid)
    else:
        delivered = sc.parallelize([[] for _ in range(num_tasks)], num_tasks).flatMap(_same)
    if in_files:
        refs = sc.broadcast(references_by_task(
            {side: destinations[side] for side in in_files}, num_tasks))
        products = delivered.mapPartitionsWithIndex(
            partial(multiply_with_file_blocks, references=refs, sources=in_files,
                    num_tasks=num_tasks, budget_bytes=options.task_buffer_bytes),
            preservesPartitioning=(s == 1))
    else:
        products = delivered.mapPartitions(
            partial(multiply_delivered, num_tasks=num_tasks,
                    budget_bytes=options.task_buffer_bytes),
            preservesPartitioning=(s == 1))
    if s > 1:
        products = sum_partials(products, grid)
    return products


def references_by_task(destinations: dict, num_tasks: int) -> dict[int, list]:
    """``{task: [(routing key, (side, index, block key)), ...]}`` of the file-backed sides.

    The records a shuffle would have delivered, with the block's key in place of the block.
    """
    out: dict[int, list] = {}
    for side, by_key in destinations.items():
        for key, targets in by_key.items():
            k, index = inner_and_outer(key, side)
            for task in targets:
                out.setdefault(task, []).append((k * num_tasks + task, (side, index, key)))
    return out


def multiply_with_file_blocks(task: int, records, references, sources: dict, num_tasks: int,
                              budget_bytes: int):
    """Multiply a task's delivered records and its file blocks, one ``k``-slice at a time.

    The file blocks travel as :class:`~._common.FileRef` records (no bytes against the spill
    budget) and are read only when their slice is multiplied, so the task holds at most one
    slice of them.
    """
    refs = ((key, (side, index, FileRef(block_key)))
            for key, (side, index, block_key) in references.value.get(task, ()))
    with FileReader(sources) as reader:
        return accumulate_by_inner_index(chain(refs, records),
                                         partial(_record_k, num_tasks=num_tasks),
                                         budget_bytes, reader=reader)


def _same(x):
    return x


def route_block(item, side: int, destinations, num_tasks: int):
    """Copies of one block for each destination task, keyed ``k * num_tasks + task``."""
    key, block = item
    k, index = inner_and_outer(key, side)
    targets: Mapping = destinations.value
    return [(k * num_tasks + task, (side, index, block)) for task in targets.get(key, ())]


def _record_k(record, num_tasks: int) -> int:
    return record[0] // num_tasks


def multiply_delivered(records, num_tasks: int, budget_bytes: int):
    """Multiply the blocks delivered to one task, one inner index ``k`` at a time."""
    return accumulate_by_inner_index(records, partial(_record_k, num_tasks=num_tasks),
                                     budget_bytes)


STRATEGY = register(Strategy(
    name="inner", plan=plan, execute=execute, plan_type=InnerPlan,
    summary="Spark's inner product: blocks routed only where they have a counterpart, "
            "one shuffle",
    variants=idle_core_variants))
