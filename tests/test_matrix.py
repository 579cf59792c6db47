"""BlockMatrix on a real local[2] Spark: one shuffle, validation, constructors and exits."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_eq
from pyspark.rdd import Partitioner  # pyspark.core.rdd in 4.x only

from blockmatrix import BlockMatrix, GridPartitioner, _spill, explain_multiply
from blockmatrix.errors import (
    BlockSizeMismatchError,
    BlockTypeError,
    InputNotFoundError,
    InvalidBlockError,
    InvalidInputError,
    InvalidParameterError,
    OutputExistsError,
    ShapeMismatchError,
    UnknownStrategyError,
)
from blockmatrix.metrics import record

rng = np.random.default_rng(11)


def _file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the one-shuffle multiply


def test_inner_multiply_runs_exactly_one_shuffle(sc):
    a, b = rng.standard_normal((90, 70)), rng.standard_normal((70, 50))
    A = BlockMatrix.from_numpy(sc, a, 20, 20, num_partitions=3).persist()
    B = BlockMatrix.from_numpy(sc, b, 20, 20, num_partitions=3).persist()
    A.blocks.count(), B.blocks.count()
    with record(sc, "inner") as m:
        C = A @ B
        result = C.to_numpy()
    assert m.shuffle_stages == 1, str(m)
    assert_eq(result, a @ b)
    # The result keeps the grid partitioner: a reduction by (i, j) with it is free.
    grid = C.plan.grid
    assert C.blocks.partitioner == Partitioner(grid.num_partitions, grid)
    with record(sc, "reduce") as m2:
        summed = C.blocks.reduceByKey(lambda x, y: x + y, grid.num_partitions,
                                      GridPartitioner(grid.rows, grid.cols, grid.rows_per_part,
                                                      grid.cols_per_part)).collect()
    assert m2.shuffle_stages == 0, str(m2)  # the multiply's shuffle is reused, none is added
    assert len(summed) == C.blocks.count()


def test_blocks_go_to_spark_grid_partitions(sc):
    a, b = rng.standard_normal((50, 40)), rng.standard_normal((40, 30))
    A, B = BlockMatrix.from_numpy(sc, a, 10, 10), BlockMatrix.from_numpy(sc, b, 10, 10)
    C = A @ B
    grid = C.plan.grid
    for pid, part in enumerate(C.blocks.glom().collect()):
        assert all(grid(key) == pid for key, _ in part)


def _spilled_records_per_task(C) -> list[int]:
    """Records each task of ``C``'s last stage spilled, read in the worker that ran it."""
    def spilled(blocks):
        list(blocks)  # the product's task: grouped (and spilled) before this function runs
        return [_spill.last_spilled_records]

    return C.blocks.mapPartitions(spilled).collect()


def test_long_inner_dimension_spills_in_real_tasks(sc):
    a, b = rng.standard_normal((8, 640)), rng.standard_normal((640, 8))
    A, B = BlockMatrix.from_numpy(sc, a, 8, 8), BlockMatrix.from_numpy(sc, b, 8, 8)
    roomy = A.multiply(B)
    C = A.multiply(B, task_buffer_bytes=4096)  # 8 of the 160 input blocks, then local disk
    assert sum(_spilled_records_per_task(roomy)) == 0
    # One task gets all 160 blocks of 512 bytes; each time 9 wait (4608 > 4096 bytes) they go
    # to disk: 17 spills of 9, and the last 7 stay in memory.
    assert sum(_spilled_records_per_task(C)) == 153
    assert_eq(C.to_numpy(), a @ b)


def test_num_mid_splits_gives_the_same_result(sc):
    a, b = rng.standard_normal((16, 120)), rng.standard_normal((120, 12))
    A, B = BlockMatrix.from_numpy(sc, a, 8, 10), BlockMatrix.from_numpy(sc, b, 10, 6)
    for s in (2, 3, 12):
        assert_eq(A.multiply(B, num_mid_splits=s).to_numpy(), a @ b)


def test_no_job_runs_while_building_a_product(sc):
    a = rng.standard_normal((30, 30))
    with record(sc) as m:
        A = BlockMatrix.from_numpy(sc, a, 10, 10)
        C = A.multiply(A.T).multiply(A)
        BlockMatrix.from_blocks(C.blocks, C.shape, 10, 10)
    assert m.job_ids == []
    assert_eq(C.to_numpy(), a @ a.T @ a)


# ---------------------------------------------------------------- bad input, before any job


def _lazy(sc, shape, rpb, cpb):
    """A matrix whose layout is unknown (planning it would need a job)."""
    return BlockMatrix.from_blocks(sc.parallelize([((0, 0), np.ones((1, 1)))]), shape, rpb, cpb)


