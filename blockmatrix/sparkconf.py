"""What the planners read from a Spark configuration: the worker buffer and the memory budget.

Every default that stands in for a Spark setting lives here, so that a plan made without Spark
(from layouts alone) and one made inside ``BlockMatrix.multiply`` agree.
"""

from __future__ import annotations

import os

from ._spill import local_spill_dir
from .units import parse_memory

#: Default bytes a task may buffer in memory before spilling (PySpark's own default,
#: ``spark.python.worker.memory`` = 512m); jobs read the configured value.
DEFAULT_TASK_BUFFER_BYTES = 512 << 20

#: Memory budget of a task when none is given and no Spark configuration is at hand: a quarter
#: of Spark's default 1g executor memory.
DEFAULT_MEMORY_BUDGET_BYTES = 256 << 20

#: Fraction of the executor memory a task may use for its data by default.
BUDGET_FRACTION = 0.25


def worker_buffer_bytes(conf) -> int:
    """``spark.python.worker.memory`` of a SparkConf, in bytes (PySpark's default 512m)."""
    value = conf.get("spark.python.worker.memory", None)
    return parse_memory(value) if value else DEFAULT_TASK_BUFFER_BYTES


def is_local_master(conf) -> bool:
    """Whether ``conf`` (a SparkConf, or anything with its ``get``) names a local master.

    >>> is_local_master({"spark.master": "local[2]"}), is_local_master({})
    (True, False)
    """
    return (conf.get("spark.master", "") or "").startswith("local")


def default_memory_budget(conf) -> int:
    """A quarter of ``spark.executor.memory`` (``spark.driver.memory`` in local mode), in bytes.

    Spark's own default for either setting is 1g, giving 256 MiB. ``conf``: a SparkConf.
    """
    setting = "spark.driver.memory" if is_local_master(conf) else "spark.executor.memory"
    return int(parse_memory(conf.get(setting, "1g") or "1g") * BUDGET_FRACTION)


def multiply_defaults(sc, conf=None) -> dict:
    """The options ``multiply`` and ``explain_multiply`` take from Spark when none are given.

    ``task_buffer_bytes``, ``memory_budget_bytes``, ``num_cores`` (``defaultParallelism``),
    ``reference_parent`` (:func:`reference_parent`), ``driver_memory_bytes``
    (:func:`driver_memory`) and ``local_master`` (:func:`is_local_master`). ``conf``: the
    context's SparkConf when the caller already has it; else one is taken.
    """
    # One copy of the settings: each getConf() copies all of them over Py4J (12 ms here).
    conf = sc.getConf() if conf is None else conf
    return {"task_buffer_bytes": worker_buffer_bytes(conf),
            "memory_budget_bytes": default_memory_budget(conf),
            "num_cores": sc.defaultParallelism,
            "reference_parent": reference_parent(conf),
            "driver_memory_bytes": driver_memory(conf),
            "local_master": is_local_master(conf)}


def driver_memory(conf) -> int | None:
    """Memory the driver may give a product it computes itself; None off a local master.

    Half the memory this machine has available now (:func:`available_memory`): the driver
    holds the operands and C while the tasks that read C back run beside it. On a cluster
    master the executors' cores are not the driver's, and the ``driver`` strategy is off.
    ``conf``: a SparkConf.
    """
    if not is_local_master(conf):
        return None
    return available_memory() // 2


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``; free pages elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


#: Spark property naming a folder on storage every executor sees, where a cluster's tasks may
#: write blocks they shuffle by reference (:mod:`blockmatrix.spilled`).
REFERENCE_DIR_CONF = "spark.blockmatrix.referenceDir"


def reference_parent(conf) -> str | None:
    """Where tasks may write blocks shuffled by reference, or None when nowhere.

    :data:`REFERENCE_DIR_CONF` when set (a cluster's shared storage); else, for a local
    master, its spill folder (:func:`local_spill_folder`: every task runs on this machine);
    else None. ``conf``: a SparkConf.
    """
    return conf.get(REFERENCE_DIR_CONF, None) or local_spill_folder(conf)


def local_spill_folder(conf) -> str | None:
    """The folder a local master's tasks write shuffle and spill files in, or None.

    ``SPARK_LOCAL_DIRS`` wins over ``spark.local.dir`` (as in Spark), the default is the
    temporary folder; the first of a comma-separated list. None for a cluster master: its
    executors' folders are on other machines. ``conf``: a SparkConf.
    """
    if not is_local_master(conf):
        return None
    return local_spill_dir(conf.get("spark.local.dir", None))
