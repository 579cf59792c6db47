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
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import scipy.sparse as sp

from .. import held
from ..cost import (
    RECORD_OVERHEAD_BYTES,
    ProductModel,
    TaskLoads,
    result_itemsize,
    task_seconds,
)
from ..layout import BlockLayout, check_multiplicable
from ..metrics import file_read_counter
from ..partitioner import GridPartitioner
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ..planner import Destinations, result_grid
from ..spilled import spill_partition
from ..units import format_bytes
from ._common import (
    LEFT,
    RIGHT,
    FileRef,
    accumulate_by_inner_index,
    deliver,
    file_sources,
    inner_and_outer,
    multiply_with_file_refs,
    reference_folder,
    sum_partials,
)
from .registry import Strategy, register


@dataclass(frozen=True, kw_only=True)
class InnerPlan(MultiplyPlan):
    """Spark's plan, kept compact: which partitions of the result grid meet each ``k``.

    A block ``(i, k)`` of A goes to the result partitions of block row ``i`` in the partition
    columns that B's block row ``k`` reaches (:attr:`col_parts_of_inner`), and B's ``(k, j)``
    to the partition rows A's block column ``k`` reaches (:attr:`row_parts_of_inner`): the
    destinations of Spark's ``simulateMultiply`` in O(inner blocks x partitions) instead of
    O(blocks x destinations), which is what the tasks receive.
    """

    num_mid_splits: int = 1
    by_reference: bool = False
    row_parts_of_inner: dict = field(default_factory=dict, repr=False, compare=False)
    col_parts_of_inner: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def routing(self) -> Routing:
        """What a task needs to compute any block's destinations."""
        return Routing(self.grid, self.num_mid_splits, self.row_parts_of_inner,
                       self.col_parts_of_inner)

    @property
    def note(self) -> str:
        """What goes by reference, when the plan shuffles blocks by reference."""
        if not self.by_reference:
            return ""
        return (f"shuffled by reference: {format_bytes(self.spilled_bytes)} of blocks written "
                f"once to files, {format_bytes(self.read_bytes)} read by the tasks; only "
                f"references cross Spark's shuffle")

    @property
    def left_destinations(self) -> Destinations:
        """Spark's destinations of every A block (computed on demand: they can be many)."""
        return {key: frozenset(self.routing.targets(key, LEFT)) for key in self.left.keys}

    @property
    def right_destinations(self) -> Destinations:
        """Spark's destinations of every B block."""
        return {key: frozenset(self.routing.targets(key, RIGHT)) for key in self.right.keys}


@dataclass(frozen=True)
class Routing:
    """The destinations of a block, from the grid and the partitions meeting each ``k``."""

    grid: GridPartitioner
    num_mid_splits: int
    row_parts_of_inner: dict
    col_parts_of_inner: dict

    def targets(self, key, side: int) -> list[int]:
        """Tasks block ``key`` of ``side`` goes to (as ``simulate_multiply`` gives them)."""
        g, s = self.grid, self.num_mid_splits
        if side == LEFT:
            i, k = key
            row_part = i // g.rows_per_part
            return [(row_part + c * g.row_partitions) * s + k % s
                    for c in self.col_parts_of_inner.get(k, ())]
        k, j = key
        col_part = j // g.cols_per_part
        return [(r + col_part * g.row_partitions) * s + k % s
                for r in self.row_parts_of_inner.get(k, ())]

    def keys_by_part(self, keys, side: int) -> dict[int, list]:
        """An operand's keys by partition row (A) or partition column (B) of the grid."""
        out: dict[int, list] = {}
        for i, j in keys:
            part = i // self.grid.rows_per_part if side == LEFT else j // self.grid.cols_per_part
            out.setdefault(part, []).append((i, j))
        return out

    def keys_for_task(self, task: int, keys_by_part: dict) -> list[tuple[int, tuple]]:
        """``(side, key)`` of the blocks Spark's destinations send to ``task``.

        Task ``((r + c R) s + sigma)`` gets A's blocks ``(i, k)`` of partition row ``r`` with
        ``k % s == sigma`` whose ``k`` meets partition column ``c``, and B's likewise.
        """
        s, R = self.num_mid_splits, self.grid.row_partitions
        sigma, cell = task % s, task // s
        r, c = cell % R, cell // R
        meets = {LEFT: (self.col_parts_of_inner, c, 1), RIGHT: (self.row_parts_of_inner, r, 0)}
        out = []
        for side, by_part in keys_by_part.items():
            parts_of_inner, wanted, k_axis = meets[side]
            for key in by_part.get(r if side == LEFT else c, ()):
                k = key[k_axis]
                if k % s == sigma and wanted in parts_of_inner.get(k, ()):
                    out.append((side, key))
        return out


