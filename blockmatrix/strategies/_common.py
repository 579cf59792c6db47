"""What several strategies share: operand sides, k-slice accumulation, partial sums.

Executor-side functions are module-level and take their parameters through
``functools.partial``, so that Spark pickles nothing but them and their arguments.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from .. import blocks as bk
from .._spill import grouped_by_key

#: The operand a routed block comes from.
LEFT, RIGHT = 0, 1


def side_name(side: int) -> str:
    """``"A"`` for the left operand, ``"B"`` for the right one."""
    return "A" if side == LEFT else "B"


def inner_and_outer(key, side: int) -> tuple[int, int]:
    """``(k, index)`` of a block key: its inner index and its row (A) or column (B) index.

    >>> inner_and_outer((3, 5), LEFT), inner_and_outer((3, 5), RIGHT)
    ((5, 3), (3, 5))
    """
    row, col = key
    return (col, row) if side == LEFT else (row, col)


def record_nbytes(record) -> int:
    """Bytes of the block a routed record ``(key, (side, index, block))`` carries."""
    return bk.nbytes(record[1][2])


def accumulate_slice(acc: dict, group: Iterable) -> None:
    """Add the products of one k-slice (records ``(key, (side, index, block))``) to ``acc``.

    Blocks with the same index (duplicates) are all used, so duplicates are summed, as Spark's
    multiply does.
    """
    lefts, rights = defaultdict(list), defaultdict(list)
    for _, (side, index, block) in group:
        (lefts if side == LEFT else rights)[index].append(block)
    for i, left_blocks in lefts.items():
        for j, right_blocks in rights.items():
            for a in left_blocks:
                for b in right_blocks:
                    acc[(i, j)] = bk.matmul_accumulate(acc.get((i, j)), a, b)


def accumulate_by_inner_index(records: Iterable, k_of: Callable[[object], int],
                              budget_bytes: int):
    """Multiply a task's routed records one inner index at a time; one block per ``(i, j)``.

    Output blocks are accumulated in place; the task holds its accumulators, one k-slice of
    inputs, and at most ``budget_bytes`` of not-yet-used inputs (the rest waits on local disk).
    """
    acc: dict = {}
    for _, group in grouped_by_key(records, k_of, record_nbytes, budget_bytes):
        accumulate_slice(acc, group)
    return iter(acc.items())


def sum_partials(partials, grid):
    """Sum partial blocks by key into ``grid``'s partitions: one shuffle, no map-side combine.

    Every strategy that calls this emits at most one partial per key from each task, so
    ``reduceByKey``'s map-side combine would find nothing to combine and only cost time (and,
    with blocks of megabytes, spills by PySpark's ``ExternalMerger`` above
    ``spark.python.worker.memory``). The result keeps ``grid`` as its partitioner.
    """
    return partials.partitionBy(grid.num_partitions, grid).mapPartitions(
        bk.sum_by_key, preservesPartitioning=True)
