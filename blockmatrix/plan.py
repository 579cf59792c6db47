"""Typed plans: what a strategy predicts before anything moves, and the options it plans with.

Every strategy's ``plan`` returns a subclass of :class:`MultiplyPlan` with its own fields (the
inner product's destinations, the broadcast side, ...). What ``auto`` and the reports need of
any plan is an attribute of the base type: bytes shuffled and broadcast, whether it fits a
memory budget, the note it prints, the result grid, the predicted seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import cost
from ._checks import check_int
from .errors import InvalidParameterError
from .layout import BlockLayout, product_keys, result_layout
from .partitioner import GridPartitioner
from .sparkconf import DEFAULT_MEMORY_BUDGET_BYTES, DEFAULT_TASK_BUFFER_BYTES
from .units import format_bytes


def check_num_mid_splits(num_mid_splits) -> int:
    """Return ``num_mid_splits`` as an int, or raise if it is not a positive integer."""
    return check_int(num_mid_splits, "num_mid_splits",
                     meaning="1 = no split of the inner dimension")


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
        :data:`~blockmatrix.sparkconf.DEFAULT_MEMORY_BUDGET_BYTES` (``multiply`` derives it
        from the executor memory).
    num_cores : int, optional
        Tasks the cluster runs at once, for predicted times. None: 1 (``multiply`` and
        ``explain_multiply`` pass Spark's ``defaultParallelism``).
    by_reference : bool
        Shuffle the blocks that live only in Spark by reference (:mod:`blockmatrix.spilled`):
        written once to files in ``reference_parent``, read by the tasks that need them, only
        references through Spark's shuffle. Strategies that cannot ignore it.
    reference_parent : str, optional
        The folder every task can read where such files go; None when there is none
        (``multiply`` takes it from Spark: :func:`blockmatrix.sparkconf.reference_parent`).
        ``auto`` weighs by-reference variants only when there is one.
    driver_memory_bytes : int, optional
        Memory the driver may give a product it computes itself from its own arrays (the
        ``driver`` strategy); None, where that strategy is unavailable, unless the master is
        local (``multiply`` takes it from Spark: :func:`blockmatrix.sparkconf.driver_memory`).
    local_master : bool
        Whether the tasks run on the driver's machine (a local master): the driver's arrays
        may then reach them through in-memory files (:func:`blockmatrix.held.memory_file`).
        False, the safe default, puts such arrays in ``reference_parent`` (``multiply`` takes
        it from Spark: :func:`blockmatrix.sparkconf.is_local_master`).
    """

    num_partitions: int | None = None
    num_mid_splits: int = 1
    task_buffer_bytes: int = DEFAULT_TASK_BUFFER_BYTES
    memory_budget_bytes: int | None = None
    num_cores: int | None = None
    by_reference: bool = False
    reference_parent: str | None = None
    driver_memory_bytes: int | None = None
    local_master: bool = False

    @classmethod
    def merged(cls, defaults: dict, given: dict) -> MultiplyOptions:
        """Options from ``given``, where a value is missing or None from ``defaults``.

        >>> MultiplyOptions.merged({"num_cores": 4}, {"num_cores": None, "num_partitions": 2})
        MultiplyOptions(num_partitions=2, num_mid_splits=1, task_buffer_bytes=536870912, \
memory_budget_bytes=None, num_cores=4, by_reference=False, reference_parent=None, \
driver_memory_bytes=None, local_master=False)
        """
        return cls(**{**defaults, **{k: v for k, v in given.items() if v is not None}})

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
            "driver_memory_bytes": check_int(self.driver_memory_bytes, "driver_memory_bytes",
                                             allow_none="no product computed on the driver"),
        }
        for name, value in checked.items():  # numpy integers are stored as ints
            object.__setattr__(self, name, value)
        if not isinstance(self.by_reference, bool | np.bool_):
            raise InvalidParameterError(
                f"by_reference must be True or False, got {self.by_reference!r}")
        object.__setattr__(self, "by_reference", bool(self.by_reference))


@dataclass(frozen=True)
class ShuffleEstimate:
    """Predicted volume of one shuffle stage."""

    name: str
    records: int
    bytes: int


@dataclass(frozen=True)
class Candidate:
    """One plan ``auto`` weighed: its label, strategy and what it was judged on."""

    label: str
    strategy: str
    predicted_seconds: float
    moved_bytes: int
    shuffles: int
    max_task_memory_bytes: int
    fits: bool


