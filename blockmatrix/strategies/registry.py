"""The strategy registry: one signature for every strategy, one name-keyed table.

A strategy is one module that declares itself at its end::

    STRATEGY = register(Strategy(
        name="inner", plan=plan, execute=execute, plan_type=InnerPlan,
        summary="Spark's inner product ... one shuffle"))

with two module-level functions of one signature each (as opt_einsum's path functions):

- ``plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> plan_type``
  works from block keys and sizes alone and predicts the cost;
- ``execute(plan, left_blocks: RDD, right_blocks: RDD, options) -> RDD`` runs the plan on the
  operands' blocks RDDs and returns the product's blocks RDD. Strategies never see
  :class:`~blockmatrix.BlockMatrix`: ``BlockMatrix.multiply`` wraps what they return.

Everything that runs "each strategy" (``auto``'s candidates, ``explain_multiply``, the jobs,
the notebook, the tests) iterates :data:`STRATEGIES`; registering a strategy is the only edit
a new one needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import InvalidParameterError, UnknownStrategyError


@dataclass(frozen=True)
class Strategy:
    """A registered multiplication strategy.

    Parameters
    ----------
    name : str
        Registry name (``A.multiply(B, strategy=name)``).
    plan, execute : callable
        The two functions of the module's docstring.
    plan_type : type
        The :class:`~blockmatrix.plan.MultiplyPlan` subclass ``plan`` returns.
    summary : str
        One line for reports and ``--help``.
    auto_candidate : bool
        Whether ``auto`` may pick this strategy.
    selector : bool
        Whether the strategy chooses among the others instead of multiplying itself
        (``auto``): it is not a candidate, and reports list it apart.
    variants : callable, optional
        ``variants(left, right, options) -> {label: options}``: further configurations
        ``auto`` should consider beside the default one (``inner`` offers its inner dimension
        striped over idle cores).
    linear_planner : bool
        Whether ``plan`` takes time linear in the stored blocks (every built-in one does);
        what-if planning of huge grids skips planners that do not.
    operand_sources : tuple of str
        Where its operands' blocks may be (``BlockLayout.source_kind``: ``"driver"``,
        ``"file"``, ``"spark"``); elsewhere its plan is unavailable. The shared test grid
        runs each strategy on operands from a source it takes.
    """

    name: str
    plan: Callable
    execute: Callable
    plan_type: type
    summary: str
    auto_candidate: bool = True
    selector: bool = False
    variants: Callable | None = None
    linear_planner: bool = True
    operand_sources: tuple[str, ...] = ("driver", "file", "spark")


#: Registered strategies by name, in registration order (the order of reports and of
#: ``auto``'s tie-break).
STRATEGIES: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to :data:`STRATEGIES` and return it.

    Raises
    ------
    InvalidParameterError
        Another strategy already has that name.
    """
    existing = STRATEGIES.get(strategy.name)
    if existing is not None and existing != strategy:
        raise InvalidParameterError(
            f"a strategy named {strategy.name!r} is already registered ({existing.summary!r}): "
            f"choose another name, or unregister({strategy.name!r}) first")
    STRATEGIES[strategy.name] = strategy
    return strategy


def unregister(name: str) -> Strategy:
    """Remove a registered strategy (for tests and plug-ins that replace one) and return it."""
    return STRATEGIES.pop(get_strategy(name).name)


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``.

    Raises
    ------
    UnknownStrategyError
        No strategy has that name.
    """
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(STRATEGIES))
        raise UnknownStrategyError(
            f"strategy {name!r} is not one of the registered strategies ({known}): "
            f"pass one of those names") from None


def multiplying_strategies() -> Iterator[Strategy]:
    """The strategies that multiply themselves (every one but selectors such as ``auto``)."""
    return (s for s in STRATEGIES.values() if not s.selector)


def strategies_taking(source: str) -> list[str]:
    """Names of the strategies that multiply operands whose blocks are at ``source``."""
    return [s.name for s in multiplying_strategies() if source in s.operand_sources]


def candidate_strategies() -> Iterator[Strategy]:
    """The strategies ``auto`` may pick, in registry order."""
    return (s for s in multiplying_strategies() if s.auto_candidate)
