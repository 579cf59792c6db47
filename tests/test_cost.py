"""The separable cost model equals the per-triple one it replaces, on random layouts.

``ProductModel`` sums block products through sparse matrix products of the operands' weights;
``product_seconds`` visits every triple. They must agree on every sum the planners use.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_model import dense_flops, product_seconds

from blockmatrix.cost import ProductModel
from blockmatrix.layout import BlockLayout


def random_layout(rng, shape, rpb, cpb, block_density, csr_share, itemsize=8):
    lay = BlockLayout(shape, rpb, cpb, {}, np.dtype(f"f{itemsize}"))
    sizes = {}
    for i in range(lay.num_row_blocks):
        for j in range(lay.num_col_blocks):
            if rng.random() >= block_density:
                continue
            rows, cols = lay.block_shape(i, j)
            if rng.random() < csr_share:
                nnz = int(rng.integers(0, rows * cols + 1))
                sizes[(i, j)] = nnz * (itemsize + 4) + (rows + 1) * 4
            else:
                sizes[(i, j)] = rows * cols * itemsize
    return BlockLayout(shape, rpb, cpb, sizes, np.dtype(f"f{itemsize}"))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 60), m=st.integers(1, 60),
       k=st.integers(1, 60), r=st.integers(1, 17), inner=st.integers(1, 17),
       c=st.integers(1, 17), block_density=st.floats(0.0, 1.0), csr_share=st.floats(0.0, 1.0))
def test_product_model_equals_the_triple_loop(seed, n, m, k, r, inner, c, block_density,
                                              csr_share):
    rng = np.random.default_rng(seed)
    left = random_layout(rng, (n, m), r, inner, block_density, csr_share)
    right = random_layout(rng, (m, k), inner, c, block_density, csr_share)
    triples = product_seconds(left, right)
    model = ProductModel(left, right)
    assert model.total_seconds() == pytest.approx(sum(triples.values()), rel=1e-9, abs=1e-15)
    assert model.flops == dense_flops(left, right)

    by_k, by_ij, by_a, by_b = (defaultdict(float) for _ in range(4))
    for (i, kk, j), sec in triples.items():
        by_k[kk] += sec
        by_ij[(i, j)] += sec
        by_a[(i, kk)] += sec
        by_b[(kk, j)] += sec
    np.testing.assert_allclose(model.seconds_by_inner(),
                               [by_k[kk] for kk in range(len(model.seconds_by_inner()))],
                               rtol=1e-9, atol=1e-15)
    result = model.seconds_by_result().todok()
    for key, sec in by_ij.items():
        assert result[key] == pytest.approx(sec, rel=1e-9, abs=1e-15)
    assert result.sum() == pytest.approx(sum(by_ij.values()), rel=1e-9, abs=1e-15)
    for layout, got, want in ((left, model.seconds_by_left_block(), by_a),
                              (right, model.seconds_by_right_block(), by_b)):
        np.testing.assert_allclose(got, [want[key] for key in layout.block_nbytes],
                                   rtol=1e-9, atol=1e-15)
    assert model.max_product_seconds() == pytest.approx(max(triples.values(), default=0.0),
                                                        rel=1e-9, abs=1e-15)


def test_inner_mask_keeps_only_those_inner_indices():
    lay = BlockLayout((4, 4), 2, 2, {(0, 0): 32, (0, 1): 32, (1, 0): 32, (1, 1): 32})
    model = ProductModel(lay, lay)
    even = model.seconds_by_result(np.array([True, False])).sum()
    odd = model.seconds_by_result(np.array([False, True])).sum()
    assert even + odd == pytest.approx(model.total_seconds())
    assert even == pytest.approx(odd)
