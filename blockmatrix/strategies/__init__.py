"""Multiplication strategies: one signature, one name-keyed registry (:mod:`.registry`).

``A.multiply(B, strategy=NAME)`` looks the name up in :data:`STRATEGIES`. Importing this
package imports every strategy module, and each registers itself.
"""

from __future__ import annotations

from ..planner import MultiplyPlan
from . import auto, broadcast, inner, outer, pasa
from .base import MultiplyOptions
from .registry import (
    STRATEGIES,
    Strategy,
    candidate_strategies,
    get_strategy,
    multiplying_strategies,
    register,
    unregister,
)

for _module, _summary, _selector in (
        (inner, "Spark's inner product: blocks routed only where they have a counterpart, "
                "one shuffle", False),
        (outer, "outer product: join A columns and B rows on k, partial products summed per "
                "task, reduce by (i, j): two shuffles", False),
        (pasa, "Marlin/PASA baseline: replicate without counterpart checks, join on "
               "MatrixMultPartitioner, reduceByKey: two shuffles", False),
        (broadcast, "broadcast the smaller operand, map over the larger: no shuffle when its "
                    "block rows lie in one partition each", False),
        (auto, "the cheapest plan within the memory budget (says which and why)", True)):
    register(Strategy(_module.__name__.rsplit(".", 1)[1], _module.plan, _module.execute,
                      MultiplyPlan, _summary, auto_candidate=not _selector, selector=_selector))

__all__ = ["STRATEGIES", "MultiplyOptions", "Strategy", "candidate_strategies", "get_strategy",
           "multiplying_strategies", "register", "unregister"]
