"""Tables in and out: coordinates ``(i, j, v)`` and rows of vectors, as DataFrames or RDDs.

The conversions behind :meth:`BlockMatrix.from_coordinates`, :meth:`~BlockMatrix.from_rows`,
:meth:`~BlockMatrix.to_coordinates`, :meth:`~BlockMatrix.to_rows` and MLlib's
``CoordinateMatrix`` / ``IndexedRowMatrix``. No data passes through the driver:

* in: the table is checked by **one aggregate job** (nulls, index ranges, duplicate indices,
  vector lengths; only a row of counts reaches the driver), then each task cuts its rows into
  per-block pieces (numpy arrays) and **one shuffle** groups the pieces of a block, where the
  block is built: CSR when under :data:`DENSE_FILL` of its elements are stored, dense otherwise.
  All-zero blocks are not stored.
* out: each task turns its blocks into rows of a DataFrame (coordinates: no shuffle; rows of
  vectors: one shuffle that brings a row's pieces together).

Every refusal is a :class:`~blockmatrix.errors.InvalidTableError` (or a subclass) naming the
column, raised before any block is built. Only public PySpark API is used here (the py4j
internals stay in :mod:`blockmatrix.interop.mllib`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import islice

import numpy as np
import scipy.sparse as sp

from .._checks import check_int, is_integer
from ..errors import ColumnTypeError, InvalidParameterError, InvalidTableError, MissingColumnError
from ..layout import block_extent, blocks_along
from ..partitioner import GridPartitioner

#: A block built from a table is dense when at least this fraction of its elements is stored,
#: CSR below it. CSR costs 12 bytes a stored value (value and column index) against 8 for every
#: dense element, and dense products run far faster per stored value (blockmatrix.cost:
#: 40 against 1 GFLOP/s a core), so a quarter full is where dense wins on both counts.
DENSE_FILL = 0.25

#: Rows a task reads before cutting them into block pieces (bounds its memory).
BATCH_ROWS = 1 << 18

#: Metadata key of the value (or vector) column recording the matrix's shape ``[rows, cols]``.
SHAPE_METADATA = "blockmatrix_shape"

#: Field names of an RDD's elements, for the messages (an RDD has no column names).
RDD_FIELDS = ("row", "col", "value")

# Bits of the ``_bad`` column of an RDD read as a table: which field has the wrong type.
_BAD_BITS = {"row": 1, "col": 2, "value": 4}
_BAD_SHAPE = 8


# ---------------------------------------------------------------------- Spark types


def _spark_types():
    from pyspark.sql import types as T  # noqa: N812  (PySpark's own alias)

    return T


def numpy_dtype(data_type) -> np.dtype | None:
    """The numpy dtype of a Spark SQL type, or None when it is not a real number.

    Integral and floating types keep their width; decimals become float64.
    """
    T = _spark_types()  # noqa: N806
    table = {T.ByteType: np.int8, T.ShortType: np.int16, T.IntegerType: np.int32,
             T.LongType: np.int64, T.FloatType: np.float32, T.DoubleType: np.float64,
             T.DecimalType: np.float64, T.BooleanType: np.bool_}
    for spark_type, dtype in table.items():
        if isinstance(data_type, spark_type):
            return np.dtype(dtype)
    return None


def spark_type(dtype: np.dtype):
    """The Spark SQL type that holds a numpy dtype's values without loss (uint64: double)."""
    T = _spark_types()  # noqa: N806
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return T.BooleanType()
    if dtype.kind == "f":
        return T.FloatType() if dtype.itemsize <= 4 else T.DoubleType()
    widths = {1: T.ByteType, 2: T.ShortType, 4: T.IntegerType, 8: T.LongType}
    size = dtype.itemsize * (2 if dtype.kind == "u" else 1)  # room for the unsigned range
    return widths[size]() if size in widths else T.DoubleType()


