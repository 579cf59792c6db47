"""Single-block kernels: type checks, products accumulated in place, sums, sizes.

A block is a 2-D numpy array or a scipy.sparse CSR matrix of real numbers. Kernels dispatch on
the pair of formats and never densify silently: CSR x CSR gives CSR, a product with a dense
operand gives a dense array (that product is dense anyway). No Spark import here.

Dense products are accumulated with BLAS ``gemm`` and ``beta = 1`` straight into the
accumulator, so summing many partial products allocates no array per product:

>>> import numpy as np
>>> acc = None
>>> for k in range(3):
...     acc = matmul_accumulate(acc, np.eye(2) * (k + 1), np.ones((2, 2)))
>>> acc
array([[6., 6.],
       [6., 6.]])
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import scipy.sparse as sp
from scipy.linalg import blas

from .errors import BlockTypeError

_GEMM = {np.dtype(np.float64): blas.dgemm, np.dtype(np.float32): blas.sgemm}


def check_block(block, where: str = "block"):
    """Return ``block`` as a supported block (ndarray or CSR), or raise :class:`BlockTypeError`.

    Supported: 2-D numpy arrays and scipy.sparse matrices of booleans, integers or floats.
    Sparse blocks of any format are converted to CSR; numpy matrices to arrays.

    >>> check_block(np.zeros((2, 3))).shape
    (2, 3)
    >>> check_block(np.zeros(3))
    Traceback (most recent call last):
    ...
    blockmatrix.errors.BlockTypeError: block has 1 dimension(s) (shape (3,)), not 2: \
give 2-D blocks (reshape vectors to (n, 1) or (1, n))
    """
    if sp.issparse(block):
        if block.ndim != 2:
            raise BlockTypeError(f"{where} is a {block.ndim}-D sparse array, not 2-D")
        _check_dtype(block.dtype, where)
        return block if block.format == "csr" else sp.csr_matrix(block)
    if not isinstance(block, np.ndarray):
        raise BlockTypeError(
            f"{where} is a {type(block).__name__}, not a numpy array or scipy.sparse matrix: "
            f"convert it with numpy.asarray or scipy.sparse.csr_matrix")
    if block.ndim != 2:
        raise BlockTypeError(
            f"{where} has {block.ndim} dimension(s) (shape {block.shape}), not 2: "
            f"give 2-D blocks (reshape vectors to (n, 1) or (1, n))")
    _check_dtype(block.dtype, where)
    return np.asarray(block)


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "biuf":
        raise BlockTypeError(
            f"{where} has dtype {dtype}: only real numbers (bool, integer, float) are supported; "
            f"convert with .astype(numpy.float64)")


def nbytes(block) -> int:
    """Bytes held by a block's buffers (data, and indices and indptr for CSR).

    >>> nbytes(np.zeros((4, 4)))
    128
    >>> nbytes(sp.csr_matrix(np.eye(4)))  # 4 values, 4 column indices, 5 row pointers
    68
    """
    if sp.issparse(block):
        csr = block if block.format == "csr" else block.tocsr()
        return int(csr.data.nbytes + csr.indices.nbytes + csr.indptr.nbytes)
    return int(block.nbytes)


def transpose(block):
    """The transpose of a block, in the block's own format (C-contiguous, or CSR).

    >>> transpose(np.arange(6.0).reshape(2, 3)).flags.c_contiguous
    True
    """
    if sp.issparse(block):
        return block.T.tocsr()
    return np.ascontiguousarray(block.T)


def matmul(a, b):
    """The product of two blocks: CSR for CSR x CSR, a dense array otherwise.

    >>> matmul(sp.csr_matrix(np.eye(2)), sp.csr_matrix(np.eye(2))).format
    'csr'
    >>> type(matmul(sp.csr_matrix(np.eye(2)), np.eye(2))).__name__
    'ndarray'
    """
    if sp.issparse(a) and sp.issparse(b):
        return sp.csr_matrix(a @ b)
    if sp.issparse(a) or sp.issparse(b):
        return np.asarray(a @ b)
    return a @ b


def matmul_accumulate(acc, a, b):
    """Return ``acc + a @ b``, updating ``acc`` in place where its type allows.

    ``acc`` may be None (the first product). A dense accumulator of the product's dtype is never
    reallocated: dense x dense products go through BLAS gemm with ``beta = 1`` into it, sparse
    products are scattered into it. A CSR accumulator stays CSR while the products are CSR.

    Parameters
    ----------
    acc : ndarray, CSR matrix or None
    a, b : blocks with ``a.shape[1] == b.shape[0]``

    Returns
    -------
    ndarray or CSR matrix
        The accumulator (the same object when updated in place).
    """
    if acc is None:
        product = matmul(a, b)
        return product if sp.issparse(product) else _owned_c_array(product)
    dtype = np.result_type(acc.dtype, a.dtype, b.dtype)
    if not sp.issparse(acc) and acc.dtype == dtype:
        if not sp.issparse(a) and not sp.issparse(b) and _gemm_into(acc, a, b):
            return acc
        return add_into(acc, matmul(a, b))
    return add(acc, matmul(a, b))


def _owned_c_array(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writeable array that owns its memory (safe to accumulate into)."""
    if array.flags.c_contiguous and array.flags.writeable and array.base is None:
        return array
    return np.array(array, order="C")


