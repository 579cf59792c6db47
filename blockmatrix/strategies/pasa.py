"""The Marlin / PASA baseline (CRMM): replicate without checks, join, multiply, reduce.

Faithful to ``BlockMatrix.multiply`` of Marlin (PasaLab/marlin,
``edu/nju/pasalab/marlin/matrix/BlockMatrix.scala`` and ``rdd/MatrixMultPartitioner.scala``):

- with ``m, k, n`` the block rows of A, block columns of A and block columns of B, every A
  block ``(i, l)`` is emitted ``n`` times as ``BlockID(i, j, seq)`` and every B block
  ``(l, j)`` ``m`` times as ``BlockID(i, j, seq)``, ``seq = i * n * k + j * k + l``, **with no
  check that the counterpart exists** (the zero-block products the seed describes);
- both are partitioned by ``MatrixMultPartitioner(m, k, n)`` (``m * k * n`` partitions,
  partition = ``seq``) and joined on the BlockID (row, column and seq: one product per key);
  a block whose counterpart is missing is shuffled and then dropped by the join;
- the products are keyed ``(i, j)`` and summed by ``reduceByKey`` with a hash partitioner:
  the second shuffle. Marlin skips that step when ``k == 1`` (one product per key), and so
  do we.

In PySpark the join is one shuffle: the blocks are tagged with their side, ``union``-ed and
``partitionBy(m*k*n, MatrixMultPartitioner)``, then paired inside each partition. The reduce
uses PySpark's ``portable_hash`` over ``m * k * n`` partitions, which is what Scala's default
partitioner gives Marlin's ``reduceByKey`` when ``spark.default.parallelism`` is not set.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial

from .. import blocks as bk
from ..cost import (
    RECORD_OVERHEAD_BYTES,
    accumulated_nbytes,
    block_density,
    compute_estimate,
    product_density,
    result_itemsize,
)
from ..layout import BlockLayout, check_multiplicable, result_layout
from ..partitioner import MatrixMultPartitioner
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ..planner import result_grid
from ._common import LEFT, RIGHT
from .registry import Strategy, register


@dataclass(frozen=True, kw_only=True)
class PasaPlan(MultiplyPlan):
    """Marlin's partitioner of the join and the partitions of its ``reduceByKey``."""

    partitioner: MatrixMultPartitioner = field(repr=False)
    reduce_partitions: int


def grid_sizes(left: BlockLayout, right: BlockLayout) -> tuple[int, int, int]:
    """Marlin's ``(mSplitNum, kSplitNum, nSplitNum)``; an empty dimension counts as 1."""
    return (max(left.num_row_blocks, 1), max(left.num_col_blocks, 1),
            max(right.num_col_blocks, 1))


