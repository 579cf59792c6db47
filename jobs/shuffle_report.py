"""Predicted vs measured shuffle volume of every strategy over a sweep of shapes, blocks, density.

Usage::

    python jobs/shuffle_report.py OUT_DIR [--block-sizes 100,200] [--grid 4]
        [--shapes square,tall-skinny,1xN] [--densities 1,0.5] [--strategies inner,outer,...]
        [--seed 0] [--master URL]
    spark-submit --properties-file conf/spark-defaults.conf jobs/shuffle_report.py OUT_DIR ...

For each case (shape x block size x block density) the job builds random float64 operands,
plans and runs every strategy, and records what Spark measured. It writes
``OUT_DIR/shuffle_report.csv``, ``shuffle_report.json`` and ``shuffle_report.png`` (predicted
vs measured shuffle bytes, shuffle stages, wall time), and prints a table. Bad arguments print
one line on stderr and exit with code 2, before Spark starts.

Shapes, in blocks (``g`` = ``--grid``): ``square`` A g x g times B g x g; ``tall-skinny``
A 2g x 2 times B 2 x 2; ``1xN`` A 1 x 2g times B 2g x 1 (a long inner dimension).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

from blockmatrix import BlockMatrix
from blockmatrix.cli.common import OneLineArgumentParser, positive_int, run
from blockmatrix.metrics import measure_multiply
from blockmatrix.samples import random_matrix
from blockmatrix.session import spark_context
from blockmatrix.strategies import strategies_taking

PROG = "shuffle_report.py"
SHAPES = ("square", "tall-skinny", "1xN")
#: Every registered strategy that multiplies itself (``auto`` only picks one of them).
STRATEGIES = tuple(strategies_taking("driver"))  # the report's operands come from from_numpy
COLUMNS = ["case", "shape", "block", "density", "strategy", "predicted_shuffles",
           "measured_shuffles", "predicted_shuffle_bytes", "measured_shuffle_bytes",
           "measured_over_predicted", "predicted_records", "max_task_input_bytes",
           "max_task_memory_bytes", "max_task_output_bytes", "tasks", "wall_time_s"]


def _list_of(kind, allowed=None):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r} is an empty list")
        out = []
        for item in items:
            if kind is float:
                try:
                    value = float(item)
                except ValueError:
                    raise argparse.ArgumentTypeError(f"{item!r} is not a number") from None
                if not 0 < value <= 1:
                    raise argparse.ArgumentTypeError(
                        f"density {value} is outside (0, 1]: give fractions of blocks stored")
            elif kind is int:
                value = positive_int(item)
            else:
                value = item
                if allowed and value not in allowed:
                    raise argparse.ArgumentTypeError(
                        f"{value!r} is not one of {', '.join(allowed)}")
            out.append(value)
        return out
    return parse


def parse_args(argv):
    """Parse the command line."""
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for shuffle_report.{csv,json,png}")
    parser.add_argument("--block-sizes", type=_list_of(int), default=[100, 200],
                        help="block sizes (rows = columns), comma-separated (default 100,200)")
    parser.add_argument("--grid", type=positive_int, default=4,
                        help="blocks per side of the square case (default 4)")
    parser.add_argument("--shapes", type=_list_of(str, SHAPES), default=list(SHAPES),
                        help=f"comma-separated subset of {','.join(SHAPES)}")
    parser.add_argument("--densities", type=_list_of(float), default=[1.0, 0.5],
                        help="fractions of blocks stored, comma-separated (default 1,0.5)")
    parser.add_argument("--strategies", type=_list_of(str, STRATEGIES), default=list(STRATEGIES),
                        help=f"comma-separated subset of {','.join(STRATEGIES)}")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--master", default=None,
                        help="Spark master URL (default local[*]; ignored under spark-submit)")
    args = parser.parse_args(argv)
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        parser.error(f"out_dir {args.out_dir!r} exists and is not a folder: give a folder path")
    return args


def grid_of(shape: str, g: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Block grids of A and B for a named shape."""
    return {"square": ((g, g), (g, g)), "tall-skinny": ((2 * g, 2), (2, 2)),
            "1xN": ((1, 2 * g), (2 * g, 1))}[shape]