def _gemm_into(acc: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """``acc += a @ b`` with BLAS gemm (beta = 1) in place; False if gemm cannot be used.

    ``acc`` is C-contiguous, so ``acc.T`` is Fortran-ordered and BLAS can overwrite it with
    ``(a @ b).T = b.T @ a.T``; ``b.T`` and ``a.T`` of C-ordered blocks need no copy.
    """
    gemm = _GEMM.get(acc.dtype)
    if gemm is None or a.dtype != acc.dtype or b.dtype != acc.dtype:
        return False
    if not acc.flags.c_contiguous or not acc.flags.writeable or 0 in a.shape or 0 in b.shape:
        return False
    out = gemm(1.0, b.T, a.T, beta=1.0, c=acc.T, overwrite_c=True)
    if not np.shares_memory(out, acc):
        acc[...] = out.T
    return True


def add_into(acc: np.ndarray, other) -> np.ndarray:
    """``acc += other`` in place for a dense ``acc``; ``other`` may be dense or sparse.

    >>> add_into(np.zeros((2, 2)), sp.csr_matrix(np.eye(2)))
    array([[1., 0.],
           [0., 1.]])
    """
    if sp.issparse(other):
        coo = other.tocoo()
        coo.sum_duplicates()
        acc[coo.row, coo.col] += coo.data
    else:
        np.add(acc, other, out=acc, casting="unsafe")
    return acc


def add(a, b):
    """``a + b`` for any pair of formats: CSR when both are CSR, dense otherwise.

    >>> add(sp.csr_matrix(np.eye(2)), sp.csr_matrix(np.eye(2))).format
    'csr'
    """
    if sp.issparse(a) and sp.issparse(b):
        return sp.csr_matrix(a + b)
    dtype = np.result_type(a.dtype, b.dtype)
    if sp.issparse(a):
        a, b = b, a
    acc = np.array(a, dtype=dtype, order="C")
    return add_into(acc, b)


def sum_by_key(items):
    """Sum the blocks that share a key; one output block per key.

    Partial products from different tasks are summed here, on the reduce side of one
    ``partitionBy``. Dense sums are made in place: the first sum of a key makes a new block (of
    the promoted dtype) and later ones add into it. CSR partials are kept until the end and
    summed at once (one COO with duplicates summed), not pairwise. The incoming blocks are
    never written to.

    >>> dict(sum_by_key([((0, 0), np.ones(2)), ((0, 1), np.ones(2)), ((0, 0), np.ones(2)),
    ...                  ((0, 0), np.ones(2))]))
    {(0, 0): array([3., 3.]), (0, 1): array([1., 1.])}
    >>> eye = sp.csr_matrix(np.eye(2))
    >>> total = dict(sum_by_key([("k", eye), ("k", eye), ("k", 2 * eye)]))["k"]
    >>> total.format, total.toarray().tolist()
    ('csr', [[4.0, 0.0], [0.0, 4.0]])
    """
    dense: dict = {}
    owned: set = set()
    sparse: dict = defaultdict(list)
    for key, block in items:
        if sp.issparse(block):
            sparse[key].append(block)
            continue
        acc = dense.get(key)
        if acc is None:
            dense[key] = block
        elif key in owned and np.result_type(acc.dtype, block.dtype) == acc.dtype:
            add_into(acc, block)
        else:
            dense[key] = add(acc, block)
            owned.add(key)
    for key, blocks in sparse.items():
        total = blocks[0] if len(blocks) == 1 else _sum_csr(blocks)
        yield key, (total if key not in dense else add(dense.pop(key), total))
    yield from dense.items()


def _sum_csr(blocks) -> sp.csr_matrix:
    """Sum of CSR blocks of one shape in one pass."""
    coos = [b.tocoo() for b in blocks]
    data = np.concatenate([c.data for c in coos]).astype(
        np.result_type(*[c.dtype for c in coos]), copy=False)
    rows = np.concatenate([c.row for c in coos])
    cols = np.concatenate([c.col for c in coos])
    return sp.csr_matrix((data, (rows, cols)), shape=blocks[0].shape)


def negate(block):
    """``-block`` in the block's format (booleans become integers)."""
    if block.dtype == np.bool_:
        block = block.astype(np.int64)
    return -block


def to_dense(block) -> np.ndarray:
    """The block as a dense ndarray (a no-op for dense blocks)."""
    return block.toarray() if sp.issparse(block) else block


def is_all_zero(block) -> bool:
    """Whether a block holds no non-zero value.

    >>> is_all_zero(sp.csr_matrix((3, 3))), is_all_zero(np.eye(2))
    (True, False)
    """
    if sp.issparse(block):
        return bool(block.count_nonzero() == 0)
    return not block.any()
