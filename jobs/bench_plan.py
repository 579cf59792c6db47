"""Planning benchmark: how long ``auto`` and every strategy take to plan, from layouts alone.

Usage::

    python jobs/bench_plan.py [--cases dense-32,dense-64,dense-256,sparse-1024] [--json out.json]

Each case builds the layouts of two square operands (dense: every block stored; ``sparse-N``:
1% of the blocks, seeded) of 1024 x 1024 float64 blocks, with as many partitions as the case
names, and times ``plan`` of every registered strategy and of ``auto`` on them (no Spark, no
data), with the peak of Python's traced allocations while planning. The goals of the scale
issue: ``auto`` on ``dense-256`` (262144^2, 4096 partitions) in <= 2 s and <= 500 MiB;
``sparse-1024`` (1% of 1024 x 1024 blocks) in <= 5 s.
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blockmatrix.cli.common import OneLineArgumentParser, run  # noqa: E402
from blockmatrix.layout import BlockLayout  # noqa: E402
from blockmatrix.plan import MultiplyOptions  # noqa: E402
from blockmatrix.strategies import STRATEGIES  # noqa: E402
from blockmatrix.units import format_bytes  # noqa: E402

BLOCK = 1024
#: name -> (blocks per side, block density, partitions)
CASES = {
    "dense-32": (32, 1.0, 64),
    "dense-64": (64, 1.0, 256),
    "dense-256": (256, 1.0, 4096),
    "sparse-1024": (1024, 0.01, 4096),
    "quick": (16, 0.5, 16),
}


def layout(blocks: int, density: float, partitions: int, seed: int) -> BlockLayout:
    """Layout of a square operand of ``blocks`` x ``blocks`` float64 blocks of 1024^2."""
    keys = [(i, j) for i in range(blocks) for j in range(blocks)]
    if density < 1.0:
        keep = np.random.default_rng(seed).random(len(keys)) < density
        keys = [key for key, kept in zip(keys, keep, strict=True) if kept]
    return BlockLayout((blocks * BLOCK, blocks * BLOCK), BLOCK, BLOCK,
                       {key: BLOCK * BLOCK * 8 for key in keys}, num_partitions=partitions)


def measure(name: str) -> list[dict]:
    """Plan time and traced peak of every strategy on one case (fresh layouts each time)."""
    blocks, density, partitions = CASES[name]
    options = MultiplyOptions(num_partitions=partitions, num_cores=partitions,
                              memory_budget_bytes=8 << 30)
    rows = []
    for strategy in STRATEGIES.values():
        left, right = layout(blocks, density, partitions, 1), layout(blocks, density,
                                                                     partitions, 2)
        start = time.perf_counter()
        plan = strategy.plan(left, right, options)
        seconds = time.perf_counter() - start
        left, right = layout(blocks, density, partitions, 1), layout(blocks, density,
                                                                     partitions, 2)
        tracemalloc.start()  # apart from the timing: tracing slows Python several-fold
        strategy.plan(left, right, options)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows.append({"case": name, "strategy": strategy.name, "ran": plan.strategy,
                     "stored_blocks": len(left.block_nbytes), "partitions": partitions,
                     "plan_seconds": round(seconds, 4), "traced_peak_bytes": peak,
                     "shuffle_bytes": plan.shuffle_bytes})
        print(f"{name:<12} {strategy.name:<10} {len(left.block_nbytes):>8} blocks "
              f"{partitions:>5} parts  {seconds:8.3f} s  peak {format_bytes(peak):>10}  "
              f"shuffle {format_bytes(plan.shuffle_bytes)}", flush=True)
    return rows


def main(argv=None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = OneLineArgumentParser(prog="bench_plan.py", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="dense-32,dense-64,dense-256,sparse-1024",
                        help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(names) - set(CASES))
    if unknown or not names:
        parser.error(f"--cases: unknown case(s) {unknown or '(none given)'}; "
                     f"choose from {', '.join(CASES)}")
    rows = [row for name in names for row in measure(name)]
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["jobs/bench_plan.py",
                                                                    *(argv or [])]),
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:], "bench_plan.py"))
