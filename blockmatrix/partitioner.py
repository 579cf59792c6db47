"""Spark's ``GridPartitioner``, with its exact semantics, usable as a PySpark ``partitionFunc``.

Partition ids are column-major over a grid of ``rows_per_part x cols_per_part`` sub-grids:
``i // rows_per_part + (j // cols_per_part) * row_partitions``. Equality and hashing are by
value, so ``rdd.partitionBy(n, grid)`` followed by ``reduceByKey(..., n, grid)`` with an equal
grid does not shuffle again (PySpark compares ``Partitioner(n, func)`` objects with ``==``).

Spark's reference tables (``BlockMatrixSuite``):

>>> p = GridPartitioner.from_suggested(4, 7, 12)
>>> p.num_partitions
16
>>> [p((0, j)) for j in range(7)]
[0, 0, 4, 4, 8, 8, 12]
>>> [[GridPartitioner(2, 3, 1, 2)((i, j)) for j in range(3)] for i in range(2)]
[[0, 0, 2], [1, 1, 3]]
"""

from __future__ import annotations

import math
from numbers import Integral

from ._checks import check_int
from .errors import InvalidParameterError


def _positive(value, name: str) -> int:
    return check_int(value, name)
    return int(value)


def scala_round(x: float) -> int:
    """Round half up, as Scala's ``math.round`` (Python's ``round`` rounds half to even).

    >>> scala_round(2.5), round(2.5), scala_round(-0.5)
    (3, 2, 0)
    """
    return math.floor(x + 0.5)


