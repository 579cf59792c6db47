"""The per-triple cost model the vectorised planners replaced, kept as the tests' reference.

Each function visits every block product ``A[i, k] @ B[k, j]`` one by one: slow, and plainly
right. ``tests/test_cost.py`` and ``tests/test_planner.py`` check the package's sparse-product
formulas against it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from blockmatrix.cost import DENSE_FLOPS_PER_CORE_S, INDEX_BYTES, SPARSE_FLOPS_PER_CORE_S
from blockmatrix.layout import BlockLayout, Key

Triple = tuple[int, int, int]


def block_density(layout: BlockLayout, key: Key) -> float | None:
    """Fill of a stored block: None for a dense block, else the CSR's estimated density.

    A block whose byte size equals the dense size is taken as dense; otherwise it is CSR with
    ``nnz * (itemsize + 4) + (rows + 1) * 4`` bytes.

    >>> lay = BlockLayout((4, 4), 4, 4, {(0, 0): 128})
    >>> block_density(lay, (0, 0)) is None
    True
    >>> lay = BlockLayout((4, 4), 4, 4, {(0, 0): 4 * 12 + 5 * 4})
    >>> block_density(lay, (0, 0))
    0.25
    """
    size = layout.block_nbytes[key]
    if size == layout.dense_nbytes(*key):
        return None
    rows, cols = layout.block_shape(*key)
    nnz = max(0, size - (rows + 1) * INDEX_BYTES) / (layout.dtype.itemsize + INDEX_BYTES)
    return min(1.0, nnz / max(1, rows * cols))


def block_products(left: BlockLayout, right: BlockLayout) -> Iterator[Triple]:
    """Every block product ``A[i, k] @ B[k, j]`` of stored blocks, as ``(i, k, j)``.

    >>> lay = BlockLayout((3, 3), 2, 2, {(0, 0): 32, (1, 1): 8, (0, 1): 16})
    >>> sorted(block_products(lay, lay))
    [(0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1)]
    """
    cols_of_row = right.cols_of_row
    for i, k in left.keys:
        for j in cols_of_row.get(k, ()):
            yield i, k, j


def block_product_flops(left: BlockLayout, right: BlockLayout) -> Iterator[tuple[Triple, int]]:
    """``((i, k, j), 2 r n c)`` for every block product of stored blocks.

    >>> lay = BlockLayout((3, 3), 2, 2, {(0, 0): 32, (1, 1): 8})
    >>> list(block_product_flops(lay, lay))
    [((0, 0, 0), 16), ((1, 1, 1), 2)]
    """
    for i, k, j in block_products(left, right):
        rows, inner = left.block_shape(i, k)
        yield (i, k, j), 2 * rows * inner * right.block_shape(k, j)[1]


def dense_flops(left: BlockLayout, right: BlockLayout) -> int:
    """Flops of all block products, counting every stored block as dense (2 r c n each)."""
    return sum(flops for _, flops in block_product_flops(left, right))


def product_seconds(left: BlockLayout, right: BlockLayout) -> dict[Triple, float]:
    """Predicted single-core seconds of every block product ``A[i, k] @ B[k, j]``.

    A dense product is ``2 r n c`` flops at :data:`DENSE_FLOPS_PER_CORE_S`; with a CSR factor,
    its expected multiply-adds (``2 r n c`` times the density of each CSR factor) at
    :data:`SPARSE_FLOPS_PER_CORE_S`.

    >>> lay = BlockLayout((2000, 2000), 1000, 1000, {(0, 0): 8_000_000, (0, 1): 8_000_000})
    >>> product_seconds(lay, lay)
    {(0, 0, 0): 0.05, (0, 0, 1): 0.05}
    """
    out = {}
    for (i, k, j), flops in block_product_flops(left, right):
        a, b = block_density(left, (i, k)), block_density(right, (k, j))
        if a is None and b is None:
            out[(i, k, j)] = flops / DENSE_FLOPS_PER_CORE_S
        else:
            # An empty CSR block (fill 0) costs nothing, not what a dense one would.
            out[(i, k, j)] = (flops * (1.0 if a is None else a) * (1.0 if b is None else b)
                              / SPARSE_FLOPS_PER_CORE_S)
    return out


def mid_split_stripes(left, right, s: int) -> dict:
    """For every product block ``(i, j)``, the stripes ``k % s`` that hold a partial of it."""
    stripes: dict = defaultdict(set)
    for i, k in left.keys:
        for j in right.cols_of_row.get(k, ()):
            stripes[(i, j)].add(k % s)
    return dict(stripes)