@pytest.mark.parametrize("make, error, match", [
    (lambda sc: _lazy(sc, (4, 5), 2, 2).multiply(_lazy(sc, (6, 3), 2, 2)), ShapeMismatchError,
     r"A.shape\[1\] \(5\) != B.shape\[0\] \(6\)"),
    (lambda sc: _lazy(sc, (4, 6), 2, 2).multiply(_lazy(sc, (6, 3), 3, 3)),
     BlockSizeMismatchError, r"A.cols_per_block \(2\) != B.rows_per_block \(3\).*re-block"),
    (lambda sc: _lazy(sc, (4, 6), 2, 2).multiply(_lazy(sc, (6, 3), 2, 2), num_mid_splits=0),
     InvalidParameterError, r"num_mid_splits must be a positive integer.*got 0"),
    (lambda sc: _lazy(sc, (4, 6), 2, 2).multiply(_lazy(sc, (6, 3), 2, 2), strategy="magic"),
     UnknownStrategyError, r"'magic' is not one of"),
    (lambda sc: _lazy(sc, (4, 6), 2, 2).multiply(_lazy(sc, (6, 3), 2, 2), num_partitions=0),
     InvalidParameterError, r"num_partitions"),
    (lambda sc: _lazy(sc, (4, 6), 0, 2), InvalidParameterError,
     r"rows_per_block must be a positive integer, got 0"),
    (lambda sc: _lazy(sc, (4, -6), 2, 2), InvalidParameterError, r"shape\[1\]"),
    (lambda sc: BlockMatrix.from_numpy(sc, np.zeros((2, 2), complex), 1, 1), BlockTypeError,
     "complex"),
    (lambda sc: BlockMatrix.from_numpy(sc, np.zeros((2, 2, 2)), 1, 1), BlockTypeError,
     "3 dimension"),
    (lambda sc: BlockMatrix.from_numpy(sc, np.array([[object()]]), 1, 1), BlockTypeError,
     "object"),
    (lambda sc: BlockMatrix.from_numpy(sc, np.ones((2, 2)), -1, 1), InvalidParameterError,
     "rows_per_block"),
    (lambda sc: _lazy(sc, (4, 6), 2, 2).add(_lazy(sc, (4, 5), 2, 2)), ShapeMismatchError,
     r"A.shape \(\(4, 6\)\) != B.shape \(\(4, 5\)\)"),
    (lambda sc: _lazy(sc, (4, 6), 2, 2).subtract(_lazy(sc, (4, 6), 2, 3)),
     BlockSizeMismatchError, "different block shapes"),
])
def test_bad_input_is_rejected_before_any_spark_job(sc, make, error, match):
    with record(sc) as m:
        with pytest.raises(error, match=match):
            make(sc)
    assert m.job_ids == []


# ---------------------------------------------------------------- validate


def _from(sc, items, shape, rpb, cpb):
    return BlockMatrix.from_blocks(sc.parallelize(items, 2), shape, rpb, cpb)


def test_validate_accepts_a_good_matrix(sc):
    A = BlockMatrix.from_numpy(sc, sp.random(9, 7, density=0.5, random_state=3), 4, 3)
    assert A.validate() is A


@pytest.mark.parametrize("items, error, match", [
    ([((0, 0), np.ones((2, 2))), ((0, 0), np.ones((2, 2)))], InvalidBlockError,
     r"2 blocks with the index \(0, 0\).*remove blocks with duplicate"),
    ([((0, 0), np.ones((2, 1)))], InvalidBlockError,
     r"block \(0, 0\) has shape \(2, 1\), expected \(2, 2\)"),
    ([((1, 1), np.ones((2, 2)))], InvalidBlockError,
     r"block \(1, 1\) has shape \(2, 2\), expected \(1, 1\) \(an edge block"),
    ([((2, 0), np.ones((1, 2)))], InvalidBlockError, r"\(2, 0\) is outside the 2x2 block grid"),
    ([((-1, 0), np.ones((2, 2)))], InvalidBlockError, r"\(-1, 0\) is outside"),
    ([((0, 0), np.ones((2, 2), complex))], BlockTypeError, "complex"),
    ([((0, 0), np.ones(2))], BlockTypeError, "1 dimension"),
    ([((0, 0), [[1.0]])], BlockTypeError, "list"),
    ([("a", np.ones((2, 2)))], InvalidBlockError, "not a pair of integers"),
])
def test_validate_rejects(sc, items, error, match):
    with pytest.raises(error, match=match):
        _from(sc, items, (3, 3), 2, 2).validate()


