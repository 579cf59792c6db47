"""Options shared by every strategy."""

from __future__ import annotations

from dataclasses import dataclass

from .. import blocks as bk
from ..errors import InvalidParameterError
from ..planner import check_num_mid_splits

#: Default bytes a task may buffer in memory before spilling (PySpark's own default,
#: ``spark.python.worker.memory`` = 512m); jobs read the configured value.
DEFAULT_TASK_BUFFER_BYTES = 512 << 20


#: Memory budget of a task when none is given and no Spark configuration is at hand: a quarter
#: of Spark's default 1g executor memory.
DEFAULT_MEMORY_BUDGET_BYTES = 256 << 20


@dataclass(frozen=True)
class MultiplyOptions:
    """Parameters of a multiplication, common to all strategies.

    Parameters
    ----------
    num_partitions : int, optional
        Suggested number of result partitions; default, as Spark: the larger operand's.
    num_mid_splits : int
        Sub-reducers the inner dimension is striped over (Spark's numMidDimSplits).
    task_buffer_bytes : int
        Bytes of shuffled blocks a task keeps in memory before spilling them to local disk.
    memory_budget_bytes : int, optional
        Memory a single task may use for its data: the most ``broadcast`` may broadcast, and
        what ``auto`` requires of a plan's largest task. None: the planners' default,
        :data:`DEFAULT_MEMORY_BUDGET_BYTES` (``multiply`` derives it from the executor memory).
    num_cores : int, optional
        Tasks the cluster runs at once, for ``auto``'s predicted times. None: 1 (``multiply``
        and ``explain_multiply`` pass Spark's ``defaultParallelism``).
    """

    num_partitions: int | None = None
    num_mid_splits: int = 1
    task_buffer_bytes: int = DEFAULT_TASK_BUFFER_BYTES
    memory_budget_bytes: int | None = None
    num_cores: int | None = None

    @property
    def cores(self) -> int:
        """The task slots in effect (1 when none were given)."""
        return self.num_cores or 1

    @property
    def budget_bytes(self) -> int:
        """The memory budget in effect (the default when none was given)."""
        if self.memory_budget_bytes is None:
            return DEFAULT_MEMORY_BUDGET_BYTES
        return self.memory_budget_bytes

    def __post_init__(self):
        check_num_mid_splits(self.num_mid_splits)
        _check_positive_or_none("num_partitions", self.num_partitions, "Spark's default")
        if not isinstance(self.task_buffer_bytes, int) or self.task_buffer_bytes < 0:
            raise InvalidParameterError(
                f"task_buffer_bytes must be a non-negative integer, got {self.task_buffer_bytes!r}")
        _check_positive_or_none("memory_budget_bytes", self.memory_budget_bytes,
                                "the default, a quarter of the executor memory")
        _check_positive_or_none("num_cores", self.num_cores, "Spark's defaultParallelism")


def _check_positive_or_none(name: str, value, none_means: str) -> None:
    """Raise :class:`InvalidParameterError` unless ``value`` is None or an int >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise InvalidParameterError(
            f"{name} must be a positive integer or None ({none_means}), got {value!r}")


def sum_partials(partials, grid):
    """Sum partial blocks by key into ``grid``'s partitions: one shuffle, no map-side combine.

    Every strategy that calls this emits at most one partial per key from each task, so
    ``reduceByKey``'s map-side combine would find nothing to combine and only cost time (and,
    with blocks of megabytes, spills by PySpark's ``ExternalMerger`` above
    ``spark.python.worker.memory``). The result keeps ``grid`` as its partitioner.
    """
    return partials.partitionBy(grid.num_partitions, grid).mapPartitions(
        bk.sum_by_key, preservesPartitioning=True)
