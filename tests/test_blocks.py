"""Block kernels: format dispatch, in-place accumulation, type checks (no Spark)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_eq

from blockmatrix import blocks as bk
from blockmatrix.errors import BlockTypeError

rng = np.random.default_rng(0)
FORMATS = ["dense", "csr"]


def _block(shape, fmt, dtype=np.float64, density=0.3):
    if fmt == "csr":
        return sp.random(*shape, density=density, format="csr", random_state=rng, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("left", FORMATS)
@pytest.mark.parametrize("right", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_accumulate_all_format_pairs(left, right, dtype):
    pairs = [(_block((5, 4), left, dtype), _block((4, 3), right, dtype)) for _ in range(4)]
    acc = None
    for a, b in pairs:
        acc = bk.matmul_accumulate(acc, a, b)
    expected = sum(bk.to_dense(a) @ bk.to_dense(b) for a, b in pairs)
    assert sp.issparse(acc) == (left == right == "csr")
    assert_eq(acc, expected, dtype=dtype)


def test_dense_accumulation_is_in_place_without_temporaries():
    a = rng.standard_normal((300, 300))
    b = rng.standard_normal((300, 300))
    acc = bk.matmul_accumulate(None, a, b)
    buffer = acc.__array_interface__["data"][0]
    tracemalloc.start()
    for _ in range(5):
        acc = bk.matmul_accumulate(acc, a, b)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert acc.__array_interface__["data"][0] == buffer
    assert peak < a.nbytes // 4, f"accumulating allocated {peak} bytes"
    assert_eq(acc, 6 * (a @ b))


def test_sparse_product_scattered_into_dense_accumulator_in_place():
    acc = np.zeros((4, 4))
    a = sp.csr_matrix(np.eye(4))
    same = bk.matmul_accumulate(acc, a, sp.csr_matrix(np.ones((4, 4))))
    assert same is acc
    assert_eq(acc, np.ones((4, 4)))


def test_mixed_dtypes_promote():
    acc = bk.matmul_accumulate(None, np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    acc = bk.matmul_accumulate(acc, np.ones((2, 2)), np.ones((2, 2)))
    assert acc.dtype == np.float64
    assert_eq(acc, np.full((2, 2), 4.0))


def _buffers(block):
    return [block.data, block.indices, block.indptr] if sp.issparse(block) else [block]


@pytest.mark.parametrize("left, right", [("dense", "dense"), ("csr", "dense"), ("dense", "csr")])
def test_first_product_does_not_alias_an_input(left, right):
    # The first product becomes the accumulator that later products are added into in place:
    # were it an input's buffer, accumulating would overwrite that input.
    eye = sp.csr_matrix(np.eye(3)) if left == "csr" else np.eye(3)
    ones = sp.csr_matrix(np.ones((3, 1))) if right == "csr" else np.ones((3, 1))
    acc = bk.matmul_accumulate(None, eye, ones)
    assert not any(np.shares_memory(acc, buffer) for buffer in _buffers(eye) + _buffers(ones))
    acc = bk.matmul_accumulate(acc, eye, ones)
    np.testing.assert_array_equal(acc, np.full((3, 1), 2.0))
    np.testing.assert_array_equal(bk.to_dense(eye), np.eye(3))
    np.testing.assert_array_equal(bk.to_dense(ones), np.ones((3, 1)))


def test_add_and_negate():
    d = rng.standard_normal((3, 3))
    s = sp.csr_matrix(np.eye(3))
    assert_eq(bk.add(d, s), d + np.eye(3))
    assert_eq(bk.add(s, d), d + np.eye(3))
    assert bk.add(s, s).format == "csr"
    assert_eq(bk.negate(np.array([[True]])), np.array([[-1]]))


def test_nbytes_and_transpose():
    s = sp.random(6, 5, density=0.5, format="csr", random_state=1)
    assert bk.nbytes(s) == s.data.nbytes + s.indices.nbytes + s.indptr.nbytes
    assert bk.transpose(s).format == "csr"
    assert_eq(bk.transpose(s), s.toarray().T)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(3), "1 dimension"),
    (np.zeros((2, 2, 2)), "3 dimension"),
    (np.zeros((2, 2), dtype=complex), "complex"),
    (np.array([["a"]]), "only real numbers"),
    (np.array([[object()]]), "object"),
    ([[1.0]], "list"),
])
def test_check_block_rejects(bad, match):
    with pytest.raises(BlockTypeError, match=match):
        bk.check_block(bad)


def test_check_block_converts_sparse_to_csr():
    assert bk.check_block(sp.coo_matrix(np.eye(2))).format == "csr"


def test_sum_by_key_sums_every_format_without_touching_its_inputs():
    rng = np.random.default_rng(5)
    d64 = [rng.standard_normal((3, 4)) for _ in range(3)]
    d32 = rng.standard_normal((3, 4)).astype(np.float32)
    csr = [sp.random(3, 4, density=0.5, format="csr", random_state=s) for s in range(3)]
    items = [("dense", d64[0]), ("mixed", d32), ("csr", csr[0]), ("dense", d64[1]),
             ("mixed", csr[1]), ("csr", csr[1]), ("dense", d64[2]), ("csr", csr[2]),
             ("single", d32)]
    before = [(k, v.copy()) for k, v in items]
    sums = dict(bk.sum_by_key(iter(items)))
    assert set(sums) == {"dense", "mixed", "csr", "single"}
    assert_eq(sums["dense"], d64[0] + d64[1] + d64[2])
    assert sums["mixed"].dtype == np.float64 and not sp.issparse(sums["mixed"])
    assert_eq(sums["mixed"], d32 + csr[1].toarray())
    assert sp.issparse(sums["csr"]) and sums["csr"].format == "csr"
    assert_eq(sums["csr"].toarray(), sum(c.toarray() for c in csr))
    assert sums["single"] is d32
    for (_, old), (_, new) in zip(before, items, strict=True):
        assert_eq(old.toarray() if sp.issparse(old) else old,
                  new.toarray() if sp.issparse(new) else new)
