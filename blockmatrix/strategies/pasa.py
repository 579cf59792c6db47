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

**Blocks in a file are read, not replicated.** An operand read by ``from_hdf5`` is left out of
the join shuffle: the task of product ``(i, j, l)`` (its partition index is ``seq``) reads its
block from the file once the other operand's block of that product is there, so a block is
read once per counterpart (:attr:`~blockmatrix.plan.MultiplyPlan.read_bytes`). With both
operands in files the join moves nothing.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from itertools import chain

import numpy as np

from .. import blocks as bk
from .. import held
from ..cost import (
    INDEX_BYTES,
    RECORD_OVERHEAD_BYTES,
    ProductModel,
    inner_slices,
    result_blocks,
    result_itemsize,
)
from ..layout import BlockLayout, check_multiplicable
from ..metrics import file_read_counter
from ..partitioner import MatrixMultPartitioner
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ..planner import result_grid
from ._common import LEFT, RIGHT, FileReader, FileRef, deliver, file_sources, resolved
from .registry import Strategy, register


@dataclass(frozen=True, kw_only=True)
class PasaPlan(MultiplyPlan):
    """Marlin's partitioner of the join and the partitions of its ``reduceByKey``."""

    partitioner: MatrixMultPartitioner = field(repr=False)
    reduce_partitions: int

    @property
    def result_partition_bytes(self) -> list[int]:
        """The product is in the join's or the reduce's partitions (a few blocks each)."""
        return [self.max_task_output_bytes]


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
    """Plan Marlin's multiply: replication counts, the join's and the reduce's volumes.

    Marlin runs a task per block triple; the plan visits each inner index ``l`` once and
    sizes its triples with numpy outer products (no Python loop over triples).
    """
    check_multiplicable(left, right)
    m, k, n = grid_sizes(left, right)
    part = MatrixMultPartitioner(m, k, n)
    tasks = part.num_partitions
    a_sizes, b_sizes = left.key_array[2], right.key_array[2]
    a_in_file, b_in_file = left.source_kind == "file", right.source_kind == "file"
    replicated = ShuffleEstimate(
        _join_name(a_in_file, b_in_file),
        len(a_sizes) * n * (not a_in_file) + len(b_sizes) * m * (not b_in_file),
        int((a_sizes + RECORD_OVERHEAD_BYTES).sum()) * n * (not a_in_file)
        + int((b_sizes + RECORD_OVERHEAD_BYTES).sum()) * m * (not b_in_file))
    a_over = 0 if a_in_file else RECORD_OVERHEAD_BYTES
    b_over = 0 if b_in_file else RECORD_OVERHEAD_BYTES

    a_slices, b_slices = inner_slices(left, axis=1), inner_slices(right, axis=0)
    read = 0
    itemsize = result_itemsize(left, right)
    rows_i = left.extents(np.arange(m), 0)
    cols_j = right.extents(np.arange(n), 1)
    products = product_bytes = 0
    max_input = max_output = max_memory = 0
    for ll in range(k):
        a, b = a_slices.get(ll), b_slices.get(ll)
        # Task (i, j, l) receives A (i, l) and B (l, j) whether or not the other exists.
        a_in = _sizes_on(a, m) + a_over * _present_on(a, m)
        b_in = _sizes_on(b, n) + b_over * _present_on(b, n)
        max_input = max(max_input, int(a_in.max(initial=0) + b_in.max(initial=0)))
        if a is None or b is None:
            continue
        products += len(a.index) * len(b.index)
        # A block in a file is read by each task that pairs it (one per counterpart).
        read += int(a.nbytes.sum()) * len(b.index) * a_in_file \
            + int(b.nbytes.sum()) * len(a.index) * b_in_file
        if np.isnan(a.fill).all() and np.isnan(b.fill).all():
            # Dense products: a product's bytes depend on its block's extents only, so
            # every sum and maximum runs over the (few) distinct extents.
            r, c = rows_i[a.index], cols_j[b.index]
            product_bytes += int(r.sum() * c.sum() * itemsize) \
                + RECORD_OVERHEAD_BYTES * len(r) * len(c)
            max_output = max(max_output, int(r.max() * c.max() * itemsize))
            holds = (_max_by(a_in[a.index], r)[:, None] + _max_by(b_in[b.index], c)[None, :]
                     + np.unique(r)[:, None] * np.unique(c)[None, :] * itemsize)
        else:
            sizes = _product_nbytes(a, b, rows_i, cols_j, itemsize)
            product_bytes += int(sizes.sum()) + RECORD_OVERHEAD_BYTES * sizes.size
            max_output = max(max_output, int(sizes.max()))
            holds = a_in[a.index][:, None] + b_in[b.index][None, :] + sizes
        max_memory = max(max_memory, int(holds.max()))
    shuffles = [] if a_in_file and b_in_file else [replicated]
    reduce_output = [0]
    if k > 1:
        shuffles.append(ShuffleEstimate("reduceByKey (i, j), hash partitioner", products,
                                        product_bytes))
        # m k n reduce partitions, few of them used: sum per partition that gets a block.
        received: dict[int, int] = defaultdict(int)
        for i, j, size in zip(*result_blocks(left, right), strict=True):
            received[portable_hash((int(i), int(j))) % tasks] += int(size)
        reduce_output = [max(received.values(), default=0)]
    model = ProductModel(left, right)
    return PasaPlan(
        strategy="pasa", left=left, right=right,
        grid=result_grid(left, right, options.num_partitions), num_tasks=tasks,
        shuffles=tuple(shuffles),
        max_task_input_bytes=max([max_input] + reduce_output),
        max_task_memory_bytes=max([max_memory, max_input] + reduce_output),
        max_task_output_bytes=max([max_output] + reduce_output),
        flops=model.flops, compute_seconds=model.total_seconds(),
        max_task_compute_seconds=model.max_product_seconds(),  # a task per triple
        read_bytes=read, partitioner=part, reduce_partitions=tasks)