def _is_integral(data_type) -> bool:
    T = _spark_types()  # noqa: N806
    return isinstance(data_type, T.IntegralType)


def _is_vector(data_type) -> bool:
    from pyspark.ml.linalg import VectorUDT
    from pyspark.mllib.linalg import VectorUDT as MLlibVectorUDT

    return isinstance(data_type, (VectorUDT, MLlibVectorUDT))


# ---------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Grid:
    """Shape and block shape of the matrix being built."""

    shape: tuple[int, int]
    rows_per_block: int
    cols_per_block: int

    @property
    def num_row_blocks(self) -> int:
        """Number of block rows."""
        return blocks_along(self.shape[0], self.rows_per_block)

    @property
    def num_col_blocks(self) -> int:
        """Number of block columns."""
        return blocks_along(self.shape[1], self.cols_per_block)

    def partitioner(self, num_partitions: int) -> GridPartitioner:
        """Spark's grid partitioning of the blocks for a suggested number of partitions."""
        return GridPartitioner.from_suggested(max(self.num_row_blocks, 1),
                                              max(self.num_col_blocks, 1), num_partitions)


def _given_shape(shape) -> tuple[int, int] | None:
    if shape is None:
        return None
    try:
        rows, cols = shape
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"shape must be a pair (rows, cols) or None (from the largest indices), "
            f"got {shape!r}") from None
    return (check_int(rows, "shape[0]", minimum=0), check_int(cols, "shape[1]", minimum=0))


def recorded_shape(df, column: str) -> tuple[int, int] | None:
    """The shape :func:`blocks_to_coordinates` or :func:`blocks_to_rows` recorded on ``column``.

    It is kept in the column's metadata (:data:`SHAPE_METADATA`), which Parquet files written
    by Spark keep too, so that a matrix read back has its trailing all-zero rows and columns.
    None when the table does not record one (then the shape comes from the largest indices).
    """
    shape = df.schema[column].metadata.get(SHAPE_METADATA)
    if (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(n, int) and n >= 0 for n in shape)):
        return shape[0], shape[1]
    return None


def _shape_field(name: str, data_type, shape) -> object:
    """A non-null field recording the matrix's ``shape`` in its metadata."""
    T = _spark_types()  # noqa: N806
    return T.StructField(name, data_type, False,
                         metadata={SHAPE_METADATA: [int(shape[0]), int(shape[1])]})


def _column(df, name, param: str) -> str:
    """``name`` checked to be a column of ``df`` (no job: the schema only)."""
    if not isinstance(name, str) or name not in df.columns:
        raise MissingColumnError(
            f"{param}={name!r} is not a column of the table, whose columns are "
            f"{df.columns}: pass {param}= one of them", column=name)
    return name


def _where(column: str, param: str, from_rdd: bool) -> str:
    if from_rdd:
        return f"field {RDD_FIELDS.index(param)} ({param}) of the RDD's elements"
    return f"column {column!r} ({param}=)"


# ---------------------------------------------------------------------- coordinates in


