"""``driver``: both operands are arrays the driver holds and the master is local.

The fastest path for a block is the one it need not take. When ``A`` and ``B`` came from
``from_numpy`` (the driver holds them, :class:`~blockmatrix.sources.DriverArray`) and the
master is local (Spark's tasks would run on the driver's own cores), ``C = A @ B`` is computed
where the operands already are: numpy's BLAS on every core for dense arrays, scipy.sparse for
sparse ones (CSR x CSR stays CSR, a dense factor makes C dense). No task receives an operand, no
block is shuffled. A dense C reaches Spark without a write: BLAS computes it straight into an
in-memory file held with the product (:func:`blockmatrix.held.memory_file`), which one task
per partition of Spark's result grid reads its blocks from (on a machine without one, C is
written into a file of a folder held with the product, as :func:`blockmatrix.spilled.spill_array`
does; at n = 8192 that write took 1.6 s of 8.2). A sparse C's CSR blocks are parallelized. Either
way the product has the blocks every other strategy would give it (a block at every key that
receives a product), and it stays an array the driver holds: a product of it is again a
``driver`` candidate.

Elsewhere the plan is :attr:`~DriverPlan.unavailable` and ``auto`` passes it over, saying why:
an operand that is not the driver's, a cluster master (its executors' cores are not the
driver's; ``options.driver_memory_bytes`` is None), or a product larger than the memory the
driver may give it. The predicted time is the multiply (dense: on every core at
:data:`blockmatrix.cost.DENSE_FLOPS_PER_CORE_S` per core; sparse: scipy's one core at the
sparse rate), C's trip to the tasks (written and read back at the file rate, or a sparse C
pickled at the broadcast rate), and one stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import scipy.sparse as sp

from .. import blocks as bk
from .. import cost, held
from ..layout import BlockLayout, check_multiplicable, product_keys, shape_only
from ..plan import MultiplyOptions, MultiplyPlan
from ..planner import result_grid
from ..sources import DriverArray
from ..spilled import memory_file_array, memory_file_source, spill_array
from ..units import format_bytes
from ._common import LEFT, FileReader, reference_folder
from .registry import Strategy, register


def unavailable_reason(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> str:
    """Why the product cannot be computed on the driver ("" when it can)."""
    for name, layout in (("A", left), ("B", right)):
        if layout.source_kind != "driver":
            return (f"{name} is not an array the driver holds ({layout.source_kind}): the "
                    f"driver strategy multiplies from_numpy operands")
    if options.driver_memory_bytes is None:
        return ("the master is not local: its executors' cores are not the driver's, so the "
                "product is computed by Spark's tasks")
    need = result_bytes(left, right)
    if need > options.driver_memory_bytes:
        return (f"C ({format_bytes(need)}) is more than the driver may hold for it "
                f"(driver_memory_bytes {format_bytes(options.driver_memory_bytes)})")
    return ""


def is_dense(layout: BlockLayout) -> bool:
    """Whether a driver-held operand is a dense array."""
    return not sp.issparse(layout.source.array)


def result_bytes(left: BlockLayout, right: BlockLayout) -> int:
    """Bytes of C: dense when a factor is dense (as numpy and scipy make it), else its blocks'.

    A sparse C's bytes are the planners' prediction of its blocks (:func:`cost.result_blocks`).
    """
    if left.source_kind == right.source_kind == "driver" and not (
            is_dense(left) or is_dense(right)):
        return int(sum(cost.result_blocks(left, right)[2]))
    return left.shape[0] * right.shape[1] * cost.result_itemsize(left, right)


class Product:
    """What :func:`execute` computed, for the product's layout: C and its blocks' bytes."""

    def __init__(self):
        self.array = None
        self.block_nbytes: dict = {}


@dataclass(frozen=True, kw_only=True)
class DriverPlan(MultiplyPlan):
    """The product computed on the driver, and how C reaches Spark.

    Parameters
    ----------
    result_bytes : int
        C's bytes, held by the driver (with the product) and read by the tasks.
    dense_result : bool
        Whether C is dense (a factor is dense): written to a file, else parallelized.
    both_dense : bool
        Whether both operands are dense arrays: BLAS on every core, computing C in place.
    why_unavailable : str
        Why the plan cannot run ("" when it can).
    product : Product
        Filled by :func:`execute`: C, which the product's layout keeps as its source.
    """

    result_bytes: int
    dense_result: bool
    both_dense: bool = False
    why_unavailable: str = ""
    product: Product = field(default_factory=Product, repr=False, compare=False)

    @property
    def unavailable(self) -> str:
        """Why the plan cannot run on these operands ("" when it can)."""
        return self.why_unavailable

    @property
    def lineage_operands(self) -> tuple[bool, bool]:
        """Neither operand's blocks RDD: the driver multiplies its own arrays."""
        return False, False

    @property
    def note(self) -> str:
        """Where the product is computed, and how its blocks reach Spark."""
        if self.unavailable:
            return f"not possible: {self.unavailable}"
        if self.dense_result:
            where = ("computed into an in-memory file" if self.spilled_bytes == 0
                     else "written once to a file")
            return (f"computed on the driver from its own arrays (local master), numpy's BLAS "
                    f"on every core; C ({format_bytes(self.result_bytes)}) {where} its tasks "
                    f"read, no shuffle")
        return (f"computed on the driver from its own arrays (local master) by scipy.sparse; "
                f"C's CSR blocks ({format_bytes(self.result_bytes)}) parallelized, no shuffle")

    def seconds_terms(self, cores: int, rates: cost.Rates) -> dict[str, float]:
        """The driver's multiply, C's trip to the tasks, one stage.

        A dense product uses every core (BLAS), a sparse one scipy's single thread; a dense C
        is read by the tasks (and first written, without in-memory files) at the file rate, a
        sparse one pickled at the broadcast rate.
        """
        multiply = rates.compute_scale(self) * self.compute_seconds
        if self.dense_result:
            trip = ((self.read_bytes + self.spilled_bytes)
                    / (rates.disk_bytes_per_core_s * cores))
        else:
            trip = self.result_bytes / rates.broadcast_bytes_per_s
        return {"stages": cost.STAGE_SECONDS,
                "driver multiply": multiply / (cores if self.both_dense else 1),
                "C to the tasks": trip}

    def result_layout(self, num_partitions: int) -> BlockLayout | None:
        """C's layout once executed, with C as its source (the driver holds it)."""
        if self.product.array is None:
            return None
        return BlockLayout(self.result_shape, self.left.rows_per_block, self.right.cols_per_block,
                           dict(self.product.block_nbytes), self.product.array.dtype,
                           num_partitions, {key: self.grid(key) for key in
                                            self.product.block_nbytes},
                           DriverArray(self.product.array))

    def __str__(self) -> str:
        return "\n".join([super().__str__(), f"  note: {self.note}"])


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> DriverPlan:
    """The driver's product, from shapes alone; unavailable unless both are its own arrays."""
    check_multiplicable(left, right)
    why = unavailable_reason(left, right, options)
    grid = result_grid(left, right, options.num_partitions)
    m, k = left.shape
    p = right.shape[1]
    dense = not why and (is_dense(left) or is_dense(right))
    both_dense = not why and is_dense(left) and is_dense(right)
    flops = 2 * m * k * p
    c_bytes = 0 if why else result_bytes(left, right)
    return DriverPlan(
        strategy="driver", left=left, right=right, grid=grid, num_tasks=grid.num_partitions,
        shuffles=(), max_task_input_bytes=0,
        max_task_memory_bytes=max(cost.grid_bytes(grid, *cost.result_blocks(left, right)),
                                  default=0),
        max_task_output_bytes=0, flops=0 if why else flops,
        compute_seconds=(0.0 if why else flops / cost.DENSE_FLOPS_PER_CORE_S if both_dense
                         else cost.ProductModel(left, right).total_seconds()),
        read_bytes=c_bytes if dense else 0,
        spilled_bytes=c_bytes if dense and not (both_dense and held.MEMORY_FILES) else 0,
        result_bytes=c_bytes, dense_result=dense, both_dense=both_dense, why_unavailable=why)


