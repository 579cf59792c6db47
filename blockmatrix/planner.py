"""Spark's planning of a block product, from block keys alone: no block data moves.

:func:`simulate_multiply` computes, as Spark's ``simulateMultiply`` does, the partitions every
block must reach; :func:`result_grid` is Spark's result partitioner. The sizes and costs built
on them live in :mod:`blockmatrix.cost`, the plan types in :mod:`blockmatrix.plan`.

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
from collections.abc import Iterable

from .layout import BlockLayout, Key, group_pairs
from .partitioner import GridPartitioner
from .plan import check_num_mid_splits

Destinations = dict[Key, frozenset[int]]


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
    left_keys, right_keys = set(left_keys), set(right_keys)
    return _destinations(left_keys, right_keys, group_pairs((k, i) for i, k in left_keys),
                         group_pairs(right_keys), grid, check_num_mid_splits(num_mid_splits))


def layout_destinations(left: BlockLayout, right: BlockLayout, grid: GridPartitioner,
                        num_mid_splits: int = 1) -> tuple[Destinations, Destinations]:
    """:func:`simulate_multiply` of two layouts, with the inner-index maps they hold."""
    return _destinations(left.keys, right.keys, left.rows_of_col, right.cols_of_row, grid,
                         check_num_mid_splits(num_mid_splits))


def _destinations(left_keys, right_keys, rows_of_col, cols_of_row, grid, s):
    left = {(i, k): frozenset(grid.partition_of(i, j) * s + k % s
                              for j in cols_of_row.get(k, ()))
            for i, k in left_keys}
    right = {(k, j): frozenset(grid.partition_of(i, j) * s + k % s
                               for i in rows_of_col.get(k, ()))
             for k, j in right_keys}
    return left, right


def mid_split_stripes(left: BlockLayout, right: BlockLayout,
                      s: int) -> dict[Key, set[int]]:
    """For every product block ``(i, j)``, the stripes ``k % s`` that hold a partial of it.

    >>> a = BlockLayout((2, 6), 2, 2, {(0, 0): 32, (0, 1): 32, (0, 2): 32})
    >>> b = BlockLayout((6, 2), 2, 2, {(0, 0): 32, (2, 0): 32})
    >>> mid_split_stripes(a, b, 2)
    {(0, 0): {0}}
    >>> mid_split_stripes(a, b, 1)
    {(0, 0): {0}}
    """
    cols_of_row = right.cols_of_row
    stripes: dict[Key, set[int]] = defaultdict(set)
    for i, k in left.keys:
        for j in cols_of_row.get(k, ()):
            stripes[(i, j)].add(k % s)
    return dict(stripes)
