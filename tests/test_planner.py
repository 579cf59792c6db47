"""simulate_multiply against Spark's fixture and its invariants; plans from layouts alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockmatrix import BlockLayout, GridPartitioner, simulate_multiply
from blockmatrix.cost import RECORD_OVERHEAD_BYTES
from blockmatrix.errors import BlockSizeMismatchError, InvalidParameterError, ShapeMismatchError
from blockmatrix.layout import check_multiplicable, product_keys
from blockmatrix.plan import MultiplyOptions
from blockmatrix.strategies import inner

SPARK_A = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1)]
SPARK_B = [(0, 0), (1, 1)]


def test_spark_simulate_multiply_fixture():
    grid = GridPartitioner.from_suggested(3, 2, 3)
    left, right = simulate_multiply(SPARK_A, SPARK_B, grid)
    assert left == {(0, 0): {0}, (0, 1): {2}, (1, 0): {0}, (1, 1): {2}, (2, 1): {3}}
    assert right == {(0, 0): {0}, (1, 1): {2, 3}}


def test_mid_splits_stripe_k():
    grid = GridPartitioner.from_suggested(3, 2, 3)
    left, right = simulate_multiply(SPARK_A, SPARK_B, grid, num_mid_splits=2)
    # destination = P(i, j) * 2 + k % 2
    assert left == {(0, 0): {0}, (0, 1): {5}, (1, 0): {0}, (1, 1): {5}, (2, 1): {7}}
    assert right == {(0, 0): {0}, (1, 1): {5, 7}}


def test_blocks_without_counterpart_go_nowhere():
    grid = GridPartitioner(2, 2, 1, 1)
    left, right = simulate_multiply([(0, 0), (1, 1)], [(0, 1)], grid)
    assert left[(1, 1)] == frozenset() and right == {(0, 1): {grid((0, 1))}}


@pytest.mark.parametrize("s", [0, -1, 1.5, True])
def test_num_mid_splits_must_be_positive(s):
    with pytest.raises(InvalidParameterError, match="num_mid_splits"):
        simulate_multiply(SPARK_A, SPARK_B, GridPartitioner(3, 2, 1, 1), num_mid_splits=s)


keys = st.sets(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=30)


@settings(max_examples=150)
@given(a=keys, b=keys, n=st.integers(1, 12), s=st.integers(1, 3))
def test_every_pair_meets_in_exactly_one_partition(a, b, n, s):
    grid = GridPartitioner.from_suggested(6, 6, n)
    left, right = simulate_multiply(a, b, grid, s)
    for i, k in a:
        for k2, j in b:
            if k2 != k:
                continue
            met = left[(i, k)] & right[(k, j)]
            assert met == {grid((i, j)) * s + k % s}
    # a partition never receives a pair it should not multiply: any A (i, k) and B (k, j)
    # that share a partition share it only at P(i, j) (the grid structure guarantees it)
    for (i, k), dests in left.items():
        for (k2, j), other in right.items():
            if k2 == k and dests & other:
                assert dests & other == {grid((i, j)) * s + k % s}
    # every block goes exactly where it has counterparts
    for (i, k), dests in left.items():
        assert dests == {grid((i, j)) * s + k % s for k2, j in b if k2 == k}


def _dense_layout(shape, r, c, dtype=np.float64):
    layout = BlockLayout(shape, r, c, {}, np.dtype(dtype))
    return BlockLayout(shape, r, c, {(i, j): layout.dense_nbytes(i, j)
                                     for i in range(layout.num_row_blocks)
                                     for j in range(layout.num_col_blocks)}, np.dtype(dtype), 4)


def test_inner_plan_matches_seed_formula_for_dense_inputs():
    # C (n x k) = A (n x m) B (m x k), square blocks r: 2 m n k / r elements when every
    # result partition holds one block (Spark's grid with one block per partition).
    n, m, k, r = 64, 96, 32, 16
    left, right = _dense_layout((n, m), r, r), _dense_layout((m, k), r, r)
    grid_blocks = (n // r) * (k // r)
    plan = inner.plan(left, right, MultiplyOptions(num_partitions=grid_blocks))
    assert plan.grid.num_partitions == grid_blocks
    shuffle = plan.shuffles[0]
    elements = (shuffle.bytes - shuffle.records * RECORD_OVERHEAD_BYTES) // 8
    assert elements == 2 * m * n * k // r
    assert plan.num_shuffles == 1
    assert plan.flops == 2 * n * m * k


def _keys_layout(keys, r=2):
    rows = (max(i for i, _ in keys) + 1) * r
    cols = (max(j for _, j in keys) + 1) * r
    return BlockLayout((rows, cols), r, r, {key: r * r * 8 for key in keys})


def test_product_keys():
    left, right = _keys_layout(SPARK_A), _keys_layout(SPARK_B)
    assert product_keys(left, right) == {(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)}


def test_check_multiplicable_messages():
    a = BlockLayout((10, 8), 4, 4, {})
    with pytest.raises(ShapeMismatchError, match=r"A.shape\[1\] \(8\) != B.shape\[0\] \(9\)"):
        check_multiplicable(a, BlockLayout((9, 3), 4, 4, {}))
    with pytest.raises(BlockSizeMismatchError,
                       match=r"A.cols_per_block \(4\) != B.rows_per_block \(3\)"):
        check_multiplicable(a, BlockLayout((8, 3), 3, 4, {}))


def test_plan_prints_a_table():
    text = str(inner.plan(_dense_layout((8, 8), 4, 4), _dense_layout((8, 8), 4, 4),
                          MultiplyOptions()))
    assert "strategy: inner" in text and "shuffles: 1" in text and "largest task memory" in text