def coordinates_to_blocks(data, row: str, col: str, value: str, shape, rows_per_block: int,
                          cols_per_block: int, num_partitions: int | None):
    """Blocks of a coordinate table: ``(blocks RDD, shape, dtype)``.

    ``data`` is a DataFrame with the columns ``row``, ``col`` (integers) and ``value`` (real
    numbers), or an RDD of ``(i, j, v)`` tuples, ``Row`` objects or MLlib ``MatrixEntry``.
    Runs one aggregate job (counts, minima and maxima, and the number of distinct ``(i, j)``
    pairs, which shuffles the pairs: 16 bytes a row); the blocks are built when used.

    Raises
    ------
    MissingColumnError, ColumnTypeError, InvalidTableError
        Naming the column: absent, not integers / real numbers, nulls, negative or
        out-of-range indices, duplicate ``(i, j)``.
    """
    from pyspark.sql import functions as F  # noqa: N812

    shape = _given_shape(shape)
    from_rdd = not hasattr(data, "schema")
    df = _rdd_as_coordinates(data, row, col, value) if from_rdd else data
    names = {"row": _column(df, row, "row"), "col": _column(df, col, "col"),
             "value": _column(df, value, "value")}
    if shape is None and not from_rdd:
        shape = recorded_shape(df, value)
    types = {param: df.schema[name].dataType for param, name in names.items()}
    for param in ("row", "col"):
        if not _is_integral(types[param]):
            raise ColumnTypeError(
                f"{_where(names[param], param, from_rdd)} holds {types[param].simpleString()}, "
                f"not integers: indices must be integers, e.g. "
                f"df.withColumn({names[param]!r}, df[{names[param]!r}].cast('long'))",
                column=names[param])
    dtype = numpy_dtype(types["value"])
    if dtype is None:
        raise ColumnTypeError(
            f"{_where(names['value'], 'value', from_rdd)} holds "
            f"{types['value'].simpleString()}, not real numbers: give a numeric or boolean "
            f"column, e.g. df.withColumn({value!r}, df[{value!r}].cast('double'))",
            column=names["value"])

    r, c, v = (F.col(names[p]) for p in ("row", "col", "value"))
    aggregates = [F.count(F.lit(1)).alias("n"), F.count(r).alias("row"),
                  F.count(c).alias("col"), F.count(v).alias("value"),
                  F.min(r).alias("row_min"), F.max(r).alias("row_max"),
                  F.min(c).alias("col_min"), F.max(c).alias("col_max"),
                  F.count_distinct(r, c).alias("distinct")]
    if from_rdd:
        aggregates += [F.max(F.col("_bad").bitwiseAND(bit)).alias(f"bad_{param}")
                       for param, bit in _BAD_BITS.items()]
        aggregates.append(F.max(F.col("_bad").bitwiseAND(_BAD_SHAPE)).alias("bad_shape"))
    summary = df.agg(*aggregates).first().asDict()

    if from_rdd:
        _refuse_bad_fields(summary)
    for param in ("row", "col", "value"):
        _refuse_nulls(summary["n"] - summary[param], summary["n"],
                      _where(names[param], param, from_rdd), names[param])
    shape = _checked_extent(summary, names, shape, from_rdd)
    if summary["distinct"] < summary["n"]:
        pair = f"{names['row']}, {names['col']}"
        raise InvalidTableError(
            f"{summary['n'] - summary['distinct']} of {summary['n']} entries repeat an "
            f"({pair}) pair already present: sum them first, e.g. "
            f"df.groupBy({names['row']!r}, {names['col']!r}).agg(F.sum({names['value']!r}))",
            column=pair)

    grid = Grid(shape, rows_per_block, cols_per_block)
    pieces = df.select(r, c, v).rdd.mapPartitions(
        partial(_coordinate_pieces, grid=grid, dtype=dtype))
    return _grouped(pieces, grid, dtype, num_partitions), shape, dtype


def _rdd_as_coordinates(rdd, row: str, col: str, value: str):
    """An RDD of entries as a DataFrame ``(row, col, value, _bad)``; no job runs.

    Each element is read on the executors; a field of the wrong type becomes null with its bit
    set in ``_bad``, so the aggregate job can name it.
    """
    from pyspark.sql import SparkSession

    T = _spark_types()  # noqa: N806
    schema = T.StructType([T.StructField(row, T.LongType()), T.StructField(col, T.LongType()),
                           T.StructField(value, T.DoubleType()),
                           T.StructField("_bad", T.IntegerType())])
    spark = SparkSession.builder.getOrCreate()
    return spark.createDataFrame(rdd.map(_entry_fields), schema, verifySchema=False)