def run_sweep(sc, args) -> list[dict]:
    """Every case x strategy: plan and run, compare with numpy, return one row each."""
    rng = np.random.default_rng(args.seed)
    rows = []
    for shape in args.shapes:
        for block in args.block_sizes:
            for density in args.densities:
                ga, gb = grid_of(shape, args.grid)
                a, b = (random_matrix((g[0] * block, g[1] * block), block, rng,
                                      stored=density, mask_first=False) for g in (ga, gb))
                A = BlockMatrix.from_numpy(sc, a, block, block, num_partitions=2).persist()
                B = BlockMatrix.from_numpy(sc, b, block, block, num_partitions=2).persist()
                A.blocks.count()
                B.blocks.count()
                expected = a @ b
                case = f"{shape} b={block} d={density:g}"
                for strategy in args.strategies:
                    C, _, row = measure_multiply(A, B, strategy, label=case)
                    error = np.abs(C.to_numpy() - expected).max(initial=0.0)
                    if error > 1e-8 * max(1.0, np.abs(expected).max(initial=0.0)):
                        raise AssertionError(f"{case} {strategy}: wrong product ({error:.2e})")
                    row.update(case=case, shape=shape, block=block, density=density)
                    rows.append({c: row[c] for c in COLUMNS})
                    print(f"{case:<24} {strategy:<10} shuffles {row['predicted_shuffles']}/"
                          f"{row['measured_shuffles']}  bytes {row['predicted_shuffle_bytes']:>11}"
                          f" / {row['measured_shuffle_bytes']:>11}  "
                          f"wall {row['wall_time_s']:.2f} s", flush=True)
                A.unpersist()
                B.unpersist()
    return rows


def plot(rows: list[dict], path: str) -> None:
    """Predicted vs measured bytes, shuffle stages and wall time per case and strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    width = 0.8 / max(1, len(strategies))
    x = np.arange(len(cases))
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 1.4 * len(cases)), 11), sharex=True)
    for n, strategy in enumerate(strategies):
        mine = {r["case"]: r for r in rows if r["strategy"] == strategy}
        pos = x + (n - (len(strategies) - 1) / 2) * width
        measured = [mine[c]["measured_shuffle_bytes"] / 2**20 if c in mine else 0 for c in cases]
        predicted = [mine[c]["predicted_shuffle_bytes"] / 2**20 if c in mine else 0
                     for c in cases]
        bars = axes[0].bar(pos, measured, width, label=strategy)
        axes[0].scatter(pos, predicted, marker="_", s=200, color="black",
                        label="predicted" if n == 0 else None, zorder=3)
        axes[1].bar(pos, [mine[c]["measured_shuffles"] if c in mine else 0 for c in cases],
                    width, color=bars.patches[0].get_facecolor() if bars.patches else None)
        axes[2].bar(pos, [mine[c]["wall_time_s"] if c in mine else 0 for c in cases], width,
                    color=bars.patches[0].get_facecolor() if bars.patches else None)
    axes[0].set_ylabel("shuffle write (MiB)\nbars measured, - predicted")
    axes[0].legend(fontsize=8, ncol=len(strategies) + 1)
    axes[1].set_ylabel("shuffle stages\n(measured)")
    axes[2].set_ylabel("wall time (s)")
    axes[2].set_xticks(x)
    axes[2].set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    fig.suptitle("blockmatrix strategies: what Spark measured against the plans")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(rows: list[dict], out_dir: str, config: dict) -> dict[str, str]:
    """Write the CSV, JSON and PNG; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"shuffle_report.{ext}") for ext in ("csv", "json", "png")}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"config": config, "rows": rows}, f, indent=1)
    plot(rows, paths["png"])
    return paths


def main(argv=None) -> int:
    """Run the sweep; returns the process exit code."""
    args = parse_args(argv)
    sc = spark_context(args.master, app_name="blockmatrix shuffle report",
                       extra_conf={"spark.ui.showConsoleProgress": "false"})
    try:
        rows = run_sweep(sc, args)
        config = {k: v for k, v in vars(args).items() if k != "out_dir"}
        config["spark_master"] = sc.master
        paths = write_outputs(rows, args.out_dir, config)
    finally:
        sc.stop()
    worst = max((abs(r["measured_over_predicted"] - 1) for r in rows
                 if r["predicted_shuffle_bytes"]), default=0.0)
    print(f"{len(rows)} runs; largest |measured/predicted - 1| = {worst:.3f}; wrote "
          + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:], PROG))
