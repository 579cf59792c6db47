"""GridPartitioner against Spark's BlockMatrixSuite tables and invariants (no Spark needed)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyspark.rdd import Partitioner  # pyspark.core.rdd in 4.x only

from blockmatrix import GridPartitioner
from blockmatrix.errors import InvalidParameterError


def test_spark_table_suggested_4_7_12():
    p = GridPartitioner.from_suggested(4, 7, 12)
    assert (p.rows_per_part, p.cols_per_part, p.num_partitions) == (1, 2, 16)
    expected = [[0, 0, 4, 4, 8, 8, 12],
                [1, 1, 5, 5, 9, 9, 13],
                [2, 2, 6, 6, 10, 10, 14],
                [3, 3, 7, 7, 11, 11, 15]]
    assert [[p((i, j)) for j in range(7)] for i in range(4)] == expected
    # (i, j, k) keys ignore k
    assert [[p((i, j, 99)) for j in range(7)] for i in range(4)] == expected


def test_spark_table_explicit_2_3_1_2():
    p = GridPartitioner(2, 3, 1, 2)
    assert p.num_partitions == 4
    assert [[p((i, j)) for j in range(3)] for i in range(2)] == [[0, 0, 2], [1, 1, 3]]


def test_rounding_is_half_up_like_scala():
    # scale * rows = 2.5: Scala rounds to 3 (4 partitions), Python's round to 2 (9 partitions)
    p = GridPartitioner.from_suggested(5, 5, 4)
    assert (p.rows_per_part, p.cols_per_part, p.num_partitions) == (3, 3, 4)


def test_int_key_is_a_partition_id():
    assert GridPartitioner(2, 3, 1, 2)(3) == 3


@pytest.mark.parametrize("key", [(-1, 0), (2, 0), (0, -1), (0, 3), (5, 5, 0)])
def test_out_of_range_index_is_an_error(key):
    with pytest.raises(InvalidParameterError, match="out of range"):
        GridPartitioner(2, 3, 1, 2)(key)


@pytest.mark.parametrize("key", ["a", (1,), (1, 2, 3, 4), None, 1.5])
def test_unsupported_key_is_an_error(key):
    with pytest.raises(InvalidParameterError, match="keys are"):
        GridPartitioner(2, 3, 1, 2)(key)


@pytest.mark.parametrize("args", [(0, 1, 1, 1), (1, 0, 1, 1), (1, 1, 0, 1), (1, 1, 1, -2),
                                  (1.5, 1, 1, 1), (True, 1, 1, 1)])
def test_non_positive_sizes_are_rejected(args):
    with pytest.raises(InvalidParameterError, match="positive integer"):
        GridPartitioner(*args)


def test_suggested_partitions_must_be_positive():
    with pytest.raises(InvalidParameterError, match="suggested_num_partitions"):
        GridPartitioner.from_suggested(3, 3, 0)


def test_value_equality_hash_and_pickle():
    a, b = GridPartitioner(4, 7, 1, 2), GridPartitioner.from_suggested(4, 7, 12)
    assert a == b and hash(a) == hash(b)
    assert a != GridPartitioner(4, 7, 2, 2) and a != "GridPartitioner"
    assert pickle.loads(pickle.dumps(a)) == a
    # What lets PySpark skip a second shuffle: equal Partitioner objects.
    assert Partitioner(16, a) == Partitioner(16, pickle.loads(pickle.dumps(b)))


@given(rows=st.integers(1, 40), cols=st.integers(1, 40), rpp=st.integers(1, 12),
       cpp=st.integers(1, 12), data=st.data())
def test_every_key_maps_into_range_column_major(rows, cols, rpp, cpp, data):
    p = GridPartitioner(rows, cols, rpp, cpp)
    i = data.draw(st.integers(0, rows - 1))
    j = data.draw(st.integers(0, cols - 1))
    pid = p((i, j))
    assert 0 <= pid < p.num_partitions
    assert pid == i // rpp + (j // cpp) * -(-rows // rpp)


@given(rows=st.integers(1, 500), cols=st.integers(1, 500), n=st.integers(1, 300))
def test_suggested_grid_covers_the_matrix(rows, cols, n):
    p = GridPartitioner.from_suggested(rows, cols, n)
    assert p((rows - 1, cols - 1)) == p.num_partitions - 1
    assert p.rows_per_part >= 1 and p.cols_per_part >= 1