def operand_array(source: DriverArray):
    """The driver's array as the operand reads it (transposed when the matrix is)."""
    return source.array.T if source.transposed else source.array


def driver_product(a, b, shape: tuple[int, int], out: np.ndarray | None = None):
    """``a @ b`` as numpy and scipy make it: dense if a factor is dense, else CSR.

    ``out``, a zeroed array of C's shape and dtype (:func:`result_dtype`), receives a dense
    product of two dense factors (BLAS writes into it; no other copy of C is made).
    """
    dtype = result_dtype(a, b)
    if sp.issparse(a) and sp.issparse(b):
        return sp.csr_matrix(a @ b, dtype=dtype)
    if not (sp.issparse(a) or sp.issparse(b)):
        if not (a.size and b.size):
            return np.zeros(shape, dtype=dtype) if out is None else out
        # Non-finite values propagate as in numpy, with no warning, as from every strategy
        # whose BLAS runs in Spark's workers: a product must not depend on where it ran.
        with np.errstate(invalid="ignore", over="ignore"):
            return np.matmul(a, b, dtype=dtype, out=out)
    return np.asarray(a @ b, dtype=dtype)


def result_dtype(a, b) -> np.dtype:
    """C's dtype, as numpy and scipy.sparse promote the factors'."""
    return np.result_type(a.dtype, b.dtype)


