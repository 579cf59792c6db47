"""``explain_multiply``: every strategy's plan for ``A @ B``, from block keys and sizes alone.

No block data moves: the plans are made from :class:`~blockmatrix.planner.BlockLayout` s (a
:class:`~blockmatrix.BlockMatrix` gives its layout, which from ``from_numpy`` / ``from_hdf5``
is known without a job). ``print(report)`` shows one row per strategy, in the style of
opt_einsum's path report, and the line saying what ``auto`` picks and why.

>>> from blockmatrix.layout import BlockLayout
>>> dense = {(i, j): 100 * 100 * 8 for i in range(3) for j in range(3)}
>>> rows = {key: key[0] for key in dense}  # block row i in partition i
>>> a = BlockLayout((300, 300), 100, 100, dense, num_partitions=3, key_partitions=rows)
>>> report = explain_multiply(a, a, num_partitions=9)
>>> report.auto_choice
'broadcast'
>>> {name: plan.num_shuffles for name, plan in report.plans.items()}
{'inner': 1, 'outer': 2, 'pasa': 2, 'broadcast': 0, 'cuboid': 1, 'ooc': 0, 'driver': 0}
>>> report["ooc"].unavailable
'A is held only by Spark: the out-of-core product needs both operands read from HDF5 or Zarr'
>>> shuffle_elements(report["inner"]) == seed_inner_elements(300, 300, 300, 100)
True

The seed formulas count elements moved for ``C (n x k) = A (n x m) B (m x k)`` in ``r x r``
blocks, every block stored and every result block its own reducer:

>>> seed_inner_elements(n=300, m=300, k=300, r=100)
540000
>>> seed_outer_elements(n=300, m=300, k=300, r=100)
450000
>>> seed_pasa_elements(n=300, m=300, k=300, r=100)
810000
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._checks import check_int
from .bounds import layout_lower_bound_bytes
from .cost import RECORD_OVERHEAD_BYTES, Rates
from .errors import InvalidParameterError
from .layout import BlockLayout, check_multiplicable
from .plan import MultiplyOptions, MultiplyPlan
from .sparkconf import DEFAULT_TASK_BUFFER_BYTES, multiply_defaults
from .strategies import auto as _auto
from .strategies import candidate_strategies, get_strategy, multiplying_strategies
from .units import format_bytes, parse_memory

# ---------------------------------------------------------------------- seed formulas


def seed_inner_elements(n: int, m: int, k: int, r: int) -> int:
    """Elements an inner-product multiply shuffles: ``2 m n k / r``.

    A (``n x m``) is sent once per block column of C (``k / r`` times), B (``m x k``) once per
    block row of C (``n / r`` times).
    """
    return 2 * m * n * k // r


def seed_outer_elements(n: int, m: int, k: int, r: int) -> int:
    """Elements an outer-product multiply shuffles: ``m (n + k + n k / r)``.

    All of A and B once (``m n + m k``), then one ``n x k`` partial product per inner block
    (``m / r`` of them).
    """
    return m * (n + k) + m * n * k // r


def seed_pasa_elements(n: int, m: int, k: int, r: int) -> int:
    """Elements Marlin/PASA shuffles: ``2 m n k / r`` to join, plus ``m n k / r`` to reduce.

    A is replicated once per block column of B (``k / r`` times) and B once per block row of A
    (``n / r`` times), without checking for counterparts; each of the ``(n/r)(m/r)(k/r)``
    block products (``r x r``) is then shuffled to the reduce: ``3 m n k / r`` in all. When
    there is a single inner block (``m <= r``) Marlin skips the reduce: ``2 m n k / r``.
    """
    reduce = m * n * k // r if m > r else 0
    return 2 * m * n * k // r + reduce


def shuffle_elements(plan: MultiplyPlan, index: int | None = None) -> float:
    """Elements a plan shuffles (all shuffles, or shuffle ``index``), for dense blocks.

    Bytes minus the per-record overhead, divided by the element size of the shuffled blocks.
    """
    shuffles = plan.shuffles if index is None else (plan.shuffles[index],)
    itemsize = np.result_type(plan.left.dtype, plan.right.dtype).itemsize
    return sum(s.bytes - s.records * RECORD_OVERHEAD_BYTES for s in shuffles) / itemsize


# ---------------------------------------------------------------------- rates


def communication_bytes(plan: MultiplyPlan) -> int:
    """What a plan moves between tasks: shuffled, broadcast and read bytes."""
    return plan.moved_bytes + plan.read_bytes


# ---------------------------------------------------------------------- report


@dataclass
class MultiplyReport:
    """Every requested strategy's plan for ``A @ B`` and what ``auto`` would pick.

    Attributes
    ----------
    plans : dict[str, MultiplyPlan]
        Plan per strategy name.
    auto_choice : str
        The strategy ``auto`` would run.
    auto_reason : str
        Why.
    options : MultiplyOptions
        The options the plans were made with.
    lower_bound_bytes : float
        The communication lower bound of the product on ``options.cores`` tasks of
        ``options.budget_bytes`` each (:func:`blockmatrix.bounds.layout_lower_bound_bytes`).
    rates : Rates
        The rates of the predicted seconds.
    skipped : dict[str, str]
        Strategies not planned, and why (:func:`explain_product` on large grids).
    """

    left: BlockLayout = field(repr=False)
    right: BlockLayout = field(repr=False)
    plans: dict[str, MultiplyPlan]
    auto_choice: str
    auto_reason: str
    options: MultiplyOptions = field(repr=False)
    lower_bound_bytes: float = 0.0
    rates: Rates = field(default_factory=Rates, repr=False)
    skipped: dict[str, str] = field(default_factory=dict)

    def bound_ratio(self, name: str) -> float:
        """Plan ``name``'s communication over the lower bound (inf when the bound is 0)."""
        moved = communication_bytes(self.plans[name])
        if self.lower_bound_bytes > 0:
            return moved / self.lower_bound_bytes
        return 0.0 if moved == 0 else float("inf")

    def predicted_seconds(self, name: str) -> float:
        """Plan ``name``'s predicted seconds at the report's rates and cores."""
        return self.plans[name].predicted_seconds(self.options.cores, self.rates)

    def __getitem__(self, name: str) -> MultiplyPlan:
        return self.plans[name]

    def __iter__(self):
        return iter(self.plans)

    def rows(self) -> list[dict]:
        """One dict of plain numbers per strategy (for CSV / JSON)."""
        return [{"strategy": name, "shuffles": p.num_shuffles, "shuffle_records": p.shuffle_records,
                 "shuffle_bytes": p.shuffle_bytes, "broadcast_bytes": p.broadcast_bytes,
                 "read_bytes": p.read_bytes, "max_task_input_bytes": p.max_task_input_bytes,
                 "max_task_memory_bytes": p.max_task_memory_bytes,
                 "max_task_output_bytes": p.max_task_output_bytes, "flops": p.flops,
                 "predicted_seconds": self.predicted_seconds(name),
                 "communication_bytes": communication_bytes(p),
                 "lower_bound_bytes": self.lower_bound_bytes,
                 "bound_ratio": self.bound_ratio(name),
                 "auto_choice": name == self.auto_choice} for name, p in self.plans.items()]

    def __str__(self) -> str:
        def describe(lay: BlockLayout) -> str:
            return (f"{lay.shape[0]}x{lay.shape[1]} in {lay.rows_per_block}x"
                    f"{lay.cols_per_block} blocks ({len(lay.block_nbytes)} of "
                    f"{lay.num_row_blocks * lay.num_col_blocks} stored, "
                    f"{format_bytes(lay.nbytes)})"
                    + (f"; {lay.key_collect}" if lay.key_collect else ""))

        header = (f"{'strategy':<10} {'shuffles':>8} {'records':>9} {'shuffle bytes':>14} "
                  f"{'read bytes':>11} {'task input':>11} {'task memory':>12} "
                  f"{'task output':>12} {'flops':>10} {'predicted s':>11} {'x bound':>8}")
        rule = "-" * len(header)
        lines = [
            f"         A: {describe(self.left)}",
            f"         B: {describe(self.right)}",
            f"    budget: {format_bytes(self.options.budget_bytes)} of task memory, "
            f"{self.options.cores} core(s)",
            f"     bound: {format_bytes(self.lower_bound_bytes)} moved at least by a classical "
            f"product spread over {self.options.cores} task(s) of that memory, at most one per "
            f"block triple (blockmatrix.bounds: Irony-Toledo-Tiskin 2004 with Smith et al. 2019's "
            f"constant, Ballard et al. 2012)",
            f" auto pick: {self.auto_choice}",
            f"       why: {self.auto_reason}",
            rule, header, rule,
        ]
        for name, p in self.plans.items():
            mark = "*" if name == self.auto_choice else " "
            lines.append(
                f"{name + mark:<10} {p.num_shuffles:>8} {p.shuffle_records:>9} "
                f"{format_bytes(p.shuffle_bytes):>14} {format_bytes(p.read_bytes):>11} "
                f"{format_bytes(p.max_task_input_bytes):>11} "
                f"{format_bytes(p.max_task_memory_bytes):>12} "
                f"{format_bytes(p.max_task_output_bytes):>12} {p.flops:>10.3e} "
                f"{self.predicted_seconds(name):>11.2f} {self.bound_ratio(name):>8.2f}")
        lines.append(rule)
        for name, p in self.plans.items():
            for n, s in enumerate(p.shuffles, 1):
                lines.append(f"{name:<10} shuffle {n}: {s.name}: {s.records} records, "
                             f"{format_bytes(s.bytes)}")
            if p.note:
                lines.append(f"{name:<10} {p.note}")
        for name, why in self.skipped.items():
            lines.append(f"{name:<10} not planned: {why}")
        if self.rates != Rates():
            lines.append(f"rates: {self.rates} (auto picks at blockmatrix.cost's defaults)")
        return "\n".join(lines)


