"""Communication lower bounds of a classical matrix product on ``P`` tasks of ``M`` words each.

For ``C (m x n) = A (m x k) B (k x n)`` computed with the ``m n k`` scalar products of the
classical algorithm (no Strassen), by ``P`` tasks that each hold at most ``M`` words at once:

**Memory-dependent.** A task that performs ``F`` of the products while holding at most ``M``
words at once must bring the operands of those products into its memory. Irony, Toledo and
Tiskin ("Communication lower bounds for distributed-memory matrix multiplication", J. Parallel
Distrib. Comput. 64 (2004), Theorem 3.1) bound its communication by ``F / (2 sqrt(2) sqrt(M))
- M`` words. Their constant ``1 / (2 sqrt 2) ~ 0.354`` is loose by a factor ``4 sqrt 2``: Smith,
Lowery, Langou and van de Geijn ("A tight I/O lower bound for matrix multiplication",
arXiv:1702.02017, 2019) prove, with the same segment argument counted by fused multiply-adds,
that a processor with a fast memory of ``S`` words moves at least ``2 F / sqrt(S) - 2 S`` words
between its fast memory and everything else, and the leading term is attained. A task is such
a processor (its memory the fast one, the other tasks and the storage the slow one), except
that it may begin with up to ``M`` words already in memory and end with up to ``M`` words of C
kept there: prepending those reads and appending those writes makes a sequential trace, so a
task moves at least ``2 F / sqrt(M) - 4 M`` words. Summed over the tasks (``sum F = m n k``)::

    W_mem = 2 m n k / sqrt(M) - 4 P M

The constant matters where the tasks' memory is small against the operands (``P M`` about
``|A|``): for ``2^18``-square float64 operands on 256 tasks of 2 GiB, Irony-Toledo-Tiskin's
constant gives 4.6 ``|A|`` and the memory-independent bound (next) 16 ``|A|``, while no task can
keep more than ``sqrt(M) x sqrt(M)`` of C at once, so every algorithm moves about
``2 n^3 / sqrt(M) = 32 |A|``; this one gives 28 ``|A|``.

What ``M`` means: the words a task holds at once, with nothing paged to local disk and read
back (inputs that wait on disk before their one use count as not yet received). A plan that
keeps its accumulators on disk (``ooc`` re-reads tiles and counts the re-reads) or whose tasks
hold more than ``M`` is outside this bound's premise.

**Memory-independent** (Ballard, Demmel, Holtz, Lipshitz and Schwartz, "Strong scaling of
matrix multiplication algorithms and memory-independent communication lower bounds", SPAA
2012; Demmel et al., "Communication-optimal parallel recursive rectangular matrix
multiplication", IPDPS 2013, Section 2): by Loomis-Whitney a task performing
``F = m n k / P`` products touches at least ``3 F^(2/3)`` words of A, B and C together; it
holds at most its share ``(m k + k n + m n) / P`` of them to begin or end with, so it moves at
least::

    w_ind = 3 (m n k / P)^(2/3) - (m k + k n + m n) / P     words per task

and, with the work spread evenly (every plan here spreads it), ``W_ind = P w_ind`` in total.

The bound reported is the larger, ``max(W_mem, W_ind, 0)``, in words (:func:`lower_bound_words`)
or bytes (:func:`lower_bound_bytes`): total words moved by all tasks, to be compared with a
plan's shuffled, broadcast and read bytes.

What it bounds: an algorithm that spreads the products evenly over ``P`` tasks of ``M`` words.
A plan on fewer tasks (``outer``'s one per inner index, ``broadcast``'s single copy of the
small operand, counted once) or whose tasks hold more than ``M`` may move less: it pays in
parallelism or memory instead, and its ratio to the bound can fall below 1.

For layouts (:func:`layout_lower_bound_bytes`) ``m n k`` becomes the scalar products of the
stored blocks counted dense, and ``mk + kn + mn`` the dense size of the stored blocks of A and
B and of the product blocks C receives: the bound of the dense-block product with that block
pattern (both arguments hold for any set of products). ``P`` is then at most the number of
block triples ``A[i, k] B[k, j]``: a block algorithm has no more units of work to spread.

>>> n = 2 ** 16
>>> round(lower_bound_words(n, n, n, tasks=512, memory_words=2 ** 28) / n ** 2, 2)
21.0
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ._checks import check_int


def memory_dependent_words(products: float, tasks: int, memory_words: float) -> float:
    """Smith et al. per task: total words >= ``2 F / sqrt(M) - 4 P M``, ``F = m n k``.

    One task of ``2^10`` words multiplying two 1024^2 matrices: at least ``2^26 - 2^12`` words
    (a ``32 x 32`` tile of C at a time reads 1024^3 / 32 words of A and as many of B):

    >>> memory_dependent_words(1024 ** 3, tasks=1, memory_words=2 ** 10) == 2 ** 26 - 2 ** 12
    True
    """
    return 2 * products / math.sqrt(memory_words) - 4 * tasks * memory_words


def memory_independent_words(products: float, held_words: float, tasks: int) -> float:
    """Ballard et al. 2012: total words >= ``P (3 (F / P)^(2/3) - (mk + kn + mn) / P)``.

    ``held_words`` is ``mk + kn + mn``. One task (``P = 1``) holds everything and moves
    nothing:

    >>> memory_independent_words(100 ** 3, 3 * 100 ** 2, tasks=1)
    0.0
    >>> round(memory_independent_words(100 ** 3, 3 * 100 ** 2, tasks=8))
    30000
    """
    per_task = 3 * (products / tasks) ** (2 / 3) - held_words / tasks
    return tasks * per_task if abs(per_task) > 1e-9 * held_words else 0.0


def lower_bound_words(m: int, n: int, k: int, tasks: int, memory_words: float) -> float:
    """Total words any classical algorithm moves: the larger of the two bounds (>= 0).

    Parameters
    ----------
    m, n, k : int
        ``C (m x n) = A (m x k) B (k x n)``.
    tasks : int
        Tasks working at once (``P``, the cores).
    memory_words : float
        Words a task may hold at once (``M``).

    >>> lower_bound_words(4096, 4096, 4096, tasks=64, memory_words=2 ** 16) > 0
    True
    """
    return bound_words(m * n * k, m * k + k * n + m * n, tasks, memory_words)


def bound_words(products: float, held_words: float, tasks: int, memory_words: float) -> float:
    """The larger bound for ``products`` scalar products over ``held_words`` of A, B and C."""
    check_int(tasks, "tasks", meaning="tasks that run at once")
    return max(memory_dependent_words(products, tasks, memory_words),
               memory_independent_words(products, held_words, tasks), 0.0)


def lower_bound_bytes(m: int, n: int, k: int, tasks: int, memory_bytes: int,
                      itemsize: int = 8) -> float:
    """:func:`lower_bound_words` in bytes, for ``itemsize``-byte elements and memory in bytes.

    >>> round(lower_bound_bytes(100, 100, 100, tasks=8, memory_bytes=1 << 30))
    240000
    """
    return itemsize * lower_bound_words(m, n, k, tasks, memory_bytes / itemsize)


def layout_lower_bound_bytes(left, right, tasks: int, memory_bytes: int) -> float:
    """The bound in bytes for two :class:`~blockmatrix.layout.BlockLayout` s (block-sparse too).

    Linear in the stored blocks: the products are ``sum_k (rows of A's blocks in column k)
    (inner extent of k) (columns of B's blocks in row k)``; C's blocks come from the product of
    the block patterns (:mod:`scipy.sparse`). ``tasks`` is capped at the block triples.

    >>> from blockmatrix.layout import BlockLayout
    >>> full = {(i, j): 50 * 50 * 8 for i in range(2) for j in range(2)}
    >>> a = BlockLayout((100, 100), 50, 50, full)
    >>> layout_lower_bound_bytes(a, a, 8, 1 << 30) == lower_bound_bytes(100, 100, 100, 8, 1 << 30)
    True
    >>> layout_lower_bound_bytes(a, a, 64, 1 << 30) == layout_lower_bound_bytes(a, a, 8, 1 << 30)
    True
    """
    itemsize = np.result_type(left.dtype, right.dtype).itemsize
    grid = (max(left.num_row_blocks, 1), max(left.num_col_blocks, 1),
            max(right.num_col_blocks, 1))

    def pattern(layout, shape):
        keys = np.array(list(layout.keys), dtype=np.int64).reshape(-1, 2)
        return sp.csr_matrix((np.ones(len(keys)), (keys[:, 0], keys[:, 1])), shape=shape)

    def extents(n, per_block, count):
        return np.minimum(per_block, n - np.arange(count) * per_block).astype(np.float64)

    rows = extents(left.shape[0], left.rows_per_block, grid[0])
    inner = extents(left.shape[1], left.cols_per_block, grid[1])
    cols = extents(right.shape[1], right.cols_per_block, grid[2])
    a, b = pattern(left, grid[:2]), pattern(right, grid[1:])
    products = float(((rows @ a) * inner) @ (b @ cols))
    c = (a @ b).tocoo()
    held = float(rows @ a @ inner + inner @ b @ cols + (rows[c.row] * cols[c.col]).sum())
    triples = int(round(float(np.asarray(a.sum(axis=0)).ravel() @ np.asarray(b.sum(axis=1))
                              .ravel())))
    return itemsize * bound_words(products, held, max(1, min(tasks, triples)),
                                  memory_bytes / itemsize)
