"""What several strategies share: operand sides, k-slice accumulation, partial sums.

Executor-side functions are module-level and take their parameters through
``functools.partial``, so that Spark pickles nothing but them and their arguments.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from typing import NamedTuple

from .. import blocks as bk
from .. import held
from .._spill import grouped_by_key
from ..errors import InvalidParameterError, unreadable_in_task
from ..sparkconf import REFERENCE_DIR_CONF
from ..spilled import SpilledRef, read_spilled, share_array, spill_array

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


class FileRef(NamedTuple):
    """A block that stays in its file until its slice is multiplied: just its key."""

    key: tuple[int, int]


def record_nbytes(record) -> int:
    """Bytes of the block a routed record ``(key, (side, index, block))`` carries.

    A reference (:class:`FileRef`, :class:`~blockmatrix.spilled.SpilledRef`) carries none.
    """
    block = record[1][2]
    return 0 if isinstance(block, FileRef | SpilledRef) else bk.nbytes(block)


def resolved(block, side: int, reader: FileReader | None):
    """The block a record carries: read from its file when the record holds a reference."""
    if isinstance(block, FileRef):
        return reader.read(side, block.key)
    if isinstance(block, SpilledRef):
        return read_spilled(block)
    return block


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
                              budget_bytes: int, reader: FileReader | None = None):
    """Multiply a task's routed records one inner index at a time; one block per ``(i, j)``.

    Output blocks are accumulated in place; the task holds its accumulators, one k-slice of
    inputs, and at most ``budget_bytes`` of not-yet-used inputs (the rest waits on local disk).
    References are read when their slice comes (:func:`resolved`): :class:`FileRef` blocks
    with ``reader``, blocks shuffled by reference from their files.
    """
    acc: dict = {}
    for _, group in grouped_by_key(records, k_of, record_nbytes, budget_bytes):
        group = [(key, (side, index, resolved(block, side, reader)))
                 for key, (side, index, block) in group]
        accumulate_slice(acc, group)
    return iter(acc.items())


class FileReader:
    """Reads blocks of file-backed operands inside a task, one open handle per operand.

    ``sources`` maps a side (:data:`LEFT`, :data:`RIGHT`) to ``(source, rows_per_block,
    cols_per_block)`` with ``source`` a source of kind ``"file"``
    (:class:`~blockmatrix.sources.HDF5Dataset`, :class:`~blockmatrix.sources.ZarrArray`):
    each is opened by its own ``open()`` on first use, read with its ``read_block`` and
    closed by :meth:`close` (or on leaving a ``with``).
    """

    def __init__(self, sources: dict, counter=None):
        self._sources, self._open, self._counter, self._bytes_read = sources, {}, counter, 0

    def read(self, side: int, key) -> object:
        """Block ``key`` of the operand on ``side``."""
        source, rows_per_block, cols_per_block = self._sources[side]
        try:
            handle = self._open.get(side)
            if handle is None:
                handle = self._open[side] = source.open()
            block = source.read_block(handle, *key, rows_per_block, cols_per_block)
        except source.read_errors as exc:
            raise unreadable_in_task(source.location, exc) from None
        self._bytes_read += block.nbytes
        return block

    def close(self) -> None:
        """Close every handle opened, and count what was read (``counter``: an accumulator)."""
        for handle in self._open.values():
            handle.close()
        self._open.clear()
        if self._counter is not None and self._bytes_read:
            self._counter.add(self._bytes_read)
            self._bytes_read = 0

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reference_folder(sc, options) -> str:
    """A new folder, held with the product, for the files of its blocks moved by reference.

    Raises
    ------
    InvalidParameterError
        There is no folder every task can read (``options.reference_parent`` is None).
    """
    if options.reference_parent is None:
        raise InvalidParameterError(
            f"by_reference=True needs a folder every task can read, and there is none: the "
            f"master is {sc.master}; set {REFERENCE_DIR_CONF} to a folder on storage every "
            f"executor sees, or multiply with by_reference=False")
    return held.folder(options.reference_parent)


def driver_array_file(sc, options, source):
    """The driver's dense array ``source`` (a DriverArray) as a file every task reads.

    On a local master (``options.local_master``: the tasks run on this machine) an in-memory
    file the product holds (:func:`blockmatrix.held.memory_file`); elsewhere, or without one,
    a file written into a new folder of :func:`reference_folder`.

    Returns
    -------
    blockmatrix.sources.RawArrayFile
    """
    fd = held.memory_file(source.array.nbytes) if options.local_master else None
    if fd is not None:
        return share_array(fd, source)
    return spill_array(reference_folder(sc, options), source)


def file_sources(layouts: dict) -> dict:
    """The :class:`FileReader` argument for the file-backed ones among ``{side: layout}``."""
    return {side: (lay.source, lay.rows_per_block, lay.cols_per_block)
            for side, lay in layouts.items() if lay.source_kind == "file"}


def sum_partials(partials, grid):
    """Sum partial blocks by key into ``grid``'s partitions: one shuffle, no map-side combine.

    Every strategy that calls this emits at most one partial per key from each task, so
    ``reduceByKey``'s map-side combine would find nothing to combine and only cost time (and,
    with blocks of megabytes, spills by PySpark's ``ExternalMerger`` above
    ``spark.python.worker.memory``). The result keeps ``grid`` as its partitioner.
    """
    return partials.partitionBy(grid.num_partitions, grid).mapPartitions(
        bk.sum_by_key, preservesPartitioning=True)


def deliver(sc, routed: list, num_tasks: int, partitioner):
    """The routed records of the operands only Spark holds, in ``num_tasks`` partitions.

    One ``partitionBy`` of the ``union`` of ``routed`` (the routed records of each operand
    that is not read from its file); when every operand is read from its file, ``num_tasks``
    empty partitions and no shuffle at all.
    """
    if not routed:
        return sc.parallelize([[] for _ in range(num_tasks)], num_tasks).flatMap(_same)
    records = routed[0] if len(routed) == 1 else routed[0].union(routed[1])
    return records.partitionBy(num_tasks, partitioner)


def _same(x):
    return x


def multiply_with_file_refs(records: Iterable, refs: Iterable, sources: dict,
                            k_of: Callable[[object], int], budget_bytes: int, counter=None):
    """:func:`accumulate_by_inner_index` of delivered records and a task's file references.

    ``refs`` are records ``(routing key, (side, index, FileRef(key)))`` built by the task from
    its strategy's plan: they weigh nothing against the spill budget and their blocks are
    read (:class:`FileReader`) only when their inner index comes, so the task holds at most
    one slice of them.
    """
    with FileReader(sources, counter) as reader:
        return accumulate_by_inner_index(chain(refs, records), k_of, budget_bytes,
                                         reader=reader)
