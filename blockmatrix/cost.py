"""The cost model shared by every planner: block sizes, fill, flops, per-task loads, seconds.

Sizes are predicted from block byte sizes alone (exact for dense blocks; for CSR x CSR
products an estimate, since their fill cannot be known without the data). Seconds come from the
reference machine's rates, fitted to the dense and long-inner rows of ``jobs/benchmark.py``
(README, "Performance"), where they predict the measured times within about 15%:

- every stage costs :data:`STAGE_SECONDS` (scheduling, starting the tasks' Python pipelines);
  a plan has one stage more than it has shuffles, and one more for a broadcast's collect;
  every shuffle costs :data:`SHUFFLE_SECONDS` more (its files, fetches and Python workers on
  both sides), however few bytes it moves;
- a shuffle's bytes move at :data:`SHUFFLE_BYTES_PER_CORE_S` per core: pickled by a Python
  worker, written and read back by the JVM, unpickled by another worker;
- a broadcast operand moves at :data:`BROADCAST_BYTES_PER_S`, once, from the driver, after a
  collect at :data:`COLLECT_BYTES_PER_S` (its own stage) when its blocks live only in Spark;
- bytes tasks read from the operands' files move at :data:`FILE_READ_BYTES_PER_CORE_S` per
  core;
- compute takes ``max(busiest task, all products / cores)`` seconds, so a plan whose work sits
  in fewer tasks than there are cores pays for the idle ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .layout import BlockLayout

#: Bytes of a CSR index (scipy uses int32 indices below 2**31 non-zeros).
INDEX_BYTES = 4

#: Bytes a pickled block costs in a PySpark shuffle beyond its buffers (key, tuple, header).
RECORD_OVERHEAD_BYTES = 160

#: Single-core rates of the reference machine (2-core x86_64; numpy's OpenBLAS for dense
#: blocks, scipy.sparse for CSR ones).
DENSE_FLOPS_PER_CORE_S = 40e9
SPARSE_FLOPS_PER_CORE_S = 1e9

#: Fixed cost of one stage, seconds.
STAGE_SECONDS = 0.1
#: Fixed cost of one shuffle on top of its stages, seconds.
SHUFFLE_SECONDS = 0.15
#: Shuffle throughput per core (Python pickling, JVM shuffle write and read, unpickling).
SHUFFLE_BYTES_PER_CORE_S = 60e6
#: Collect throughput (executors to the driver, serial; DESIGN.md: 143 MB/s).
COLLECT_BYTES_PER_S = 143e6
#: Broadcast throughput from the driver (pickled once, read by every worker). Together with a
#: collect this is the 90 MB/s fitted to the benchmark's broadcast rows.
BROADCAST_BYTES_PER_S = 243e6
#: Per-core read rate of HDF5 blocks by tasks (``read_direct`` into a fresh buffer, page cache).
FILE_READ_BYTES_PER_CORE_S = 3.8e9
#: Rate at which the driver alone writes one of its arrays into a file every task reads
#: (``broadcast`` by reference): 512 MiB into an in-memory file took 0.21-0.24 s (2026-12-02).
DRIVER_FILE_WRITE_BYTES_PER_S = 2.3e9
#: Per-core rate at which tasks take an operand's blocks from Spark (cached in the JVM, pickled
#: through the socket to the Python worker): 512 MiB of persisted 8 MiB blocks reached two
#: workers in 0.585 s, 460 MB/s per core (2026-12-02, local[2]; a ``map`` over the blocks).
SPARK_INPUT_BYTES_PER_CORE_S = 460e6

Triple = tuple[int, int, int]

# ---------------------------------------------------------------------- sizes


def result_itemsize(left: BlockLayout, right: BlockLayout) -> int:
    """Bytes per element of the product."""
    return np.result_type(left.dtype, right.dtype).itemsize


# ---------------------------------------------------------------------- block products


class ProductModel:
    """The block products of ``A @ B`` costed without visiting them one by one.

    A dense product ``A[i, k] @ B[k, j]`` is ``2 r n c`` flops at
    :data:`DENSE_FLOPS_PER_CORE_S`; with a CSR factor, its expected multiply-adds (``2 r n c``
    times the fill of each CSR factor) at :data:`SPARSE_FLOPS_PER_CORE_S`. Its seconds are
    thus a product of a factor of the A block and one of the B block (``2 r n`` times its
    fill, ``c`` times its fill), at a rate fixed by the pair of formats. So every
    sum the planners need (per result block, per inner index, per operand block) is a sparse
    matrix product of the two operands' weight patterns: work proportional to the stored blocks
    and the products scipy forms in C, never a Python loop over block triples.

    >>> lay = BlockLayout((2000, 2000), 1000, 1000, {(0, 0): 8_000_000, (0, 1): 8_000_000})
    >>> model = ProductModel(lay, lay)
    >>> model.total_seconds(), model.flops
    (0.1, 4000000000)
    >>> model.seconds_by_inner().tolist()
    [0.1, 0.0]
    """

    def __init__(self, left: BlockLayout, right: BlockLayout):
        self.left, self.right = left, right
        inner = max(left.num_col_blocks, 1)
        ai, ak, a_fill, a_dense = block_fill(left)
        bk, bj, b_fill, b_dense = block_fill(right)
        a_flops = 2 * left.extents(ai, 0) * left.extents(ak, 1)
        b_cols = right.extents(bj, 1)
        shape_a = (max(left.num_row_blocks, 1), inner)
        shape_b = (inner, max(right.num_col_blocks, 1))
        # A's factor, split by format: dense blocks, and CSR blocks weighted by their fill.
        self.a_dense = _weights(ai[a_dense], ak[a_dense], a_flops[a_dense], shape_a)
        self.a_sparse = _weights(ai[~a_dense], ak[~a_dense],
                                 (a_flops * a_fill)[~a_dense], shape_a)
        self.b_dense = _weights(bk[b_dense], bj[b_dense], b_cols[b_dense], shape_b)
        self.b_sparse = _weights(bk[~b_dense], bj[~b_dense], (b_cols * b_fill)[~b_dense],
                                 shape_b)
        self.a_all = _weights(ai, ak, a_flops, shape_a)
        self.b_all = _weights(bk, bj, b_cols, shape_b)

    @property
    def flops(self) -> int:
        """Flops of all block products, every stored block counted as dense."""
        return int(np.dot(np.asarray(self.a_all.sum(axis=0)).ravel(),
                          np.asarray(self.b_all.sum(axis=1)).ravel()))

    def _pairs(self):
        """(A factor, B factor, rate) of the four format pairs."""
        return ((self.a_dense, self.b_dense, DENSE_FLOPS_PER_CORE_S),
                (self.a_dense, self.b_sparse, SPARSE_FLOPS_PER_CORE_S),
                (self.a_sparse, self.b_dense, SPARSE_FLOPS_PER_CORE_S),
                (self.a_sparse, self.b_sparse, SPARSE_FLOPS_PER_CORE_S))

    def total_seconds(self) -> float:
        """Single-core seconds of all block products."""
        return float(self.seconds_by_inner().sum())

    def seconds_by_inner(self) -> np.ndarray:
        """Seconds of the products on each inner index ``k``."""
        out = np.zeros(self.a_all.shape[1])
        for a, b, rate in self._pairs():
            out += np.asarray(a.sum(axis=0)).ravel() * np.asarray(b.sum(axis=1)).ravel() / rate
        return out

    def seconds_by_result(self, inner_mask: np.ndarray | None = None):
        """Seconds summed into every result block ``(i, j)``, as a COO matrix.

        ``inner_mask`` (booleans over ``k``) keeps only some inner indices (a mid split).
        """
        keep = None if inner_mask is None else sp.diags(inner_mask.astype(float))
        total = None
        for a, b, rate in self._pairs():
            if a.nnz and b.nnz:
                term = ((a if keep is None else a @ keep) @ b) / rate
                total = term if total is None else total + term
        if total is None:
            return sp.coo_matrix((self.a_all.shape[0], self.b_all.shape[1]))
        return sp.coo_matrix(total)

    def seconds_by_left_block(self) -> np.ndarray:
        """Seconds of the products each stored A block takes part in (A's key order)."""
        return self._by_block(self.left, lambda a, b, rate: a.multiply(
            np.asarray(b.sum(axis=1)).ravel()[None, :]) / rate)

    def seconds_by_right_block(self) -> np.ndarray:
        """Seconds of the products each stored B block takes part in (B's key order)."""
        return self._by_block(self.right, lambda a, b, rate: b.multiply(
            np.asarray(a.sum(axis=0)).ravel()[:, None]) / rate)

    def _by_block(self, layout: BlockLayout, term) -> np.ndarray:
        total = sum(sp.csr_matrix(term(a, b, rate)) for a, b, rate in self._pairs())
        rows, cols, _ = layout.key_array
        return np.asarray(total[rows, cols]).ravel() if len(rows) else np.zeros(0)

    def max_product_seconds(self) -> float:
        """Seconds of the single most expensive block product."""
        best = 0.0
        for a, b, rate in self._pairs():
            if a.nnz and b.nnz:
                peak = (_max_along(a, axis=0) * _max_along(b, axis=1)).max(initial=0.0)
                best = max(best, float(peak) / rate)
        return best


def block_fill(layout: BlockLayout):
    """``(rows, cols, fill, dense)`` arrays of the stored blocks (fill 1 for dense ones).

    A block whose byte size equals the dense size is taken as dense; otherwise it is CSR with
    ``nnz * (itemsize + 4) + (rows + 1) * 4`` bytes, whose fill is ``nnz / (rows cols)``.

    >>> block_fill(BlockLayout((4, 4), 4, 4, {(0, 0): 4 * 12 + 5 * 4}))[2].tolist()
    [0.25]
    """
    rows, cols, size = layout.key_array
    r, c = layout.extents(rows, 0), layout.extents(cols, 1)
    dense = size == r * c * layout.dtype.itemsize
    nnz = np.maximum(0, size - (r + 1) * INDEX_BYTES) / (layout.dtype.itemsize + INDEX_BYTES)
    fill = np.where(dense, 1.0, np.minimum(1.0, nnz / np.maximum(1, r * c)))
    return rows, cols, fill, dense


def _weights(rows, cols, values, shape) -> sp.csr_matrix:
    return sp.csr_matrix((np.asarray(values, dtype=float), (rows, cols)), shape=shape)


def _max_along(m: sp.csr_matrix, axis: int) -> np.ndarray:
    return np.asarray(m.max(axis=axis).todense()).ravel() if m.nnz else np.zeros(m.shape[1 - axis])


def task_seconds(seconds: np.ndarray, tasks: np.ndarray) -> float:
    """The busiest task's seconds when ``seconds[n]`` runs in task ``tasks[n]``.

    >>> task_seconds(np.array([1.0, 2.0, 0.5]), np.array([0, 0, 1]))
    3.0
    """
    if not len(seconds):
        return 0.0
    return float(np.bincount(tasks, weights=seconds).max())


# ---------------------------------------------------------------------- partial sums


@dataclass(frozen=True)
class InnerSlice:
    """The stored blocks of one operand that meet on inner index ``k``, as arrays.

    ``index`` are their rows (for A) or columns (for B), ``fill`` their CSR fill (NaN for a
    dense block), ``nbytes`` their sizes, ``extent`` the inner block's length.
    """

    index: np.ndarray
    fill: np.ndarray
    nbytes: np.ndarray
    extent: int


def inner_slices(layout: BlockLayout, axis: int) -> dict[int, InnerSlice]:
    """The operand's stored blocks grouped by inner index (``axis`` 1 for A, 0 for B).

    >>> lay = BlockLayout((4, 4), 2, 2, {(0, 1): 32, (1, 1): 28})
    >>> sl = inner_slices(lay, axis=1)[1]
    >>> sl.index.tolist(), sl.fill.round(2).tolist(), sl.extent
    ([0, 1], [nan, 0.33], 2)
    """
    rows, cols, fill, dense = block_fill(layout)
    sizes = layout.key_array[2]
    inner, other = (cols, rows) if axis == 1 else (rows, cols)
    fill = np.where(dense, np.nan, fill)
    order = np.argsort(inner, kind="stable")
    bounds = np.flatnonzero(np.diff(inner[order])) + 1
    out = {}
    for group in np.split(order, bounds) if len(order) else ():
        k = int(inner[group[0]])
        out[k] = InnerSlice(other[group], fill[group], sizes[group],
                            int(layout.extents(np.array([k]), axis)[0]))
    return out


def grouped_partial_sums(left: BlockLayout, right: BlockLayout, groups: np.ndarray,
                         side: str = "left") -> tuple[np.ndarray, ...]:
    """Result blocks summed within groups of block products, and their predicted sizes.

    Every product ``A[i, k] @ B[k, j]`` belongs to the group of its A block (``side="left"``:
    ``groups[n]`` for A's ``n``-th stored block, in key order) or of its B block
    (``side="right"``). Returns ``(group, i, j, nbytes)`` of every (group, result block) that
    receives a product: one sparse product of the operands' block patterns, plus a loop over
    the CSR blocks for CSR x CSR products only.

    A sum is dense as soon as one of its products has a dense factor; a CSR x CSR product of
    fills ``a`` and ``b`` over an inner extent ``n`` has the independent-fill density
    ``1 - (1 - a b) ** n``, and a sum of them ``1 - prod(1 - density)``.

    >>> a = BlockLayout((4, 4), 2, 2, {(0, 0): 32, (0, 1): 32, (1, 1): 32})
    >>> g, i, j, nbytes = grouped_partial_sums(a, a, np.array([0, 1, 1]))
    >>> sorted(zip(g.tolist(), i.tolist(), j.tolist(), nbytes.tolist()))
    [(0, 0, 0, 32), (0, 0, 1, 32), (1, 0, 1, 32), (1, 1, 1, 32)]
    """
    grouped, other = (left, right) if side == "left" else (right, left)
    g_rows, g_cols, g_fill, g_dense = block_fill(grouped)
    o_rows, o_cols, o_fill, o_dense = block_fill(other)
    # The grouped side's outer index (A's i, B's j) and inner index k.
    g_outer, g_inner = (g_rows, g_cols) if side == "left" else (g_cols, g_rows)
    o_inner, o_outer = (o_rows, o_cols) if side == "left" else (o_cols, o_rows)
    num_k = max(left.num_col_blocks, 1)
    num_other = max(right.num_col_blocks if side == "left" else left.num_row_blocks, 1)
    groups = np.asarray(groups, dtype=np.int64)
    if len(g_outer):
        pairs, slot = np.unique(np.stack([groups, g_outer]), axis=1, return_inverse=True)
    else:
        pairs, slot = np.zeros((2, 0), np.int64), np.zeros(0, np.int64)
    slot = np.asarray(slot).ravel()
    num_slots = pairs.shape[1]

    def pattern(sel_g, sel_o):  # (slots x k) @ (k x other): products by (slot, other)
        q = _weights(slot[sel_g], g_inner[sel_g], np.ones(sel_g.sum()), (num_slots, num_k))
        p = _weights(o_inner[sel_o], o_outer[sel_o], np.ones(sel_o.sum()), (num_k, num_other))
        return q @ p

    everything_g, everything_o = np.ones(len(g_outer), bool), np.ones(len(o_outer), bool)
    touched = sp.coo_matrix(pattern(everything_g, everything_o))
    dense = sp.csr_matrix(pattern(g_dense, everything_o) + pattern(everything_g, o_dense))
    is_dense = _at(dense, touched.row, touched.col) > 0
    outer_g, outer_o = pairs[1][touched.row], touched.col
    i, j = (outer_g, outer_o) if side == "left" else (outer_o, outer_g)
    r, c = left.extents(i, 0), right.extents(j, 1)
    itemsize = result_itemsize(left, right)
    nbytes = (r * c * itemsize).astype(np.int64)
    if not is_dense.all():
        # Sum of n log(1 - a b) over the CSR x CSR products of every (slot, other).
        by_inner: dict[int, list] = {}
        for n in np.flatnonzero(~o_dense):
            by_inner.setdefault(int(o_inner[n]), []).append(n)
        extents = left.extents(np.arange(num_k), 1)
        rows_, cols_, values = [], [], []
        for n in np.flatnonzero(~g_dense):
            meets = by_inner.get(int(g_inner[n]))
            if meets:
                meets = np.asarray(meets)
                with np.errstate(divide="ignore"):
                    values.append(extents[g_inner[n]]
                                  * np.log1p(-np.minimum(g_fill[n] * o_fill[meets], 1.0)))
                rows_.append(np.full(len(meets), slot[n]))
                cols_.append(o_outer[meets])
        log_empty = sp.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows_), np.concatenate(cols_))),
            shape=(num_slots, num_other)) if values else sp.csr_matrix((num_slots, num_other))
        empty = _at(log_empty, touched.row, touched.col)
        nnz = np.round(r * c * -np.expm1(empty))
        sparse_bytes = (nnz * (itemsize + INDEX_BYTES) + (r + 1) * INDEX_BYTES).astype(np.int64)
        nbytes = np.where(is_dense, nbytes, sparse_bytes)
    return pairs[0][touched.row], i, j, nbytes