def _meets(inner, parts, size: tuple[int, int]) -> sp.csr_matrix:
    """0/1 matrix: inner index ``k`` meets partition row (or column) ``p``."""
    m = sp.csr_matrix((np.ones(len(inner)), (inner, parts)), shape=size)
    m.data[:] = 1.0  # duplicates were summed
    return m


def _by_row(m: sp.csr_matrix) -> dict[int, tuple[int, ...]]:
    return {k: tuple(m.indices[m.indptr[k]:m.indptr[k + 1]].tolist())
            for k in range(m.shape[0]) if m.indptr[k + 1] > m.indptr[k]}


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> InnerPlan:
    """Plan ``left @ right`` as Spark does, and predict its shuffle and memory.

    Every count is a sum over stored blocks or a sparse product of block patterns (the
    destinations are never listed one by one), so planning takes time linear in the stored
    blocks plus the result grid.
    """
    check_multiplicable(left, right)
    s = options.num_mid_splits
    grid = result_grid(left, right, options.num_partitions)
    R, C = grid.row_partitions, grid.col_partitions
    num_tasks = grid.num_partitions * s
    inner = max(left.num_col_blocks, 1)
    ai, ak, a_size = left.key_array
    bk, bj, b_size = right.key_array
    a_row_part, b_col_part = ai // grid.rows_per_part, bj // grid.cols_per_part
    meets_a = _meets(ak, a_row_part, (inner, R))  # A's column k reaches partition row r
    meets_b = _meets(bk, b_col_part, (inner, C))  # B's row k reaches partition column c
    a_in_file, b_in_file = left.source_kind == "file", right.source_kind == "file"
    a_w = a_size + (0 if a_in_file else RECORD_OVERHEAD_BYTES)
    b_w = b_size + (0 if b_in_file else RECORD_OVERHEAD_BYTES)
    a_copies = np.diff(meets_b.indptr)[ak]  # destinations of each A block
    b_copies = np.diff(meets_a.indptr)[bk]
    moves = [_side_moves(a_size, a_copies, a_in_file, options.by_reference),
             _side_moves(b_size, b_copies, b_in_file, options.by_reference)]
    records, shuffled, read, spilled = (sum(values) for values in zip(*moves, strict=True))
    itemsize = result_itemsize(left, right)
    rows_i = left.extents(np.arange(max(left.num_row_blocks, 1)), 0)
    cols_j = right.extents(np.arange(max(right.num_col_blocks, 1)), 1)
    loads = TaskLoads(num_tasks)
    busiest = []
    partials = 0
    model = ProductModel(left, right)
    pattern_a = _meets(ai, ak, (max(left.num_row_blocks, 1), inner))
    pattern_b = _meets(bk, bj, (inner, max(right.num_col_blocks, 1)))
    task_grid = (np.arange(R)[:, None] + np.arange(C)[None, :] * R) * s  # task of (r, c), sigma 0
    for sigma in range(s):
        stripe = (np.arange(inner) % s) == sigma
        keep = sp.diags(stripe.astype(float))
        a_sel, b_sel = ak % s == sigma, bk % s == sigma
        a_weights = sp.csr_matrix((a_w[a_sel], (a_row_part[a_sel], ak[a_sel])), shape=(R, inner))
        b_weights = sp.csr_matrix((b_w[b_sel], (bk[b_sel], b_col_part[b_sel])), shape=(inner, C))
        meets_b_s, meets_a_s = keep @ meets_b, keep @ meets_a
        tasks = (task_grid + sigma).ravel(order="C")
        received = (a_weights @ meets_b_s).toarray() + (meets_a_s.T @ b_weights).toarray()
        loads.receive(tasks, received.ravel(order="C"),
                      _largest_slices(a_weights, meets_b_s, meets_a_s, b_weights)
                      .ravel(order="C"))
        # The result blocks this stripe holds a partial of, and their (dense) bytes.
        out = sp.coo_matrix((pattern_a @ keep) @ pattern_b)
        out_tasks = (out.row // grid.rows_per_part + (out.col // grid.cols_per_part) * R) * s \
            + sigma
        loads.accumulate(out_tasks, rows_i[out.row] * cols_j[out.col] * itemsize)
        partials += out.nnz
        seconds = model.seconds_by_result(stripe)
        busiest.append(((seconds.row // grid.rows_per_part
                         + (seconds.col // grid.cols_per_part) * R) * s + sigma, seconds.data))
    by_reference = options.by_reference and not (a_in_file and b_in_file)
    shuffles = [] if a_in_file and b_in_file else [
        ShuffleEstimate("route block references to result partitions" if by_reference
                        else "route blocks to result partitions", records, shuffled)]
    if s > 1:
        shuffles.append(ShuffleEstimate("sum partial blocks over mid splits", partials,
                                        int(loads.output.sum()) + partials * RECORD_OVERHEAD_BYTES))
    tasks_of, seconds_of = (np.concatenate(parts) for parts in zip(*busiest, strict=True))
    return InnerPlan(
        strategy="inner", left=left, right=right, grid=grid, num_tasks=num_tasks,
        shuffles=tuple(shuffles),
        max_task_input_bytes=loads.max_input(),
        max_task_memory_bytes=loads.max_memory(options.task_buffer_bytes),
        max_task_output_bytes=loads.max_output(),
        flops=model.flops, compute_seconds=model.total_seconds(),
        max_task_compute_seconds=task_seconds(seconds_of, tasks_of.astype(np.int64)),
        read_bytes=read, spilled_bytes=spilled, num_mid_splits=s, by_reference=by_reference,
        row_parts_of_inner=_by_row(meets_a), col_parts_of_inner=_by_row(meets_b))


def _side_moves(sizes: np.ndarray, copies: np.ndarray, in_file: bool,
                by_reference: bool) -> tuple[int, int, int, int]:
    """``(records, bytes shuffled, bytes read, bytes spilled)`` of one operand's blocks.

    A block in a file is read by each task it goes to; one shuffled by reference
    (:mod:`blockmatrix.spilled`) is written once and read by each task, and only a reference
    of at most :data:`~blockmatrix.cost.RECORD_OVERHEAD_BYTES` is shuffled per copy.
    """
    copied = int((sizes * copies).sum())
    n = int(copies.sum())
    if in_file:
        return 0, 0, copied, 0
    if by_reference:
        return n, n * RECORD_OVERHEAD_BYTES, copied, int(sizes.sum())
    return n, copied + n * RECORD_OVERHEAD_BYTES, 0, 0


def _largest_slices(a_weights, meets_b, meets_a, b_weights, budget: int = 1 << 24) -> np.ndarray:
    """Bytes of the largest k-slice every task ``(r, c)`` receives: max over k, in chunks.

    Task ``(r, c)`` receives for ``k`` the A blocks of partition row ``r`` in column ``k`` (if
    B's row ``k`` reaches column ``c``) and the B blocks of partition column ``c`` in row
    ``k`` (if A's column ``k`` reaches row ``r``).
    """
    R, inner = a_weights.shape
    C = b_weights.shape[1]
    out = np.zeros((R, C))
    step = max(1, budget // max(1, R * C))
    for start in range(0, inner, step):
        ks = slice(start, min(inner, start + step))
        a = a_weights[:, ks].toarray()  # R x k
        slice_bytes = (a[:, :, None] * meets_b[ks].toarray()[None, :, :]
                       + meets_a[ks].toarray().T[:, :, None] * b_weights[ks].toarray()[None])
        np.maximum(out, slice_bytes.max(axis=1, initial=0), out=out)
    return out


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


def variants(left: BlockLayout, right: BlockLayout,
             options: MultiplyOptions) -> dict[str, MultiplyOptions]:
    """What ``auto`` weighs beside the plain plan: idle-core splits, and each by reference.

    The by-reference variants (:mod:`blockmatrix.spilled`) are offered when some operand's
    blocks go through the shuffle and there is a folder every task reads
    (``options.reference_parent``).
    """
    offered = idle_core_variants(left, right, options)
    both_in_files = left.source_kind == right.source_kind == "file"
    if options.reference_parent is None or options.by_reference or both_in_files:
        return offered
    plain = {"inner": options, **offered}
    return {**offered, **{f"{label}, by reference": dataclasses.replace(o, by_reference=True)
                          for label, o in plain.items()}}


def execute(plan: InnerPlan, left, right, options: MultiplyOptions):
    """Run a plan made by :func:`plan` on the operands' blocks RDDs; return the product's."""
    grid, s, num_tasks = plan.grid, plan.num_mid_splits, plan.num_tasks
    sc = left.context
    folder = reference_folder(sc, options) if plan.by_reference else None
    layouts = {LEFT: plan.left, RIGHT: plan.right}
    in_files = file_sources(layouts)
    routing = held.broadcast(sc, plan.routing)
    if folder is not None:  # each block written once; only references go through the shuffle
        left, right = (blocks.mapPartitionsWithIndex(partial(spill_partition, folder=folder))
                       for blocks in (left, right))
    routed = [blocks.flatMap(partial(route_block, side=side, num_tasks=num_tasks,
                                     routing=routing))
              for side, blocks in ((LEFT, left), (RIGHT, right)) if side not in in_files]
    # One shuffle: the routing key is an int, which GridPartitioner maps to key % num_tasks.
    delivered = deliver(sc, routed, num_tasks, grid)
    if in_files:
        keys = held.broadcast(sc, {side: plan.routing.keys_by_part(layouts[side].keys, side)
                             for side in in_files})
        products = delivered.mapPartitionsWithIndex(
            partial(multiply_with_file_blocks, keys=keys, routing=routing, sources=in_files,
                    num_tasks=num_tasks, budget_bytes=options.task_buffer_bytes,
                    counter=file_read_counter(sc)),
            preservesPartitioning=(s == 1))
    else:
        products = delivered.mapPartitions(
            partial(multiply_delivered, num_tasks=num_tasks,
                    budget_bytes=options.task_buffer_bytes),
            preservesPartitioning=(s == 1))
    if s > 1:
        products = sum_partials(products, grid)
    return products


def multiply_with_file_blocks(task: int, records, keys, routing, sources: dict, num_tasks: int,
                              budget_bytes: int, counter=None):
    """Multiply a task's delivered records and its file blocks, one ``k``-slice at a time.

    The task finds the file blocks Spark's destinations give it among the operands' keys, and
    takes them as :class:`~._common.FileRef` records (no bytes against the spill budget), read
    only when their slice is multiplied: it holds at most one slice of them.
    """
    mine = routing.value.keys_for_task(task, keys.value)
    refs = ((k * num_tasks + task, (side, index, FileRef(key)))
            for side, key in mine for k, index in [inner_and_outer(key, side)])
    return multiply_with_file_refs(records, refs, sources,
                                   partial(record_k, num_tasks=num_tasks), budget_bytes,
                                   counter)


def route_block(item, side: int, routing, num_tasks: int):
    """Copies of one block for each destination task, keyed ``k * num_tasks + task``."""
    key, block = item
    k, index = inner_and_outer(key, side)
    plan_routing = getattr(routing, "value", routing)  # a broadcast, or the routing itself
    return [(k * num_tasks + task, (side, index, block))
            for task in plan_routing.targets(key, side)]


def record_k(record, num_tasks: int) -> int:
    """Inner index ``k`` of a record routed with key ``k * num_tasks + task``."""
    return record[0] // num_tasks


def multiply_delivered(records, num_tasks: int, budget_bytes: int):
    """Multiply the blocks delivered to one task, one inner index ``k`` at a time."""
    return accumulate_by_inner_index(records, partial(record_k, num_tasks=num_tasks),
                                     budget_bytes)


STRATEGY = register(Strategy(
    name="inner", plan=plan, execute=execute, plan_type=InnerPlan,
    summary="Spark's inner product: blocks routed only where they have a counterpart, "
            "one shuffle",
    variants=variants))