def _join_name(a_in_file: bool, b_in_file: bool) -> str:
    """The join shuffle's name: which operands are replicated, which read from their file."""
    sent = [what for what, in_file in (("A x n", a_in_file), ("B x m", b_in_file))
            if not in_file]
    read = [what for what, in_file in (("A", a_in_file), ("B", b_in_file)) if in_file]
    return (f"replicate {', '.join(sent)}; join on MatrixMultPartitioner"
            + (f" ({read[0]} read from its file)" if read else ""))


def _max_by(values: np.ndarray, extents: np.ndarray) -> np.ndarray:
    """The largest of ``values`` for each distinct extent, in ``np.unique(extents)`` order."""
    distinct, where = np.unique(extents, return_inverse=True)
    out = np.full(len(distinct), np.iinfo(np.int64).min)
    np.maximum.at(out, where, values)
    return out


def _sizes_on(sl, length: int) -> np.ndarray:
    """Bytes of a slice's blocks spread over all ``length`` indices (0 where none)."""
    out = np.zeros(length, dtype=np.int64)
    if sl is not None:
        out[sl.index] = sl.nbytes
    return out


def _present_on(sl, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=np.int64)
    if sl is not None:
        out[sl.index] = 1
    return out


def _product_nbytes(a, b, rows_i, cols_j, itemsize: int) -> np.ndarray:
    """Bytes of every product ``A[i, l] @ B[l, j]`` of two inner slices (rows x cols)."""
    r, c = rows_i[a.index][:, None], cols_j[b.index][None, :]
    dense = np.isnan(a.fill)[:, None] | np.isnan(b.fill)[None, :]
    fill = 1.0 - (1.0 - np.nan_to_num(a.fill)[:, None] * np.nan_to_num(b.fill)[None, :]) \
        ** a.extent
    nnz = np.round(r * c * fill)
    return np.where(dense, r * c * itemsize,
                    nnz * (itemsize + INDEX_BYTES) + (r + 1) * INDEX_BYTES).astype(np.int64)


def execute(plan: PasaPlan, left, right, options: MultiplyOptions):
    """Run Marlin's multiply: one join shuffle, then ``reduceByKey`` (when ``k > 1``).

    An operand in a file is not replicated: the task of product ``(i, j, l)`` reads its block
    from the file, when the other operand's block of that product is there.
    """
    part = plan.partitioner
    sc = left.context
    in_files = file_sources({LEFT: plan.left, RIGHT: plan.right})
    emitted = [blocks.flatMap(emit) for side, blocks, emit in (
        (LEFT, left, partial(emit_left, n=part.n)), (RIGHT, right, partial(emit_right, m=part.m)))
        if side not in in_files]
    joined = deliver(sc, emitted, part.num_partitions, part)
    if in_files:
        keys = held.broadcast(sc, {side: frozenset(lay.keys) for side, lay in
                                   ((LEFT, plan.left), (RIGHT, plan.right)) if side in in_files})
        products = joined.mapPartitionsWithIndex(
            partial(join_with_file_blocks, keys=keys, sources=in_files, m=part.m, k=part.k,
                    n=part.n, counter=file_read_counter(sc)))
    else:
        products = joined.mapPartitions(join_and_multiply)
    if part.k > 1:
        products = products.reduceByKey(bk.add, plan.reduce_partitions)
    return products


def join_with_file_blocks(task: int, records, keys, sources: dict, m: int, k: int, n: int,
                          counter=None):
    """The join of task ``seq = i n k + j k + l`` with its file blocks ``A(i, l)``, ``B(l, j)``.

    The file blocks join as :class:`~._common.FileRef` records and are read only when paired.
    """
    ll, j, i = task % k, task // k % n, task // (n * k)
    present = keys.value
    refs = [((i, j, ll), (side, FileRef(key))) for side, key in ((LEFT, (i, ll)), (RIGHT, (ll, j)))
            if key in present.get(side, ())]
    with FileReader(sources, counter) as reader:
        return list(join_and_multiply(chain(refs, records), reader))


def emit_left(item, n: int):
    """Marlin's ``thisEmitBlocks``: A block ``(i, l)`` once per B block column ``j``."""
    (i, ll), block = item
    return [((i, j, ll), (LEFT, block)) for j in range(n)]


def emit_right(item, m: int):
    """Marlin's ``otherEmitBlocks``: B block ``(l, j)`` once per A block row ``i``."""
    (ll, j), block = item
    return [((i, j, ll), (RIGHT, block)) for i in range(m)]


def join_and_multiply(records, reader: FileReader | None = None):
    """The join inside one partition: every A x B pair with the same ``(i, j, l)`` multiplied.

    A key with blocks on one side only yields nothing (the join drops it). Pairs of duplicate
    blocks (the same index stored twice) are summed into one product. :class:`FileRef` blocks
    are read with ``reader`` once they have a counterpart.
    """
    sides: dict = defaultdict(lambda: ([], []))
    for key, (side, block) in records:
        sides[key][side].append(block)
    for (i, j, _), (lefts, rights) in sides.items():
        if reader is not None and lefts and rights:
            lefts, rights = ([resolved(b, side, reader) for b in blocks]
                             for side, blocks in ((LEFT, lefts), (RIGHT, rights)))
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
