"""Whether a product fits Spark's configured memory, decided before any job runs.

A product that does not fit ends, without this check, in a JVM ``OutOfMemoryError`` (or
Spark's ``maxResultSize`` abort) after minutes of work, with a Java stack trace. The check
weighs what the plan and the exit move through the JVM heaps against
:class:`MemoryConf`, read from the SparkContext, and raises
:class:`~blockmatrix.errors.InsufficientMemoryError` with one line naming the setting to raise,
the value needed, the value configured, and the alternative that needs no more memory.

Where the bytes go (local mode: the driver's JVM is also the executor's, so everything below
lands in ``spark.driver.memory``):

- ``to_hdf5`` (:data:`STREAM`) computes the product into Spark's block store (persisted
  ``MEMORY_AND_DISK``) and then runs one job per partition (``toLocalIterator``): the task
  serializes the whole partition into one result (twice: the value, then its envelope), the
  driver deserializes it and hands it to Python. Each partition's result also counts against
  ``spark.driver.maxResultSize``.
- ``to_numpy`` / ``to_scipy`` (:data:`COLLECT`): every partition's result at once on the
  driver, their total against ``spark.driver.maxResultSize``.
- ``broadcast`` whose operand lives only in Spark collects it first (a :data:`COLLECT` of the
  operand); the broadcast itself is bounded by the plan's memory budget (a quarter of the
  heap, :meth:`~blockmatrix.plan.MultiplyPlan.check_runnable`).
- A task's blocks sit in its Python worker (the plan's ``max_task_memory_bytes``, bounded by
  the memory budget through ``auto`` and :func:`~blockmatrix.plan.check_blocks_fit`); the JVM
  side of a task streams records. In the measurements every strategy's multiply stages ran
  at the shipped 2g; every ``OutOfMemoryError`` came from an exit.

The factors are calibrated on the reference machine (OpenJDK 17, G1, ``local[2]``, the
shipped ``conf/spark-defaults.conf``, products of 8192 x 8192 float64): docs/usage.md,
"Memory check", has the runs behind :data:`STREAM_COPIES` and :data:`COLLECT_COPIES`. They
are heap per byte moved, not a count of the copies Spark makes: the copies are large single
arrays (the ``OutOfMemoryError`` stacks show one buffer allocated for a whole result), which G1
places in contiguous free regions beside the persisted product, so the heap runs out before the
bytes add up to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InsufficientMemoryError
from .sparkconf import is_local_master
from .units import format_bytes, parse_memory

#: Heap the JVM keeps for Spark itself (Spark's ``RESERVED_SYSTEM_MEMORY_BYTES``).
RESERVED_BYTES = 300 << 20

#: Heap a ``to_hdf5`` partition needs, in multiples of its bytes, on top of the reserve and
#: the persisted product. Measured at 2g beside a persisted 512 MiB product: partitions of
#: 200 MiB do not stream (so at least 6.2); 128 MiB did in the calibration runs (at most 9.7)
#: but once, in a full test run, lost a task result (``TaskResultLost``) on the way to the
#: driver. 10 refuses those 128 MiB partitions: the 8192 product goes in partitions of 72 MiB.
STREAM_COPIES = 10

#: Heap a collect needs, in multiples of the collected bytes, on top of the reserve.
#: Measured at 2g: 256 MiB collects (so at most 6.8), 512 MiB does not (at least 3.4).
COLLECT_COPIES = 4

#: What an exit moves: one partition at a time, or everything at once.
STREAM, COLLECT = "stream", "collect"

#: Strategies whose product is partitioned by ``result_grid(..., num_partitions)``.
GRID_FOLLOWS_NUM_PARTITIONS = ("inner", "outer", "broadcast")

#: Spark's defaults for the settings read here.
SPARK_DEFAULTS = {"spark.driver.memory": "1g", "spark.driver.maxResultSize": "1g",
                  "spark.memory.fraction": "0.6"}


@dataclass(frozen=True)
class MemoryConf:
    """The memory settings of a Spark configuration, in bytes.

    Parameters
    ----------
    local : bool
        A local master: the executors run in the driver's JVM.
    driver_bytes : int
        ``spark.driver.memory`` (the driver's JVM heap; in local mode the executors' too).
    max_result_bytes : int
        ``spark.driver.maxResultSize``; 0 means no limit.
    memory_fraction : float
        ``spark.memory.fraction``: the share of the heap (after the reserve) Spark's block
        store and execution may take.
    """

    local: bool
    driver_bytes: int
    max_result_bytes: int
    memory_fraction: float = 0.6

    @classmethod
    def from_conf(cls, conf) -> MemoryConf:
        """Read a ``SparkConf`` (or any object with ``get(key, default)``, e.g. a dict).

        >>> c = MemoryConf.from_conf({"spark.master": "local[2]", "spark.driver.memory": "2g"})
        >>> c.local, c.driver_bytes >> 20, c.max_result_bytes >> 20
        (True, 2048, 1024)
        """
        def get(key):
            return conf.get(key, None) or SPARK_DEFAULTS.get(key)

        return cls(local=is_local_master(conf),
                   driver_bytes=parse_memory(get("spark.driver.memory")),
                   max_result_bytes=parse_memory(get("spark.driver.maxResultSize")),
                   memory_fraction=float(get("spark.memory.fraction")))

    @classmethod
    def of(cls, sc) -> MemoryConf:
        """The settings of a running SparkContext."""
        return cls.from_conf(sc.getConf())

    @property
    def store_bytes(self) -> int:
        """Most of the driver's heap Spark's block store may fill (``spark.memory.fraction``)."""
        return int(max(0, self.driver_bytes - RESERVED_BYTES) * self.memory_fraction)


def _setting_value(nbytes: int) -> str:
    """``nbytes`` rounded up to a value a Spark memory setting takes (whole GiB above 1 GiB).

    >>> _setting_value(1500 << 20), _setting_value(700 << 20), _setting_value(1000 << 20)
    ('2g', '768m', '1g')
    """
    if nbytes > 896 << 20:
        return f"{math.ceil(nbytes / (1 << 30))}g"
    return f"{max(1, math.ceil(nbytes / (128 << 20))) * 128}m"


def _mib(nbytes: int) -> str:
    """Bytes in whole MiB, rounded up (a setting's value must not fall short of it).

    >>> _mib(3116 << 20), _mib((1 << 20) + 1)
    ('3116 MiB', '2 MiB')
    """
    return f"{-(-nbytes // (1 << 20))} MiB"


def _raise_line(setting: str, needed: int, configured: int, what: str, alternative: str) -> str:
    """The refusal's one line: what needs the memory, the setting, the values, the fix."""
    value = _setting_value(needed)
    more = parse_memory(value) - configured
    return (f"{what} needs {setting} >= {_mib(needed)} (configured {_mib(configured)}): "
            f"set {setting}={value} (+{_mib(more)})"
            + (f", or {alternative}" if alternative else ""))


def stream_need(partition_bytes: int, stored_bytes: int, conf: MemoryConf) -> int:
    """Driver heap ``to_hdf5`` needs: reserve, the persisted product, copies of a partition.

    The persisted product counts as far as Spark's block store would keep it in memory
    (``spark.memory.fraction`` of the heap; the rest goes to local disk), and only in local
    mode: on a cluster it is persisted by the executors.
    """
    stored = min(stored_bytes, conf.store_bytes) if conf.local else 0
    return RESERVED_BYTES + stored + STREAM_COPIES * partition_bytes


def collect_need(collected_bytes: int) -> int:
    """Driver heap a collect of ``collected_bytes`` needs (all results held at once)."""
    return RESERVED_BYTES + COLLECT_COPIES * collected_bytes


def check_stream(partition_bytes: int, total_bytes: int, conf: MemoryConf, *,
                 what: str = "to_hdf5", alternative: str = "") -> None:
    """Refuse a ``to_hdf5`` whose largest partition would not fit the driver.

    Parameters
    ----------
    partition_bytes : int
        The product's largest partition (one ``toLocalIterator`` job's result).
    total_bytes : int
        The whole product (persisted in the driver's block store while it is written).
    conf : MemoryConf
    what : str
        What the line says needs the memory.
    alternative : str
        The fix that needs no more memory (e.g. more partitions).

    >>> conf = MemoryConf(True, 2 << 30, 1 << 30)
    >>> check_stream(8 << 20, 512 << 20, conf)
    >>> check_stream(256 << 20, 512 << 20, conf)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    blockmatrix.errors.InsufficientMemoryError: to_hdf5 ... set spark.driver.memory=4g (+2048 MiB)
    """
    if conf.max_result_bytes and partition_bytes > conf.max_result_bytes:
        raise InsufficientMemoryError(_raise_line(
            "spark.driver.maxResultSize", partition_bytes, conf.max_result_bytes,
            f"{what} (largest partition {format_bytes(partition_bytes)}, one job's result)",
            alternative))
    need = stream_need(partition_bytes, total_bytes, conf)
    if need > conf.driver_bytes:
        raise InsufficientMemoryError(_raise_line(
            "spark.driver.memory", need, conf.driver_bytes,
            f"{what} (largest partition {format_bytes(partition_bytes)} through the driver's "
            f"JVM heap, {STREAM_COPIES}x its size"
            + (", beside the persisted product)" if conf.local else ")"),
            alternative))


def check_collect(collected_bytes: int, conf: MemoryConf, *, what: str = "to_numpy",
                  alternative: str = "") -> None:
    """Refuse a collect of ``collected_bytes`` the driver cannot hold.

    >>> conf = MemoryConf(True, 2 << 30, 1 << 30)
    >>> check_collect(64 << 20, conf)
    >>> check_collect(2 << 30, conf)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    blockmatrix.errors.InsufficientMemoryError: to_numpy ... spark.driver.maxResultSize ...
    """
    if conf.max_result_bytes and collected_bytes > conf.max_result_bytes:
        raise InsufficientMemoryError(_raise_line(
            "spark.driver.maxResultSize", collected_bytes, conf.max_result_bytes,
            f"{what} (collects {format_bytes(collected_bytes)} to the driver)", alternative))
    need = collect_need(collected_bytes)
    if need > conf.driver_bytes:
        raise InsufficientMemoryError(_raise_line(
            "spark.driver.memory", need, conf.driver_bytes,
            f"{what} (collects {format_bytes(collected_bytes)} into the driver's JVM heap, "
            f"{COLLECT_COPIES}x its size)", alternative))


def fewest_partitions(plan, partition_limit: int) -> int | None:
    """The fewest result partitions whose largest holds at most ``partition_limit`` bytes.

    None when no number does (a single block is larger), or when the plan's last step does
    not partition by the result grid (``num_partitions`` would not change it).
    """
    from .cost import grid_bytes, result_blocks
    from .planner import result_grid

    if partition_limit <= 0 or plan.strategy not in GRID_FOLLOWS_NUM_PARTITIONS or \
            plan.result_partition_bytes != plan_grid_bytes(plan):
        return None
    rows, cols, nbytes = result_blocks(plan.left, plan.right)
    if not len(nbytes) or int(nbytes.max()) > partition_limit:
        return None
    start = max(1, math.ceil(int(nbytes.sum()) / partition_limit))
    for suggested in range(start, start + len(nbytes) + 1):
        grid = result_grid(plan.left, plan.right, suggested)
        if max(grid_bytes(grid, rows, cols, nbytes)) <= partition_limit:
            return suggested
    return None


def plan_grid_bytes(plan) -> list[int]:
    """The product's bytes per partition of the plan's result grid."""
    from .cost import grid_bytes, result_blocks

    return grid_bytes(plan.grid, *result_blocks(plan.left, plan.right))


def stream_partition_limit(total_bytes: int, conf: MemoryConf) -> int:
    """The largest partition ``to_hdf5`` can stream with the configured driver memory."""
    heap = conf.driver_bytes - stream_need(0, total_bytes, conf)
    return min(conf.max_result_bytes or total_bytes, heap // STREAM_COPIES)


def check_plan(plan, conf: MemoryConf) -> None:
    """Refuse a plan whose broadcast operand the driver cannot collect.

    ``broadcast`` of an operand that lives only in Spark collects it to the driver first;
    the broadcast itself is bounded by the plan's memory budget
    (:meth:`~blockmatrix.plan.MultiplyPlan.check_runnable`), a task's blocks by
    :func:`~blockmatrix.plan.check_blocks_fit`.
    """
    collected = plan.collected_bytes
    if collected:
        check_collect(collected, conf, what=f"strategy={plan.strategy!r} (collects the "
                      f"broadcast operand, {format_bytes(collected)}, to the driver)",
                      alternative="use strategy='inner'")


def check_exit(plan, exit_kind: str, conf: MemoryConf, num_partitions_flag: str =
               "num_partitions", fallback: str = "") -> None:
    """Refuse a product whose exit (``STREAM`` or ``COLLECT``) the driver cannot take.

    Parameters
    ----------
    plan : MultiplyPlan
        The product's plan (its partitions' bytes, predicted from the operands' layouts).
    exit_kind : str
        :data:`STREAM` (``to_hdf5``) or :data:`COLLECT` (``to_numpy``, ``to_scipy``).
    conf : MemoryConf
    num_partitions_flag : str
        How the caller names the number of result partitions in the fix
        (``num_partitions`` for the library, ``--num-partitions`` for the job).
    fallback : str
        The alternative named when more partitions would not help (the job's: the
        out-of-core strategy).
    """
    parts = plan.result_partition_bytes
    total = int(sum(plan_grid_bytes(plan)))
    if exit_kind == COLLECT:
        check_collect(total, conf, what="to_numpy/to_scipy of this product",
                      alternative="write it with to_hdf5, which streams one partition at a "
                                  "time")
        return
    fewest = fewest_partitions(plan, stream_partition_limit(total, conf))
    alternative = (f"split the product into smaller partitions ({num_partitions_flag} >= "
                   f"{fewest})" if fewest else fallback)
    check_stream(max(parts, default=0), total, conf, alternative=alternative)


def check_matrix_exit(plan, layout, exit_kind: str, conf: MemoryConf) -> None:
    """:func:`check_exit` for a product; for another matrix, what its known layout tells.

    A matrix whose layout is not known without a job (``from_blocks``, a sum) is not
    checked: finding its sizes is itself a job.
    """
    if plan is not None and plan.strategy != "ooc":
        check_exit(plan, exit_kind, conf)
        return
    if layout is None:
        return
    if exit_kind == COLLECT:
        check_collect(layout.nbytes, conf, what="to_numpy/to_scipy of this matrix",
                      alternative="write it with to_hdf5, which streams one partition at a "
                                  "time")
    elif layout.key_partitions is not None:
        per_part: dict[int, int] = {}
        for key, part in layout.key_partitions.items():
            per_part[part] = per_part.get(part, 0) + layout.block_nbytes.get(key, 0)
        check_stream(max(per_part.values(), default=0), layout.nbytes, conf)