class GridPartitioner:
    """Partitions the blocks of a ``rows x cols`` block grid into sub-grids.

    Parameters
    ----------
    rows, cols : int
        Number of block rows and block columns of the grid.
    rows_per_part, cols_per_part : int
        Block rows and block columns per partition.

    Notes
    -----
    A key is a partition id ``p`` (returned unchanged, as in Spark), a block index ``(i, j)``,
    or ``(i, j, k)`` (``k`` is ignored). Out-of-range indices raise ``InvalidParameterError``.
    """

    __slots__ = ("rows", "cols", "rows_per_part", "cols_per_part",
                 "row_partitions", "col_partitions")

    def __init__(self, rows: int, cols: int, rows_per_part: int, cols_per_part: int):
        self.rows = _positive(rows, "rows")
        self.cols = _positive(cols, "cols")
        self.rows_per_part = _positive(rows_per_part, "rows_per_part")
        self.cols_per_part = _positive(cols_per_part, "cols_per_part")
        self.row_partitions = -(-self.rows // self.rows_per_part)
        self.col_partitions = -(-self.cols // self.cols_per_part)

    @classmethod
    def from_suggested(cls, rows: int, cols: int,
                       suggested_num_partitions: int) -> GridPartitioner:
        """Spark's ``GridPartitioner(rows, cols, suggestedNumPartitions)``.

        Sub-grids are about ``rows / sqrt(n) x cols / sqrt(n)`` blocks, rounded half up.

        >>> GridPartitioner.from_suggested(5, 5, 4).num_partitions
        4
        """
        n = _positive(suggested_num_partitions, "suggested_num_partitions")
        scale = 1.0 / math.sqrt(n)
        rows_per_part = scala_round(max(scale * _positive(rows, "rows"), 1.0))
        cols_per_part = scala_round(max(scale * _positive(cols, "cols"), 1.0))
        return cls(rows, cols, rows_per_part, cols_per_part)

    @property
    def num_partitions(self) -> int:
        """Number of partitions, ``row_partitions * col_partitions``."""
        return self.row_partitions * self.col_partitions

    def partition_of(self, i: int, j: int) -> int:
        """Partition id of block ``(i, j)``; raises if the index is outside the grid."""
        if not 0 <= i < self.rows:
            raise InvalidParameterError(f"Row index {i} out of range [0, {self.rows}).")
        if not 0 <= j < self.cols:
            raise InvalidParameterError(f"Column index {j} out of range [0, {self.cols}).")
        return i // self.rows_per_part + (j // self.cols_per_part) * self.row_partitions

    def __call__(self, key) -> int:
        """Partition id of a key: a partition id itself, ``(i, j)`` or ``(i, j, k)``."""
        if isinstance(key, Integral) and not isinstance(key, bool):
            return int(key)
        if isinstance(key, tuple) and len(key) in (2, 3):
            return self.partition_of(key[0], key[1])
        raise InvalidParameterError(
            f"GridPartitioner keys are a partition id, (i, j) or (i, j, k); got {key!r}")

    def _state(self) -> tuple[int, int, int, int]:
        return self.rows, self.cols, self.rows_per_part, self.cols_per_part

    def __eq__(self, other) -> bool:
        return isinstance(other, GridPartitioner) and self._state() == other._state()

    def __hash__(self) -> int:
        return hash(("GridPartitioner",) + self._state())

    def __getstate__(self):
        return self._state()

    def __setstate__(self, state):
        self.__init__(*state)

    def __repr__(self) -> str:
        return (f"GridPartitioner(rows={self.rows}, cols={self.cols}, "
                f"rows_per_part={self.rows_per_part}, cols_per_part={self.cols_per_part})")


class MatrixMultPartitioner:
    """Marlin's (PASA lab) ``MatrixMultPartitioner(m, k, n)``: one partition per block product.

    Marlin keys every replicated block by ``BlockID(row, column, seq)`` with
    ``seq = i * n * k + j * k + l`` for the product ``A(i, l) B(l, j)``, and its partitioner
    returns ``seq`` itself: ``numPartitions = m * k * n``, ``getPartition(BlockID) = seq``
    (``edu/nju/pasalab/marlin/rdd/MatrixMultPartitioner.scala`` in PasaLab/marlin). Here a key
    is the triple ``(i, j, l)``, or an int ``seq``, which is returned unchanged. Equality and
    hashing are by value, as for :class:`GridPartitioner`.

    Parameters
    ----------
    m, k, n : int
        Block rows of A, block columns of A (= block rows of B), block columns of B.

    Examples
    --------
    >>> p = MatrixMultPartitioner(2, 3, 4)
    >>> p.num_partitions
    24
    >>> p((1, 2, 0)), p((0, 0, 2)), p(7)
    (18, 2, 7)
    >>> ids = {p((i, j, l)) for i in range(2) for j in range(4) for l in range(3)}
    >>> sorted(ids) == list(range(24))
    True
    >>> p == MatrixMultPartitioner(2, 3, 4), p == MatrixMultPartitioner(2, 4, 3)
    (True, False)
    """

    __slots__ = ("m", "k", "n")

    def __init__(self, m: int, k: int, n: int):
        self.m = _positive(m, "m")
        self.k = _positive(k, "k")
        self.n = _positive(n, "n")

    @property
    def num_partitions(self) -> int:
        """Number of partitions, ``m * k * n`` (Marlin's ``numPartitions``)."""
        return self.m * self.k * self.n

    def seq(self, i: int, j: int, l: int) -> int:  # noqa: E741  (Marlin's name)
        """Marlin's ``seq`` of the product ``A(i, l) B(l, j)``: ``i * n * k + j * k + l``."""
        if not (0 <= i < self.m and 0 <= j < self.n and 0 <= l < self.k):
            raise InvalidParameterError(
                f"block product (i={i}, j={j}, l={l}) is outside the {self.m}x{self.n} result "
                f"grid with {self.k} inner blocks")
        return i * self.n * self.k + j * self.k + l

    def __call__(self, key) -> int:
        """Partition id of a key: ``seq`` itself (an int) or a triple ``(i, j, l)``."""
        if isinstance(key, Integral) and not isinstance(key, bool):
            return int(key)
        if isinstance(key, tuple) and len(key) == 3:
            return self.seq(*key)
        raise InvalidParameterError(
            f"MatrixMultPartitioner keys are seq (an int) or (i, j, l); got {key!r}")

    def _state(self) -> tuple[int, int, int]:
        return self.m, self.k, self.n

    def __eq__(self, other) -> bool:
        return isinstance(other, MatrixMultPartitioner) and self._state() == other._state()

    def __hash__(self) -> int:
        return hash(("MatrixMultPartitioner",) + self._state())

    def __getstate__(self):
        return self._state()

    def __setstate__(self, state):
        self.__init__(*state)

    def __repr__(self) -> str:
        return f"MatrixMultPartitioner(m={self.m}, k={self.k}, n={self.n})"