_OPTIONS = ("num_partitions", "num_mid_splits", "task_buffer_bytes", "memory_budget_bytes",
            "num_cores")


def explain_multiply(A, B, strategy: str | None = None, **options) -> MultiplyReport:
    """Plan ``A @ B`` with every registered strategy (or one) without moving block data.

    Parameters
    ----------
    A, B : BlockLayout, or an operand with a ``layout()`` method (a BlockMatrix)
        The operands (a BlockMatrix whose layout is unknown runs one small job to list its
        block keys and sizes).
    strategy : str, optional
        Plan only this strategy (``"auto"`` gives the plan auto would run). Default: every
        registered strategy that multiplies itself (all but ``auto``).
    **options
        ``num_partitions``, ``num_mid_splits``, ``task_buffer_bytes``, ``memory_budget_bytes``
        and ``num_cores``, as for :class:`MultiplyOptions`. With BlockMatrix operands the last
        three default to the Spark configuration's values (``num_cores`` to
        ``defaultParallelism``), with layouts to :class:`MultiplyOptions`' defaults.

    Returns
    -------
    MultiplyReport
        ``print`` it for a table; ``report[name]`` is the strategy's plan.

    Raises
    ------
    ShapeMismatchError, BlockSizeMismatchError, InvalidParameterError, UnknownStrategyError
        Before anything is planned.
    """
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise InvalidParameterError(
            f"explain_multiply got unknown option(s) {sorted(unknown)}: use "
            f"{', '.join(_OPTIONS[:-1])} or {_OPTIONS[-1]}")
    if strategy is not None:
        get_strategy(strategy)
    left, right = _layout(A), _layout(B)
    check_multiplicable(left, right)
    contexts = [op.blocks.context for op in (A, B) if not isinstance(op, BlockLayout)]
    defaults = multiply_defaults(contexts[0]) if contexts else {}
    return explain_layouts(left, right, strategy, MultiplyOptions.merged(defaults, options))