def _refuse_bad_fields(summary: dict) -> None:
    if summary["bad_shape"]:
        raise InvalidTableError(
            "an element of the RDD is not an entry (i, j, v): give 3-tuples, Rows of three "
            "fields or MLlib MatrixEntry objects", column=None)
    for param, kind in (("row", "integers"), ("col", "integers"), ("value", "real numbers")):
        if summary[f"bad_{param}"]:
            raise ColumnTypeError(
                f"{_where('', param, True)} holds values that are not {kind} (e.g. floats or "
                f"strings): convert them before building the matrix", column=param)


def _refuse_nulls(nulls: int, total: int, where: str, column: str) -> None:
    if nulls:
        raise InvalidTableError(
            f"{where} has {nulls} null(s) in {total} rows: drop or fill them first, e.g. "
            f"df.dropna(subset=[{column!r}])", column=column)


def _checked_extent(summary: dict, names: dict, shape, from_rdd: bool) -> tuple[int, int]:
    """The matrix shape: given (indices checked against it) or one past the largest index."""
    return tuple(
        _checked_axis(summary[f"{param}_min"], summary[f"{param}_max"], axis,
                      _where(names[param], param, from_rdd), names[param],
                      None if shape is None else shape[axis])
        for axis, param in enumerate(("row", "col")))


def _checked_axis(low, high, axis: int, where: str, column: str, given: int | None) -> int:
    """Rows (axis 0) or columns of the matrix, refusing negative or out-of-range indices."""
    if low is not None and low < 0:
        raise InvalidTableError(
            f"{where} holds the negative index {low}: indices count from 0; shift or drop "
            f"those rows", column=column)
    extent = 0 if high is None else high + 1
    if given is not None and extent > given:
        raise InvalidTableError(
            f"{where} holds the index {high}, outside shape[{axis}]={given} (indices "
            f"0..{given - 1}): pass a larger shape, or shape=None to size the matrix from the "
            f"largest indices", column=column)
    return extent if given is None else given


# ---------------------------------------------------------------------- rows in


