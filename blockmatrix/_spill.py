"""Grouping a task's records by an integer key in bounded memory (executor side).

Records are held in memory up to a byte budget; past it every buffered record is appended to a
per-key file in a private temporary folder. Groups are then produced in key order, one at a
time, so a consumer holds at most the budget plus one group.

:data:`last_spilled_records` says how many records the latest grouping of this process wrote to
disk. Spark runs one task at a time in a Python worker, so a function chained to the task that
grouped (``blocks.mapPartitions(f)``, which runs in the same worker right after) reads that
task's own figure: how a test proves that a real task spilled.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

#: Records the latest :func:`grouped_by_key` of this process wrote to disk (0: all fitted).
last_spilled_records = 0


def local_spill_dir(configured: str | None = None) -> str:
    """The folder Spark gives its workers for scratch files, or /tmp.

    ``SPARK_LOCAL_DIRS`` wins (as in Spark), then ``configured`` (``spark.local.dir``, which
    the driver knows); the first of a comma-separated list.
    """
    dirs = os.environ.get("SPARK_LOCAL_DIRS") or configured or ""
    return dirs.split(",")[0] if dirs else tempfile.gettempdir()


def grouped_by_key(records: Iterable, key_of: Callable[[object], int],
                   size_of: Callable[[object], int], budget_bytes: int,
                   spill_dir: str | None = None) -> Iterator[tuple[int, list]]:
    """Yield ``(key, records_with_that_key)`` in increasing key order.

    Parameters
    ----------
    records : iterable
        The records, in any order.
    key_of : callable
        The integer group key of a record.
    size_of : callable
        Bytes a record holds (for the budget).
    budget_bytes : int
        Bytes of records to keep in memory before spilling them to disk.
    spill_dir : str, optional
        Where to create the temporary folder; defaults to :func:`local_spill_dir`.

    Examples
    --------
    >>> recs = [(3, "c"), (1, "a"), (3, "d"), (2, "b")]
    >>> [(k, [v for _, v in g]) for k, g in grouped_by_key(recs, lambda r: r[0],
    ...                                                   lambda r: 1, budget_bytes=2)]
    [(1, ['a']), (2, ['b']), (3, ['c', 'd'])]
    >>> from blockmatrix import _spill
    >>> _spill.last_spilled_records  # the budget holds two records: the third spilled all three
    3
    """
    global last_spilled_records
    last_spilled_records = 0
    buffered: dict[int, list] = defaultdict(list)
    held = 0
    folder = None
    spilled: set[int] = set()
    try:
        for record in records:
            key = key_of(record)
            buffered[key].append(record)
            held += size_of(record)
            if held > budget_bytes:
                if folder is None:
                    folder = tempfile.mkdtemp(prefix="blockmatrix-spill-",
                                              dir=spill_dir or local_spill_dir())
                last_spilled_records += _spill(buffered, folder, spilled)
                held = 0
        for key in sorted(spilled | buffered.keys()):
            group = _load(folder, key) if key in spilled else []
            group.extend(buffered.pop(key, ()))
            yield key, group
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _spill(buffered: dict[int, list], folder: str, spilled: set[int]) -> int:
    count = 0
    for key, group in buffered.items():
        with open(os.path.join(folder, f"{key}.pkl"), "ab") as f:
            for record in group:
                pickle.dump(record, f, protocol=pickle.HIGHEST_PROTOCOL)
        spilled.add(key)
        count += len(group)
    buffered.clear()
    return count


def _load(folder: str, key: int) -> list:
    path = os.path.join(folder, f"{key}.pkl")
    group = []
    with open(path, "rb") as f:
        while True:
            try:
                group.append(pickle.load(f))
            except EOFError:
                break
    os.unlink(path)
    return group