def explain_layouts(left: BlockLayout, right: BlockLayout, strategy: str | None,
                    options: MultiplyOptions, rates: Rates | None = None,
                    skip: dict[str, str] | None = None) -> MultiplyReport:
    """The report of :func:`explain_multiply` for two layouts and complete options.

    Strategies named in ``skip`` (name: why) are neither planned nor weighed by ``auto``.
    """
    skip = skip or {}
    names = ([strategy] if strategy is not None
             else [s.name for s in multiplying_strategies() if s.name not in skip])
    plans = {name: get_strategy(name).plan(left, right, options) for name in names}
    if skip:  # auto weighs what may be planned, without the variants of skipped planners
        candidates = {s.name: plans.get(s.name) or s.plan(left, right, options)
                      for s in candidate_strategies() if s.name not in skip}
    else:
        candidates = _auto.candidate_plans(left, right, options, planned=plans)
    label, reason = _auto.choose(candidates, options.budget_bytes, options.cores)
    bound = layout_lower_bound_bytes(left, right, options.cores, options.budget_bytes)
    return MultiplyReport(left, right, plans, candidates[label].strategy, reason, options,
                          bound, rates or Rates(), dict(skip))


def _layout(operand) -> BlockLayout:
    if isinstance(operand, BlockLayout):
        return operand
    if not callable(getattr(operand, "layout", None)):
        raise TypeError(f"explain_multiply takes BlockMatrix or BlockLayout operands, not "
                        f"{type(operand).__name__}: wrap arrays with BlockMatrix.from_numpy")
    return operand.layout()


