"""Memory stays flat in a long session: products release their broadcasts.

Products are computed one after the other in the session's context, as an iterative algorithm
would. The process tree's resident memory (the Python driver, the JVM, the Python workers) is
sampled after each product, and Spark's own view is read beside it: the memory its block
manager uses (broadcast pieces and cached blocks) and the broadcast files of the driver.

Before each sample the JVM is asked for a full garbage collection: without it, its heap grows
lazily towards ``-Xmx`` whatever is alive (measured: +24% of the tree over 25 products that
release everything, against +6% with the collection, and +39% with it when every product
keeps its broadcast), so the samples would measure the collector's pacing, not what is held.
The collection also lets Spark's ContextCleaner free the JVM's side of broadcasts whose
Python objects are gone; PySpark's files of them stay until they are destroyed.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from blockmatrix import BlockMatrix

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "jobs"))
from _support.memory import tree_rss_by_process  # noqa: E402  (the jobs' plumbing)

pytestmark = pytest.mark.spark

MiB = 1 << 20


def tree_rss(sc) -> int:
    """Summed RSS of this process and its descendants (the JVM, the Python workers).

    Taken after a collection in Python and a full one in the JVM (see the module's notes).
    """
    gc.collect()
    sc._jvm.System.gc()
    return sum(rss for _, rss in tree_rss_by_process(psutil.Process()).values())


def storage_used(sc) -> int:
    """Bytes the block managers hold in memory: cached blocks and broadcast pieces."""
    status = sc._jsc.sc().getExecutorMemoryStatus().valuesIterator()
    used = 0
    while status.hasNext():
        pair = status.next()
        used += pair._1() - pair._2()
    return used


def broadcast_files(sc) -> int:
    """Files of the driver's broadcasts (PySpark pickles each one into its temp folder)."""
    return sum(len(files) for _, _, files in os.walk(sc._temp_dir))


def broadcast_bytes(sc) -> int:
    """Bytes of the driver's broadcast files."""
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(sc._temp_dir) for name in names)


def operands(sc, n: int, block: int, seed: int):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    A = BlockMatrix.from_numpy(sc, a, block, block, num_partitions=2).persist()
    B = BlockMatrix.from_numpy(sc, b, block, block, num_partitions=2).persist()
    A.blocks.count(), B.blocks.count()
    return a, b, A, B


@pytest.mark.slow
def test_30_iterations_keep_the_process_tree_flat(sc):
    """``X = A @ X`` thirty times, each X collected: flat within 10% after five.

    Each product broadcasts X (1024^2 float64, 8 MiB). A product that kept the one before it
    alive (and so its broadcast) would add that much per product, 200 MiB over the 25 products
    after the warm-up, a fifth of the tree's memory, to the block manager and to the driver's
    broadcast files.
    """
    n = 1024
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n)) / (2 * np.sqrt(n))  # spectral radius about 1/2
    x = rng.standard_normal((n, n))
    A = BlockMatrix.from_numpy(sc, a, 512, 512, num_partitions=2).persist()
    X = BlockMatrix.from_numpy(sc, x, 512, 512, num_partitions=2)
    A.blocks.count()
    rss, used, files = [], [], []
    for step in range(30):
        X = A.multiply(X, "broadcast")  # X (a tie in bytes: B) is collected and broadcast
        result = X.to_numpy()
        x = a @ x
        if step % 10 == 0:
            np.testing.assert_allclose(result, x, rtol=1e-9, atol=1e-12)
        rss.append(tree_rss(sc))
        used.append(storage_used(sc))
        files.append(broadcast_bytes(sc))
    warm = 5
    growth = max(rss[warm:]) / rss[warm]
    report = [f"{v / MiB:.0f}" for v in rss]
    assert growth <= 1.10, f"tree RSS grew {growth - 1:.0%} after product {warm} (MiB): {report}"
    # Spark's own view: the block manager holds A and at most two broadcasts.
    assert max(used[warm:]) <= used[warm] + 8 * MiB, [u // MiB for u in used]
    assert max(files[warm:]) <= files[warm] + 8 * MiB, [f // MiB for f in files]
    A.unpersist()


@pytest.mark.slow
def test_200_small_products_keep_the_process_tree_flat(sc):
    """Small products, computed and dropped without an exit: garbage collection frees them.

    Mostly ``broadcast`` (one cheap job each); every fourth is ``inner`` or ``cuboid``, whose
    routing tables are broadcast too. A leak of one operand (128 KiB) per product would add
    20 MiB to the block manager's memory and 170 broadcast files.
    """
    a, b, A, B = operands(sc, 128, 64, seed=2)
    strategies = ("broadcast", "broadcast", "broadcast", "inner") * 2
    strategies = strategies[:7] + ("cuboid",)
    rss, used, files = [], [], []
    for n in range(200):
        C = A.multiply(B, strategies[n % len(strategies)])
        C.blocks.count()
        del C
        if n % 20 == 19:
            rss.append(tree_rss(sc))
            used.append(storage_used(sc))
            files.append(broadcast_files(sc))
    np.testing.assert_allclose(A.multiply(B, "broadcast").to_numpy(), a @ b, rtol=1e-10,
                               atol=1e-9)
    warm = 1  # after 40 products
    growth = max(rss[warm:]) / rss[warm]
    assert growth <= 1.10, f"tree RSS grew {growth - 1:.0%}: {[x // MiB for x in rss]} MiB"
    assert max(used[warm:]) <= used[warm] + MiB, [u // 1024 for u in used]
    assert max(files[warm:]) <= files[warm] + 3, files
    A.unpersist(), B.unpersist()
