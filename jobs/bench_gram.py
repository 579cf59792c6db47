"""Benchmark Y = X X^T from HDF5 into the same file: our job, numpy in memory, and dask.

Usage::

    python jobs/bench_gram.py --cols 40000 [--rows 10000] [--data DIR] [--repeat N]
        [--contenders ours,numpy,dask] [--master local[2]] [--tile N] [--slab N]
        [--json FILE]

X (``rows x cols`` float64, seeded) is generated once in ``DIR`` (block by block) and reused
by later runs. Each contender runs in its own subprocess and writes its Y into X's file:

* ``ours``: ``jobs/gram.py X.h5::/X X.h5::/Y_ours --overwrite --master ...``;
* ``numpy``: reads X into memory, ``X @ X.T`` (numpy calls syrk), writes Y;
* ``dask``: the recipe from the issue, ``da.from_array`` with chunks ``(rows, 10000)`` on the
  file opened for writing, ``x.dot(x.T)`` stored into a new dataset of the same file.

The parent samples the resident memory of each subprocess's whole process tree (the JVM and
the Python workers included) at 20 Hz and times it from start to exit. X is read once into the
page cache before each run so that every contender starts from the same state. The table shows
wall time, peak resident memory, and both as ratios to numpy; ``--json`` keeps everything
(with the load average of the machine before each run, since it may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from _support.processes import measure, warm_page_cache

from blockmatrix.cli.common import OneLineArgumentParser, positive_int, run
from blockmatrix.units import format_bytes

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_sample  # noqa: E402

PROG = "bench_gram.py"
CONTENDERS = ("ours", "numpy", "dask")

NUMPY_SCRIPT = """
import sys, h5py
path, name, out = sys.argv[1:4]
with h5py.File(path, "r") as f:
    x = f[name][()]
y = x @ x.T
del x
with h5py.File(path, "a") as f:
    if out in f:
        del f[out]
    f.create_dataset(out, data=y)
"""

DASK_SCRIPT = """
import sys, h5py, dask.array as da
path, name, out = sys.argv[1:4]
with h5py.File(path, "a") as f:
    src = f[name]
    x = da.from_array(src, chunks=(src.shape[0], 10000))
    y = x.dot(x.T)
    if out in f:
        del f[out]
    dst = f.create_dataset(out, shape=y.shape, dtype=y.dtype)
    da.store(y, dst, lock=True)
"""


def parse_args(argv):
    """Parse the command line."""
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive_int, default=10_000)
    parser.add_argument("--cols", type=positive_int, default=40_000)
    parser.add_argument("--data", default="bench-data", help="folder for X (default bench-data)")
    parser.add_argument("--repeat", type=positive_int, default=1, help="runs of each contender")
    parser.add_argument("--contenders", type=contender_list, default=",".join(CONTENDERS),
                        help=f"comma-separated, from {', '.join(CONTENDERS)}")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--tile", type=positive_int, default=None)
    parser.add_argument("--slab", type=positive_int, default=None)
    parser.add_argument("--json", default=None, help="write all figures here")
    return parser.parse_args(argv)


def contender_list(text: str) -> list[str]:
    """An argparse type: comma-separated names from :data:`CONTENDERS`.

    >>> contender_list("numpy, ours")
    ['numpy', 'ours']
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender {unknown[0]!r}: choose from {', '.join(CONTENDERS)}"
            if unknown else f"no contender in {text!r}: choose from {', '.join(CONTENDERS)}")
    return names


def ensure_x(path: Path, rows: int, cols: int) -> None:
    """Generate X (seed 7) unless ``path`` already holds one of this shape."""
    if path.exists():
        with h5py.File(path, "r") as f:
            if "X" in f and f["X"].shape == (rows, cols) and f["X"].dtype == np.float64:
                return
        path.unlink()
    start = time.perf_counter()
    make_sample.write_sample(str(path), "/X", rows, cols, seed=7)
    print(f"generated X {rows} x {cols} in {path} in {time.perf_counter() - start:.1f} s")