@dataclass(frozen=True, kw_only=True)
class MultiplyPlan:
    """A strategy's plan for ``A @ B`` and its predicted cost.

    Parameters
    ----------
    strategy : str
        Registry name of the strategy.
    left, right : BlockLayout
        The operands.
    grid : GridPartitioner
        Spark's partitioner of the result's block grid (the result RDD's partitioner when the
        strategy's last step partitions by it).
    num_tasks : int
        Tasks of the plan's widest stage.
    shuffles : tuple of ShuffleEstimate
        One entry per shuffle stage, in order.
    max_task_input_bytes : int
        Largest input a single task receives (shuffled or broadcast blocks).
    max_task_memory_bytes : int
        Largest memory a task holds at once for its data (accumulators plus the inputs it
        must hold together), not counting interpreter overhead.
    max_task_output_bytes : int
        Largest output of a single task.
    flops : int
        Floating-point operations of the block products, blocks counted as dense.
    compute_seconds : float
        Predicted single-core seconds of all block products (:class:`.cost.ProductModel`).
    max_task_compute_seconds : float
        Predicted compute seconds of the busiest task: with fewer tasks than cores, or uneven
        ones, the multiply cannot finish sooner than this.
    read_bytes : int
        Bytes the tasks read straight from files (no shuffle, no driver): the operands' files,
        and the blocks shuffled by reference.
    spilled_bytes : int
        Bytes the tasks write to files to shuffle blocks by reference (each block once).
    reason : str
        Why this plan was chosen (filled in by ``auto``).
    candidates : tuple of Candidate
        Every plan ``auto`` weighed (filled in by ``auto``).
    """

    strategy: str
    left: BlockLayout = field(repr=False)
    right: BlockLayout = field(repr=False)
    grid: GridPartitioner = field(repr=False)
    num_tasks: int
    shuffles: tuple[ShuffleEstimate, ...]
    max_task_input_bytes: int
    max_task_memory_bytes: int
    max_task_output_bytes: int
    flops: int
    compute_seconds: float = 0.0
    max_task_compute_seconds: float = 0.0
    read_bytes: int = 0
    spilled_bytes: int = 0
    reason: str = ""
    candidates: tuple[Candidate, ...] = field(default=(), repr=False, compare=False)

    @property
    def num_shuffles(self) -> int:
        """Number of shuffle stages."""
        return len(self.shuffles)

    @property
    def shuffle_bytes(self) -> int:
        """Predicted bytes written by all shuffles."""
        return sum(s.bytes for s in self.shuffles)

    @property
    def shuffle_records(self) -> int:
        """Predicted records written by all shuffles."""
        return sum(s.records for s in self.shuffles)

    @property
    def broadcast_bytes(self) -> int:
        """Bytes the plan broadcasts to every task (0 unless the strategy broadcasts)."""
        return 0

    @property
    def collected_bytes(self) -> int:
        """Bytes collected to the driver before the multiply (0 unless the strategy does)."""
        return 0

    @property
    def lineage_operands(self) -> tuple[bool, bool]:
        """Whether the product's blocks are computed from A's, B's blocks RDD.

        An operand collected to the driver (or read from its file) is not in the product's
        lineage: the product need not keep it, nor what it holds, alive. Every strategy reads
        a file-backed operand in its tasks, never through its blocks RDD.
        """
        return (self.left.source_kind != "file", self.right.source_kind != "file")

    @property
    def spark_input_bytes(self) -> int:
        """Bytes of the operands the tasks take from Spark: those read through their RDDs.

        Every stored block of an operand in the product's lineage (:attr:`lineage_operands`)
        crosses from the JVM into a Python worker once, whatever happens to it next; a
        file-backed operand's blocks are read from the file instead (:attr:`read_bytes`).
        """
        return sum(layout.nbytes for layout, read in zip((self.left, self.right),
                                                         self.lineage_operands, strict=True)
                   if read and layout.source_kind != "file")

    @property
    def moved_bytes(self) -> int:
        """Predicted bytes moved: the shuffles plus the broadcast operand."""
        return self.shuffle_bytes + self.broadcast_bytes

    @property
    def note(self) -> str:
        """One line the reports print under the plan's row ("" when there is nothing to say)."""
        return ""

    @property
    def result_shape(self) -> tuple[int, int]:
        """Shape of ``A @ B``."""
        return self.left.shape[0], self.right.shape[1]

    @property
    def chosen_by_auto(self) -> bool:
        """Whether ``auto`` chose this plan among others."""
        return bool(self.candidates)

    @property
    def unavailable(self) -> str:
        """Why the plan cannot run on these operands ("" when it can).

        A strategy that needs something of its operands (the out-of-core product needs both
        read from files) says so here; ``auto`` then passes it over and gives the reason.
        """
        return ""

    @property
    def result_partition_bytes(self) -> list[int]:
        """Predicted bytes of each partition of the product RDD (what an exit moves at once).

        The product's blocks partitioned by :attr:`grid`, as the strategies' last step leaves
        them; a strategy whose last step partitions otherwise overrides this.
        """
        return cost.grid_bytes(self.grid, *cost.result_blocks(self.left, self.right))

    def fits(self, budget_bytes: int) -> bool:
        """Whether the plan can run and its largest task stays within ``budget_bytes``."""
        return not self.unavailable and self.max_task_memory_bytes <= budget_bytes

    def check_runnable(self) -> None:
        """Raise :class:`~blockmatrix.errors.InvalidParameterError` if it must not run.

        The base plan refuses only an :attr:`unavailable` one; a strategy that refuses more
        (``broadcast`` over its budget) extends this, and ``execute`` calls it before any job.
        """
        if self.unavailable:
            raise InvalidParameterError(f"strategy={self.strategy!r} cannot run: "
                                        f"{self.unavailable}")
        for layout in (self.left, self.right):
            if layout.source_kind == "file":
                layout.source.check_unchanged()

    def predicted_seconds(self, cores: int, rates: cost.Rates = cost.DEFAULT_RATES) -> float:
        """Predicted wall time on ``cores`` task slots (:func:`.cost.predicted_seconds`)."""
        return cost.predicted_seconds(self, cores, rates)

    def seconds_terms(self, cores: int, rates: cost.Rates) -> dict[str, float]:
        """The predicted seconds by term; a plan that runs otherwise overrides this alone."""
        return cost.stage_seconds_terms(self, cores, rates)

    def result_layout(self, num_partitions: int) -> BlockLayout | None:
        """Layout of the product when it is known without a job (dense operands), else None.

        A product of dense operands has a dense block at every key that receives a product.
        """
        if not (self.left.is_dense and self.right.is_dense):
            return None
        shell = result_layout(self.left, self.right)
        return result_layout(self.left, self.right,
                             {key: shell.dense_nbytes(*key)
                              for key in product_keys(self.left, self.right)}, num_partitions)

    def __str__(self) -> str:
        lines = [
            f"  strategy: {self.strategy}",
            f"  A: {_describe(self.left)}",
            f"  B: {_describe(self.right)}",
            f"  shuffles: {self.num_shuffles}",
        ]
        for s in self.shuffles:
            lines.append(f"    {s.name}: {s.records} records, {format_bytes(s.bytes)}")
        lines.append(f"  read from files: {format_bytes(self.read_bytes)}")
        lines += [
            f"  largest task input: {format_bytes(self.max_task_input_bytes)}",
            f"  largest task memory: {format_bytes(self.max_task_memory_bytes)}",
            f"  largest task output: {format_bytes(self.max_task_output_bytes)}",
            f"  flops (dense count): {self.flops:.3e}",
            f"  compute: {self.compute_seconds:.3g} core-s predicted, busiest task "
            f"{self.max_task_compute_seconds:.3g} s",
        ]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        return "\n".join(lines)