def read_result_blocks(keys, source, rows_per_block: int, cols_per_block: int):
    """The blocks ``keys`` of C from the file the driver wrote (executor side)."""
    with FileReader({LEFT: (source, rows_per_block, cols_per_block)}) as reader:
        for key in keys:
            yield key, reader.read(LEFT, key)


def execute(plan: DriverPlan, left, right, options: MultiplyOptions):
    """Multiply on the driver; return the RDD of C's blocks at every key receiving a product.

    BLAS writes a dense C into an in-memory file its tasks read (or C is written once to a
    file, without one); a sparse C's blocks are parallelized.
    """
    plan.check_runnable()
    sc = left.context
    a, b = (operand_array(layout.source) for layout in (plan.left, plan.right))
    fd = held.memory_file(plan.result_bytes) if plan.both_dense else None
    out = None if fd is None else memory_file_array(fd, plan.result_shape, result_dtype(a, b))
    c = driver_product(a, b, plan.result_shape, out)
    rows, cols = plan.left.rows_per_block, plan.right.cols_per_block
    keys = sorted(product_keys(plan.left, plan.right))
    runs = [[] for _ in range(plan.grid.num_partitions)]
    for key in keys:
        runs[plan.grid(key)].append(key)
    held_c = DriverArray(c)
    if sp.issparse(c):
        blocks = {key: held_c.block(*key, rows, cols) for key in keys}
        plan.product.block_nbytes = {key: bk.nbytes(b) for key, b in blocks.items()}
        rdd = sc.parallelize([[(key, blocks[key]) for key in run] for run in runs],
                             len(runs)).flatMap(_same)
    else:
        shell = shape_only(plan.result_shape, rows, cols, c.dtype)
        plan.product.block_nbytes = {key: shell.dense_nbytes(*key) for key in keys}
        source = (spill_array(reference_folder(sc, options), held_c) if fd is None
                  else memory_file_source(fd, c))
        read = partial(read_result_blocks, source=source, rows_per_block=rows,
                       cols_per_block=cols)
        rdd = sc.parallelize(runs, len(runs)).flatMap(read)
    plan.product.array = c
    return rdd


def _same(x):
    return x


STRATEGY = register(Strategy(
    name="driver", plan=plan, execute=execute, plan_type=DriverPlan,
    summary="on the driver: both operands its own arrays and a local master, multiplied "
            "where they are (numpy's BLAS on every core, or scipy.sparse), no shuffle",
    operand_sources=("driver",)))