def command(name: str, path: Path, args) -> list[str]:
    """The subprocess command line of a contender."""
    out = f"/Y_{name}"
    if name == "ours":
        cmd = [sys.executable, str(HERE / "gram.py"), f"{path}::/X", f"{path}::{out}",
               "--overwrite", "--master", args.master, "--report", f"{path}.ours.json"]
        if args.tile:
            cmd += ["--tile", str(args.tile)]
        if args.slab:
            cmd += ["--slab", str(args.slab)]
        return cmd
    script = NUMPY_SCRIPT if name == "numpy" else DASK_SCRIPT
    return [sys.executable, "-c", script, str(path), "/X", out]


def compare(path: Path, names: list[str]) -> dict:
    """Largest relative difference of each contender's Y from numpy's (or the first one's)."""
    ref = "numpy" if "numpy" in names else names[0]
    errors = {}
    with h5py.File(path, "r") as f:
        expected = f[f"/Y_{ref}"]
        scale = 0.0
        for r0 in range(0, expected.shape[0], 1000):
            scale = max(scale, float(np.abs(expected[r0:r0 + 1000]).max()))
        for name in names:
            got = f[f"/Y_{name}"]
            err = 0.0
            for r0 in range(0, expected.shape[0], 1000):
                err = max(err, float(np.abs(got[r0:r0 + 1000] - expected[r0:r0 + 1000]).max()))
            errors[name] = err / scale
    return errors


def table(rows: list[dict], best: dict) -> str:
    """The printed comparison table."""
    ref = best.get("numpy")
    lines = [f"{'contender':<10}{'wall s':>8}{'CPU s':>8}{'peak RSS':>12}{'wall/numpy':>12}"
             f"{'CPU/numpy':>11}{'RSS/numpy':>11}{'procs':>7}{'load':>6}"]
    for r in rows:
        wr = r["wall_s"] / ref["wall_s"] if ref else float("nan")
        cr = r["cpu_s"] / ref["cpu_s"] if ref else float("nan")
        mr = r["peak_rss"] / ref["peak_rss"] if ref else float("nan")
        lines.append(f"{r['name']:<10}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}"
                     f"{format_bytes(r['peak_rss']):>12}{wr:>12.3f}{cr:>11.3f}{mr:>11.3f}"
                     f"{r['processes']:>7}{r['load_before']:>6.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    names = args.contenders
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    path = data / f"X-{args.rows}x{args.cols}.h5"
    ensure_x(path, args.rows, args.cols)
    runs = []
    for rep in range(args.repeat):
        for name in names:
            warm_page_cache(path)
            result = measure(command(name, path, args), data / f"{name}-{rep}.log")
            result.update(name=name, repeat=rep)
            if name == "ours" and Path(f"{path}.ours.json").exists():
                result["report"] = json.loads(Path(f"{path}.ours.json").read_text())
            runs.append(result)
            print(f"{name:<6} run {rep}: {result['wall_s']:.1f} s, "
                  f"CPU {result['cpu_s']:.1f} s, peak "
                  f"{format_bytes(result['peak_rss'])} ({result['processes']} processes), "
                  f"load {result['load_before']:.1f}", flush=True)
    best = {n: min((r for r in runs if r["name"] == n), key=lambda r: r["wall_s"])
            for n in names}
    errors = compare(path, names)
    print(f"\nY = X X^T, X {args.rows} x {args.cols} float64 "
          f"({args.rows * args.cols * 8 / 2**30:.2f} GiB), {os.cpu_count()} cores, "
          f"best of {args.repeat}:")
    print(table([best[n] for n in names], best))
    print("max relative difference from numpy: "
          + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    if "ours" in best and "report" in best["ours"]:
        predicted = best["ours"]["report"]["predicted_total_bytes"]
        print(f"ours: predicted peak {format_bytes(predicted)}, measured "
              f"{format_bytes(best['ours']['peak_rss'])}")
    for n in names:
        parts = ", ".join(f"{d} {format_bytes(b)}" for d, b in best[n]["breakdown"][:6])
        print(f"  {n} at its peak: {parts}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": args.rows, "cols": args.cols, "runs": runs, "errors": errors,
             "best": {n: {k: v for k, v in best[n].items() if k != "report"} for n in names}},
            indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, sys.argv[1:], PROG))