# ---------------------------------------------------------------------- what-if


#: Block triples above which :func:`explain_product` skips the planners a strategy declares
#: slower than linear in the stored blocks (``Strategy.linear_planner``; none built in).
DEFAULT_MAX_BLOCK_PRODUCTS = 1 << 18


def what_if_layout(shape, rows_per_block: int, cols_per_block: int, density: float = 1.0,
                   seed: int = 0, dtype="float64", num_partitions: int = 1) -> BlockLayout:
    """The layout of a matrix you do not have: dense blocks, every one or a seeded share.

    Parameters
    ----------
    shape : (int, int)
    rows_per_block, cols_per_block : int
    density : float
        Share of the blocks that are stored (``0 < density <= 1``), drawn independently with
        ``numpy.random.default_rng(seed)``; 1 stores every block.

    >>> what_if_layout((10, 10), 4, 4).nbytes, len(what_if_layout((400, 400), 4, 4, 0.1).keys)
    (800, 1033)
    """
    rows, cols = (check_int(x, name) for x, name in zip(shape, ("rows", "cols"), strict=True))
    shell = BlockLayout((rows, cols), rows_per_block, cols_per_block, {}, np.dtype(dtype))
    grid = (shell.num_row_blocks, shell.num_col_blocks)
    if density >= 1.0:
        keys = np.indices(grid).reshape(2, -1).T
    else:
        keys = np.argwhere(np.random.default_rng(seed).random(grid) < density)
    heights = np.minimum(rows_per_block, rows - keys[:, 0] * rows_per_block)
    widths = np.minimum(cols_per_block, cols - keys[:, 1] * cols_per_block)
    sizes = (heights * widths * shell.dtype.itemsize).tolist()
    return BlockLayout((rows, cols), rows_per_block, cols_per_block,
                       dict(zip(map(tuple, keys.tolist()), sizes, strict=True)), shell.dtype,
                       num_partitions)


def block_products(left: BlockLayout, right: BlockLayout) -> int:
    """Number of block triples ``A[i, k] B[k, j]`` of stored blocks (linear in the blocks)."""
    cols_of_row = right.cols_of_row
    return sum(len(rows) * len(cols_of_row.get(k, ())) for k, rows in left.rows_of_col.items())