def rows_to_blocks(df, index: str, vector: str, shape, rows_per_block: int,
                   cols_per_block: int, num_partitions: int | None):
    """Blocks of a table of rows: ``(blocks RDD, shape, dtype)``.

    ``df`` has an integer column ``index`` and a column ``vector`` of ``pyspark.ml`` (or
    ``pyspark.mllib``) vectors, dense or sparse, or of arrays of numbers. Sparse vectors stay
    sparse: their stored values travel, not their zeros. Runs one aggregate job (as
    :func:`coordinates_to_blocks`, with the distinct count over ``index`` and the vector
    lengths: read by a Python UDF for Vector columns); rows absent from the table are zero.

    Raises
    ------
    MissingColumnError, ColumnTypeError, InvalidTableError
        Naming the column: absent, wrong type, nulls (also inside arrays), negative,
        out-of-range or duplicate indices, vectors of different lengths.
    """
    from pyspark.sql import functions as F  # noqa: N812

    T = _spark_types()  # noqa: N806
    shape = _given_shape(shape)
    names = {"index": _column(df, index, "index"), "vector": _column(df, vector, "vector")}
    if shape is None:
        shape = recorded_shape(df, vector)
    index_type = df.schema[index].dataType
    vector_type = df.schema[vector].dataType
    if not _is_integral(index_type):
        raise ColumnTypeError(
            f"column {index!r} (index=) holds {index_type.simpleString()}, not integers: "
            f"cast it, e.g. df.withColumn({index!r}, df[{index!r}].cast('long'))", column=index)
    if _is_vector(vector_type):
        dtype = np.dtype(np.float64)
        size = F.udf(_vector_size, T.IntegerType(), useArrow=False)(F.col(vector))
        null_elements = F.lit(0)
    elif isinstance(vector_type, T.ArrayType) and numpy_dtype(vector_type.elementType):
        dtype = numpy_dtype(vector_type.elementType)
        size = F.size(F.col(vector))
        null_elements = F.exists(F.col(vector), lambda x: x.isNull()).cast("int")
    else:
        raise ColumnTypeError(
            f"column {vector!r} (vector=) holds {vector_type.simpleString()}: give a column "
            f"of pyspark.ml vectors (dense or sparse) or of arrays of numbers", column=vector)

    i, vec = F.col(index), F.col(vector)
    summary = df.agg(
        F.count(F.lit(1)).alias("n"), F.count(i).alias("index"), F.count(vec).alias("vector"),
        F.min(i).alias("row_min"), F.max(i).alias("row_max"),
        F.count_distinct(i).alias("distinct"),
        F.min(F.when(vec.isNotNull(), size)).alias("size_min"),
        F.max(F.when(vec.isNotNull(), size)).alias("size_max"),
        F.sum(F.when(vec.isNotNull(), null_elements)).alias("null_elements"),
    ).first().asDict()

    for param in ("index", "vector"):
        _refuse_nulls(summary["n"] - summary[param], summary["n"],
                      f"column {names[param]!r} ({param}=)", names[param])
    if summary["null_elements"]:
        raise InvalidTableError(
            f"column {vector!r} (vector=) has {summary['null_elements']} array(s) holding "
            f"nulls: fill them first, e.g. with F.transform and F.coalesce", column=vector)
    cols = _checked_length(summary, vector, shape)
    rows = _checked_axis(summary["row_min"], summary["row_max"], 0,
                         f"column {index!r} (index=)", index,
                         None if shape is None else shape[0])
    if summary["distinct"] < summary["n"]:
        raise InvalidTableError(
            f"{summary['n'] - summary['distinct']} of {summary['n']} rows repeat an index "
            f"already present in column {index!r} (index=): keep one row per index",
            column=index)

    grid = Grid((rows, cols), rows_per_block, cols_per_block)
    pieces = df.select(i, vec).rdd.mapPartitions(partial(_row_pieces, grid=grid, dtype=dtype))
    return _grouped(pieces, grid, dtype, num_partitions), grid.shape, dtype


def _checked_length(summary: dict, vector: str, shape) -> int:
    low, high = summary["size_min"], summary["size_max"]
    if low is None:  # no rows
        return shape[1] if shape is not None else 0
    if low != high:
        raise InvalidTableError(
            f"column {vector!r} (vector=) holds vectors of lengths {low} to {high}: every row "
            f"needs the same length (the number of columns)", column=vector)
    if shape is not None and high != shape[1]:
        raise InvalidTableError(
            f"column {vector!r} (vector=) holds vectors of length {high}, but shape[1]="
            f"{shape[1]}: pass shape=(rows, {high}) or shape=None", column=vector)
    return high


def _grouped(pieces, grid: Grid, dtype, num_partitions: int | None):
    """The blocks of per-block pieces: one shuffle onto a grid partitioning, then built."""
    n = check_int(num_partitions or max(pieces.getNumPartitions(),
                                        pieces.context.defaultParallelism), "num_partitions")
    partitioner = grid.partitioner(n)
    return pieces.groupByKey(partitioner.num_partitions, partitioner).flatMap(
        partial(_assemble_block, grid=grid, dtype=dtype))


# ---------------------------------------------------------------------- tables out


def blocks_to_coordinates(blocks, shape, rows_per_block: int, cols_per_block: int, dtype,
                          row: str = "i", col: str = "j", value: str = "v"):
    """A DataFrame ``(row long, col long, value)`` of the stored non-zero entries; no shuffle.

    ``value`` has the Spark type of ``dtype`` (:func:`spark_type`) and records ``shape`` in
    its metadata (:func:`recorded_shape`). No job runs here.
    """
    from pyspark.sql import SparkSession

    T = _spark_types()  # noqa: N806
    schema = T.StructType([T.StructField(row, T.LongType(), False),
                           T.StructField(col, T.LongType(), False),
                           _shape_field(value, spark_type(dtype), shape)])
    entries = blocks.flatMap(partial(_block_entries, rows_per_block=rows_per_block,
                                     cols_per_block=cols_per_block,
                                     as_float=isinstance(schema[value].dataType, T.DoubleType)
                                     and np.dtype(dtype).kind != "f"))
    return SparkSession.builder.getOrCreate().createDataFrame(entries, schema,
                                                              verifySchema=False)