@dataclass(frozen=True)
class GroupedSums:
    """Per group of block products: the partial blocks it sums into and their bytes.

    ``split_blocks`` counts the result blocks that receive partials from more than one group.
    """

    group_bytes: np.ndarray
    group_blocks: np.ndarray
    split_blocks: int


def is_full(layout: BlockLayout) -> bool:
    """Whether every block of the grid is stored, and dense."""
    return (len(layout.block_nbytes) == layout.num_row_blocks * layout.num_col_blocks
            and layout.is_dense)


def grouped_sums(left: BlockLayout, right: BlockLayout, groups: np.ndarray, num_groups: int,
                 side: str = "left") -> GroupedSums:
    """:func:`grouped_partial_sums` aggregated per group, in closed form when it can be.

    When the operand that is not grouped is full (:func:`is_full`), every (group, outer
    index) the grouped blocks form meets every block of the other side: the sums are counted
    per such pair, in time linear in the stored blocks, without listing the partial blocks.
    """
    grouped, other = (left, right) if side == "left" else (right, left)
    groups = np.asarray(groups, dtype=np.int64)
    if not is_full(other) or not len(groups):
        g, i, j, nbytes = grouped_partial_sums(left, right, groups, side)
        per_block = np.unique(i * max(right.num_col_blocks, 1) + j, return_counts=True)[1]
        return GroupedSums(np.bincount(g, weights=nbytes, minlength=num_groups),
                           np.bincount(g, minlength=num_groups), int((per_block > 1).sum()))
    outer_index = grouped.key_array[0] if side == "left" else grouped.key_array[1]
    pairs = np.unique(np.stack([groups, outer_index]), axis=1)
    axis = 0 if side == "left" else 1
    other_axis = 1 - axis
    num_other = right.num_col_blocks if side == "left" else left.num_row_blocks
    other_total = int(other.extents(np.arange(num_other), other_axis).sum())
    extent = (left if side == "left" else right).extents(pairs[1], axis)
    nbytes = extent * other_total * result_itemsize(left, right)
    groups_per_outer = np.bincount(pairs[1])
    return GroupedSums(np.bincount(pairs[0], weights=nbytes, minlength=num_groups),
                       np.bincount(pairs[0], minlength=num_groups) * num_other,
                       int((groups_per_outer > 1).sum()) * num_other)


