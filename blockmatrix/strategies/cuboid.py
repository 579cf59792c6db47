"""The cuboid multiply (DistME's CuboidMM; Spark's ``numMidDimSplits`` generalised).

The product's space of block triples ``(i, k, j)`` (``I x K x J``) is cut into ``P x Q x R``
cuboids: ``P`` slabs of block rows of C, ``Q`` slabs of block columns of C, ``R`` slabs of the
inner dimension, each slab a contiguous run of ``ceil(I / P)`` (``ceil(J / Q)``,
``ceil(K / R)``) indices, as Spark's ``GridPartitioner`` cuts the result grid. Cuboid
``(p, q, r)`` is one task, ``t = p + P q + P Q r``: for ``R = 1`` that is the result grid's own
partition id. It computes ``sum_{k in slab r} A[i, k] B[k, j]`` for the ``(i, j)`` of its
``(p, q)`` sub-grid, so a block ``A[i, k]`` goes to the ``Q`` (at most) cuboids ``(p(i), q,
r(k))`` whose column slab ``q`` holds a block ``B[k, j]``, and ``B[k, j]`` to the ``P`` (at
most) cuboids ``(p, q(j), r(k))`` whose row slab holds a block ``A[i, k]``.

**Choice of (P, Q, R).** The blocks are shuffled ``Q |A| + P |B|`` bytes, and for ``R > 1``
the partial sums ``R |C|`` more (2-D plans, ``R = 1``, have no second shuffle). Among the
slab counts an axis can be cut into, the plan takes the one that minimises that sum subject to

- at least ``options.cores`` tasks (or every block triple its own task when there are fewer),
- the largest task's memory within ``options.budget_bytes``: its accumulators, one ``k``-slice
  of inputs and the inputs it buffers (at most ``task_buffer_bytes``; the rest waits on local
  disk), as the tasks run and as every strategy's plan counts it, bounded from per-slab sums
  for the choice (:class:`_MemoryBounds`) and counted exactly for the chosen cut. When no cut
  fits, the one that needs the least.

Ties go to fewer tasks, then to fewer inner slabs. For a square product the choice is the
cube root split of 3-D algorithms when memory allows (``P = Q = R`` about ``cores^(1/3)``:
``3 cores^(1/3) |A|`` moved instead of inner's ``2 sqrt(cores) |A|``); when its accumulators
would not fit, finer row and column slabs and fewer inner ones. 4096^2 in 256-blocks on 64
cores: 4 x 4 x 4, ``12 |A|`` (inner's 8 x 8 grid: ``16 |A|``); on 16 cores 4 x 4 x 1 and
2 x 2 x 4 tie at ``8 |A|`` and the 2-D cut, one shuffle, is taken.

**Delivery** is one shuffle, as for ``inner``: the routing key of a block bound for task ``t``
is ``k * num_tasks + t``, an int the result's ``GridPartitioner`` maps to ``t`` (Spark's
partitioner returns an int key unchanged, PySpark takes it modulo the partitions), and whose
quotient is ``k``, so the task takes its inputs one ``k``-slice at a time and accumulates its
output blocks in place (:func:`~._common.accumulate_by_inner_index`). With ``R = 1`` the output
keeps the grid partitioner; with ``R > 1`` the partials of the ``R`` inner slabs are summed by
a second shuffle onto the grid (:func:`~._common.sum_partials`).

Planning is linear in the stored blocks: block counts and bytes per slab come from sparse
products of the operands' block patterns with slab indicators (:mod:`scipy.sparse`), never
from a loop over block triples.

**Blocks in a file are read, not routed.** An operand read by ``from_hdf5`` is left out of the
shuffle: each cuboid finds the blocks the routing gives it among the operand's keys and reads
them from the file when their ``k``-slice comes, so the plan's ``Q |A|`` (``P |B|``) becomes
:attr:`~blockmatrix.plan.MultiplyPlan.read_bytes` instead of shuffled bytes, and the choice of
the cut weighs it at the cost model's rate of reading against shuffling
(:data:`FILE_READ_WEIGHT`). With both operands in files and ``R = 1`` nothing is shuffled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
import scipy.sparse as sp

from .. import held
from ..cost import (
    FILE_READ_BYTES_PER_CORE_S,
    INDEX_BYTES,
    RECORD_OVERHEAD_BYTES,
    SHUFFLE_BYTES_PER_CORE_S,
    ProductModel,
    TaskLoads,
    block_fill,
    result_itemsize,
    task_seconds,
)
from ..errors import InvalidParameterError
from ..layout import BlockLayout, check_multiplicable
from ..metrics import file_read_counter
from ..partitioner import GridPartitioner
from ..plan import MultiplyOptions, MultiplyPlan, ShuffleEstimate
from ._common import (
    LEFT,
    RIGHT,
    FileRef,
    deliver,
    file_sources,
    inner_and_outer,
    multiply_with_file_refs,
    sum_partials,
)
from .inner import multiply_delivered, record_k
from .registry import Strategy, register


@dataclass(frozen=True, kw_only=True)
class CuboidPlan(MultiplyPlan):
    """The cut ``P x Q x R`` and the routing of every inner index.

    Parameters
    ----------
    P, Q, R : int
        Slabs of block rows of C, of block columns of C and of the inner dimension.
    row_slab, col_slab, inner_slab : int
        Block rows (columns, inner indices) per slab: ``ceil(I / P)`` and so on.
    left_slabs : dict[int, tuple[int, ...]]
        Inner index ``k`` -> the column slabs ``q`` where B has a block in row ``k``: where
        A's blocks of column ``k`` go.
    right_slabs : dict[int, tuple[int, ...]]
        Inner index ``k`` -> the row slabs ``p`` where A has a block in column ``k``.
    communication_bytes : int
        The objective the cut minimised, ``Q |A| + P |B| (+ R |C|)``, as planned.
    """

    P: int
    Q: int
    R: int
    row_slab: int
    col_slab: int
    inner_slab: int
    communication_bytes: int = 0
    left_slabs: dict = field(default_factory=dict, repr=False, compare=False)
    right_slabs: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def note(self) -> str:
        """The cut, for the reports."""
        return (f"cut {self.P} x {self.Q} x {self.R} (rows x columns x inner) into "
                f"{self.num_tasks} cuboids of {self.row_slab} x {self.col_slab} x "
                f"{self.inner_slab} blocks")


# ---------------------------------------------------------------------- slabs


def slab_counts(n: int) -> dict[int, int]:
    """``{slabs: blocks per slab}`` for every way to cut ``n`` blocks into equal runs.

    Runs of ``s`` blocks (the last one shorter) give ``ceil(n / s)`` slabs; every count that
    some ``s`` gives is listed once, with its shortest ``s`` (about ``2 sqrt(n)`` counts).

    >>> slab_counts(10)
    {10: 1, 5: 2, 4: 3, 3: 4, 2: 5, 1: 10}
    """
    out: dict[int, int] = {}
    for size in range(1, max(n, 1) + 1):
        out.setdefault(-(-max(n, 1) // size), size)
    return out


class _Patterns:
    """The operands' block patterns and byte sizes as sparse matrices (built once per plan).

    ``a_count`` / ``a_bytes`` are ``I x K`` (``b_*`` are ``K x J``): 1 and the block's bytes
    plus the record overhead at every stored block.
    """

    def __init__(self, left: BlockLayout, right: BlockLayout):
        self.I = max(left.num_row_blocks, 1)
        self.K = max(left.num_col_blocks, 1)
        self.J = max(right.num_col_blocks, 1)
        self.a_count, self.a_bytes = _pattern(left, (self.I, self.K))
        self.b_count, self.b_bytes = _pattern(right, (self.K, self.J))
        self.c_count = (self.a_count @ self.b_count).tocoo()

    @cached_property
    def a_col_bytes(self) -> np.ndarray:
        """Bytes (with record overhead) of A's blocks in every column ``k``."""
        return np.asarray(self.a_bytes.sum(axis=0)).ravel()

    @cached_property
    def b_row_bytes(self) -> np.ndarray:
        """Bytes (with record overhead) of B's blocks in every row ``k``."""
        return np.asarray(self.b_bytes.sum(axis=1)).ravel()