# ---------------------------------------------------------------- planning from Spark


def test_the_layout_of_an_rdd_is_one_small_reported_job(sc):
    # 48 blocks of 64 x 64 float64 (32 KiB each, 1.5 MiB in all) known only to Spark: one job
    # collects their keys and sizes, a few hundred bytes, never a block's values
    a = rng.standard_normal((384, 512))
    A = BlockMatrix.from_blocks(BlockMatrix.from_numpy(sc, a, 64, 64, 3).blocks, a.shape, 64, 64)
    with record(sc, "layout") as m:
        layout = A.layout()
    assert len(m.job_ids) == 1
    collect = layout.key_collect
    assert (collect.keys, collect.partitions) == (48, 3)
    assert 0 < collect.collected_bytes < 64 * collect.keys + 1024 * collect.partitions
    assert collect.collected_bytes < a.nbytes / 500
    held = BlockMatrix.from_numpy(sc, a, 64, 64).layout()
    assert dict(layout.block_nbytes) == dict(held.block_nbytes) and held.key_collect is None
    assert layout.transpose().key_collect == collect
    # shown in explain_multiply's report and in the plan's printout
    report = str(explain_multiply(A, A.T, strategy="inner"))
    assert report.count("keys collected by 1 job: 48 keys") == 2
    assert "keys collected by 1 job: 48 keys" in str(A.multiply(A.T, strategy="inner").plan)


def test_a_sparse_product_collects_its_keys_when_planned_on(sc):
    # a product of CSR operands has no layout until a job describes it: one collect, reported
    a = sp.random(60, 40, density=0.2, random_state=7, format="csr")
    A = BlockMatrix.from_numpy(sc, a, 10, 10, 2)
    C = A.multiply(A.T, strategy="inner")
    with record(sc, "product layout") as m:
        layout = C.layout()
    assert len(m.job_ids) == 1
    assert layout.key_collect.keys == len(layout.block_nbytes) == 36
    assert str(layout.key_collect) in str(explain_multiply(C, C, strategy="inner"))


def test_a_bad_key_is_refused_when_the_layout_is_built(sc):
    with pytest.raises(InvalidBlockError, match="not a pair of integers"):
        _from(sc, [("a", np.ones((2, 2)))], (3, 3), 2, 2).layout()


# ---------------------------------------------------------------- algebra


def test_add_subtract_transpose(sc):
    a, b = rng.standard_normal((11, 7)), sp.random(11, 7, density=0.3, random_state=4)
    A, B = BlockMatrix.from_numpy(sc, a, 3, 4), BlockMatrix.from_numpy(sc, b, 3, 4)
    assert_eq((A + B).to_numpy(), a + b.toarray())
    assert_eq((A - B).to_numpy(), a - b.toarray())
    assert_eq((B - B).to_scipy(), np.zeros((11, 7)))
    assert_eq(B.T.to_scipy(), b.T.toarray())
    assert (B.T.rows_per_block, B.T.cols_per_block) == (4, 3)


def test_add_rejects_duplicate_blocks(sc):
    dup = _from(sc, [((0, 0), np.ones((2, 2))), ((0, 0), np.ones((2, 2)))], (2, 2), 2, 2)
    with pytest.raises(Exception, match="multiple blocks with the same index"):
        dup.add(BlockMatrix.from_numpy(sc, np.ones((2, 2)), 2, 2)).to_numpy()


def test_from_numpy_skips_zero_blocks_and_keeps_formats(sc):
    a = np.zeros((6, 6))
    a[:3, :3] = 1
    A = BlockMatrix.from_numpy(sc, a, 3, 3)
    assert [k for k, _ in A.blocks.collect()] == [(0, 0)]
    S = BlockMatrix.from_numpy(sc, sp.coo_matrix(a), 3, 3)
    assert all(sp.isspmatrix_csr(blk) for _, blk in S.blocks.collect())
    assert_eq(S.to_scipy(), a)
    assert S.to_scipy().format == "csr"


def test_persist_and_unpersist(sc):
    A = BlockMatrix.from_numpy(sc, np.ones((4, 4)), 2, 2)
    assert A.persist() is A and A.blocks.is_cached
    assert A.unpersist() is A and not A.blocks.is_cached


# ---------------------------------------------------------------- MLlib