def result_blocks(left: BlockLayout, right: BlockLayout) -> tuple[np.ndarray, ...]:
    """``(i, j, nbytes)`` of every block of ``left @ right`` that receives a product."""
    if is_full(right) and len(left.block_nbytes):
        rows = np.unique(left.key_array[0])
        cols = np.arange(right.num_col_blocks)
        i, j = np.repeat(rows, len(cols)), np.tile(cols, len(rows))
        nbytes = left.extents(i, 0) * right.extents(j, 1) * result_itemsize(left, right)
        return i, j, nbytes.astype(np.int64)
    return grouped_partial_sums(left, right, np.zeros(len(left.block_nbytes), np.int64))[1:]


def _at(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Entries ``m[rows[n], cols[n]]`` as a flat array (scipy returns a sparse matrix for none)."""
    if not len(rows):
        return np.zeros(0)
    return np.asarray(m[rows, cols]).ravel()


def grid_bytes(grid, rows: np.ndarray, cols: np.ndarray, nbytes: np.ndarray) -> list[int]:
    """Bytes of result blocks ``(rows, cols)`` summed into each partition of ``grid``."""
    parts = rows // grid.rows_per_part + (cols // grid.cols_per_part) * grid.row_partitions
    return np.bincount(parts, weights=nbytes, minlength=grid.num_partitions) \
        .astype(np.int64).tolist()


# ---------------------------------------------------------------------- per-task accounting


class TaskLoads:
    """Per task of a shuffle: input bytes, largest ``k``-slice and accumulator bytes, as arrays.

    A task that takes its inputs one inner index ``k`` at a time (``inner``, ``outer``,
    ``cuboid``) holds its accumulators, one ``k``-slice, and at most ``buffer_bytes`` of inputs
    not yet used (the rest waits on local disk): :meth:`memory`. Planners hand it whole
    arrays, never one block at a time: :meth:`deliver` takes deliveries ``(task, k, bytes)``,
    :meth:`receive` what they already summed per task, :meth:`accumulate` output bytes.

    >>> loads = TaskLoads(2)
    >>> loads.deliver(np.array([0, 0, 1, 0]), np.array([0, 1, 0, 1]), np.array([10, 20, 5, 10]))
    >>> loads.input.tolist(), loads.largest_slice.tolist()
    ([40.0, 5.0], [30.0, 5.0])
    >>> loads.accumulate(np.array([0]), np.array([100]))
    >>> loads.memory(buffer_bytes=20).tolist(), loads.max_memory(20)
    ([150.0, 10.0], 150)
    """

    def __init__(self, num_tasks: int):
        self.input = np.zeros(num_tasks)
        self.largest_slice = np.zeros(num_tasks)
        self.output = np.zeros(num_tasks)

    def deliver(self, tasks: np.ndarray, ks: np.ndarray, nbytes: np.ndarray) -> None:
        """Count ``nbytes[n]`` delivered to ``tasks[n]`` for inner index ``ks[n]``.

        Deliveries of one ``(task, k)`` make one slice, however they are split; call once
        with all of a plan's deliveries (a later call's slices are not merged with these).
        """
        if not len(tasks):
            return
        n = len(self.input)
        self.input += np.bincount(tasks, weights=nbytes, minlength=n)
        slices = sp.csr_matrix((np.asarray(nbytes, np.float64), (tasks, ks)),
                               shape=(n, int(ks.max()) + 1))  # duplicates summed
        self.largest_slice = np.maximum(self.largest_slice,
                                        slices.max(axis=1).toarray().ravel())

    def receive(self, tasks: np.ndarray, input_bytes: np.ndarray,
                largest_slice: np.ndarray) -> None:
        """Set what ``tasks`` receive, summed per task already (each task listed once)."""
        self.input[tasks] = input_bytes
        self.largest_slice[tasks] = largest_slice

    def accumulate(self, tasks: np.ndarray, nbytes: np.ndarray) -> None:
        """Count ``nbytes[n]`` of accumulators (partial or final blocks) held by ``tasks[n]``."""
        self.output += np.bincount(tasks, weights=nbytes, minlength=len(self.output))

    def memory(self, buffer_bytes: int) -> np.ndarray:
        """Peak data bytes of every task: accumulators + buffered inputs + one ``k``-slice."""
        return self.output + np.minimum(self.input, buffer_bytes) + self.largest_slice

    def max_input(self) -> int:
        """The largest task input, bytes."""
        return int(self.input.max(initial=0))

    def max_memory(self, buffer_bytes: int) -> int:
        """The largest task's peak memory, bytes (:meth:`memory`)."""
        return int(self.memory(buffer_bytes).max(initial=0))

    def max_output(self) -> int:
        """The largest task's accumulators, bytes."""
        return int(self.output.max(initial=0))