def blocks_to_rows(blocks, shape, rows_per_block: int, cols_per_block: int,
                   index: str = "i", vector: str = "features", as_array: bool = False,
                   num_partitions: int | None = None):
    """A DataFrame ``(index long, vector)`` of the rows holding a non-zero; one shuffle.

    ``vector`` holds ``pyspark.ml`` vectors (sparse below :data:`DENSE_FILL`, dense above),
    or with ``as_array`` arrays of doubles, and records ``shape`` in its metadata. Rows
    without a stored non-zero are left out (as MLlib's ``toIndexedRowMatrix`` does);
    :func:`rows_to_blocks` reads them back as zero.
    """
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import SparkSession

    T = _spark_types()  # noqa: N806
    vector_type = T.ArrayType(T.DoubleType(), False) if as_array else VectorUDT()
    schema = T.StructType([T.StructField(index, T.LongType(), False),
                           _shape_field(vector, vector_type, shape)])
    n = num_partitions or blocks.getNumPartitions()
    rows = blocks.flatMap(partial(_block_row_pieces, rows_per_block=rows_per_block,
                                  cols_per_block=cols_per_block)) \
        .groupByKey(n).map(partial(_assemble_row, cols=shape[1], as_array=as_array))
    return SparkSession.builder.getOrCreate().createDataFrame(rows, schema,
                                                              verifySchema=False)


# ---------------------------------------------------------------------- MLlib types


def mllib_kind(m) -> str | None:
    """``"block"``, ``"coordinate"``, ``"indexed_row"`` for MLlib's distributed matrices."""
    from pyspark.mllib.linalg import distributed as d

    for kind, cls in (("block", d.BlockMatrix), ("coordinate", d.CoordinateMatrix),
                      ("indexed_row", d.IndexedRowMatrix)):
        if isinstance(m, cls):
            return kind
    return None


def indexed_rows_frame(m):
    """An MLlib ``IndexedRowMatrix``'s rows as a DataFrame ``(i, features)`` of ml vectors."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import SparkSession

    T = _spark_types()  # noqa: N806
    schema = T.StructType([T.StructField("i", T.LongType(), False),
                           T.StructField("features", VectorUDT(), False)])
    return SparkSession.builder.getOrCreate().createDataFrame(
        m.rows.map(_indexed_row_fields), schema, verifySchema=False)


def to_coordinate_matrix(coordinates, shape):
    """An MLlib ``CoordinateMatrix`` of a coordinates DataFrame (values as doubles)."""
    from pyspark.mllib.linalg.distributed import CoordinateMatrix

    return CoordinateMatrix(coordinates.rdd.map(_matrix_entry), shape[0], shape[1])


def to_indexed_row_matrix(rows, shape):
    """An MLlib ``IndexedRowMatrix`` of a rows DataFrame of ml vectors."""
    from pyspark.mllib.linalg.distributed import IndexedRowMatrix

    return IndexedRowMatrix(rows.rdd.map(_indexed_row), shape[0], shape[1])


# ---------------------------------------------------------------------- executor side


def _entry_fields(element):
    """``(i, j, v, bad)`` of one RDD element; a field of the wrong type is None, its bit set."""
    if hasattr(element, "i") and hasattr(element, "value") and not isinstance(element, tuple):
        fields = (element.i, element.j, element.value)  # MLlib MatrixEntry
    else:
        try:
            fields = tuple(element)
        except TypeError:
            return None, None, None, _BAD_SHAPE
        if len(fields) != 3:
            return None, None, None, _BAD_SHAPE
    i, j, v = fields
    bad = 0
    out = []
    for x, param in ((i, "row"), (j, "col")):
        if x is not None and not is_integer(x):
            bad |= _BAD_BITS[param]
            x = None
        out.append(None if x is None else int(x))
    if v is not None and not isinstance(v, (int, float, np.number, np.bool_)):
        bad |= _BAD_BITS["value"]
        v = None
    out.append(None if v is None else float(v))
    return (*out, bad)


def _vector_size(v):
    """Length of an ml / mllib vector (a Python UDF: Spark SQL cannot read it)."""
    return None if v is None else int(v.size)


def _coordinate_pieces(rows, grid: Grid, dtype):
    """``((bi, bj), (local rows, local cols, values))`` of a partition's entries, per batch."""
    rows = iter(rows)
    while batch := list(islice(rows, BATCH_ROWS)):
        i, j, v = zip(*batch, strict=True)
        yield from _split_coo(np.array(i, dtype=np.int64), np.array(j, dtype=np.int64),
                              np.array(v, dtype=dtype), grid)


