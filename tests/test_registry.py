"""The registry is the one list of strategies: a strategy registered at run time is everywhere.

The throwaway strategy below reuses ``inner``'s planning and execution under a plan type of its
own; registering it is the only edit, and it appears in ``explain_multiply``, in ``auto``'s
candidates, in the shared case grid the multiply tests run, and in ``BlockMatrix.multiply``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import assert_eq

from blockmatrix import BlockMatrix, explain_multiply
from blockmatrix.errors import InvalidParameterError, UnknownStrategyError
from blockmatrix.layout import BlockLayout
from blockmatrix.plan import MultiplyOptions
from blockmatrix.strategies import (
    STRATEGIES,
    Strategy,
    candidate_strategies,
    get_strategy,
    inner,
    multiplying_strategies,
    register,
    unregister,
)
from blockmatrix.strategies import auto as auto_strategy


@dataclass(frozen=True, kw_only=True)
class ThrowawayPlan(inner.InnerPlan):
    """A plan type of the throwaway strategy's own."""


def throwaway_plan(left, right, options):
    planned = inner.plan(left, right, options)
    fields = {f.name: getattr(planned, f.name) for f in dataclasses.fields(planned)}
    return ThrowawayPlan(**{**fields, "strategy": "throwaway"})


THROWAWAY = Strategy(name="throwaway", plan=throwaway_plan, execute=inner.execute,
                     plan_type=ThrowawayPlan, summary="inner under another name (a test)")


@pytest.fixture
def throwaway():
    register(THROWAWAY)
    yield THROWAWAY
    unregister("throwaway")


def square_layout(n=40, r=10) -> BlockLayout:
    keys = [(i, j) for i in range(n // r) for j in range(n // r)]
    return BlockLayout((n, n), r, r, {key: r * r * 8 for key in keys}, num_partitions=2)


def test_a_registered_strategy_appears_everywhere(throwaway):
    from cases import strategy_case_grid

    a = square_layout()
    report = explain_multiply(a, a)
    assert isinstance(report["throwaway"], ThrowawayPlan)
    assert report["throwaway"].shuffle_bytes == report["inner"].shuffle_bytes
    assert "throwaway" in str(report)
    assert "throwaway" in auto_strategy.candidate_plans(a, a, MultiplyOptions())
    assert "throwaway" in {s.name for s in candidate_strategies()}
    assert "throwaway" in {name for name, _ in strategy_case_grid()}
    assert get_strategy("throwaway") is throwaway
    unregister("throwaway")
    assert "throwaway" not in explain_multiply(a, a).plans
    assert "throwaway" not in {name for name, _ in strategy_case_grid()}
    register(THROWAWAY)


def test_a_registered_strategy_multiplies(sc, throwaway):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((37, 23)), rng.standard_normal((23, 19))
    A, B = BlockMatrix.from_numpy(sc, a, 5, 4), BlockMatrix.from_numpy(sc, b, 4, 6)
    C = A.multiply(B, strategy="throwaway")
    assert isinstance(C.plan, ThrowawayPlan)
    assert_eq(C.to_numpy(), a @ b)


def test_registry_refuses_a_second_strategy_of_the_same_name(throwaway):
    other = dataclasses.replace(THROWAWAY, summary="another one")
    with pytest.raises(InvalidParameterError, match="'throwaway' is already registered"):
        register(other)
    assert register(THROWAWAY) is THROWAWAY  # the same declaration again is harmless


def test_unknown_names_are_refused():
    with pytest.raises(UnknownStrategyError, match="'nope' is not one of the registered"):
        get_strategy("nope")
    with pytest.raises(UnknownStrategyError):
        unregister("nope")


def test_every_strategy_declares_its_plan_type():
    a = square_layout()
    for strategy in multiplying_strategies():
        plan = strategy.plan(a, a, MultiplyOptions())
        assert isinstance(plan, strategy.plan_type), strategy.name
        assert plan.strategy == strategy.name
    assert [s.name for s in STRATEGIES.values() if s.selector] == ["auto"]