# ---------------------------------------------------------------------- seconds


@dataclass(frozen=True)
class Rates:
    """The rates predicted times are computed with; the defaults are this module's constants.

    Parameters
    ----------
    network_bytes_per_core_s : float
        Shuffle throughput per core (:data:`SHUFFLE_BYTES_PER_CORE_S`).
    disk_bytes_per_core_s : float
        Rate tasks read the operands' files at, per core (:data:`FILE_READ_BYTES_PER_CORE_S`).
    dense_flops_per_core_s, sparse_flops_per_core_s : float
        Block-product rates (:data:`DENSE_FLOPS_PER_CORE_S`, :data:`SPARSE_FLOPS_PER_CORE_S`).
    broadcast_bytes_per_s, collect_bytes_per_s : float
        Driver broadcast and collect rates.
    spark_input_bytes_per_core_s : float
        Rate tasks take an operand's blocks from Spark (:data:`SPARK_INPUT_BYTES_PER_CORE_S`).
    """

    network_bytes_per_core_s: float = SHUFFLE_BYTES_PER_CORE_S
    disk_bytes_per_core_s: float = FILE_READ_BYTES_PER_CORE_S
    dense_flops_per_core_s: float = DENSE_FLOPS_PER_CORE_S
    sparse_flops_per_core_s: float = SPARSE_FLOPS_PER_CORE_S
    broadcast_bytes_per_s: float = BROADCAST_BYTES_PER_S
    collect_bytes_per_s: float = COLLECT_BYTES_PER_S
    spark_input_bytes_per_core_s: float = SPARK_INPUT_BYTES_PER_CORE_S

    def compute_scale(self, plan) -> float:
        """Factor from the default rates' compute seconds (plans hold those) to these rates'.

        The dense rate's ratio when both operands are dense, else the sparse rate's.
        """
        if (self.dense_flops_per_core_s, self.sparse_flops_per_core_s) == \
                (DENSE_FLOPS_PER_CORE_S, SPARSE_FLOPS_PER_CORE_S):
            return 1.0  # without asking the layouts whether they are dense (linear in blocks)
        if plan.left.is_dense and plan.right.is_dense:
            return DENSE_FLOPS_PER_CORE_S / self.dense_flops_per_core_s
        return SPARSE_FLOPS_PER_CORE_S / self.sparse_flops_per_core_s

    @property
    def read_scale(self) -> float:
        """Factor from the default file-read rate's seconds to these rates'."""
        return FILE_READ_BYTES_PER_CORE_S / self.disk_bytes_per_core_s

    def seconds(self, plan, cores: int) -> float:
        """:func:`predicted_seconds` of ``plan`` at these rates."""
        return predicted_seconds(plan, cores, self)


