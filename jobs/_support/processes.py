"""Whole processes measured from outside: wall time, peak RSS and CPU of the process tree.

The file-to-file benchmarks (``jobs/benchmark.py``'s file and gram cases, ``jobs/bench_gram.py``)
run each contender as its own process, started from a state every contender shares (the input
files read once into the page cache), and time it from start to exit: a job's fixed costs (the
JVM, the Python workers, the final write) are part of what a user waits for.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from _support.memory import TreePeakRSS

__all__ = ["measure", "warm_page_cache"]


def warm_page_cache(*paths: Path) -> None:
    """Read each file once so that every contender finds its inputs in the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def measure(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``, sampling its process tree; wall time, CPU, peak RSS and its breakdown.

    Output goes to ``log``. A failed command raises ``SystemExit`` naming the log.
    """
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        with TreePeakRSS(proc.pid, interval=0.05) as peak:
            proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:3]))} ... failed with exit code "
                         f"{proc.returncode}: see {log}")
    return {"wall_s": wall, "cpu_s": peak.cpu_seconds, "peak_rss": peak.peak_bytes,
            "processes": peak.peak_processes, "breakdown": peak.peak_breakdown,
            "load_before": load}
