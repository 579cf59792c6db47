"""Planning a multiplication from block keys and block sizes alone: no block data moves.

:class:`BlockLayout` describes a matrix by its shape, block shape and the byte size of every
stored block. :func:`simulate_multiply` computes, as Spark's ``simulateMultiply`` does, the
partitions every block must reach. A :class:`MultiplyPlan` holds a strategy's predicted cost
(shuffles, records, bytes, per-task memory, flops) and prints as a table.

Spark's fixture (``BlockMatrixSuite``, "simulate multiply"):

>>> from blockmatrix.partitioner import GridPartitioner
>>> a = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1)]
>>> b = [(0, 0), (1, 1)]
>>> left, right = simulate_multiply(a, b, GridPartitioner.from_suggested(3, 2, 3))
>>> {k: sorted(v) for k, v in sorted(left.items())}
{(0, 0): [0], (0, 1): [2], (1, 0): [0], (1, 1): [2], (2, 1): [3]}
>>> {k: sorted(v) for k, v in sorted(right.items())}
{(0, 0): [0], (1, 1): [2, 3]}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ._checks import check_int
from .errors import BlockSizeMismatchError, ShapeMismatchError
from .partitioner import GridPartitioner

Key = tuple[int, int]
Destinations = dict[Key, frozenset[int]]

#: Bytes of a CSR index (scipy uses int32 indices below 2**31 non-zeros).
_INDEX_BYTES = 4

#: Bytes a pickled block costs in a PySpark shuffle beyond its buffers (key, tuple, header).
RECORD_OVERHEAD_BYTES = 160


def blocks_along(size: int, per_block: int) -> int:
    """Number of blocks of ``per_block`` needed to cover ``size`` (0 for an empty dimension).

    >>> blocks_along(10, 4), blocks_along(8, 4), blocks_along(0, 4)
    (3, 2, 0)
    """
    return -(-size // per_block)


def block_extent(index: int, size: int, per_block: int) -> int:
    """Length of block ``index`` along a dimension of ``size`` (the last one may be ragged).

    >>> [block_extent(i, 10, 4) for i in range(3)]
    [4, 4, 2]
    """
    return min(per_block, size - index * per_block)


@dataclass(frozen=True)
class BlockLayout:
    """What planning needs to know of a block matrix: no block data.

    Parameters
    ----------
    shape : (int, int)
        Rows and columns of the matrix.
    rows_per_block, cols_per_block : int
        Block shape; edge blocks may be smaller.
    block_nbytes : Mapping[(int, int), int]
        Byte size of every stored block; a block that is absent is zero.
    dtype : numpy.dtype
        Element type of the blocks (the widest one if they differ).
    num_partitions : int
        Partitions of the RDD that holds the blocks.
    key_partitions : Mapping[(int, int), int], optional
        The RDD partition that holds every stored block, when known (e.g. from
        :func:`parallelized_partitions`); None when unknown. The ``broadcast`` strategy needs
        no shuffle when each block row (column) of the large operand lies in one partition.
    """

    shape: tuple[int, int]
    rows_per_block: int
    cols_per_block: int
    block_nbytes: Mapping[Key, int] = field(repr=False)
    dtype: np.dtype = np.dtype(np.float64)
    num_partitions: int = 1
    key_partitions: Mapping[Key, int] | None = field(default=None, repr=False, compare=False)

    @property
    def num_row_blocks(self) -> int:
        """Number of block rows."""
        return blocks_along(self.shape[0], self.rows_per_block)

    @property
    def num_col_blocks(self) -> int:
        """Number of block columns."""
        return blocks_along(self.shape[1], self.cols_per_block)

    @property
    def keys(self) -> Iterable[Key]:
        """Indices of the stored blocks."""
        return self.block_nbytes.keys()

    def block_shape(self, i: int, j: int) -> tuple[int, int]:
        """Shape of block ``(i, j)``."""
        return (block_extent(i, self.shape[0], self.rows_per_block),
                block_extent(j, self.shape[1], self.cols_per_block))

    def dense_nbytes(self, i: int, j: int) -> int:
        """Bytes block ``(i, j)`` takes when dense."""
        rows, cols = self.block_shape(i, j)
        return rows * cols * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of all stored blocks."""
        return sum(self.block_nbytes.values())

    @property
    def is_dense(self) -> bool:
        """Whether every stored block has the byte size of a dense block."""
        return all(n == self.dense_nbytes(i, j) for (i, j), n in self.block_nbytes.items())

    def transpose(self) -> BlockLayout:
        """Layout of the transpose."""
        return BlockLayout((self.shape[1], self.shape[0]), self.cols_per_block,
                           self.rows_per_block, {(j, i): n for (i, j), n in
                                                 self.block_nbytes.items()},
                           self.dtype, self.num_partitions,
                           None if self.key_partitions is None else
                           {(j, i): p for (i, j), p in self.key_partitions.items()})


