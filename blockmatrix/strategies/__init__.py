"""Multiplication strategies: one signature, one name-keyed registry (:mod:`.registry`).

Importing this package imports every strategy module, and each registers itself; the
registration order is the order of reports and of ``auto``'s tie-break.
``A.multiply(B, strategy=NAME)`` looks the name up in :data:`STRATEGIES`.
"""

from __future__ import annotations

# isort: off
# Each module registers itself on import; this order is the registry's (reports, tie-breaks).
from . import inner, outer, pasa, broadcast, cuboid, ooc, driver, auto  # noqa: F401
# isort: on
from .registry import (
    STRATEGIES,
    Strategy,
    candidate_strategies,
    get_strategy,
    multiplying_strategies,
    register,
    strategies_taking,
    unregister,
)

__all__ = ["STRATEGIES", "Strategy", "candidate_strategies", "get_strategy",
           "multiplying_strategies", "register", "strategies_taking", "unregister"]