def _describe(layout: BlockLayout) -> str:
    """One operand for a plan's printout, with the key collect that built its layout if any."""
    return (f"{layout.shape[0]}x{layout.shape[1]} in {layout.rows_per_block}x"
            f"{layout.cols_per_block} blocks ({len(layout.block_nbytes)} stored, "
            f"{format_bytes(layout.nbytes)})"
            + (f"; {layout.key_collect}" if layout.key_collect else ""))


def check_blocks_fit(left: BlockLayout, right: BlockLayout, budget_bytes: int) -> None:
    """Refuse blocks too large for the memory budget, naming the block size that fits.

    The smallest task of any strategy holds a block of A, one of B and one of C.

    >>> a = BlockLayout((100, 100), 50, 50, {})
    >>> check_blocks_fit(a, a, 1 << 20)
    >>> check_blocks_fit(a, a, 30_000)
    Traceback (most recent call last):
    ...
    blockmatrix.errors.InvalidParameterError: block sizes (A 50x50, B 50x50): ...
    """
    itemsize = max(np.dtype(left.dtype).itemsize, np.dtype(right.dtype).itemsize)
    r = min(left.rows_per_block, left.shape[0])
    m = min(left.cols_per_block, left.shape[1])
    c = min(right.cols_per_block, right.shape[1])
    need = (r * m + m * c + r * c) * itemsize
    if need <= budget_bytes:
        return
    fit = max(1, math.isqrt(budget_bytes // (3 * itemsize)))
    raise InvalidParameterError(
        f"block sizes (A {r}x{m}, B {m}x{c}): a task holds at least one block of A, one of B "
        f"and one of C ({r}x{c}), {need} bytes in "
        f"{np.result_type(left.dtype, right.dtype).name}, more than memory_budget_bytes "
        f"({budget_bytes}): use blocks of at most {fit}x{fit}, or raise memory_budget_bytes "
        f"to at least {need}")