def _split_coo(i, j, v, grid: Grid):
    """Global COO triples cut into per-block pieces with block-local int32 indices."""
    bi, bj = i // grid.rows_per_block, j // grid.cols_per_block
    order = np.lexsort((bj, bi))
    bi, bj, i, j, v = bi[order], bj[order], i[order], j[order], v[order]
    starts = np.flatnonzero(np.r_[True, (bi[1:] != bi[:-1]) | (bj[1:] != bj[:-1])])
    for start, stop in zip(starts, np.r_[starts[1:], len(bi)], strict=True):
        key = (int(bi[start]), int(bj[start]))
        yield key, ((i[start:stop] - key[0] * grid.rows_per_block).astype(np.int32),
                    (j[start:stop] - key[1] * grid.cols_per_block).astype(np.int32),
                    v[start:stop])


def _row_pieces(pairs, grid: Grid, dtype):
    """Per-block pieces of a partition's ``(index, vector)`` rows, per batch.

    Sparse vectors give COO pieces ``(rows, cols, values)``; dense vectors and arrays give
    dense pieces ``(rows, None, 2-D values)``, one per block column.
    """
    pairs = iter(pairs)
    while batch := list(islice(pairs, BATCH_ROWS)):
        dense_rows, dense_values = [], []
        coo = ([], [], [])
        for index, vec in batch:
            if hasattr(vec, "indices"):  # a sparse vector
                coo[0].append(np.full(len(vec.indices), index, dtype=np.int64))
                coo[1].append(np.asarray(vec.indices, dtype=np.int64))
                coo[2].append(np.asarray(vec.values, dtype=dtype))
            else:
                dense_rows.append(index)
                dense_values.append(vec.toArray() if hasattr(vec, "toArray") else vec)
        if coo[0]:
            yield from _split_coo(*(np.concatenate(parts) for parts in coo), grid)
        if dense_rows:
            yield from _split_dense(np.array(dense_rows, dtype=np.int64),
                                    np.array(dense_values, dtype=dtype), grid)


def _split_dense(index, values, grid: Grid):
    """Dense rows cut into ``((bi, bj), (local rows, None, values))`` pieces."""
    bi = index // grid.rows_per_block
    order = np.argsort(bi, kind="stable")
    bi, index, values = bi[order], index[order], values[order]
    starts = np.flatnonzero(np.r_[True, bi[1:] != bi[:-1]])
    for start, stop in zip(starts, np.r_[starts[1:], len(bi)], strict=True):
        b = int(bi[start])
        local = (index[start:stop] - b * grid.rows_per_block).astype(np.int32)
        for bj in range(grid.num_col_blocks):
            cols = slice(bj * grid.cols_per_block, (bj + 1) * grid.cols_per_block)
            yield (b, bj), (local, None, values[start:stop, cols])