def parallelized_partitions(num_items: int, num_slices: int, batch_size: int = 0) -> list[int]:
    """Partition of every item of ``sc.parallelize(items, num_slices)``, in item order.

    PySpark pickles the list in batches of ``max(1, min(len // num_slices, batch_size or
    1024))`` items (``batch_size`` is ``sc._batchSize``, 0 = automatic) and Spark's
    ``ParallelCollectionRDD`` gives slice ``p`` the batches ``[p * B // n, (p + 1) * B // n)``
    of the ``B`` batches. Checked against Spark in the tests.

    >>> parallelized_partitions(9, 2)
    [0, 0, 0, 0, 1, 1, 1, 1, 1]
    >>> parallelized_partitions(5, 3)
    [0, 1, 1, 2, 2]
    """
    if num_items == 0:
        return []
    size = max(1, min(num_items // num_slices, batch_size or 1024))
    batches = -(-num_items // size)
    first_batch = [p * batches // num_slices for p in range(num_slices + 1)]
    out, p = [], 0
    for item in range(num_items):
        batch = item // size
        while batch >= first_batch[p + 1]:
            p += 1
        out.append(p)
    return out


def check_multiplicable(left: BlockLayout, right: BlockLayout) -> None:
    """Raise if ``left @ right`` is not defined block-wise (Spark's two checks).

    Raises
    ------
    ShapeMismatchError
        ``left`` has not as many columns as ``right`` has rows.
    BlockSizeMismatchError
        ``left.cols_per_block != right.rows_per_block``.
    """
    if left.shape[1] != right.shape[0]:
        raise ShapeMismatchError(
            f"A.shape[1] ({left.shape[1]}) != B.shape[0] ({right.shape[0]}): the inner "
            f"dimensions of A @ B must agree (A is {left.shape[0]}x{left.shape[1]}, B is "
            f"{right.shape[0]}x{right.shape[1]}); check the operands or transpose one of them")
    if left.cols_per_block != right.rows_per_block:
        raise BlockSizeMismatchError(
            f"A.cols_per_block ({left.cols_per_block}) != B.rows_per_block "
            f"({right.rows_per_block}): the inner block size must agree; re-block one operand, "
            f"e.g. B = BlockMatrix.from_numpy(sc, b, {left.cols_per_block}, ...) or "
            f"BlockMatrix.from_hdf5(sc, path, dataset, {left.cols_per_block}, ...)")


def check_num_mid_splits(num_mid_splits) -> int:
    """Return ``num_mid_splits`` as an int, or raise if it is not a positive integer."""
    return check_int(num_mid_splits, "num_mid_splits",
                     meaning="1 = no split of the inner dimension")


def result_grid(left: BlockLayout, right: BlockLayout,
                num_partitions: int | None = None) -> GridPartitioner:
    """Spark's result partitioner for ``left @ right``.

    ``GridPartitioner(A.numRowBlocks, B.numColBlocks, max(A.partitions, B.partitions))``, or
    the suggested number of partitions given.
    """
    suggested = num_partitions or max(left.num_partitions, right.num_partitions, 1)
    return GridPartitioner.from_suggested(max(left.num_row_blocks, 1),
                                          max(right.num_col_blocks, 1), suggested)


def simulate_multiply(left_keys: Iterable[Key], right_keys: Iterable[Key],
                      grid: GridPartitioner,
                      num_mid_splits: int = 1) -> tuple[Destinations, Destinations]:
    """Destination partitions of every block of ``A @ B``, from the block keys alone.

    A block ``(i, k)`` goes to ``{grid(i, j) * s + k % s : B has a block (k, j)}`` and a B block
    ``(k, j)`` to ``{grid(i, j) * s + k % s : A has a block (i, k)}``, ``s = num_mid_splits``.
    A block without counterpart gets the empty set and is never shuffled.

    Parameters
    ----------
    left_keys, right_keys : iterable of (int, int)
        Indices of the stored blocks of A and B (duplicates allowed).
    grid : GridPartitioner
        Partitioner of the result's block grid.
    num_mid_splits : int
        Number of sub-reducers the inner dimension is striped over (Spark's numMidDimSplits).

    Returns
    -------
    left, right : dict[(int, int), frozenset[int]]
    """
    s = check_num_mid_splits(num_mid_splits)
    left_keys, right_keys = set(left_keys), set(right_keys)
    right_cols_of_row = defaultdict(list)
    for k, j in right_keys:
        right_cols_of_row[k].append(j)
    left_rows_of_col = defaultdict(list)
    for i, k in left_keys:
        left_rows_of_col[k].append(i)
    left = {(i, k): frozenset(grid.partition_of(i, j) * s + k % s
                              for j in right_cols_of_row.get(k, ()))
            for i, k in left_keys}
    right = {(k, j): frozenset(grid.partition_of(i, j) * s + k % s
                               for i in left_rows_of_col.get(k, ()))
             for k, j in right_keys}
    return left, right


def product_keys(left_keys: Iterable[Key], right_keys: Iterable[Key]) -> set[Key]:
    """Block indices of ``A @ B`` that receive at least one product.

    >>> sorted(product_keys([(0, 0), (1, 1)], [(1, 0)]))
    [(1, 0)]
    """
    left_rows_of_col = defaultdict(set)
    for i, k in left_keys:
        left_rows_of_col[k].add(i)
    return {(i, j) for k, j in set(right_keys) for i in left_rows_of_col.get(k, ())}


def dense_product_layout(left: BlockLayout, right: BlockLayout,
                         num_partitions: int) -> BlockLayout:
    """Layout of ``left @ right`` for dense operands: the product keys, dense blocks.

    >>> a = BlockLayout((4, 4), 2, 2, {(0, 0): 32, (1, 1): 32})
    >>> sorted(dense_product_layout(a, a, 2).block_nbytes.items())
    [((0, 0), 32), ((1, 1), 32)]
    """
    shell = BlockLayout((left.shape[0], right.shape[1]), left.rows_per_block,
                        right.cols_per_block, {}, np.result_type(left.dtype, right.dtype))
    return BlockLayout(shell.shape, shell.rows_per_block, shell.cols_per_block,
                       {key: shell.dense_nbytes(*key) for key in
                        product_keys(left.keys, right.keys)}, shell.dtype, num_partitions)


def block_density(layout: BlockLayout, key) -> float | None:
    """Fill of a stored block: None for a dense block, else the CSR's estimated density.

    A block whose byte size equals the dense size is taken as dense; otherwise it is CSR with
    ``nnz * (itemsize + 4) + (rows + 1) * 4`` bytes.

    >>> lay = BlockLayout((4, 4), 4, 4, {(0, 0): 128})
    >>> block_density(lay, (0, 0)) is None
    True
    >>> lay = BlockLayout((4, 4), 4, 4, {(0, 0): 4 * 12 + 5 * 4})
    >>> block_density(lay, (0, 0))
    0.25
    """
    size = layout.block_nbytes[key]
    if size == layout.dense_nbytes(*key):
        return None
    rows, cols = layout.block_shape(*key)
    nnz = max(0, size - (rows + 1) * _INDEX_BYTES) / (layout.dtype.itemsize + _INDEX_BYTES)
    return min(1.0, nnz / max(1, rows * cols))


#: Single-core rates of the reference machine (2-core x86_64; numpy's OpenBLAS for dense
#: blocks, scipy.sparse for CSR ones), used to rank plans by predicted time
#: (:mod:`blockmatrix.strategies.auto`) and printed with each plan.
DENSE_FLOPS_PER_CORE_S = 40e9
SPARSE_FLOPS_PER_CORE_S = 1e9


def product_seconds(left: BlockLayout, right: BlockLayout) -> dict[tuple[int, int, int], float]:
    """Predicted single-core seconds of every block product ``A[i, k] @ B[k, j]``.

    A dense product is ``2 r n c`` flops at :data:`DENSE_FLOPS_PER_CORE_S`; with a CSR factor,
    its expected multiply-adds (``2 r n c`` times the density of each CSR factor) at
    :data:`SPARSE_FLOPS_PER_CORE_S`.

    >>> lay = BlockLayout((2000, 2000), 1000, 1000, {(0, 0): 8_000_000, (0, 1): 8_000_000})
    >>> product_seconds(lay, lay)
    {(0, 0, 0): 0.05, (0, 0, 1): 0.05}
    """
    out = {}
    for (i, k, j), flops in block_product_flops(left, right):
        a, b = block_density(left, (i, k)), block_density(right, (k, j))
        if a is None and b is None:
            out[(i, k, j)] = flops / DENSE_FLOPS_PER_CORE_S
        else:
            out[(i, k, j)] = flops * (a or 1.0) * (b or 1.0) / SPARSE_FLOPS_PER_CORE_S
    return out


def busiest_task_seconds(products: Mapping[tuple[int, int, int], float], task_of) -> float:
    """Compute seconds of the busiest task when product ``(i, k, j)`` runs in ``task_of(i, k, j)``.

    >>> busiest_task_seconds({(0, 0, 0): 1.0, (0, 1, 0): 2.0, (1, 0, 0): 0.5},
    ...                      lambda i, k, j: i)
    3.0
    """
    per_task: dict = defaultdict(float)
    for key, seconds in products.items():
        per_task[task_of(*key)] += seconds
    return max(per_task.values(), default=0.0)


def compute_estimate(left: BlockLayout, right: BlockLayout, task_of) -> dict[str, float]:
    """``compute_seconds`` and ``max_task_compute_seconds`` of a plan, as keyword arguments.

    ``task_of(i, k, j)`` is the task that computes product ``A[i, k] @ B[k, j]``.
    """
    products = product_seconds(left, right)
    return {"compute_seconds": sum(products.values()),
            "max_task_compute_seconds": busiest_task_seconds(products, task_of)}


def block_product_flops(left: BlockLayout, right: BlockLayout):
    """``((i, k, j), 2 r n c)`` for every block product ``A[i, k] @ B[k, j]`` of stored blocks.

    >>> lay = BlockLayout((3, 3), 2, 2, {(0, 0): 32, (1, 1): 8})
    >>> list(block_product_flops(lay, lay))
    [((0, 0, 0), 16), ((1, 1, 1), 2)]
    """
    cols_of_row = defaultdict(list)
    for k, j in right.keys:
        cols_of_row[k].append(j)
    for i, k in left.keys:
        rows, inner = left.block_shape(i, k)
        for j in cols_of_row.get(k, ()):
            yield (i, k, j), 2 * rows * inner * right.block_shape(k, j)[1]


def dense_flops(left: BlockLayout, right: BlockLayout) -> int:
    """Flops of all block products, counting every stored block as dense (2 r c n each)."""
    return sum(flops for _, flops in block_product_flops(left, right))


@dataclass(frozen=True)
class ShuffleEstimate:
    """Predicted volume of one shuffle stage."""

    name: str
    records: int
    bytes: int


@dataclass(frozen=True)
class MultiplyPlan:
    """A strategy's plan for ``A @ B`` and its predicted cost.

    Parameters
    ----------
    strategy : str
        Registry name of the strategy.
    left, right : BlockLayout
        The operands.
    shuffles : tuple of ShuffleEstimate
        One entry per shuffle stage, in order.
    max_task_input_bytes : int
        Largest input a single task receives (shuffled or broadcast blocks).
    max_task_memory_bytes : int
        Largest memory a task holds at once for its data (accumulators plus the inputs it
        must hold together), not counting interpreter overhead.
    max_task_output_bytes : int
        Largest output of a single task.
    flops : int
        Floating-point operations of the block products, blocks counted as dense.
    compute_seconds : float
        Predicted single-core seconds of all block products (:func:`product_seconds`).
    max_task_compute_seconds : float
        Predicted compute seconds of the busiest task: with fewer tasks than cores, or uneven
        ones, the multiply cannot finish sooner than this.
    details : dict
        Strategy-specific plan (partitioner, destinations, ...), used by its ``execute``.
    reason : str
        Why this plan was chosen (filled in by ``auto``).
    """

    strategy: str
    left: BlockLayout = field(repr=False)
    right: BlockLayout = field(repr=False)
    shuffles: tuple[ShuffleEstimate, ...]
    max_task_input_bytes: int
    max_task_memory_bytes: int
    max_task_output_bytes: int
    flops: int
    compute_seconds: float = 0.0
    max_task_compute_seconds: float = 0.0
    details: dict = field(default_factory=dict, repr=False, compare=False)
    reason: str = ""

    @property
    def num_shuffles(self) -> int:
        """Number of shuffle stages."""
        return len(self.shuffles)

    @property
    def shuffle_bytes(self) -> int:
        """Predicted bytes written by all shuffles."""
        return sum(s.bytes for s in self.shuffles)

    @property
    def shuffle_records(self) -> int:
        """Predicted records written by all shuffles."""
        return sum(s.records for s in self.shuffles)

    @property
    def result_shape(self) -> tuple[int, int]:
        """Shape of ``A @ B``."""
        return self.left.shape[0], self.right.shape[1]

    def __str__(self) -> str:
        lines = [
            f"  strategy: {self.strategy}",
            f"  A: {self.left.shape[0]}x{self.left.shape[1]} in "
            f"{self.left.rows_per_block}x{self.left.cols_per_block} blocks "
            f"({len(self.left.block_nbytes)} stored, {format_bytes(self.left.nbytes)})",
            f"  B: {self.right.shape[0]}x{self.right.shape[1]} in "
            f"{self.right.rows_per_block}x{self.right.cols_per_block} blocks "
            f"({len(self.right.block_nbytes)} stored, {format_bytes(self.right.nbytes)})",
            f"  shuffles: {self.num_shuffles}",
        ]
        for s in self.shuffles:
            lines.append(f"    {s.name}: {s.records} records, {format_bytes(s.bytes)}")
        lines += [
            f"  largest task input: {format_bytes(self.max_task_input_bytes)}",
            f"  largest task memory: {format_bytes(self.max_task_memory_bytes)}",
            f"  largest task output: {format_bytes(self.max_task_output_bytes)}",
            f"  flops (dense count): {self.flops:.3e}",
            f"  compute: {self.compute_seconds:.3g} core-s predicted, busiest task "
            f"{self.max_task_compute_seconds:.3g} s",
        ]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        return "\n".join(lines)


def format_bytes(n: float) -> str:
    """Human-readable byte count.

    >>> format_bytes(0), format_bytes(1536), format_bytes(3 * 2**30)
    ('0 B', '1.5 KiB', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
