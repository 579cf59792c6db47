"""Tables in and out: coordinates and rows of vectors as DataFrames, RDDs, Parquet and MLlib's
CoordinateMatrix / IndexedRowMatrix, against numpy and scipy; bad tables refused by column."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_eq

from blockmatrix import BlockMatrix
from blockmatrix.errors import (
    ColumnTypeError,
    InvalidTableError,
    MissingColumnError,
)
from blockmatrix.interop import tables

SHAPE = (30, 25)


@pytest.fixture(scope="module")
def spark(sc):
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()


@pytest.fixture(scope="module")
def sparse():
    """30x25 with a full last row and column, so that the inferred shape is the true one."""
    a = sp.random(*SHAPE, density=0.08, random_state=3, format="lil")
    a[SHAPE[0] - 1, 0] = 1.5
    a[0, SHAPE[1] - 1] = -2.0
    a[:8, :6] = np.arange(48.0).reshape(8, 6) + 1  # block (0, 0) full: built dense
    return a.tocsr()


def coordinates(spark, a, names=("i", "j", "v")):
    coo = sp.coo_matrix(a)
    rows = [(int(i), int(j), float(v)) for i, j, v in zip(coo.row, coo.col, coo.data,
                                                           strict=True)]
    return spark.createDataFrame(rows, list(names))


def formats(m: BlockMatrix) -> dict:
    return {key: "csr" if sp.issparse(b) else "dense" for key, b in m.blocks.collect()}


def expected_formats(a, rows_per_block: int, cols_per_block: int) -> dict:
    """Dense where a block is at least DENSE_FILL full, CSR where it is less, none if empty."""
    a = sp.csr_matrix(a)
    out = {}
    for i in range(0, a.shape[0], rows_per_block):
        for j in range(0, a.shape[1], cols_per_block):
            block = a[i:i + rows_per_block, j:j + cols_per_block]
            if block.nnz:
                full = block.nnz >= tables.DENSE_FILL * block.shape[0] * block.shape[1]
                out[i // rows_per_block, j // cols_per_block] = "dense" if full else "csr"
    return out


def test_coordinates_dataframe_in_and_out(spark, sparse):
    m = BlockMatrix.from_coordinates(coordinates(spark, sparse), rows_per_block=8,
                                     cols_per_block=6)
    assert m.shape == SHAPE and m.dtype == np.float64
    assert_eq(m.to_numpy(), sparse.toarray())
    kinds = formats(m)
    assert kinds == expected_formats(sparse, 8, 6)
    assert kinds[0, 0] == "dense" and list(kinds.values()).count("csr") > 10
    out = m.to_coordinates().collect()
    back = sp.csr_matrix(([r.v for r in out], ([r.i for r in out], [r.j for r in out])),
                         shape=SHAPE)
    assert len(out) == sparse.nnz
    assert_eq(back, sparse)


def test_coordinates_rdd_of_tuples_and_matrix_entries(sc, sparse):
    from pyspark.mllib.linalg.distributed import MatrixEntry

    coo = sparse.tocoo()
    tuples = list(zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True))
    m = BlockMatrix.from_coordinates(sc.parallelize(tuples, 3), shape=(40, 30),
                                     rows_per_block=16, cols_per_block=16)
    expected = np.zeros((40, 30))
    expected[:SHAPE[0], :SHAPE[1]] = sparse.toarray()
    assert_eq(m.to_numpy(), expected)
    entries = sc.parallelize([MatrixEntry(*t) for t in tuples], 2)
    assert_eq(BlockMatrix.from_coordinates(entries, rows_per_block=7,
                                           cols_per_block=9).to_numpy(), sparse.toarray())


def test_integer_values_keep_their_type(spark):
    df = spark.createDataFrame([(0, 1, 3), (2, 0, -4)], "i int, j short, v int")
    m = BlockMatrix.from_coordinates(df, rows_per_block=2, cols_per_block=2)
    assert m.dtype == np.int32
    dense = m.to_numpy()
    assert dense.dtype == np.int32 and dense.tolist() == [[0, 3], [0, 0], [-4, 0]]
    assert m.to_coordinates().schema["v"].dataType.simpleString() == "int"


@pytest.mark.parametrize("kind", ["sparse", "dense", "array"])
def test_rows_in_and_out(spark, sparse, kind):
    from pyspark.ml.linalg import Vectors

    a = sparse.toarray()
    if kind == "array":
        data = [(i, a[i].tolist()) for i in range(0, SHAPE[0], 2)]
    else:
        vec = (lambda r: Vectors.sparse(SHAPE[1], dict(zip(r.indices.tolist(),
                                                           r.data.tolist(), strict=True)))
               ) if kind == "sparse" else (lambda r: Vectors.dense(r.toarray()[0]))
        data = [(i, vec(sparse[i])) for i in range(0, SHAPE[0], 2)]
    df = spark.createDataFrame(data, ["i", "features"])
    m = BlockMatrix.from_rows(df, shape=SHAPE, rows_per_block=8, cols_per_block=6)
    expected = np.zeros(SHAPE)
    expected[::2] = a[::2]  # odd rows are absent: zero
    assert_eq(m.to_numpy(), expected)
    assert formats(m) == expected_formats(expected, 8, 6)
    if kind != "sparse":
        return
    rows = m.to_rows().collect()
    assert sorted(r.i for r in rows) == [i for i in range(0, SHAPE[0], 2) if a[i].any()]
    for r in rows:
        np.testing.assert_array_equal(r.features.toArray(), a[r.i])
    assert {type(r.features).__name__ for r in rows} == {"SparseVector", "DenseVector"}
    arrays = m.to_rows(as_array=True).collect()
    assert all(r.features == a[r.i].tolist() for r in arrays)


def test_mllib_coordinate_and_indexed_row_matrices_both_ways(sc, sparse):
    from pyspark.mllib.linalg.distributed import CoordinateMatrix, IndexedRowMatrix

    m = BlockMatrix.from_numpy(sc, sparse, 8, 6)
    cm = m.to_mllib("coordinate")
    assert isinstance(cm, CoordinateMatrix) and (cm.numRows(), cm.numCols()) == SHAPE
    im = m.to_mllib("indexed_row")
    assert isinstance(im, IndexedRowMatrix) and (im.numRows(), im.numCols()) == SHAPE
    for mllib_matrix in (cm, im):
        back = BlockMatrix.from_mllib(mllib_matrix, rows_per_block=7, cols_per_block=5)
        assert (back.rows_per_block, back.cols_per_block) == (7, 5)
        assert_eq(back.to_numpy(), sparse.toarray())
    with pytest.raises(Exception, match="kind must be 'block', 'coordinate' or 'indexed_row'"):
        m.to_mllib("row")


def test_parquet_in_multiply_parquet_out(spark, sparse, tmp_path):
    rng = np.random.default_rng(4)
    b = rng.standard_normal((SHAPE[1], 12))
    coordinates(spark, sparse, ("row", "col", "value")).write.parquet(str(tmp_path / "a"))
    BlockMatrix.from_numpy(spark.sparkContext, b, 6, 4).to_coordinates().write.parquet(
        str(tmp_path / "b"))

    a_m = BlockMatrix.from_coordinates(spark.read.parquet(str(tmp_path / "a")), row="row",
                                       col="col", value="value", rows_per_block=8,
                                       cols_per_block=6)
    b_m = BlockMatrix.from_coordinates(spark.read.parquet(str(tmp_path / "b")),
                                       shape=b.shape, rows_per_block=6, cols_per_block=4)
    (a_m @ b_m).to_coordinates().write.parquet(str(tmp_path / "c"))

    out = spark.read.parquet(str(tmp_path / "c")).collect()
    c = np.zeros((SHAPE[0], 12))
    c[[r.i for r in out], [r.j for r in out]] = [r.v for r in out]
    assert_eq(c, sparse @ b)


@pytest.mark.parametrize("kind", ["coordinates", "rows"])
def test_parquet_keeps_the_shape_with_trailing_zero_rows_and_columns(spark, tmp_path, kind):
    a = np.zeros((9, 7))
    a[2, 3], a[4, 1] = 1.5, -2.0  # the last four rows and three columns are zero
    m = BlockMatrix.from_numpy(spark.sparkContext, a, 4, 3)
    path = str(tmp_path / kind)
    if kind == "coordinates":
        m.to_coordinates().write.parquet(path)
        back = BlockMatrix.from_coordinates(spark.read.parquet(path), rows_per_block=5,
                                            cols_per_block=2)
    else:
        m.to_rows().write.parquet(path)
        back = BlockMatrix.from_rows(spark.read.parquet(path), rows_per_block=5,
                                     cols_per_block=2)
    assert back.shape == a.shape
    assert_eq(back.to_numpy(), a)
    # A table without the record is sized by its largest indices.
    from pyspark.sql.types import StructField, StructType

    read = spark.read.parquet(path)
    bare = spark.createDataFrame(read.rdd, StructType(
        [StructField(f.name, f.dataType, f.nullable) for f in read.schema]))  # no metadata
    inferred = (BlockMatrix.from_coordinates(bare) if kind == "coordinates"
                else BlockMatrix.from_rows(bare))
    assert inferred.shape == ((5, 4) if kind == "coordinates" else (5, 7))


def test_the_checks_are_one_job(sc, spark, sparse):
    df = coordinates(spark, sparse)
    sc.setJobGroup("table-checks", "from_coordinates")
    try:
        BlockMatrix.from_coordinates(df, rows_per_block=8, cols_per_block=6)
        jobs = sc.statusTracker().getJobIdsForGroup("table-checks")
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    # Adaptive execution submits each shuffle's stages as a job of their own: one query.
    assert 1 <= len(jobs) <= 3, jobs


# ---------------------------------------------------------------------- refusals

GOOD = [(0, 0, 1.0), (1, 2, 2.0), (2, 1, 3.0)]


@pytest.mark.parametrize("rows, schema, kwargs, error, column, words", [
    (GOOD, "i long, j long, v double", {"value": "w"}, MissingColumnError, "w",
     "value='w' is not a column"),
    ([(0.0, 0, 1.0)], "i double, j long, v double", {}, ColumnTypeError, "i", "not integers"),
    ([(0, 0, "a")], "i long, j long, v string", {}, ColumnTypeError, "v", "not real numbers"),
    ([(0, None, 1.0)] + GOOD, "i long, j long, v double", {}, InvalidTableError, "j",
     "1 null"),
    ([(3, 0, None)] + GOOD, "i long, j long, v double", {}, InvalidTableError, "v", "null"),
    ([(-1, 0, 1.0)] + GOOD, "i long, j long, v double", {}, InvalidTableError, "i",
     "negative index -1"),
    (GOOD, "i long, j long, v double", {"shape": (3, 2)}, InvalidTableError, "j",
     "index 2, outside shape\\[1\\]=2"),
    ([(1, 2, 5.0)] + GOOD, "i long, j long, v double", {}, InvalidTableError, "i, j",
     "1 of 4 entries repeat"),
])
def test_bad_coordinates_are_refused_naming_the_column(spark, rows, schema, kwargs, error,
                                                       column, words):
    df = spark.createDataFrame(rows, schema)
    with pytest.raises(error, match=words) as caught:
        BlockMatrix.from_coordinates(df, rows_per_block=2, cols_per_block=2, **kwargs)
    assert caught.value.column == column
    assert f"{column!r}" in str(caught.value) or column == "i, j"


def test_bad_rdd_elements_are_refused_naming_the_field(sc):
    with pytest.raises(ColumnTypeError, match=r"field 0 \(row\).*not integers") as caught:
        BlockMatrix.from_coordinates(sc.parallelize([(0.5, 0, 1.0), (1, 1, 1.0)]))
    assert caught.value.column == "row"
    with pytest.raises(InvalidTableError, match=r"not an entry \(i, j, v\)"):
        BlockMatrix.from_coordinates(sc.parallelize([(0, 0), (1, 1, 1.0)]))


@pytest.mark.parametrize("rows, schema, kwargs, column, words", [
    ([(0, [1.0, 2.0]), (0, [3.0, 4.0])], "i long, features array<double>", {}, "i",
     "1 of 2 rows repeat an index"),
    ([(0, [1.0, 2.0]), (1, [3.0])], "i long, features array<double>", {}, "features",
     "lengths 1 to 2"),
    ([(0, [1.0, None])], "i long, features array<double>", {}, "features", "holding nulls"),
    ([(0, None), (1, [1.0])], "i long, features array<double>", {}, "features", "1 null"),
    ([(5, [1.0])], "i long, features array<double>", {"shape": (3, 1)}, "i",
     "index 5, outside shape\\[0\\]=3"),
    ([(0, "x")], "i long, features string", {}, "features", "holds string"),
])
def test_bad_rows_are_refused_naming_the_column(spark, rows, schema, kwargs, column, words):
    df = spark.createDataFrame(rows, schema)
    with pytest.raises(InvalidTableError, match=words) as caught:
        BlockMatrix.from_rows(df, rows_per_block=2, cols_per_block=2, **kwargs)
    assert caught.value.column == column and f"{column!r}" in str(caught.value)


def test_spark_types_of_numpy_dtypes():
    names = {np.dtype(d): tables.spark_type(d).simpleString()
             for d in ("f8", "f4", "i8", "i4", "i2", "i1", "u1", "u8", "?")}
    assert names == {np.dtype("f8"): "double", np.dtype("f4"): "float",
                     np.dtype("i8"): "bigint", np.dtype("i4"): "int",
                     np.dtype("i2"): "smallint", np.dtype("i1"): "tinyint",
                     np.dtype("u1"): "smallint", np.dtype("u8"): "double",
                     np.dtype("?"): "boolean"}
