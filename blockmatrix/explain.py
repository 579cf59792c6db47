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
{'inner': 1, 'outer': 2, 'pasa': 2, 'broadcast': 0, 'ooc': 0}
>>> report["ooc"].unavailable
'A is held only by Spark: the out-of-core product needs both operands read from HDF5 files'
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

from .cost import RECORD_OVERHEAD_BYTES
from .errors import InvalidParameterError
from .layout import BlockLayout, check_multiplicable
from .plan import MultiplyOptions, MultiplyPlan
from .sparkconf import multiply_defaults
from .strategies import auto as _auto
from .strategies import get_strategy, multiplying_strategies
from .units import format_bytes

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
    """

    left: BlockLayout = field(repr=False)
    right: BlockLayout = field(repr=False)
    plans: dict[str, MultiplyPlan]
    auto_choice: str
    auto_reason: str
    options: MultiplyOptions = field(repr=False)

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
                 "predicted_seconds": p.predicted_seconds(self.options.cores),
                 "auto_choice": name == self.auto_choice} for name, p in self.plans.items()]

    def __str__(self) -> str:
        def describe(lay: BlockLayout) -> str:
            return (f"{lay.shape[0]}x{lay.shape[1]} in {lay.rows_per_block}x"
                    f"{lay.cols_per_block} blocks ({len(lay.block_nbytes)} of "
                    f"{lay.num_row_blocks * lay.num_col_blocks} stored, "
                    f"{format_bytes(lay.nbytes)})")

        header = (f"{'strategy':<10} {'shuffles':>8} {'records':>9} {'shuffle bytes':>14} "
                  f"{'read bytes':>11} {'task input':>11} {'task memory':>12} "
                  f"{'task output':>12} {'flops':>10} {'predicted s':>11}")
        rule = "-" * len(header)
        lines = [
            f"         A: {describe(self.left)}",
            f"         B: {describe(self.right)}",
            f"    budget: {format_bytes(self.options.budget_bytes)} of task memory, "
            f"{self.options.cores} core(s)",
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
                f"{p.predicted_seconds(self.options.cores):>11.2f}")
        lines.append(rule)
        for name, p in self.plans.items():
            for n, s in enumerate(p.shuffles, 1):
                lines.append(f"{name:<10} shuffle {n}: {s.name}: {s.records} records, "
                             f"{format_bytes(s.bytes)}")
            if p.note:
                lines.append(f"{name:<10} {p.note}")
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
                    options: MultiplyOptions) -> MultiplyReport:
    """The report of :func:`explain_multiply` for two layouts and complete options."""
    names = ([strategy] if strategy is not None
             else [s.name for s in multiplying_strategies()])
    plans = {name: get_strategy(name).plan(left, right, options) for name in names}
    candidates = _auto.candidate_plans(left, right, options, planned=plans)
    label, reason = _auto.choose(candidates, options.budget_bytes, options.cores)
    return MultiplyReport(left, right, plans, candidates[label].strategy, reason, options)


def _layout(operand) -> BlockLayout:
    if isinstance(operand, BlockLayout):
        return operand
    if not callable(getattr(operand, "layout", None)):
        raise TypeError(f"explain_multiply takes BlockMatrix or BlockLayout operands, not "
                        f"{type(operand).__name__}: wrap arrays with BlockMatrix.from_numpy")
    return operand.layout()