def explain_product(a_shape, b_shape, block_size: int, *, cores: int, task_memory,
                    density: float = 1.0, seed: int = 0, dtype="float64",
                    strategy: str | None = None, num_partitions: int | None = None,
                    task_buffer_bytes: int = DEFAULT_TASK_BUFFER_BYTES,
                    max_block_products: int = DEFAULT_MAX_BLOCK_PRODUCTS,
                    **rates) -> MultiplyReport:
    """:func:`explain_multiply` for a cluster and operands you do not have: no data, no Spark.

    Parameters
    ----------
    a_shape, b_shape : (int, int)
        Shapes of A and B.
    block_size : int
        Rows and columns of every block (edge blocks smaller).
    cores : int
        Tasks the cluster runs at once (also the result partitions, unless given).
    task_memory : int or str
        Memory a task may use for its data, bytes or a JVM string (``"8g"``).
    density : float
        Share of the blocks stored in each operand (block-sparse, seeded by ``seed``).
    strategy : str, optional
        Plan only this one (planned whatever its size).
    num_partitions : int, optional
        Suggested result partitions; default ``cores``.
    task_buffer_bytes : int
        Bytes a task buffers before spilling (PySpark's default 512 MiB).
    max_block_products : int
        Strategies whose planner is not linear in the stored blocks
        (``Strategy.linear_planner=False``, a plug-in's) are neither planned nor weighed by
        ``auto`` above this many block triples (the report says so), unless named in
        ``strategy``.
    **rates
        Overrides of :class:`Rates`' fields (``network_bytes_per_core_s=1.25e9``, ...).

    Returns
    -------
    MultiplyReport
        With the lower bound and every plan's ratio to it.

    Raises
    ------
    InvalidParameterError, ShapeMismatchError
        A size is not positive, the density not in (0, 1], the shapes do not conform.

    Examples
    --------
    >>> report = explain_product((8192, 8192), (8192, 8192), 1024, cores=64, task_memory="1g")
    >>> report["cuboid"].note
    'cut 4 x 4 x 4 (rows x columns x inner) into 64 cuboids of 2 x 2 x 2 blocks'
    >>> round(report.bound_ratio("cuboid"), 2), round(report.bound_ratio("inner"), 2)
    (1.33, 1.78)
    """
    block = check_int(block_size, "block_size", meaning="rows and columns of a block")
    cores = check_int(cores, "cores", meaning="tasks the cluster runs at once")
    memory = parse_memory(task_memory) if isinstance(task_memory, str) else task_memory
    memory = check_int(memory, "task_memory", fix="give bytes or a size such as '8g'")
    if not 0.0 < density <= 1.0:
        raise InvalidParameterError(f"density must be in (0, 1] (the share of blocks stored), "
                                    f"got {density!r}")
    unknown = set(rates) - {f for f in Rates.__dataclass_fields__}
    if unknown:
        raise InvalidParameterError(f"explain_product got unknown rate(s) {sorted(unknown)}: "
                                    f"use {', '.join(Rates.__dataclass_fields__)}")
    if strategy is not None:
        get_strategy(strategy)
    left = what_if_layout(a_shape, block, block, density, seed, dtype, cores)
    right = what_if_layout(b_shape, block, block, density, seed + 1, dtype, cores)
    check_multiplicable(left, right)
    options = MultiplyOptions(num_partitions=num_partitions or cores, num_cores=cores,
                              memory_budget_bytes=memory, task_buffer_bytes=task_buffer_bytes)
    triples = block_products(left, right)
    skip = {}
    if triples > max_block_products:
        skip = {s.name: f"{triples} block triples > max_block_products={max_block_products} "
                        f"(its planner is not linear in the blocks; raise the limit to plan it)"
                for s in multiplying_strategies()
                if not s.linear_planner and s.name != strategy}
    return explain_layouts(left, right, strategy, options, Rates(**rates), skip)


def parse_shape(text: str) -> tuple[int, int]:
    """``"ROWSxCOLS"`` as two positive ints.

    >>> parse_shape("262144x1024")
    (262144, 1024)
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise InvalidParameterError(f"a shape is ROWSxCOLS with positive integers, e.g. "
                                    f"262144x262144; got {text!r}")
    return int(parts[0]), int(parts[1])