#: The reference machine's rates.
DEFAULT_RATES = Rates()


def driver_exit_seconds(plan, rates: Rates = DEFAULT_RATES) -> float:
    """Seconds for a product's blocks to reach one writer on the driver (``to_hdf5``).

    One stage, and C's dense bytes at the collect rate: ``toLocalIterator`` brings the
    partitions to the driver one at a time, through the JVM. The out-of-core product does not
    pay it (its tasks' tiles go file to file).
    """
    rows, cols = plan.result_shape
    itemsize = np.result_type(plan.left.dtype, plan.right.dtype).itemsize
    return STAGE_SECONDS + rows * cols * itemsize / rates.collect_bytes_per_s


def predicted_seconds(plan, cores: int, rates: Rates = DEFAULT_RATES) -> float:
    """Predicted wall time of a plan on ``cores`` task slots (see the module's cost model).

    The sum of the plan's terms, :meth:`~blockmatrix.plan.MultiplyPlan.seconds_terms`: a plan
    that runs otherwise than through Spark's stages (``ooc``) overrides its own terms only.

    >>> a = BlockLayout((200, 200), 100, 100, {(i, j): 80000 for i in (0, 1) for j in (0, 1)})
    >>> from blockmatrix.strategies import get_strategy
    >>> from blockmatrix.plan import MultiplyOptions
    >>> plan = get_strategy("inner").plan(a, a, MultiplyOptions(num_cores=4))
    >>> predicted_seconds(plan, 4) == plan.predicted_seconds(4) == Rates().seconds(plan, 4)
    True
    >>> Rates(network_bytes_per_core_s=1.0).seconds(plan, 4) > 1000
    True
    """
    return float(sum(plan.seconds_terms(max(1, cores), rates).values()))


def stage_seconds_terms(plan, cores: int, rates: Rates) -> dict[str, float]:
    """The terms of a plan run as Spark stages: fixed costs, bytes moved at their rates, compute.

    Compute is ``max(busiest task, all products / cores)`` at the default rates, rescaled.
    """
    stages = plan.num_shuffles + 1 + (1 if plan.collected_bytes else 0)
    return {
        "stages": stages * STAGE_SECONDS + plan.num_shuffles * SHUFFLE_SECONDS,
        "shuffle": plan.shuffle_bytes / (rates.network_bytes_per_core_s * cores),
        "collect": plan.collected_bytes / rates.collect_bytes_per_s,
        "broadcast": plan.broadcast_bytes / rates.broadcast_bytes_per_s,
        "read": (plan.read_bytes + plan.spilled_bytes) / (rates.disk_bytes_per_core_s * cores),
        "input": plan.spark_input_bytes / (rates.spark_input_bytes_per_core_s * cores),
        "compute": rates.compute_scale(plan) * max(plan.max_task_compute_seconds,
                                                    plan.compute_seconds / cores),
    }
