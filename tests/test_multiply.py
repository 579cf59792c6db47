"""Every registered strategy against numpy over the shape grid (tests/cases.py), on Spark."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from cases import CASES, make_operands, operand_source, strategy_case_grid
from conftest import assert_eq

from blockmatrix import BlockMatrix
from blockmatrix.strategies import strategies_taking

#: The strategies that multiply operands held by the driver (from_numpy), from the registry.
STRATEGY_NAMES = sorted(strategies_taking("driver"))


@pytest.fixture(scope="module")
def operands(sc):
    """Distributed operands for every case, built once per module and cached."""
    built = {}
    for case in CASES:
        a, b = make_operands(case)
        A = BlockMatrix.from_numpy(sc, a, case.rows_per_block, case.inner_per_block).persist()
        B = BlockMatrix.from_numpy(sc, b, case.inner_per_block, case.cols_per_block).persist()
        built[case.name] = (a, b, A, B)
    yield built
    for _, _, A, B in built.values():
        A.unpersist()
        B.unpersist()


@pytest.fixture(scope="module")
def file_operands(sc, tmp_path_factory):
    """The same operands from HDF5 files (densely stored), for strategies that read files."""
    folder = tmp_path_factory.mktemp("grid")
    built = {}

    def get(case):
        if case.name not in built:
            a, b = make_operands(case)
            a, b = (x.toarray() if sp.issparse(x) else x for x in (a, b))
            path = folder / f"{case.name}.h5"
            with h5py.File(path, "w") as f:
                f["A"], f["B"] = a, b
            built[case.name] = (a, b, BlockMatrix.from_hdf5(
                sc, str(path), "/A", case.rows_per_block, case.inner_per_block),
                BlockMatrix.from_hdf5(sc, str(path), "/B", case.inner_per_block,
                                      case.cols_per_block))
        return built[case.name]

    return get


#: (strategy, case) pairs measured at over 20 s on the 2-core test machine: pasa runs one task
#: per block triple, 336 of them for square-ragged.
SLOW_PAIRS = {("pasa", "square-ragged")}


@pytest.mark.parametrize("strategy, case", [
    pytest.param(name, case, marks=pytest.mark.slow) if (name, case.name) in SLOW_PAIRS
    else (name, case) for name, case in strategy_case_grid()], ids=str)
def test_product_equals_numpy(operands, file_operands, case, strategy):
    a, b, A, B = (operands[case.name] if operand_source(strategy) == "driver"
                  else file_operands(case))
    C = A.multiply(B, strategy=strategy)
    assert C.shape == (case.n, case.k)
    assert (C.rows_per_block, C.cols_per_block) == (case.rows_per_block, case.cols_per_block)
    C.validate()
    expected = a @ b
    assert_eq(C.to_numpy(), expected, dtype=np.result_type(a.dtype, b.dtype))


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_sparse_times_sparse_stays_sparse(operands, strategy):
    _, _, A, B = operands["sparse-sparse"]
    kinds = {type(block).__name__ for _, block in A.multiply(B, strategy=strategy).blocks.collect()}
    assert kinds == {"csr_matrix"}


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_mixed_formats_give_dense_blocks(operands, strategy):
    _, _, A, B = operands["sparse-dense"]
    blocks = A.multiply(B, strategy=strategy).blocks.collect()
    assert blocks and all(isinstance(block, np.ndarray) for _, block in blocks)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_missing_blocks_are_zeros(sc, strategy):
    # A has a single block, B has a block that meets nothing: C has one block.
    a = np.zeros((8, 8))
    a[:4, 4:] = 1.0
    b = np.zeros((8, 8))
    b[4:, :4] = 2.0
    b[:4, 4:] = 3.0  # (0, 1): A has no block (i, 0), so it has no counterpart
    A = BlockMatrix.from_numpy(sc, a, 4, 4)
    B = BlockMatrix.from_numpy(sc, b, 4, 4)
    C = A.multiply(B, strategy=strategy)
    assert sorted(k for k, _ in C.blocks.collect()) == [(0, 0)]
    assert_eq(C.to_numpy(), a @ b)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_empty_operand_gives_zero_matrix(sc, strategy):
    A = BlockMatrix.from_numpy(sc, np.zeros((6, 4)), 3, 2)
    B = BlockMatrix.from_numpy(sc, np.ones((4, 5)), 2, 2)
    C = A.multiply(B, strategy=strategy)
    assert C.blocks.count() == 0
    assert_eq(C.to_numpy(), np.zeros((6, 5)))


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_chained_products_and_transposes(sc, strategy):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((20, 13))
    A = BlockMatrix.from_numpy(sc, a, 6, 5)
    G = A.T.multiply(A, strategy=strategy)  # 13 x 13, blocks 5 x 5
    H = G.multiply(A.T, strategy=strategy)  # 13 x 20
    assert_eq(H.to_numpy(), a.T @ a @ a.T)


def test_duplicate_blocks_are_summed_by_multiply(sc):
    one = np.ones((2, 2))
    A = BlockMatrix.from_blocks(sc.parallelize([((0, 0), one), ((0, 0), one)]), (2, 2), 2, 2)
    B = BlockMatrix.from_numpy(sc, np.eye(2), 2, 2)
    assert_eq((A @ B).to_numpy(), 2 * one)


def test_integer_and_bool_blocks(sc):
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    b = (np.arange(8).reshape(4, 2) % 3 == 0)
    C = BlockMatrix.from_numpy(sc, a, 2, 2) @ BlockMatrix.from_numpy(sc, b, 2, 2)
    assert_eq(C.to_numpy(), a @ b)


def test_same_result_as_mllib(sc):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((25, 18))
    b = sp.random(18, 22, density=0.3, random_state=8, format="csr")
    A = BlockMatrix.from_numpy(sc, a, 7, 5)
    B = BlockMatrix.from_numpy(sc, b, 5, 6)
    ours = (A @ B).to_numpy()
    theirs = A.to_mllib().multiply(B.to_mllib()).toLocalMatrix().toArray()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert_eq(ours, a @ b.toarray())
