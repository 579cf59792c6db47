"""The ``driver`` strategy: the driver's own dense arrays multiplied where they are."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_eq

from blockmatrix import BlockMatrix, held
from blockmatrix.cost import DEFAULT_RATES
from blockmatrix.errors import InvalidParameterError
from blockmatrix.layout import BlockLayout, product_keys
from blockmatrix.metrics import record
from blockmatrix.plan import MultiplyOptions
from blockmatrix.sources import DriverArray
from blockmatrix.strategies import get_strategy

rng = np.random.default_rng(17)


def with_blank_blocks(a, block):
    """``a`` with its first block row's first block zero: a block from_numpy does not store."""
    a = a.copy()
    a[:block, :block] = 0
    return a


CASES = [
    # (a shape, b shape, rows, cols, dtypes) -- blocks rows x cols for A, cols x cols for B
    pytest.param((50, 43), (43, 33), 10, 10, (np.float64, np.float64), id="ragged"),
    pytest.param((64, 40), (40, 64), 16, 16, (np.float32, np.float32), id="float32"),
    pytest.param((30, 200), (200, 5), 8, 25, (np.float32, np.float64), id="thin-mixed"),
    pytest.param((5, 120), (120, 70), 4, 30, (np.float64, np.float64), id="fat"),
]


@pytest.mark.parametrize("a_shape,b_shape,rows,cols,dtypes", CASES)
def test_the_driver_product_equals_numpy(sc, a_shape, b_shape, rows, cols, dtypes):
    a = with_blank_blocks(rng.standard_normal(a_shape), rows).astype(dtypes[0])
    b = with_blank_blocks(rng.standard_normal(b_shape), cols).astype(dtypes[1])
    A = BlockMatrix.from_numpy(sc, a, rows, cols, num_partitions=3)
    B = BlockMatrix.from_numpy(sc, b, cols, cols, num_partitions=2)
    with record(sc, "driver") as m:
        C = A.multiply(B, strategy="driver")
        blocks = C.blocks.collect()
    assert m.shuffle_stages == 0 and m.shuffle_write_bytes == 0
    assert sorted(k for k, _ in blocks) == sorted(product_keys(A.layout(), B.layout()))
    assert C.dtype == np.result_type(a.dtype, b.dtype)
    assert_eq(C.to_numpy(), a.astype(np.float64) @ b.astype(np.float64),
              dtype=np.result_type(*dtypes).name)
    assert C.plan.read_bytes == C.plan.result_bytes == a.shape[0] * b.shape[1] * C.dtype.itemsize
    assert "computed on the driver" in C.plan.note


def test_a_transposed_operand_is_read_transposed(sc):
    a, b = rng.standard_normal((40, 30)), rng.standard_normal((20, 30))
    A = BlockMatrix.from_numpy(sc, a, 10, 10)
    B = BlockMatrix.from_numpy(sc, b, 10, 10).T
    assert_eq(A.multiply(B, strategy="driver").to_numpy(), a @ b.T)


def test_auto_computes_the_drivers_arrays_on_the_driver(sc):
    a = rng.standard_normal((256, 200))
    A = BlockMatrix.from_numpy(sc, a, 64, 64)
    C = A.multiply(A.T, strategy="auto")
    assert C.plan.strategy == "driver", C.plan.reason
    assert {"driver", "broadcast", "inner"} <= {c.label for c in C.plan.candidates}
    assert_eq(C.to_numpy(), a @ a.T)
    # BLAS wrote C into the in-memory file the tasks read (no other copy, nothing on disk).
    (fd,) = C._held.descriptors
    assert not C._held.folders and "in-memory file" in C.plan.note
    held_c = C.layout().source.array
    assert isinstance(held_c.base, mmap.mmap)  # the driver's C is the file's mapping
    in_file = np.frombuffer(os.pread(fd, held_c.nbytes, 0), held_c.dtype).reshape(held_c.shape)
    assert_eq(in_file, a @ a.T)


def test_without_in_memory_files_c_is_written_to_a_folder_of_the_product(sc, monkeypatch):
    monkeypatch.setattr(held, "MEMORY_FILES", False)  # a platform without memfd
    a = rng.standard_normal((100, 70)).astype(np.float32)
    A = BlockMatrix.from_numpy(sc, a, 32, 32)
    C = A.multiply(A.T, strategy="driver")
    assert C.plan.spilled_bytes == 100 * 100 * 4 and "written once to a file" in C.plan.note
    assert_eq(C.to_numpy(), a @ a.T)
    (folder,) = C._held.folders  # C's file goes with the product
    assert [name for name in os.listdir(folder) if name.startswith("driver-array-")]


# ---------------------------------------------------------------------- when it cannot run

def driver_layout(array, block=10) -> BlockLayout:
    return BlockLayout(array.shape, block, block, {(0, 0): 800}, array.dtype, 1, None,
                       DriverArray(array))


LOCAL = MultiplyOptions(num_cores=2, driver_memory_bytes=1 << 30)


