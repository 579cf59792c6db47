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

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from ..cost import RECORD_OVERHEAD_BYTES, TaskLoads, compute_estimate, result_itemsize
from ..layout import BlockLayout, check_multiplicable, result_layout
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ..planner import Destinations, layout_destinations, mid_split_stripes, result_grid
from ._common import LEFT, RIGHT, accumulate_by_inner_index, inner_and_outer, sum_partials
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
    records = 0
    for layout, destinations, side in ((left, left_dest, LEFT), (right, right_dest, RIGHT)):
        for key, targets in destinations.items():
            size = layout.block_nbytes[key] + RECORD_OVERHEAD_BYTES
            k, _ = inner_and_outer(key, side)
            for task in targets:
                loads.add(task, k, size)
            records += len(targets)

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
    shuffles = [ShuffleEstimate("route blocks to result partitions", records, sum(loads.input))]
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
        num_mid_splits=s, left_destinations=left_dest, right_destinations=right_dest)


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
    grid, s = plan.grid, plan.num_mid_splits
    num_tasks = plan.num_tasks
    sc = left.context
    left_dest = sc.broadcast(plan.left_destinations)
    right_dest = sc.broadcast(plan.right_destinations)
    routed = left.flatMap(partial(route_block, side=LEFT, destinations=left_dest,
                                  num_tasks=num_tasks)).union(
        right.flatMap(partial(route_block, side=RIGHT, destinations=right_dest,
                              num_tasks=num_tasks)))
    # One shuffle: the routing key is an int, which GridPartitioner maps to key % num_tasks.
    delivered = routed.partitionBy(num_tasks, grid)
    products = delivered.mapPartitions(
        partial(multiply_delivered, num_tasks=num_tasks, budget_bytes=options.task_buffer_bytes),
        preservesPartitioning=(s == 1))
    if s > 1:
        products = sum_partials(products, grid)
    return products


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