def _pattern(layout: BlockLayout, shape) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    keys = list(layout.block_nbytes)
    rows = np.fromiter((i for i, _ in keys), np.int64, len(keys))
    cols = np.fromiter((j for _, j in keys), np.int64, len(keys))
    nbytes = np.fromiter(layout.block_nbytes.values(), np.float64, len(keys))
    count = sp.csr_matrix((np.ones(len(keys)), (rows, cols)), shape=shape)
    return count, sp.csr_matrix((nbytes + RECORD_OVERHEAD_BYTES, (rows, cols)), shape=shape)


def _indicator(n: int, size: int) -> sp.csr_matrix:
    """``n x slabs`` 0/1 matrix: index ``x`` is in slab ``x // size``."""
    slabs = -(-n // size)
    return sp.csr_matrix((np.ones(n), (np.arange(n), np.arange(n) // size)), shape=(n, slabs))


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


# ---------------------------------------------------------------------- planning


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> CuboidPlan:
    """Choose ``(P, Q, R)`` (the module's rule) and predict both shuffles, loads and memory."""
    check_multiplicable(left, right)
    pat = _Patterns(left, right)
    return _plan_for(pat, left, right, options, *choose_cut(pat, left, right, options))


def plan_cut(left: BlockLayout, right: BlockLayout, options: MultiplyOptions, P: int, Q: int,
             R: int) -> CuboidPlan:
    """The plan of a given cut (for what-if comparisons and tests); ``plan`` chooses it.

    Raises
    ------
    InvalidParameterError
        An axis cannot be cut into that many equal slabs; the message lists the counts it can.
    """
    check_multiplicable(left, right)
    pat = _Patterns(left, right)
    for name, value, n in (("P", P, pat.I), ("Q", Q, pat.J), ("R", R, pat.K)):
        if value not in slab_counts(n):
            raise InvalidParameterError(
                f"{name}={value!r} does not cut {n} blocks into equal slabs: use one of "
                f"{sorted(slab_counts(n))}")
    return _plan_for(pat, left, right, options, P, Q, R)


def choose_cut(pat: _Patterns, left: BlockLayout, right: BlockLayout,
               options: MultiplyOptions) -> tuple[int, int, int]:
    """``(P, Q, R)`` of least communication within the budget with enough tasks."""
    rows, cols, inner = slab_counts(pat.I), slab_counts(pat.J), slab_counts(pat.K)
    # Q |A|: A's blocks of column k go to the column slabs where B's row k has blocks. An
    # operand in a file is read by the cuboids: its bytes weigh what reading costs, in bytes
    # shuffled in the same time.
    a_weight, b_weight = (FILE_READ_WEIGHT if lay.source_kind == "file" else 1.0
                          for lay in (left, right))
    a_volume = {q: a_weight * float(pat.a_col_bytes @ _slabs_hit(pat.b_count, cols[q]))
                for q in cols}
    b_volume = {p: b_weight * float(pat.b_row_bytes @ _slabs_hit(pat.a_count.T, rows[p]))
                for p in rows}
    c_bytes = float(_partial_bytes(left, right, pat.c_count).sum())
    c_bytes += RECORD_OVERHEAD_BYTES * pat.c_count.nnz
    bounds = _MemoryBounds(pat, left, right, options.task_buffer_bytes)
    wanted = min(options.cores, pat.I * pat.J * pat.K)
    best = fallback = None
    for p in rows:
        for q in cols:
            for r in inner:
                if p * q * r < wanted:
                    continue
                comm = a_volume[q] + b_volume[p] + (r * c_bytes if r > 1 else 0.0)
                rank = (comm, p * q * r, r)
                if best is not None and rank >= best[0]:
                    continue
                memory = bounds.memory(rows[p], cols[q], inner[r])
                if memory <= options.budget_bytes:
                    if best is None or rank < best[0]:
                        best = (rank, (p, q, r))
                elif fallback is None or (memory, rank) < fallback[0]:
                    fallback = ((memory, rank), (p, q, r))
    return (best or fallback)[1]


#: A byte read from a file, in bytes shuffled in the same time (the cost model's rates).
FILE_READ_WEIGHT = SHUFFLE_BYTES_PER_CORE_S / FILE_READ_BYTES_PER_CORE_S


def _slabs_hit(pattern, size: int) -> np.ndarray:
    """For every row of ``pattern``, the number of slabs (of ``size`` columns) it has entries in."""
    hit = (pattern @ _indicator(pattern.shape[1], size)) > 0
    return np.asarray(hit.sum(axis=1)).ravel()


class _MemoryBounds:
    """An upper bound of the largest task's memory for a cut, from per-slab sums (no triples).

    A task holds its accumulators, one ``k``-slice and at most ``buffer`` bytes of inputs it
    has not used yet; each term is bounded by its largest value over the slabs, which is the
    exact peak for a dense product and an over-estimate for a block-sparse one.
    """

    def __init__(self, pat: _Patterns, left: BlockLayout, right: BlockLayout, buffer: int):
        self.pat, self.buffer = pat, buffer
        c = pat.c_count
        self.c_sizes = sp.csr_matrix((_partial_bytes(left, right, c), (c.row, c.col)),
                                     shape=c.shape)
        self._sums: dict = {}
        self._cached: dict = {}

    def _slab_sums(self, side: str, size: int) -> np.ndarray:
        """``slabs x K``: bytes of A's row slabs (B's column slabs) at every inner index."""
        if (side, size) not in self._sums:
            if side == "a":
                m = _indicator(self.pat.I, size).T @ self.pat.a_bytes
            else:
                m = (self.pat.b_bytes @ _indicator(self.pat.J, size)).T
            self._sums[(side, size)] = _dense(m)
        return self._sums[(side, size)]

    def _once(self, key, compute) -> float:
        if key not in self._cached:
            self._cached[key] = float(compute())
        return self._cached[key]

    def _largest_input(self, side: str, size: int, inner_size: int) -> np.ndarray:
        """Per inner slab: the most bytes one row (column) slab has in it."""
        starts = np.arange(0, self.pat.K, inner_size)
        return np.add.reduceat(self._slab_sums(side, size), starts, axis=1).max(axis=0)

    def memory(self, row_size: int, col_size: int, inner_size: int) -> float:
        """Bound of accumulators + one k-slice + buffered inputs of the busiest cuboid."""
        a = self._slab_sums("a", row_size)
        b = self._slab_sums("b", col_size)
        out = self._once(("out", row_size, col_size), lambda: _dense(
            _indicator(self.pat.I, row_size).T @ self.c_sizes
            @ _indicator(self.pat.J, col_size)).max(initial=0.0))
        piece = self._once(("piece", row_size, col_size),
                           lambda: (a.max(axis=0) + b.max(axis=0)).max(initial=0.0))
        inputs = self._once(("in", row_size, col_size, inner_size), lambda: (
            self._largest_input("a", row_size, inner_size)
            + self._largest_input("b", col_size, inner_size)).max(initial=0.0))
        return out + min(inputs, self.buffer) + piece


def _partial_bytes(left: BlockLayout, right: BlockLayout, counts: sp.coo_matrix) -> np.ndarray:
    """Bytes of the product blocks at the entries of ``counts`` (sums of that many products).

    A product with a dense factor is dense; CSR x CSR products are estimated with the
    operands' mean block fill ``a``, ``b``: a product has the independent-fill density
    ``d = 1 - (1 - a b) ** n`` (``n`` the inner block size) and a sum of ``m`` of them
    ``1 - (1 - d) ** m``.
    """
    itemsize = result_itemsize(left, right)
    if counts.nnz == 0:
        return np.zeros(0)
    rows = left.extents(counts.row, 0)
    cols = right.extents(counts.col, 1)
    dense_bytes = (rows * cols * itemsize).astype(np.float64)
    if left.is_dense or right.is_dense:
        return dense_bytes
    product = 1.0 - (1.0 - _mean_fill(left) * _mean_fill(right)) ** left.cols_per_block
    fill = 1.0 - (1.0 - product) ** np.rint(counts.data)
    nnz = np.round(rows * cols * fill)
    return nnz * (itemsize + INDEX_BYTES) + (rows + 1) * INDEX_BYTES


def _mean_fill(layout: BlockLayout) -> float:
    _, _, fill, _ = block_fill(layout)
    return float(fill.mean()) if len(fill) else 0.0


def _plan_for(pat: _Patterns, left: BlockLayout, right: BlockLayout, options: MultiplyOptions,
              P: int, Q: int, R: int) -> CuboidPlan:
    """The plan of one cut: exact shuffles, per-task input, memory and output."""
    rs, cs, ks = slab_counts(pat.I)[P], slab_counts(pat.J)[Q], slab_counts(pat.K)[R]
    grid = GridPartitioner(pat.I, pat.J, rs, cs)
    assert grid.num_partitions == P * Q, (grid, P, Q)
    num_tasks = P * Q * R
    ind_i, ind_j = _indicator(pat.I, rs), _indicator(pat.J, cs)

    # Per (row slab p, k): A's blocks and bytes there; per (k, column slab q): B's.
    a_count = _dense(ind_i.T @ pat.a_count)  # P x K
    a_bytes = _dense(ind_i.T @ pat.a_bytes)
    b_count = _dense(pat.b_count @ ind_j)  # K x Q
    b_bytes = _dense(pat.b_bytes @ ind_j)
    a_has, b_has = a_count > 0, b_count > 0
    # An operand in a file is read by the cuboids, not routed: no record overhead.
    a_in_file, b_in_file = left.source_kind == "file", right.source_kind == "file"
    if a_in_file:
        a_bytes = a_bytes - RECORD_OVERHEAD_BYTES * a_count
    if b_in_file:
        b_bytes = b_bytes - RECORD_OVERHEAD_BYTES * b_count
    # A's (p, k) blocks go to every q where B's row k has a block, B's (k, q) to every p.
    a_copies, b_copies = int((a_count @ b_has).sum()), int((a_has @ b_count).sum())
    a_moved, b_moved = float((a_bytes @ b_has).sum()), float((a_has @ b_bytes).sum())
    records = a_copies * (not a_in_file) + b_copies * (not b_in_file)
    routed = a_moved * (not a_in_file) + b_moved * (not b_in_file)
    read = a_moved * a_in_file + b_moved * b_in_file

    # Task t = p + P q + P Q r: a (Q, P) array of inner slab r, raveled, is tasks r P Q + ...
    loads = TaskLoads(num_tasks)
    for r in range(R):
        ks_r = slice(r * ks, min((r + 1) * ks, pat.K))
        # slab k of cuboid (p, q, r): A's blocks of (p, k) if B's (k, q) holds one, and back
        piece = (a_bytes[:, ks_r, None] * b_has[None, ks_r, :]
                 + a_has[:, ks_r, None] * b_bytes[None, ks_r, :])  # P x k x Q
        loads.receive(np.arange(r * P * Q, (r + 1) * P * Q), piece.sum(axis=1).T.ravel(),
                      piece.max(axis=1, initial=0.0).T.ravel())

    # Accumulators: the product blocks of (p, q) that slab r contributes to.
    partials = partial_bytes = 0
    a_csc = pat.a_count.tocsc()
    b_csr = pat.b_count.tocsr()
    for r in range(R):
        ks_r = slice(r * ks, min((r + 1) * ks, pat.K))
        counts = (a_csc[:, ks_r] @ b_csr[ks_r, :]).tocoo()
        sizes = _partial_bytes(left, right, counts)
        loads.accumulate(counts.row // rs + P * (counts.col // cs) + P * Q * r, sizes)
        partials += counts.nnz
        partial_bytes += sizes.sum() + RECORD_OVERHEAD_BYTES * counts.nnz

    read_from = [name for name, in_file in (("A", a_in_file), ("B", b_in_file)) if in_file]
    shuffles = [ShuffleEstimate("route blocks to cuboids" + (
        f" ({read_from[0]} read from its file)" if read_from else ""), records, int(routed))] \
        if records else []
    max_input, max_memory, max_output = (loads.max_input(),
                                         loads.max_memory(options.task_buffer_bytes),
                                         loads.max_output())
    if R > 1:
        shuffles.append(ShuffleEstimate("sum partial blocks over inner slabs", partials,
                                        int(partial_bytes)))
        final = _dense(ind_i.T @ sp.csr_matrix(
            (_partial_bytes(left, right, pat.c_count), (pat.c_count.row, pat.c_count.col)),
            shape=pat.c_count.shape) @ ind_j)  # P x Q bytes of the summed blocks
        reduce_input = loads.output.reshape(R, P * Q).sum(axis=0)  # per (p, q)
        max_input = max(max_input, reduce_input.max(initial=0.0))
        max_memory = max(max_memory, final.max(initial=0.0))
        max_output = max(max_output, final.max(initial=0.0))
    communication = routed + read + (partial_bytes if R > 1 else 0)
    return CuboidPlan(
        strategy="cuboid", left=left, right=right, grid=grid, num_tasks=num_tasks,
        shuffles=tuple(shuffles), max_task_input_bytes=int(max_input),
        max_task_memory_bytes=int(max_memory), max_task_output_bytes=int(max_output),
        **_compute(left, right, grid, ks, R),
        read_bytes=int(read), P=P, Q=Q, R=R, row_slab=rs, col_slab=cs, inner_slab=ks,
        communication_bytes=int(communication),
        left_slabs=_slabs_of(right.cols_of_row, cs), right_slabs=_slabs_of(left.rows_of_col, rs))


def _compute(left: BlockLayout, right: BlockLayout, grid, ks: int, R: int) -> dict:
    """Flops and compute seconds of the cuboids, from sparse products of the block patterns.

    Cuboid ``(p, q, r)`` runs the products of inner slab ``r`` whose result block lies in the
    grid's partition ``(p, q)`` (:class:`~blockmatrix.cost.ProductModel`: no block triples).
    """
    model = ProductModel(left, right)
    inner = np.arange(max(left.num_col_blocks, 1))
    tasks, seconds = [], []
    for r in range(R):
        part = model.seconds_by_result((inner // ks) == r)
        tasks.append(part.row // grid.rows_per_part
                     + (part.col // grid.cols_per_part) * grid.row_partitions
                     + grid.num_partitions * r)
        seconds.append(part.data)
    return {"flops": model.flops, "compute_seconds": model.total_seconds(),
            "max_task_compute_seconds": task_seconds(np.concatenate(seconds),
                                                     np.concatenate(tasks).astype(np.int64))}


def _extents(n: int, per_block: int, count: int) -> np.ndarray:
    return np.minimum(per_block, n - np.arange(count) * per_block).clip(0).astype(np.float64)


def _slabs_of(indices_of_k, size: int) -> dict[int, tuple[int, ...]]:
    """``{k: sorted slabs}`` of the indices listed for every ``k`` (linear in stored blocks)."""
    return {k: tuple(sorted({x // size for x in xs})) for k, xs in indices_of_k.items()}


# ---------------------------------------------------------------------- execution


def execute(plan: CuboidPlan, left, right, options: MultiplyOptions):
    """Run a cuboid plan: one shuffle to the cuboids, a second for the partials if ``R > 1``.

    An operand in a file is not routed: every cuboid reads the blocks the routing would have
    sent it from the file, one ``k``-slice at a time.
    """
    sc = left.context
    in_files = file_sources({LEFT: plan.left, RIGHT: plan.right})
    route = partial(route_to_cuboids, P=plan.P, Q=plan.Q, row_slab=plan.row_slab,
                    col_slab=plan.col_slab, inner_slab=plan.inner_slab,
                    num_tasks=plan.num_tasks)
    slabs = {LEFT: held.broadcast(sc, plan.left_slabs),
             RIGHT: held.broadcast(sc, plan.right_slabs)}
    routed = [blocks.flatMap(partial(route, side=side, slabs=slabs[side]))
              for side, blocks in ((LEFT, left), (RIGHT, right)) if side not in in_files]
    # The grid returns an int key unchanged and PySpark takes it modulo the tasks: task t.
    delivered = deliver(sc, routed, plan.num_tasks, plan.grid)
    if in_files:
        keys = held.broadcast(sc, {side: keys_by_slab(plan, side) for side in in_files})
        products = delivered.mapPartitionsWithIndex(
            partial(multiply_with_file_blocks, keys=keys, slabs=slabs, sources=in_files,
                    P=plan.P, Q=plan.Q, num_tasks=plan.num_tasks,
                    budget_bytes=options.task_buffer_bytes, counter=file_read_counter(sc)),
            preservesPartitioning=(plan.R == 1))
    else:
        products = delivered.mapPartitions(
            partial(multiply_delivered, num_tasks=plan.num_tasks,
                    budget_bytes=options.task_buffer_bytes),
            preservesPartitioning=(plan.R == 1))
    if plan.R > 1:
        products = sum_partials(products, plan.grid)
    return products


def keys_by_slab(plan: CuboidPlan, side: int) -> dict[tuple[int, int], list]:
    """An operand's keys by ``(row slab p, inner slab r)`` (A) or ``(column slab q, r)`` (B)."""
    layout, size = (plan.left, plan.row_slab) if side == LEFT else (plan.right, plan.col_slab)
    out: dict[tuple[int, int], list] = {}
    for key in layout.keys:
        k, index = inner_and_outer(key, side)
        out.setdefault((index // size, k // plan.inner_slab), []).append(key)
    return out


def multiply_with_file_blocks(task: int, records, keys, slabs: dict, sources: dict, P: int,
                              Q: int, num_tasks: int, budget_bytes: int, counter=None):
    """Cuboid ``task = p + P q + P Q r``: its delivered records and the file blocks it uses.

    Those ``route_to_cuboids`` would send it: A's ``(i, k)`` of row slab ``p`` and inner slab
    ``r`` whose column ``k`` meets slab ``q`` of B, and B's ``(k, j)`` likewise.
    """
    p, q, r = task % P, task // P % Q, task // (P * Q)
    wanted = {LEFT: ((p, r), q), RIGHT: ((q, r), p)}

    def refs():
        for side, by_slab in keys.value.items():
            slab, other = wanted[side]
            meets = slabs[side].value
            for key in by_slab.get(slab, ()):
                k, index = inner_and_outer(key, side)
                if other in meets.get(k, ()):
                    yield k * num_tasks + task, (side, index, FileRef(key))

    return multiply_with_file_refs(records, refs(), sources,
                                   partial(record_k, num_tasks=num_tasks), budget_bytes,
                                   counter)


def route_to_cuboids(item, side: int, slabs, P: int, Q: int, row_slab: int, col_slab: int,
                     inner_slab: int, num_tasks: int):
    """Copies of one block for every cuboid that uses it, keyed ``k * num_tasks + task``.

    ``slabs.value[k]`` lists the column slabs (for an A block) or row slabs (for a B block)
    where the counterparts of inner index ``k`` lie; a block without one is dropped.
    """
    key, block = item
    k, index = inner_and_outer(key, side)
    base = k * num_tasks + P * Q * (k // inner_slab)
    if side == LEFT:
        p = index // row_slab
        return [(base + p + P * q, (side, index, block)) for q in slabs.value.get(k, ())]
    q = index // col_slab
    return [(base + p + P * q, (side, index, block)) for p in slabs.value.get(k, ())]


STRATEGY = register(Strategy(
    name="cuboid", plan=plan, execute=execute, plan_type=CuboidPlan,
    summary="3-D cuboids (DistME's CuboidMM): P x Q x R chosen for least Q|A| + P|B| + R|C| "
            "within the task memory budget; one shuffle, a second for partials when R > 1"))
