"""Conversions to and from ``pyspark.mllib``'s ``BlockMatrix``: the only place with py4j internals.

PySpark's public API has no fast way to hand the JVM a DataFrame of MLlib matrices, nor to
reach the JVM RDD behind an MLlib matrix; this module uses the private attributes that do it
and :func:`check_internals` names them, so that a PySpark upgrade that changes one fails
loudly in the tests instead of somewhere inside a job.
"""

from __future__ import annotations

from array import array

import numpy as np
import scipy.sparse as sp


def check_internals(spark) -> None:
    """Raise ``RuntimeError`` naming every PySpark internal used here that is gone.

    ``spark`` is a running ``SparkSession``. The JVM-side names (``SerDeUtil``,
    ``applySchemaToPythonRDD``) cannot be probed through py4j without calling them; the
    round trip in the tests does.
    """
    import pyspark
    from pyspark.mllib.linalg.distributed import BlockMatrix as MLlibBlockMatrix

    present = {
        "RDD._to_java_object_rdd": hasattr(pyspark.RDD, "_to_java_object_rdd"),
        "SparkSession._jsparkSession": hasattr(spark, "_jsparkSession"),
        "SparkSession._jvm": hasattr(spark, "_jvm"),
        "SparkContext._jsc": hasattr(spark.sparkContext, "_jsc"),
        "mllib BlockMatrix._java_matrix_wrapper":
            "_java_matrix_wrapper" in MLlibBlockMatrix.__init__.__code__.co_names,
    }
    missing = [name for name, ok in present.items() if not ok]
    if missing:
        raise RuntimeError(
            f"pyspark {pyspark.__version__} no longer has {', '.join(missing)}, which "
            f"blockmatrix.interop.mllib uses to convert MLlib matrices: update that module")


def to_mllib(blocks, rows_per_block: int, cols_per_block: int, shape: tuple[int, int]):
    """A ``pyspark.mllib.linalg.distributed.BlockMatrix`` of a blocks RDD (float64 blocks).

    MLlib's own constructor sends each block to the JVM as a Python list of floats (one boxed
    ``Double`` per element); here the block values travel as ``array('d')`` buffers, which the
    JVM unpickles into primitive arrays, into the same DataFrame MLlib builds its matrix from
    (``PythonMLLibAPI.createBlockMatrix``). No job runs until the MLlib matrix is used.
    """
    from pyspark.mllib.common import callMLlibFunc
    from pyspark.mllib.linalg import MatrixUDT
    from pyspark.mllib.linalg.distributed import BlockMatrix as MLlibBlockMatrix
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import LongType, StructField, StructType

    spark = SparkSession.builder.getOrCreate()
    index = StructType([StructField("_1", LongType(), False),
                        StructField("_2", LongType(), False)])
    schema = StructType([StructField("_1", index, False),
                         StructField("_2", MatrixUDT(), False)])
    rows = blocks.map(mllib_row)._to_java_object_rdd()
    jdf = spark._jsparkSession.applySchemaToPythonRDD(
        spark._jvm.SerDeUtil.toJavaArray(rows).rdd(), schema.json())
    java_matrix = callMLlibFunc("createBlockMatrix", DataFrame(jdf, spark), rows_per_block,
                                cols_per_block, shape[0], shape[1])
    return MLlibBlockMatrix(java_matrix, rows_per_block, cols_per_block, shape[0], shape[1])


def from_mllib(m):
    """The blocks RDD of an MLlib ``BlockMatrix``: sparse blocks as CSR, dense as ndarrays."""
    return m.blocks.map(block_of_mllib)


def java_blocks(m):
    """The JVM RDD behind an MLlib ``BlockMatrix`` (to count, persist or unpersist it there)."""
    return m._java_matrix_wrapper._java_model.blocks()


def context_stopped(sc) -> bool:
    """Whether the JVM SparkContext behind ``sc`` has stopped (e.g. after a fatal OOM)."""
    return sc._jsc.sc().isStopped()


# ---------------------------------------------------------------------- executor side


def block_of_mllib(item):
    """``((i, j), Matrix)`` of MLlib as ``((i, j), CSR or ndarray)``."""
    key, matrix = item
    from pyspark.mllib.linalg import SparseMatrix

    if isinstance(matrix, SparseMatrix):
        arrays = (matrix.values, matrix.rowIndices, matrix.colPtrs)
        compressed = sp.csr_matrix if matrix.isTransposed else sp.csc_matrix
        return key, sp.csr_matrix(compressed(arrays, shape=(matrix.numRows, matrix.numCols)))
    return key, np.ascontiguousarray(matrix.toArray())


def mllib_row(item):
    """``((i, j), block)`` as a DataFrame row of MLlib's ``MatrixUDT`` (its internal form).

    The UDT's fields are ``(type, numRows, numCols, colPtrs, rowIndices, values,
    isTransposed)``, type 0 sparse (CSC) and 1 dense (column-major); arrays go as
    ``array.array`` so that the JVM unpickles them into primitive arrays.
    """
    (i, j), block = item
    rows, cols = block.shape
    if sp.issparse(block):
        csc = sp.csc_matrix(block, dtype=np.float64)
        csc.sort_indices()
        matrix = (0, rows, cols, array("i", csc.indptr.astype(np.int32).tobytes()),
                  array("i", csc.indices.astype(np.int32).tobytes()),
                  array("d", csc.data.tobytes()), False)
    else:
        values = np.asarray(block, dtype=np.float64).ravel(order="F")
        matrix = (1, rows, cols, None, None, array("d", values.tobytes()), False)
    return (int(i), int(j)), matrix