def portable_hash(key: tuple) -> int:
    """PySpark's ``portable_hash`` of a tuple of ints (the default ``reduceByKey`` partitioner).

    >>> portable_hash((0, 0)) % 7, portable_hash((1, 2)) % 7
    (4, 1)
    """
    h = 0x345678
    for x in key:
        h ^= hash(x)
        h *= 1000003
        h &= sys.maxsize
    h ^= len(key)
    return -2 if h == -1 else int(h)


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> PasaPlan:
    """Plan Marlin's multiply: replication counts, the join's and the reduce's volumes."""
    check_multiplicable(left, right)
    m, k, n = grid_sizes(left, right)
    part = MatrixMultPartitioner(m, k, n)
    tasks = part.num_partitions
    task_input = [0] * tasks
    for (i, ll), size in left.block_nbytes.items():
        for j in range(n):
            task_input[part.seq(i, j, ll)] += size + RECORD_OVERHEAD_BYTES
    for (ll, j), size in right.block_nbytes.items():
        for i in range(m):
            task_input[part.seq(i, j, ll)] += size + RECORD_OVERHEAD_BYTES
    replicated = ShuffleEstimate(
        "replicate A x n, B x m; join on MatrixMultPartitioner",
        len(left.block_nbytes) * n + len(right.block_nbytes) * m, sum(task_input))

    itemsize = result_itemsize(left, right)
    shell = result_layout(left, right)
    cols_of_row = right.cols_of_row
    task_output = [0] * tasks
    final: dict[tuple[int, int], list] = defaultdict(list)
    products = 0
    product_bytes = 0
    for i, ll in left.keys:
        a = block_density(left, (i, ll))
        inner = left.block_shape(i, ll)[1]
        for j in cols_of_row.get(ll, ()):
            density = product_density(a, block_density(right, (ll, j)), inner)
            size = accumulated_nbytes(*shell.block_shape(i, j), itemsize, [density])
            task_output[part.seq(i, j, ll)] += size
            product_bytes += size + RECORD_OVERHEAD_BYTES
            products += 1
            final[(i, j)].append(density)
    shuffles = [replicated]
    reduce_output = [0]
    if k > 1:
        shuffles.append(ShuffleEstimate("reduceByKey (i, j), hash partitioner", products,
                                        product_bytes))
        reduce_output = [0] * tasks
        for (i, j), densities in final.items():
            reduce_output[portable_hash((i, j)) % tasks] += accumulated_nbytes(
                *shell.block_shape(i, j), itemsize, densities)
    memory = [task_input[t] + task_output[t] for t in range(tasks)]
    return PasaPlan(
        strategy="pasa", left=left, right=right,
        grid=result_grid(left, right, options.num_partitions), num_tasks=tasks,
        shuffles=tuple(shuffles),
        max_task_input_bytes=max(task_input + reduce_output),
        max_task_memory_bytes=max(memory + reduce_output),
        max_task_output_bytes=max(task_output + reduce_output),
        **compute_estimate(left, right, lambda i, k, j: (i, k, j)),  # a task per triple
        partitioner=part, reduce_partitions=tasks)


def execute(plan: PasaPlan, left, right, options: MultiplyOptions):
    """Run Marlin's multiply: one join shuffle, then ``reduceByKey`` (when ``k > 1``)."""
    part = plan.partitioner
    emitted = left.flatMap(partial(emit_left, n=part.n)).union(
        right.flatMap(partial(emit_right, m=part.m)))
    joined = emitted.partitionBy(part.num_partitions, part)
    products = joined.mapPartitions(join_and_multiply)
    if part.k > 1:
        products = products.reduceByKey(bk.add, plan.reduce_partitions)
    return products


def emit_left(item, n: int):
    """Marlin's ``thisEmitBlocks``: A block ``(i, l)`` once per B block column ``j``."""
    (i, ll), block = item
    return [((i, j, ll), (LEFT, block)) for j in range(n)]


def emit_right(item, m: int):
    """Marlin's ``otherEmitBlocks``: B block ``(l, j)`` once per A block row ``i``."""
    (ll, j), block = item
    return [((i, j, ll), (RIGHT, block)) for i in range(m)]


def join_and_multiply(records):
    """The join inside one partition: every A x B pair with the same ``(i, j, l)`` multiplied.

    A key with blocks on one side only yields nothing (the join drops it). Pairs of duplicate
    blocks (the same index stored twice) are summed into one product.
    """
    sides: dict = defaultdict(lambda: ([], []))
    for key, (side, block) in records:
        sides[key][side].append(block)
    for (i, j, _), (lefts, rights) in sides.items():
        product = None
        for a in lefts:
            for b in rights:
                product = bk.matmul_accumulate(product, a, b)
        if product is not None:
            yield (i, j), product


STRATEGY = register(Strategy(
    name="pasa", plan=plan, execute=execute, plan_type=PasaPlan,
    summary="Marlin/PASA baseline: replicate without counterpart checks, join on "
            "MatrixMultPartitioner, reduceByKey: two shuffles"))
