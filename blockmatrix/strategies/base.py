"""Options shared by every strategy."""

from __future__ import annotations

from dataclasses import dataclass

from .. import blocks as bk
from .._checks import check_int
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
        checked = {
            "num_mid_splits": check_num_mid_splits(self.num_mid_splits),
            "num_partitions": check_int(self.num_partitions, "num_partitions",
                                        allow_none="Spark's default"),
            "task_buffer_bytes": check_int(self.task_buffer_bytes, "task_buffer_bytes",
                                           minimum=0),
            "memory_budget_bytes": check_int(
                self.memory_budget_bytes, "memory_budget_bytes",
                allow_none="the default, a quarter of the executor memory"),
            "num_cores": check_int(self.num_cores, "num_cores",
                                   allow_none="Spark's defaultParallelism"),
        }
        for name, value in checked.items():  # numpy integers are stored as ints
            object.__setattr__(self, name, value)


def sum_partials(partials, grid):
    """Sum partial blocks by key into ``grid``'s partitions: one shuffle, no map-side combine.

    Every strategy that calls this emits at most one partial per key from each task, so
    ``reduceByKey``'s map-side combine would find nothing to combine and only cost time (and,
    with blocks of megabytes, spills by PySpark's ``ExternalMerger`` above
    ``spark.python.worker.memory``). The result keeps ``grid`` as its partitioner.
    """
    return partials.partitionBy(grid.num_partitions, grid).mapPartitions(
        bk.sum_by_key, preservesPartitioning=True)
