"""Multiplication strategies: one signature, one name-keyed registry.

A strategy is two module-level functions:

- ``plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> MultiplyPlan``
  works from block keys and sizes alone and predicts the cost;
- ``execute(plan, left: BlockMatrix, right: BlockMatrix, options) -> BlockMatrix`` runs it.

``A.multiply(B, strategy=NAME)`` looks the name up in :data:`STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UnknownStrategyError
from .base import MultiplyOptions


@dataclass(frozen=True)
class Strategy:
    """A registered multiplication strategy."""

    name: str
    plan: Callable
    execute: Callable
    summary: str


#: Registered strategies by name.
STRATEGIES: dict[str, Strategy] = {}


def register(name: str, plan: Callable, execute: Callable, summary: str) -> Strategy:
    """Add a strategy to the registry and return it."""
    strategy = Strategy(name, plan, execute, summary)
    STRATEGIES[name] = strategy
    return strategy


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


from . import inner  # noqa: E402

register("inner", inner.plan, inner.execute,
         "Spark's inner product: blocks routed only where they have a counterpart, one shuffle")

from . import auto, broadcast, outer, pasa  # noqa: E402

register("outer", outer.plan, outer.execute,
         "outer product: join A columns and B rows on k, partial products summed per task, "
         "reduce by (i, j): two shuffles")
register("pasa", pasa.plan, pasa.execute,
         "Marlin/PASA baseline: replicate without counterpart checks, join on "
         "MatrixMultPartitioner, reduceByKey: two shuffles")
register("broadcast", broadcast.plan, broadcast.execute,
         "broadcast the smaller operand, map over the larger: no shuffle when its block rows "
         "lie in one partition each")
register("auto", auto.plan, auto.execute,
         "the cheapest plan within the memory budget (says which and why)")

__all__ = ["STRATEGIES", "MultiplyOptions", "Strategy", "get_strategy", "register"]
