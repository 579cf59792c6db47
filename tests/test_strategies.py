"""Strategy facts Spark itself measures: shuffle stages, shuffle bytes against the plan, budgets.

Inputs are 4 x 4 grids of 362 x 362 float64 blocks (1 MB each), dense and block-sparse, in two
row-aligned partitions (from_numpy slices 16 blocks as block rows 0-1 and 2-3).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from cases import every_third_block_blank
from conftest import assert_eq

from blockmatrix import BlockMatrix
from blockmatrix.errors import InvalidParameterError
from blockmatrix.metrics import record
from blockmatrix.plan import MultiplyOptions
from blockmatrix.samples import random_matrix
from blockmatrix.strategies import get_strategy, strategies_taking

BLOCK = 362
GRID = 4
#: Every registered strategy taking driver-held operands, read when the module is collected.
MULTIPLYING = strategies_taking("driver")  # the operands here come from from_numpy


def _operand(rng, drop: bool) -> np.ndarray:
    mask = every_third_block_blank((GRID, GRID)) if drop else None
    return random_matrix((GRID * BLOCK, GRID * BLOCK), BLOCK, rng, stored=mask)


@pytest.fixture(scope="module", params=["dense", "block-sparse"])
def megabyte_operands(request, sc):
    rng = np.random.default_rng(11)
    drop = request.param == "block-sparse"
    a, b = _operand(rng, drop), _operand(rng, drop)
    A = BlockMatrix.from_numpy(sc, a, BLOCK, BLOCK, num_partitions=2).persist()
    B = BlockMatrix.from_numpy(sc, b, BLOCK, BLOCK, num_partitions=2).persist()
    A.blocks.count()
    B.blocks.count()
    yield request.param, a, b, A, B
    A.unpersist()
    B.unpersist()


@pytest.fixture(scope="module")
def measured(megabyte_operands, sc):
    """Each strategy run once per input kind: (plan, Spark's metrics, product)."""
    kind, a, b, A, B = megabyte_operands
    runs = {}
    for name in MULTIPLYING:
        with record(sc, f"{kind} {name}") as m:
            C = A.multiply(B, strategy=name)
            blocks = C.blocks.collect()
        runs[name] = (C.plan, m, blocks)
    return kind, a @ b, runs


def _to_numpy(blocks, shape):
    out = np.zeros(shape)
    for (i, j), block in blocks:
        out[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] += block
    return out


@pytest.mark.parametrize("name", MULTIPLYING)
def test_shuffle_stages_match_the_plan(measured, name):
    kind, expected, runs = measured
    plan, m, blocks = runs[name]
    assert m.shuffle_stages == plan.num_shuffles, (kind, str(m))
    assert_eq(_to_numpy(blocks, expected.shape), expected)


def test_known_shuffle_counts(measured):
    """What the README promises: inner one shuffle, outer and pasa two, broadcast none."""
    kind, _, runs = measured
    stages = {name: m.shuffle_stages for name, (_, m, _) in runs.items()}
    assert stages["inner"] == 1 and stages["broadcast"] == 0, (kind, stages)
    assert stages["outer"] == stages["pasa"] == 2, (kind, stages)


@pytest.mark.parametrize("name", MULTIPLYING)
def test_measured_shuffle_bytes_match_the_plan(measured, name):
    kind, _, runs = measured
    plan, m, _ = runs[name]
    if plan.shuffle_bytes == 0:
        assert m.shuffle_write_bytes == 0
    else:
        assert m.shuffle_write_bytes == pytest.approx(plan.shuffle_bytes, rel=0.05), (kind, str(m))
        assert m.shuffle_read_bytes == pytest.approx(plan.shuffle_bytes, rel=0.05)


def test_pasa_never_shuffles_less_than_inner(measured):
    _, _, runs = measured
    assert runs["pasa"][1].shuffle_write_bytes >= runs["inner"][1].shuffle_write_bytes


def test_inner_mid_splits_cost_a_second_shuffle(megabyte_operands, sc):
    kind, a, b, A, B = megabyte_operands
    with record(sc, "inner s=2") as m:
        C = A.multiply(B, strategy="inner", num_mid_splits=2)
        blocks = C.blocks.collect()
    assert m.shuffle_stages == 2 == C.plan.num_shuffles
    assert_eq(_to_numpy(blocks, (a.shape[0], b.shape[1])), a @ b)
    assert m.shuffle_write_bytes == pytest.approx(C.plan.shuffle_bytes, rel=0.05)


def test_mid_splits_spread_a_1xn_by_nx1_product(sc):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((20, 400))
    b = rng.standard_normal((400, 20))
    A = BlockMatrix.from_numpy(sc, a, 20, 25)
    B = BlockMatrix.from_numpy(sc, b, 25, 20)
    one = A.explain_multiply(B, strategy="inner")["inner"]
    s = 4
    with record(sc, "1xN by Nx1, s=4") as m:
        C = A.multiply(B, strategy="inner", num_mid_splits=s)
        result = C.to_numpy()
    assert_eq(result, a @ b)
    assert C.plan.max_task_input_bytes * s == pytest.approx(one.max_task_input_bytes, rel=0.01)
    # the routing stage's reducers: s tasks instead of one
    reduce_tasks = [st.num_tasks for st in m.ran_stages if st.shuffle_read_bytes > 0]
    assert s in reduce_tasks


def test_broadcast_over_budget_is_refused_before_any_job(megabyte_operands, sc):
    _, _, _, A, B = megabyte_operands
    with record(sc, "refused") as m:
        with pytest.raises(InvalidParameterError, match=r"memory_budget_bytes \(1000000 bytes\)"):
            A.multiply(B, strategy="broadcast", memory_budget_bytes=1_000_000)
    assert m.job_ids == []


def test_auto_says_what_it_picks_and_honours_the_budget(megabyte_operands, sc, caplog):
    kind, a, b, A, B = megabyte_operands
    with caplog.at_level(logging.INFO, logger="blockmatrix.strategies.auto"):
        C = A.multiply(B, strategy="auto", memory_budget_bytes=256 << 20)
    # Both operands are the driver's arrays and the master is local: dense ones are computed
    # where they are; with a third of the blocks missing, broadcast skips their products (the
    # driver multiplies the whole arrays) and is predicted faster.
    chosen = C.plan.strategy
    assert chosen == "driver" if kind == "dense" else chosen in ("driver", "broadcast")
    assert C.plan.reason.startswith(f"{chosen}")
    assert any(f"auto multiply strategy: {chosen}" in r.getMessage() for r in caplog.records)
    assert_eq(C.to_numpy(), a @ b)
    # Planned for a cluster (no driver memory, no folder for references): broadcast within the
    # budget, and something else, saying why, below it.
    auto = get_strategy("auto")
    cluster = MultiplyOptions(num_cores=sc.defaultParallelism, memory_budget_bytes=256 << 20)
    assert auto.plan(A.layout(), B.layout(), cluster).strategy == "broadcast"
    tight = dataclasses.replace(cluster, memory_budget_bytes=B.layout().nbytes - 1)
    D = auto.plan(A.layout(), B.layout(), tight)
    assert D.strategy != "broadcast"
    assert "over budget: " in D.reason or "no plan fits" in D.reason


def test_broadcast_with_split_rows_pays_one_shuffle(sc):
    # 3 x 3 blocks in 2 partitions: parallelize cuts block row 1
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((30, 30)), rng.standard_normal((30, 30))
    A = BlockMatrix.from_numpy(sc, a, 10, 10, num_partitions=2)
    B = BlockMatrix.from_numpy(sc, b, 10, 10, num_partitions=1)
    with record(sc, "split rows") as m:
        C = A.multiply(B, strategy="broadcast")
        result = C.to_numpy()
    assert C.plan.num_shuffles == 1 == m.shuffle_stages
    assert_eq(result, a @ b)


def test_layout_key_partitions_match_spark(sc):
    rng = np.random.default_rng(0)
    for rows, cols, parts in [(30, 30, 2), (50, 20, 3), (70, 70, 4), (10, 90, 2), (40, 40, 7)]:
        A = BlockMatrix.from_numpy(sc, rng.standard_normal((rows, cols)), 10, 10,
                                   num_partitions=parts)
        actual = dict(A.blocks.mapPartitionsWithIndex(
            lambda p, items: [(key, p) for key, _ in items]).collect())
        assert actual == dict(A.layout().key_partitions)
        assert dict(A.T.layout().key_partitions) == {(j, i): p for (i, j), p in actual.items()}
