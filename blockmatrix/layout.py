"""What planning knows of a block matrix: shape, block shape and the size of every stored block.

:class:`BlockLayout` carries no block data. It answers the questions every strategy's planner
asks (block extents, dense sizes, which block rows / columns meet on an inner index) from one
place, and builds its inner-index maps once however many strategies plan with it.

>>> lay = BlockLayout((10, 7), 4, 4, {(0, 0): 128, (2, 1): 48})
>>> lay.num_row_blocks, lay.num_col_blocks, lay.block_shape(2, 1)
(3, 2, (2, 3))
>>> dict(lay.rows_of_col), dict(lay.cols_of_row)
({0: (0,), 1: (2,)}, {0: (0,), 2: (1,)})
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .errors import BlockSizeMismatchError, ShapeMismatchError
from .units import format_bytes

Key = tuple[int, int]


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


def group_pairs(pairs: Iterable[Key]) -> dict[int, tuple[int, ...]]:
    """``{a: (b, ...)}`` of pairs ``(a, b)``, the ``b`` sorted.

    >>> group_pairs([(1, 5), (0, 2), (1, 3)])
    {1: (3, 5), 0: (2,)}
    """
    out: dict[int, list[int]] = defaultdict(list)
    for a, b in pairs:
        out[a].append(b)
    return {a: tuple(sorted(bs)) for a, bs in out.items()}


@dataclass(frozen=True)
class KeyCollect:
    """The one job that collected an RDD operand's block keys to build its layout.

    Parameters
    ----------
    keys : int
        Block keys described (duplicates included).
    collected_bytes : int
        Pickled bytes the tasks sent to the driver: per partition, arrays of the keys and
        block sizes, the dtypes and at most one error; never a block's values.
    partitions : int
        Partitions (tasks) of the job.

    >>> str(KeyCollect(keys=4, collected_bytes=2048, partitions=2))
    'keys collected by 1 job: 4 keys, 2.0 KiB from 2 partitions'
    """

    keys: int
    collected_bytes: int
    partitions: int

    def __str__(self) -> str:
        return (f"keys collected by 1 job: {self.keys} keys, "
                f"{format_bytes(self.collected_bytes)} from {self.partitions} partitions")


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
        The RDD partition that holds every stored block, when known (``from_numpy`` and
        ``from_hdf5`` place every block themselves); None when unknown. The ``broadcast``
        strategy needs no shuffle when each block row (column) of the large operand lies in
        one partition.
    source : HDF5Dataset, ZarrArray or DriverArray, optional
        Where the blocks can be read without Spark (:mod:`blockmatrix.sources`); None when
        they exist only in Spark.
    key_collect : KeyCollect, optional
        The job that collected the keys, for an operand known only to Spark (a
        ``from_blocks`` RDD, a product of sparse operands); None when the keys came without a
        job (from the driver's array, the file's metadata, a dense product's plan).
    """

    shape: tuple[int, int]
    rows_per_block: int
    cols_per_block: int
    block_nbytes: Mapping[Key, int] = field(repr=False)
    dtype: np.dtype = np.dtype(np.float64)
    num_partitions: int = 1
    key_partitions: Mapping[Key, int] | None = field(default=None, repr=False, compare=False)
    source: object = field(default=None, repr=False, compare=False)
    key_collect: KeyCollect | None = field(default=None, repr=False, compare=False)

    @property
    def num_row_blocks(self) -> int:
        """Number of block rows."""
        return blocks_along(self.shape[0], self.rows_per_block)

    @property
    def num_col_blocks(self) -> int:
        """Number of block columns."""
        return blocks_along(self.shape[1], self.cols_per_block)

    @property
    def source_kind(self) -> str:
        """``"file"``, ``"driver"`` or ``"spark"``: where the blocks can be read from."""
        return "spark" if self.source is None else self.source.kind

    @property
    def keys(self) -> Iterable[Key]:
        """Indices of the stored blocks."""
        return self.block_nbytes.keys()

    @cached_property
    def rows_of_col(self) -> Mapping[int, tuple[int, ...]]:
        """Block column ``k`` -> the block rows ``i`` of its stored blocks ``(i, k)``.

        For a left operand: the rows of A that meet B's block row ``k``.
        """
        return group_pairs((k, i) for i, k in self.keys)

    @cached_property
    def cols_of_row(self) -> Mapping[int, tuple[int, ...]]:
        """Block row ``k`` -> the block columns ``j`` of its stored blocks ``(k, j)``.

        For a right operand: the columns of B that meet A's block column ``k``.
        """
        return group_pairs(self.keys)

    @cached_property
    def key_array(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, cols, nbytes)`` of the stored blocks as int64 arrays, in key order.

        The vectorised planners work on these instead of looping over keys in Python.
        """
        n = len(self.block_nbytes)
        rows = np.fromiter((i for i, _ in self.block_nbytes), np.int64, n)
        cols = np.fromiter((j for _, j in self.block_nbytes), np.int64, n)
        return rows, cols, np.fromiter(self.block_nbytes.values(), np.int64, n)

    def extents(self, index: np.ndarray, axis: int) -> np.ndarray:
        """Lengths of blocks ``index`` along ``axis`` (0: rows, 1: columns), vectorised.

        >>> BlockLayout((10, 7), 4, 4, {}).extents(np.arange(3), 0)
        array([4, 4, 2])
        """
        per = self.rows_per_block if axis == 0 else self.cols_per_block
        return np.minimum(per, self.shape[axis] - index * per)

    def block_shape(self, i: int, j: int) -> tuple[int, int]:
        """Shape of block ``(i, j)``."""
        return (block_extent(i, self.shape[0], self.rows_per_block),
                block_extent(j, self.shape[1], self.cols_per_block))

    def dense_nbytes(self, i: int, j: int) -> int:
        """Bytes block ``(i, j)`` takes when dense."""
        rows, cols = self.block_shape(i, j)
        return rows * cols * self.dtype.itemsize

    @cached_property
    def nbytes(self) -> int:
        """Bytes of all stored blocks."""
        return sum(self.block_nbytes.values())

    @cached_property
    def is_dense(self) -> bool:
        """Whether every stored block has the byte size of a dense block."""
        rows, cols, nbytes = self.key_array
        dense = self.extents(rows, 0) * self.extents(cols, 1) * self.dtype.itemsize
        return bool(np.array_equal(nbytes, dense))

    def transpose(self) -> BlockLayout:
        """Layout of the transpose."""
        return BlockLayout((self.shape[1], self.shape[0]), self.cols_per_block,
                           self.rows_per_block, {(j, i): n for (i, j), n in
                                                 self.block_nbytes.items()},
                           self.dtype, self.num_partitions,
                           None if self.key_partitions is None else
                           {(j, i): p for (i, j), p in self.key_partitions.items()},
                           None if self.source is None else self.source.transpose(),
                           self.key_collect)


def shape_only(shape: tuple[int, int], rows_per_block: int, cols_per_block: int,
               dtype=np.float64) -> BlockLayout:
    """A layout with no stored blocks: block extents and checks without the keys.

    >>> shape_only((5, 3), 2, 2).block_shape(2, 1)
    (1, 1)
    """
    return BlockLayout(tuple(shape), rows_per_block, cols_per_block, {}, np.dtype(dtype))


def result_layout(left: BlockLayout, right: BlockLayout,
                  block_nbytes: Mapping[Key, int] | None = None,
                  num_partitions: int = 1) -> BlockLayout:
    """Layout of ``left @ right``: its shape, block shape and dtype, with the given blocks.

    Without ``block_nbytes`` it holds no blocks (for the shapes of product blocks).

    >>> a = BlockLayout((4, 6), 2, 3, {}, np.dtype(np.float32))
    >>> result_layout(a, BlockLayout((6, 5), 3, 5, {})).shape, result_layout(a, a.transpose()).dtype
    ((4, 5), dtype('float32'))
    """
    return BlockLayout((left.shape[0], right.shape[1]), left.rows_per_block,
                       right.cols_per_block, dict(block_nbytes or {}),
                       np.result_type(left.dtype, right.dtype), num_partitions)


def product_keys(left: BlockLayout, right: BlockLayout) -> set[Key]:
    """Block indices of ``A @ B`` that receive at least one product.

    >>> a = BlockLayout((4, 4), 2, 2, {(0, 0): 32, (1, 1): 32})
    >>> sorted(product_keys(a, BlockLayout((4, 4), 2, 2, {(1, 0): 32})))
    [(1, 0)]
    """
    rows_of_col = left.rows_of_col
    return {(i, j) for k, j in right.keys for i in rows_of_col.get(k, ())}


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


def split_evenly(items: Sequence, num_parts: int) -> list[list]:
    """``items`` cut into ``num_parts`` contiguous runs whose lengths differ by at most one.

    ``sc.parallelize(split_evenly(items, n), n)`` puts run ``p`` in partition ``p`` (one list
    per partition), so the partition of every item is known by construction.

    >>> split_evenly(list(range(5)), 3)
    [[0], [1, 2], [3, 4]]
    """
    n = len(items)
    return [list(items[p * n // num_parts:(p + 1) * n // num_parts]) for p in range(num_parts)]