def test_mllib_round_trip_dense_and_sparse(sc):
    a = rng.standard_normal((9, 8))
    s = sp.random(9, 8, density=0.4, random_state=5, format="csr")
    for x in (a, s):
        A = BlockMatrix.from_numpy(sc, x, 4, 3)
        m = A.to_mllib()
        assert (m.numRows(), m.numCols(), m.rowsPerBlock, m.colsPerBlock) == (9, 8, 4, 3)
        back = BlockMatrix.from_mllib(m)
        assert_eq(back.to_numpy(), x.toarray() if sp.issparse(x) else x)
        assert_eq(m.toLocalMatrix().toArray(), x.toarray() if sp.issparse(x) else x)


# ---------------------------------------------------------------- HDF5


@pytest.fixture()
def h5(tmp_path):
    path = tmp_path / "m.h5"
    a = rng.standard_normal((23, 17))
    with h5py.File(path, "w") as f:
        f["A"] = a
        f.create_dataset("chunked", data=a.astype(np.float32), chunks=(5, 5))
        f["cube"] = np.zeros((2, 2, 2))
        f["text"] = np.array([b"x", b"y"]).reshape(1, 2)
        f.create_group("group")
    return path, a


def test_hdf5_round_trip_and_product_in_the_same_file(sc, h5):
    path, a = h5
    A = BlockMatrix.from_hdf5(sc, str(path), "/A", 5, 4)
    assert_eq(A.to_numpy(), a)
    F = BlockMatrix.from_hdf5(sc, str(path), "chunked", 5, 5)
    assert F.dtype == np.float32
    assert_eq(F.to_numpy(), a.astype(np.float32), dtype=np.float32)
    G = A.T.multiply(BlockMatrix.from_hdf5(sc, str(path), "/A", 5, 4).multiply(
        BlockMatrix.from_hdf5(sc, str(path), "/A", 4, 4).T))  # reads and writes one file
    assert G.input_files == {str(path)}
    assert G.to_hdf5(str(path), "/results/G") > 0
    with h5py.File(path, "r") as f:
        assert_eq(f["/results/G"][()], a.T @ a @ a.T)
        assert_eq(f["A"][()], a)


def test_to_hdf5_refuses_to_overwrite_and_changes_nothing(sc, h5):
    path, a = h5
    A = BlockMatrix.from_numpy(sc, a, 8, 8)
    before = _file_digest(path)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        A.to_hdf5(str(path), "/A")
    assert _file_digest(path) == before
    A.multiply(A.T).to_hdf5(str(path), "/A", overwrite=True)
    with h5py.File(path, "r") as f:
        assert_eq(f["A"][()], a @ a.T)


def test_to_hdf5_fills_missing_blocks_with_zeros(sc, tmp_path):
    a = np.zeros((10, 10))
    a[5:, 5:] = 2.0
    BlockMatrix.from_numpy(sc, sp.csr_matrix(a), 5, 5).to_hdf5(str(tmp_path / "z.h5"), "Z")
    with h5py.File(tmp_path / "z.h5", "r") as f:
        assert_eq(f["Z"][()], a)


@pytest.mark.parametrize("dataset, error, match", [
    ("missing", InputNotFoundError, "'/missing' is not in"),
    ("cube", InvalidInputError, "3 dimensions"),
    ("text", InvalidInputError, "not a real number type"),
    ("group", InvalidInputError, "is a group"),
])
def test_from_hdf5_rejects(sc, h5, dataset, error, match):
    path, _ = h5
    with pytest.raises(error, match=match):
        BlockMatrix.from_hdf5(sc, str(path), "/" + dataset, 4, 4)


def test_from_hdf5_rejects_missing_and_non_hdf5_files(sc, tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        BlockMatrix.from_hdf5(sc, str(tmp_path / "nope.h5"), "/A", 4, 4)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(InvalidInputError, match="cannot be read as HDF5"):
        BlockMatrix.from_hdf5(sc, str(junk), "/A", 4, 4)


def test_x_times_x_transpose_from_hdf5_takes_the_gram_path(sc, tmp_path):
    x = rng.standard_normal((70, 260))
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["X"] = x
    X = BlockMatrix.from_hdf5(sc, str(path), "/X", 32, 64)
    G = X @ X.T
    assert_eq(G.to_numpy(), x @ x.T)  # still an ordinary product for everything else
    before = hashlib.sha256(h5py.File(path, "r")["X"][()].tobytes()).hexdigest()
    with record(sc) as m:
        tiles = G.to_hdf5(str(path), "/Y")
    assert tiles >= 1
    assert m.shuffle_stages == 0, str(m)  # tiles read X straight from the file
    with h5py.File(path, "r") as f:
        assert_eq(f["Y"][()], x @ x.T)
        assert hashlib.sha256(f["X"][()].tobytes()).hexdigest() == before
    with pytest.raises(OutputExistsError):
        G.to_hdf5(str(path), "/Y")