@pytest.mark.parametrize("left,right,options,why", [
    (driver_layout(np.ones((10, 10))), BlockLayout((10, 10), 10, 10, {(0, 0): 800}), LOCAL,
     "B is not an array the driver holds (spark)"),
    (driver_layout(np.ones((10, 10))), driver_layout(np.ones((10, 10))),
     MultiplyOptions(num_cores=2), "the master is not local"),
    (driver_layout(np.ones((10, 10))), driver_layout(np.ones((10, 10))),
     MultiplyOptions(num_cores=2, driver_memory_bytes=100),
     "C (800 B) is more than the driver may hold for it (driver_memory_bytes 100 B)"),
], ids=["spark-operand", "cluster", "too-large"])
def test_the_plan_says_why_it_cannot_run(left, right, options, why):
    plan = get_strategy("driver").plan(left, right, options)
    assert why in plan.unavailable
    assert plan.read_bytes == 0 and f"not possible: {why}" in plan.note
    auto = get_strategy("auto").plan(left, right, options)
    assert auto.strategy != "driver"
    with pytest.raises(InvalidParameterError, match="strategy='driver' cannot run"):
        plan.check_runnable()


@pytest.mark.parametrize("formats", ["sparse-sparse", "sparse-dense", "dense-sparse"])
def test_sparse_operands_keep_their_formats(sc, formats):
    left, right = formats.split("-")

    def operand(kind, shape, seed):
        if kind == "sparse":
            m = sp.random(*shape, density=0.2, random_state=seed, format="lil")
            m[:10, :10] = 0  # a missing block
            return m.tocsr()
        return rng.standard_normal(shape)

    a, b = operand(left, (30, 25), 1), operand(right, (25, 35), 2)
    A, B = BlockMatrix.from_numpy(sc, a, 10, 10), BlockMatrix.from_numpy(sc, b, 10, 10)
    C = A.multiply(B, strategy="driver")
    blocks = C.blocks.collect()
    assert all(sp.issparse(block) == (formats == "sparse-sparse") for _, block in blocks)
    assert sorted(k for k, _ in blocks) == sorted(product_keys(A.layout(), B.layout()))
    assert C.plan.dense_result == (formats != "sparse-sparse")
    expected = a @ b
    assert_eq(C.to_numpy(), expected.toarray() if sp.issparse(expected) else expected)


def test_the_product_stays_the_drivers_and_chains(sc):
    a = rng.standard_normal((40, 40))
    A = BlockMatrix.from_numpy(sc, a, 10, 10)
    C = A.multiply(A, strategy="driver")
    assert C.layout().source_kind == "driver"
    D = C.T.multiply(A, strategy="auto")
    assert D.plan.strategy == "driver"
    assert_eq(D.to_numpy(), (a @ a).T @ a)


def test_planning_costs_one_multiply_on_every_core():
    a = driver_layout(np.ones((4096, 4096)), 1024)
    plan = get_strategy("driver").plan(a, a, MultiplyOptions(num_cores=2,
                                                             driver_memory_bytes=1 << 30))
    terms = plan.seconds_terms(2, DEFAULT_RATES)
    assert terms["driver multiply"] == pytest.approx(2 * 4096**3 / 40e9 / 2)
    c_bytes = 4096 * 4096 * 8
    # BLAS writes C into an in-memory file: the tasks only read it (and, without one, C is
    # first written to disk).
    assert plan.num_shuffles == 0 and plan.read_bytes == c_bytes
    assert plan.spilled_bytes == (0 if held.MEMORY_FILES else c_bytes)
    assert terms["C to the tasks"] == pytest.approx(
        (c_bytes + plan.spilled_bytes) / (DEFAULT_RATES.disk_bytes_per_core_s * 2))


@pytest.mark.parametrize("sparse_input", [False, True])
def test_values_the_driver_holds_are_copied_out_without_a_job(sc, sparse_input):
    a = rng.standard_normal((45, 30)).astype(np.float32)
    if sparse_input:
        a = sp.csr_matrix(np.where(np.abs(a) > 1, a, 0))
    A = BlockMatrix.from_numpy(sc, a, 16, 16)
    C = A.multiply(A.T, strategy="driver")
    dense_a = a.toarray() if sparse_input else a
    jobs_before = sc.statusTracker().getJobIdsForGroup()
    for matrix, expected in ((A, dense_a), (A.T, dense_a.T), (C, dense_a @ dense_a.T),
                             (C.T, dense_a @ dense_a.T)):
        got = matrix.to_numpy()
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert_eq(got, expected)
        assert_eq(matrix.to_scipy().toarray(), expected)
        got[...] = 7  # a copy: the matrix keeps its values
    assert sc.statusTracker().getJobIdsForGroup() == jobs_before
    assert_eq(A.to_numpy(), dense_a)
    assert_eq(C.to_numpy(), dense_a @ dense_a.T)
    # and the blocks the tasks read are untouched too
    np.testing.assert_allclose(C.blocks.map(lambda kv: float(kv[1].sum())).sum(),
                               (dense_a @ dense_a.T).sum(), rtol=1e-4)
