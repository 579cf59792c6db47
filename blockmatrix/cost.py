"""The cost model shared by every planner: block sizes, fill, flops, per-task loads, seconds.

Sizes are predicted from block byte sizes alone (exact for dense blocks; for CSR x CSR
products an estimate, since their fill cannot be known without the data). Seconds come from the
reference machine's rates, fitted to the dense and long-inner rows of ``jobs/benchmark.py``
(README, "Performance"), where they predict the measured times within about 15%:

- every stage costs :data:`STAGE_SECONDS` (scheduling, starting the tasks' Python pipelines);
  a plan has one stage more than it has shuffles, and one more for a broadcast's collect;
  every shuffle costs :data:`SHUFFLE_SECONDS` more (its files, fetches and Python workers on
  both sides), however few bytes it moves;
- a shuffle's bytes move at :data:`SHUFFLE_BYTES_PER_CORE_S` per core: pickled by a Python
  worker, written and read back by the JVM, unpickled by another worker;
- a broadcast operand moves at :data:`BROADCAST_BYTES_PER_S`, once, from the driver, after a
  collect at :data:`COLLECT_BYTES_PER_S` (its own stage) when its blocks live only in Spark;
- bytes tasks read from the operands' files move at :data:`FILE_READ_BYTES_PER_CORE_S` per
  core;
- compute takes ``max(busiest task, all products / cores)`` seconds, so a plan whose work sits
  in fewer tasks than there are cores pays for the idle ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from .layout import BlockLayout, Key

#: Bytes of a CSR index (scipy uses int32 indices below 2**31 non-zeros).
INDEX_BYTES = 4

#: Bytes a pickled block costs in a PySpark shuffle beyond its buffers (key, tuple, header).
RECORD_OVERHEAD_BYTES = 160

#: Single-core rates of the reference machine (2-core x86_64; numpy's OpenBLAS for dense
#: blocks, scipy.sparse for CSR ones).
DENSE_FLOPS_PER_CORE_S = 40e9
SPARSE_FLOPS_PER_CORE_S = 1e9

#: Fixed cost of one stage, seconds.
STAGE_SECONDS = 0.1
#: Fixed cost of one shuffle on top of its stages, seconds.
SHUFFLE_SECONDS = 0.15
#: Shuffle throughput per core (Python pickling, JVM shuffle write and read, unpickling).
SHUFFLE_BYTES_PER_CORE_S = 60e6
#: Collect throughput (executors to the driver, serial; DESIGN.md: 143 MB/s).
COLLECT_BYTES_PER_S = 143e6
#: Broadcast throughput from the driver (pickled once, read by every worker). Together with a
#: collect this is the 90 MB/s fitted to the benchmark's broadcast rows.
BROADCAST_BYTES_PER_S = 243e6
#: Per-core read rate of HDF5 blocks by tasks (``read_direct`` into a fresh buffer, page cache).
FILE_READ_BYTES_PER_CORE_S = 3.8e9

Triple = tuple[int, int, int]

# ---------------------------------------------------------------------- sizes


def block_density(layout: BlockLayout, key: Key) -> float | None:
    """Fill of a stored block: None for a dense block, else the CSR's estimated density.

    A block whose byte size equals the dense size is taken as dense; otherwise it is CSR with
    ``nnz * (itemsize + 4) + (rows + 1) * 4`` bytes.

    >>> lay = BlockLayout((4, 4), 4, 4, {(0, 0): 128})
    >>> block_density(lay, (0, 0)) is None
    True
    >>> lay = BlockLayout((4, 4), 4, 4, {(0, 0): 4 * 12 + 5 * 4})
    >>> block_density(lay, (0, 0))
    0.25
    """
    size = layout.block_nbytes[key]
    if size == layout.dense_nbytes(*key):
        return None
    rows, cols = layout.block_shape(*key)
    nnz = max(0, size - (rows + 1) * INDEX_BYTES) / (layout.dtype.itemsize + INDEX_BYTES)
    return min(1.0, nnz / max(1, rows * cols))


def product_density(a: float | None, b: float | None, inner: int) -> float | None:
    """Density of a block product: None (dense) if either factor is dense.

    For CSR x CSR, independent fill: ``1 - (1 - a b) ** inner``.

    >>> product_density(None, 0.1, 10) is None
    True
    >>> round(product_density(0.1, 0.1, 10), 4)
    0.0956
    """
    if a is None or b is None:
        return None
    return 1.0 - (1.0 - a * b) ** inner


def accumulated_nbytes(rows: int, cols: int, itemsize: int, densities) -> int:
    """Bytes of a sum of product blocks of the given densities (None = dense).

    >>> accumulated_nbytes(2, 2, 8, [None, 0.5])
    32
    >>> accumulated_nbytes(10, 10, 8, [0.5])
    644
    """
    densities = list(densities)
    if any(d is None for d in densities):
        return rows * cols * itemsize
    empty = 1.0
    for d in densities:
        empty *= 1.0 - d
    nnz = round(rows * cols * (1.0 - empty))
    return nnz * (itemsize + INDEX_BYTES) + (rows + 1) * INDEX_BYTES


def result_itemsize(left: BlockLayout, right: BlockLayout) -> int:
    """Bytes per element of the product."""
    return np.result_type(left.dtype, right.dtype).itemsize


# ---------------------------------------------------------------------- block products


def block_products(left: BlockLayout, right: BlockLayout) -> Iterator[Triple]:
    """Every block product ``A[i, k] @ B[k, j]`` of stored blocks, as ``(i, k, j)``.

    >>> lay = BlockLayout((3, 3), 2, 2, {(0, 0): 32, (1, 1): 8, (0, 1): 16})
    >>> sorted(block_products(lay, lay))
    [(0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1)]
    """
    cols_of_row = right.cols_of_row
    for i, k in left.keys:
        for j in cols_of_row.get(k, ()):
            yield i, k, j


def block_product_flops(left: BlockLayout, right: BlockLayout) -> Iterator[tuple[Triple, int]]:
    """``((i, k, j), 2 r n c)`` for every block product of stored blocks.

    >>> lay = BlockLayout((3, 3), 2, 2, {(0, 0): 32, (1, 1): 8})
    >>> list(block_product_flops(lay, lay))
    [((0, 0, 0), 16), ((1, 1, 1), 2)]
    """
    for i, k, j in block_products(left, right):
        rows, inner = left.block_shape(i, k)
        yield (i, k, j), 2 * rows * inner * right.block_shape(k, j)[1]


def dense_flops(left: BlockLayout, right: BlockLayout) -> int:
    """Flops of all block products, counting every stored block as dense (2 r c n each)."""
    return sum(flops for _, flops in block_product_flops(left, right))


def product_seconds(left: BlockLayout, right: BlockLayout) -> dict[Triple, float]:
    """Predicted single-core seconds of every block product ``A[i, k] @ B[k, j]``.

    A dense product is ``2 r n c`` flops at :data:`DENSE_FLOPS_PER_CORE_S`; with a CSR factor,
    its expected multiply-adds (``2 r n c`` times the density of each CSR factor) at
    :data:`SPARSE_FLOPS_PER_CORE_S`.

    >>> lay = BlockLayout((2000, 2000), 1000, 1000, {(0, 0): 8_000_000, (0, 1): 8_000_000})
    >>> product_seconds(lay, lay)
    {(0, 0, 0): 0.05, (0, 0, 1): 0.05}
    """
    out = {}
    for (i, k, j), flops in block_product_flops(left, right):
        a, b = block_density(left, (i, k)), block_density(right, (k, j))
        if a is None and b is None:
            out[(i, k, j)] = flops / DENSE_FLOPS_PER_CORE_S
        else:
            out[(i, k, j)] = flops * (a or 1.0) * (b or 1.0) / SPARSE_FLOPS_PER_CORE_S
    return out


def busiest_task_seconds(products: Mapping[Triple, float], task_of: Callable) -> float:
    """Compute seconds of the busiest task when product ``(i, k, j)`` runs in ``task_of(i, k, j)``.

    >>> busiest_task_seconds({(0, 0, 0): 1.0, (0, 1, 0): 2.0, (1, 0, 0): 0.5},
    ...                      lambda i, k, j: i)
    3.0
    """
    per_task: dict = defaultdict(float)
    for key, seconds in products.items():
        per_task[task_of(*key)] += seconds
    return max(per_task.values(), default=0.0)


def compute_estimate(left: BlockLayout, right: BlockLayout, task_of: Callable) -> dict:
    """``flops``, ``compute_seconds`` and ``max_task_compute_seconds`` of a plan, as kwargs.

    ``task_of(i, k, j)`` is the task that computes product ``A[i, k] @ B[k, j]``.
    """
    products = product_seconds(left, right)
    return {"flops": dense_flops(left, right),
            "compute_seconds": sum(products.values()),
            "max_task_compute_seconds": busiest_task_seconds(products, task_of)}


# ---------------------------------------------------------------------- per-task accounting


class TaskLoads:
    """What each task of a shuffle receives: its input bytes and its largest ``k``-slice.

    A task that takes its inputs one inner index ``k`` at a time (``inner``, ``outer``) holds
    its accumulators, one ``k``-slice, and at most ``buffer_bytes`` of inputs not yet used (the
    rest waits on local disk): :meth:`memory`.

    >>> loads = TaskLoads(2)
    >>> for task, k, size in ((0, 0, 10), (0, 1, 30), (1, 0, 5)):
    ...     loads.add(task, k, size)
    >>> loads.input, loads.largest_slice()
    ([40, 5], [30, 5])
    >>> loads.memory([100, 0], buffer_bytes=20)
    [150, 10]
    """

    def __init__(self, num_tasks: int):
        self.input = [0] * num_tasks
        self._slices: dict[tuple[int, int], int] = defaultdict(int)

    def add(self, task: int, k: int, nbytes: int) -> None:
        """Count ``nbytes`` delivered to ``task`` for inner index ``k``."""
        self.input[task] += nbytes
        self._slices[(task, k)] += nbytes

    def largest_slice(self) -> list[int]:
        """Bytes of every task's largest ``k``-slice."""
        out = [0] * len(self.input)
        for (task, _), size in self._slices.items():
            out[task] = max(out[task], size)
        return out

    def memory(self, output: Iterable[int], buffer_bytes: int) -> list[int]:
        """Peak data bytes of every task: accumulators + buffered inputs + one ``k``-slice."""
        return [out + min(inp, buffer_bytes) + largest for out, inp, largest in
                zip(output, self.input, self.largest_slice(), strict=True)]


# ---------------------------------------------------------------------- seconds


def predicted_seconds(plan, cores: int) -> float:
    """Predicted wall time of a plan on ``cores`` task slots (see the module's cost model).

    ``plan`` is any :class:`~blockmatrix.plan.MultiplyPlan`.
    """
    cores = max(1, cores)
    stages = plan.num_shuffles + 1 + (1 if plan.collected_bytes else 0)
    return (stages * STAGE_SECONDS + plan.num_shuffles * SHUFFLE_SECONDS
            + plan.shuffle_bytes / (SHUFFLE_BYTES_PER_CORE_S * cores)
            + plan.collected_bytes / COLLECT_BYTES_PER_S
            + plan.broadcast_bytes / BROADCAST_BYTES_PER_S
            + plan.read_bytes / (FILE_READ_BYTES_PER_CORE_S * cores)
            + max(plan.max_task_compute_seconds, plan.compute_seconds / cores))
