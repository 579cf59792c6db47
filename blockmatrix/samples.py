"""Seeded random operands with a block-sparsity pattern, for tests, benchmarks and examples.

One generator for every caller (the tests' shape grid, ``jobs/benchmark.py``,
``jobs/shuffle_report.py``, ``jobs/make_sample.py`` slab by slab, the notebook), so an operand
named by its seed, shape, blocks and densities is the same matrix wherever it is made:

>>> from blockmatrix.samples import random_matrix
>>> a = random_matrix((6, 8), (2, 4), seed=0, stored=0.5)
>>> a.shape, a.dtype
((6, 8), dtype('float64'))
>>> stored = [(i, j) for i in range(3) for j in range(2)
...           if a[2 * i:2 * i + 2, 4 * j:4 * j + 4].any()]
>>> stored   # the other blocks are all zero, so BlockMatrix.from_numpy does not store them
[(0, 1), (1, 0), (1, 1)]
>>> bool((random_matrix((6, 8), (2, 4), seed=0, stored=0.5) == a).all())
True
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["block_grid", "random_matrix"]


def block_grid(shape: tuple[int, int], block_shape: tuple[int, int]) -> tuple[int, int]:
    """Blocks per column and per row of a matrix cut into ``block_shape`` blocks.

    >>> block_grid((37, 23), (5, 4))
    (8, 6)
    """
    return -(-shape[0] // block_shape[0]), -(-shape[1] // block_shape[1])


def random_matrix(shape: tuple[int, int], block_shape: int | tuple[int, int], seed=None, *,
                  stored=None, fill: float = 1.0, format: str = "dense",
                  dtype="float64", mask_first: bool = True,
                  first_block_stored: bool = False):
    """A seeded random matrix (ndarray or CSR) in which some blocks are all zero.

    Entries are standard normal. A block that is not stored is all zero, so
    :meth:`BlockMatrix.from_numpy <blockmatrix.BlockMatrix.from_numpy>` leaves it out; within
    a stored block, each entry is non-zero with probability ``fill``.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)``.
    block_shape : int or tuple of int
        ``(rows_per_block, cols_per_block)`` (an int for square blocks); edge blocks are cut.
    seed : int, sequence of int or numpy.random.Generator, optional
        Passed to :func:`numpy.random.default_rng`. A Generator is used as is and advanced, so
        operands drawn one after another from it differ.
    stored : float or array of bool, optional
        Which blocks are stored. A fraction in (0, 1]: each block independently with that
        probability (one draw of the block grid even for 1.0, so later draws from the same
        Generator do not depend on it), and block (0, 0) when none was; a boolean array of the
        block grid's shape: those blocks. Default: every block, nothing drawn.
    fill : float
        Probability that an entry of a stored block is non-zero (default 1).
    format : {"dense", "csr"}
        An ndarray, or a CSR matrix built block by block from ``scipy.sparse.random`` (only
        the stored blocks are drawn, so a large sparse operand never exists densely).
    dtype : str or numpy.dtype
        float64 or float32 values are drawn in that type; other types are cast from float64.
    mask_first : bool
        Draw the block fraction before the values (default). False draws a dense operand's
        values first, the order ``jobs/shuffle_report.py`` and the notebook have always used:
        the figures published from them were measured on those matrices.
    first_block_stored : bool
        Store block (0, 0) whatever the fraction drew (the notebook's rule) instead of only when
        no block was drawn.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix

    Examples
    --------
    A CSR operand with a quarter of its blocks stored, each a tenth full:

    >>> s = random_matrix((400, 400), 100, seed=1, stored=0.25, fill=0.1, format="csr")
    >>> s.format, s.nnz   # 2 of the 16 blocks drew stored, 1,000 entries in each
    ('csr', 2000)

    A fixed pattern, here a checkerboard of float32 blocks:

    >>> mask = (np.add.outer(np.arange(2), np.arange(3)) % 2 == 0)
    >>> c = random_matrix((4, 6), 2, seed=2, stored=mask, dtype="float32")
    >>> c.dtype, bool(c[:2, 2:4].any()), bool(c[:2, :2].all())
    (dtype('float32'), False, True)
    """
    if format not in ("dense", "csr"):
        raise ValueError(f"format {format!r} is not 'dense' or 'csr'")
    rng = np.random.default_rng(seed)
    rows, cols = shape
    rb, cb = (block_shape, block_shape) if np.isscalar(block_shape) else block_shape
    grid = block_grid(shape, (rb, cb))
    dtype = np.dtype(dtype)
    if format == "csr" and not mask_first:
        raise ValueError("mask_first=False is for dense operands: a CSR operand's values are "
                         "drawn block by block, for the stored blocks only")
    values = None
    if not mask_first:
        values = _normal(rng, shape, dtype)
    keep = _stored_blocks(rng, grid, stored, first_block_stored)
    if format == "csr":
        return _csr(rng, shape, (rb, cb), keep, fill, dtype)
    if values is None:
        values = _normal(rng, shape, dtype)
    for i, j in zip(*np.nonzero(~keep), strict=True):
        values[i * rb:(i + 1) * rb, j * cb:(j + 1) * cb] = 0
    if fill < 1.0:
        values[rng.random(shape) >= fill] = 0
    return values


def _normal(rng, shape, dtype: np.dtype) -> np.ndarray:
    if dtype in (np.float64, np.float32):
        return rng.standard_normal(shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def _stored_blocks(rng, grid, stored, first_block_stored: bool) -> np.ndarray:
    if stored is None:
        return np.ones(grid, dtype=bool)
    if np.ndim(stored) == 0:
        keep = rng.random(grid) < stored
        if first_block_stored or not keep.any():
            keep.flat[0] = True
        return keep
    keep = np.asarray(stored, dtype=bool)
    if keep.shape != grid:
        raise ValueError(f"stored has shape {keep.shape}, not the block grid's {grid}")
    return keep


def _csr(rng, shape, block_shape, keep, fill: float, dtype: np.dtype):
    rows, cols = shape
    rb, cb = block_shape
    parts = []
    for i, j in zip(*np.nonzero(keep), strict=True):
        r, c = min(rb, rows - i * rb), min(cb, cols - j * cb)
        m = sp.random(r, c, density=fill, format="coo", random_state=rng,
                      data_rvs=rng.standard_normal)
        parts.append((m.row + i * rb, m.col + j * cb, m.data))
    if not parts:
        return sp.csr_matrix(shape, dtype=dtype)
    r, c, v = (np.concatenate(x) for x in zip(*parts, strict=True))
    return sp.csr_matrix((v.astype(dtype), (r, c)), shape=shape)
