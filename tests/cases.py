"""The shape grid every multiplication strategy is tested on (numpy is the reference).

Each case names the operand shapes, block sizes, dtypes and formats; :func:`make_operands`
builds seeded numpy / scipy.sparse operands with some all-zero blocks (the package's one
generator, :func:`blockmatrix.samples.random_matrix`); :func:`strategy_case_grid` pairs every
registered strategy with every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blockmatrix import strategies
from blockmatrix.samples import block_grid, random_matrix


@dataclass(frozen=True)
class Case:
    """One multiplication test case: C (n x k) = A (n x m) @ B (m x k)."""

    name: str
    n: int
    m: int
    k: int
    rows_per_block: int  # of A (and C)
    inner_per_block: int  # A.cols_per_block == B.rows_per_block
    cols_per_block: int  # of B (and C)
    dtype: str = "float64"
    left_format: str = "dense"  # dense | sparse
    right_format: str = "dense"
    zero_blocks: bool = True  # blank out some blocks so they are not stored
    density: float = 0.2  # for sparse operands

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("square-ragged", 37, 23, 41, 5, 4, 6),
    Case("exact-fit", 32, 32, 32, 8, 8, 8, zero_blocks=False),
    Case("1x1-grid", 7, 5, 6, 10, 10, 10),
    Case("tall-skinny", 203, 9, 3, 16, 4, 2),
    Case("fat-short", 3, 9, 203, 2, 4, 16),
    Case("long-inner-1xN-Nx1", 6, 300, 5, 6, 10, 5),
    Case("float32", 30, 26, 22, 7, 6, 5, dtype="float32"),
    Case("sparse-sparse", 60, 50, 40, 16, 12, 10, left_format="sparse", right_format="sparse"),
    Case("sparse-dense", 45, 33, 21, 10, 8, 6, left_format="sparse"),
    Case("dense-sparse", 45, 33, 21, 10, 8, 6, right_format="sparse"),
    Case("sparse-float32", 40, 40, 40, 9, 9, 9, dtype="float32", left_format="sparse",
         right_format="sparse"),
]


def every_third_block_blank(grid: tuple[int, int]) -> np.ndarray:
    """Stored-block mask with every third block blank, in a checkerboard-ish pattern."""
    return np.fromfunction(lambda bi, bj: (bi + 2 * bj) % 3 != 1, grid, dtype=int)


def _operand(rng, shape, block_shape, fmt, dtype, zero_blocks, density):
    stored = every_third_block_blank(block_grid(shape, block_shape)) if zero_blocks else None
    return random_matrix(shape, block_shape, rng, stored=stored,
                         fill=density if fmt == "sparse" else 1.0,
                         format="csr" if fmt == "sparse" else "dense", dtype=dtype)


def make_operands(case: Case, seed: int = 0):
    """Seeded operands ``(a, b)`` for a case (ndarray or CSR, per the case's formats)."""
    rng = np.random.default_rng(seed)
    a = _operand(rng, (case.n, case.m), (case.rows_per_block, case.inner_per_block),
                 case.left_format, case.dtype, case.zero_blocks, case.density)
    b = _operand(rng, (case.m, case.k), (case.inner_per_block, case.cols_per_block),
                 case.right_format, case.dtype, case.zero_blocks, case.density)
    return a, b


def operand_source(name: str) -> str:
    """Where the grid's operands for strategy ``name`` come from: the driver (``from_numpy``)
    when the strategy takes them, else HDF5 files (``from_hdf5``)."""
    return "driver" if "driver" in strategies.get_strategy(name).operand_sources else "file"


def strategy_case_grid() -> list[tuple[str, Case]]:
    """Every (registered strategy, case) pair, read from the registry when called.

    Called at collection time by the tests parametrized over it, so a strategy registered
    before then (a plug-in, or a test's throwaway one) is tested with no other edit. Each
    strategy gets operands from a source it takes (:func:`operand_source`).
    """
    return [(name, case) for name in strategies.STRATEGIES for case in CASES]
