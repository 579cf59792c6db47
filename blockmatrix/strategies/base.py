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
        n = self.num_partitions
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InvalidParameterError(
                f"num_partitions must be a positive integer or None (Spark's default), got {n!r}")
        if not isinstance(self.task_buffer_bytes, int) or self.task_buffer_bytes < 0:
            raise InvalidParameterError(
                f"task_buffer_bytes must be a non-negative integer, got {self.task_buffer_bytes!r}")
        budget = self.memory_budget_bytes
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                                   or budget < 1):
            raise InvalidParameterError(
                f"memory_budget_bytes must be a positive integer or None (the default, a quarter "
                f"of the executor memory), got {budget!r}")
        cores = self.num_cores
        if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int)
                                  or cores < 1):
            raise InvalidParameterError(
                f"num_cores must be a positive integer or None (Spark's defaultParallelism), "
                f"got {cores!r}")


def sum_partials(partials, grid):
    """Sum partial blocks by key into ``grid``'s partitions: one shuffle, no map-side combine.

    Every strategy that calls this emits at most one partial per key from each task, so
    ``reduceByKey``'s map-side combine would find nothing to combine and only cost time (and,
    with blocks of megabytes, spills by PySpark's ``ExternalMerger`` above
    ``spark.python.worker.memory``). The result keeps ``grid`` as its partitioner.
    """
    return partials.partitionBy(grid.num_partitions, grid).mapPartitions(
        bk.sum_by_key, preservesPartitioning=True)
