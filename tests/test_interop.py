"""The PySpark internals the MLlib conversions use: present, and doing what we rely on.

If a PySpark upgrade renames one of them, these tests fail with the name, before any user's job
does (the round trip in tests/test_matrix.py checks the values).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_eq

from blockmatrix import BlockMatrix
from blockmatrix.interop import mllib


@pytest.fixture(scope="module")
def spark(sc):
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()


def test_every_internal_is_present(spark):
    mllib.check_internals(spark)


def test_a_missing_internal_is_named(spark):
    class Stripped:
        sparkContext = spark.sparkContext  # noqa: N815  (PySpark's name)

    with pytest.raises(RuntimeError, match="SparkSession._jsparkSession.*update that module"):
        mllib.check_internals(Stripped())


def test_mllib_product_through_the_jvm_blocks(sc):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((30, 20))
    b = sp.random(20, 25, density=0.3, random_state=rng, format="csr")
    mA = BlockMatrix.from_numpy(sc, a, 8, 6).to_mllib()
    mB = BlockMatrix.from_numpy(sc, b, 6, 7).to_mllib()
    product = mA.multiply(mB)
    assert mllib.java_blocks(product).count() == product.numRowBlocks * product.numColBlocks
    assert not mllib.context_stopped(sc)
    assert_eq(BlockMatrix.from_mllib(product).to_numpy(), a @ b.toarray())
