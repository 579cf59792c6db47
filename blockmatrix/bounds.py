"""Communication lower bounds of a classical matrix product on ``P`` tasks of ``M`` words each.

For ``C (m x n) = A (m x k) B (k x n)`` computed with the ``m n k`` scalar products of the
classical algorithm (no Strassen), by ``P`` tasks that each hold at most ``M`` words at once:

**Memory-dependent** (Irony, Toledo and Tiskin, "Communication lower bounds for
distributed-memory matrix multiplication", J. Parallel Distrib. Comput. 64 (2004), Theorem 3.1
and its proof): a task that performs ``F`` products with ``M`` words of memory communicates at
least ``F / (2 sqrt(2) sqrt(M)) - M`` words. Summed over the tasks (``sum F = m n k``) the
*total* words moved are at least::

    W_mem = m n k / (2 sqrt(2) sqrt(M)) - P M

The constant is Irony-Toledo-Tiskin's own, ``1 / (2 sqrt 2) ~ 0.354``; sharper constants exist
for the sequential two-level model (2, Smith et al. 2019), we keep the distributed-memory one.

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

>>> n = 2 ** 16
>>> round(lower_bound_words(n, n, n, tasks=512, memory_words=2 ** 28) / n ** 2, 2)
21.0
"""

from __future__ import annotations

import math

from ._checks import check_int


def memory_dependent_words(m: int, n: int, k: int, tasks: int, memory_words: float) -> float:
    """Irony-Toledo-Tiskin: total words >= ``m n k / (2 sqrt(2) sqrt(M)) - P M``.

    >>> round(memory_dependent_words(1024, 1024, 1024, tasks=1, memory_words=2 ** 10))
    11862259
    """
    return m * n * k / (2 * math.sqrt(2) * math.sqrt(memory_words)) - tasks * memory_words


def memory_independent_words(m: int, n: int, k: int, tasks: int) -> float:
    """Ballard et al. 2012: total words >= ``P (3 (m n k / P)^(2/3) - (mk + kn + mn) / P)``.

    One task (``P = 1``) holds everything and moves nothing:

    >>> memory_independent_words(100, 100, 100, tasks=1)
    0.0
    >>> round(memory_independent_words(100, 100, 100, tasks=8))
    30000
    """
    per_task = 3 * (m * n * k / tasks) ** (2 / 3) - (m * k + k * n + m * n) / tasks
    return tasks * per_task if abs(per_task) > 1e-9 * (m * k + k * n + m * n) else 0.0


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
    check_int(tasks, "tasks", meaning="tasks that run at once")
    return max(memory_dependent_words(m, n, k, tasks, memory_words),
               memory_independent_words(m, n, k, tasks), 0.0)


def lower_bound_bytes(m: int, n: int, k: int, tasks: int, memory_bytes: int,
                      itemsize: int = 8) -> float:
    """:func:`lower_bound_words` in bytes, for ``itemsize``-byte elements and memory in bytes.

    >>> round(lower_bound_bytes(100, 100, 100, tasks=8, memory_bytes=1 << 30))
    240000
    """
    return itemsize * lower_bound_words(m, n, k, tasks, memory_bytes / itemsize)
