"""Driver for tests/test_cuboid_cluster.py: inner and cuboid on one product, Spark's measurements.

Run under ``spark-submit``; prints one JSON line ``RESULT {...}`` with, per strategy, the plan's
shuffle bytes and records, what Spark measured, the cut, and whether the product equals numpy.

Usage: ``cuboid_on_cluster.py N BLOCK TASKS``
"""

from __future__ import annotations

import json
import sys

import numpy as np

from blockmatrix import BlockMatrix
from blockmatrix.metrics import record
from blockmatrix.plan import MultiplyOptions
from blockmatrix.session import spark_context
from blockmatrix.strategies import get_strategy


def main(n: int, block: int, tasks: int) -> dict:
    sc = spark_context(app_name="cuboid vs inner")
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    expected = a @ b
    A = BlockMatrix.from_numpy(sc, a, block, block).persist()
    B = BlockMatrix.from_numpy(sc, b, block, block).persist()
    A.blocks.count(), B.blocks.count()
    # tasks = cores of the plan: the cut and the result grid are those of a cluster of that size
    options = MultiplyOptions(num_partitions=tasks, num_cores=tasks)
    out = {"default_parallelism": sc.defaultParallelism}
    for name in ("inner", "cuboid"):
        strategy = get_strategy(name)
        plan = strategy.plan(A.layout(), B.layout(), options)
        with record(sc, name) as metrics:
            blocks = strategy.execute(plan, A.blocks, B.blocks, options).persist()
            blocks.count()
        C = BlockMatrix.from_blocks(blocks, (n, n), block, block)
        product = C.to_numpy()
        out[name] = {
            "predicted_bytes": plan.shuffle_bytes, "measured_bytes": metrics.shuffle_write_bytes,
            "predicted_shuffles": plan.num_shuffles, "measured_shuffles": metrics.shuffle_stages,
            "tasks": plan.num_tasks, "note": plan.note,
            "max_error": float(np.abs(product - expected).max()),
            "wall_time_s": round(metrics.wall_time_s, 2)}
        blocks.unpersist()
    sc.stop()
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(*map(int, sys.argv[1:4]))))