def _assemble_block(item, grid: Grid, dtype):
    """One block from its pieces: dense at :data:`DENSE_FILL` or more, CSR below.

    All-zero blocks are dropped: yields 0 or 1 item.
    """
    (bi, bj), pieces = item
    shape = (block_extent(bi, grid.shape[0], grid.rows_per_block),
             block_extent(bj, grid.shape[1], grid.cols_per_block))
    coo, dense = [], []
    for rows, cols, values in pieces:
        if cols is None:
            dense.append((rows, values))
        else:
            coo.append((rows, cols, values))
    stored = sum(len(p[2]) for p in coo) + sum(np.count_nonzero(p[1]) for p in dense)
    if stored == 0:
        return
    if stored >= DENSE_FILL * shape[0] * shape[1]:
        block = np.zeros(shape, dtype=dtype)
        for rows, values in dense:
            block[rows] = values
        for rows, cols, values in coo:
            block[rows, cols] = values
        if block.any():
            yield (bi, bj), block
        return
    for rows, values in dense:
        r, c = np.nonzero(values)
        coo.append((rows[r], c.astype(np.int32), values[r, c]))
    rows, cols, values = (np.concatenate(parts) for parts in zip(*coo, strict=True))
    block = sp.csr_matrix((values.astype(dtype, copy=False), (rows, cols)), shape=shape)
    block.eliminate_zeros()
    if block.nnz:
        yield (bi, bj), block


def _block_entries(item, rows_per_block: int, cols_per_block: int, as_float: bool):
    """``(i, j, v)`` tuples of a block's non-zero entries, global indices."""
    (bi, bj), block = item
    if sp.issparse(block):
        coo = block.tocoo()
        coo.sum_duplicates()
        nz = coo.data != 0
        r, c, v = coo.row[nz], coo.col[nz], coo.data[nz]
    else:
        r, c = np.nonzero(block)
        v = block[r, c]
    if as_float:
        v = v.astype(np.float64)
    return zip((r + bi * rows_per_block).tolist(), (c + bj * cols_per_block).tolist(),
               v.tolist(), strict=True)


def _block_row_pieces(item, rows_per_block: int, cols_per_block: int):
    """``(global row, (global column indices, values))`` of each block row with a non-zero."""
    (bi, bj), block = item
    csr = sp.csr_matrix(block, dtype=np.float64)
    csr.eliminate_zeros()
    offset = bj * cols_per_block
    for r in np.flatnonzero(np.diff(csr.indptr)):
        span = slice(csr.indptr[r], csr.indptr[r + 1])
        yield int(bi * rows_per_block + r), (csr.indices[span] + offset, csr.data[span])


def _assemble_row(item, cols: int, as_array: bool):
    """``(index, vector)`` of a row's pieces: sparse below :data:`DENSE_FILL`, else dense."""
    from pyspark.ml.linalg import DenseVector, SparseVector

    index, pieces = item
    pieces = list(pieces)
    indices = np.concatenate([p[0] for p in pieces]).astype(np.int64)
    values = np.concatenate([p[1] for p in pieces])
    if as_array or len(values) >= DENSE_FILL * cols:
        dense = np.zeros(cols)
        dense[indices] = values
        return index, (dense.tolist() if as_array else DenseVector(dense))
    order = np.argsort(indices)
    return index, SparseVector(cols, indices[order].astype(np.int32), values[order])


def _indexed_row_fields(row):
    return int(row.index), row.vector.asML()


def _matrix_entry(row):
    from pyspark.mllib.linalg.distributed import MatrixEntry

    return MatrixEntry(row[0], row[1], float(row[2]))


def _indexed_row(row):
    from pyspark.mllib.linalg import Vectors
    from pyspark.mllib.linalg.distributed import IndexedRow

    return IndexedRow(row[0], Vectors.fromML(row[1]))
