"""A product's broadcasts and persisted intermediates: held while needed, released after.

A throwaway strategy persists an intermediate (``inner``'s product, mapped once more) through
:func:`blockmatrix.held.persist`, so that both kinds of resource are tracked.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from conftest import assert_eq

from blockmatrix import BlockMatrix, held
from blockmatrix.matrix import _same  # importable by the Python workers, unlike this module
from blockmatrix.strategies import Strategy, inner, register, unregister


def persisting_execute(plan, left, right, options):
    return held.persist(inner.execute(plan, left, right, options)).map(_same)


PERSISTING = Strategy(name="persisting", plan=inner.plan, execute=persisting_execute,
                      plan_type=inner.InnerPlan, summary="inner with a persisted intermediate",
                      auto_candidate=False)


@pytest.fixture
def persisting():
    register(PERSISTING)
    yield PERSISTING
    unregister("persisting")


@pytest.fixture(scope="module")
def operands(sc):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((40, 30)), rng.standard_normal((30, 20))
    return a, b, BlockMatrix.from_numpy(sc, a, 10, 10), BlockMatrix.from_numpy(sc, b, 10, 10)


def persisted_ids(sc) -> set[int]:
    return set(sc._jsc.getPersistentRDDs().keySet())


def test_an_exit_unpersists_intermediates_and_keeps_broadcasts(sc, operands, persisting):
    a, b, A, B = operands
    C = A.multiply(B, "persisting")
    kept = C._held
    intermediate = kept.intermediates[0]
    assert len(kept.broadcasts) == 1 and intermediate.id() in persisted_ids(sc)
    assert_eq(C.to_numpy(), a @ b)
    assert intermediate.id() not in persisted_ids(sc) and not kept.intermediates
    # The routing table stays: a later use of the blocks may recompute them.
    assert kept.broadcasts and not kept.released
    assert_eq(C.to_scipy(), a @ b)


def test_a_matrix_computed_from_a_product_keeps_it(sc, operands):
    a, b, A, B = operands
    C = A.multiply(B, "inner")
    kept, T = C._held, C.T
    del C
    gc.collect()
    assert_eq(A.multiply(B, "broadcast").to_numpy(), a @ b)  # runs the release queue
    assert not kept.released  # T's blocks are computed through C's routing table
    assert_eq(T.to_numpy(), (a @ b).T)
    del T
    gc.collect()
    assert_eq(A.multiply(B, "broadcast").to_numpy(), a @ b)
    assert kept.released


def test_a_product_does_not_keep_the_operand_it_broadcast(sc, operands):
    """X = M @ X, as an iterative algorithm runs it: each X goes when the next one exists."""
    a, b, A, B = operands
    X = A.multiply(B, "inner")  # 40 x 20
    m = np.random.default_rng(6).standard_normal((40, 40))
    M = BlockMatrix.from_numpy(sc, m, 10, 10)
    first, expected = weakref.ref(X), a @ b
    for _ in range(3):
        X = M.multiply(X, "broadcast")  # X, the smaller, is collected and broadcast
        expected = m @ expected
        assert_eq(X.to_numpy(), expected)
    gc.collect()
    assert first() is None


def test_a_garbage_collected_product_is_released_by_the_next_product(sc, operands):
    a, b, A, B = operands
    C = A.multiply(B, "broadcast")
    C.blocks.count()
    kept = C._held
    del C
    gc.collect()
    assert not kept.released  # queued: no call into the JVM from the collector
    assert_eq(A.multiply(B, "inner").to_numpy(), a @ b)
    assert kept.released
