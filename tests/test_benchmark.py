"""jobs/benchmark.py as a user runs it: the --quick smoke test, its JSON, and bad arguments.

No timing assertions: only the structure of the figures, and that every contender's product
was checked against the single-process numpy / scipy.sparse result.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from jobrun import run_in_process, run_process

from blockmatrix.strategies import STRATEGIES, candidate_strategies, strategies_taking

JOB = Path(__file__).resolve().parent.parent / "jobs" / "benchmark.py"
#: The limit, MLlib, every registered strategy that takes driver-held operands (``auto``
#: included) and the by-reference variants (``inner-ref``, ``broadcast-ref``).
CONTENDERS = {"numpy", "mllib", *strategies_taking("driver"),
              *(s.name for s in STRATEGIES.values() if s.selector), "inner-ref", "broadcast-ref"}


#: The quick run's file-to-file cases.
FILE_CASES = {"file-256", "gram-200x1000-chunked"}


def run_job(*args, timeout=900):
    return run_process(JOB, *args, timeout=timeout)


@pytest.mark.spark
@pytest.mark.slow
def test_quick_benchmark_checks_every_contender(tmp_path):
    out = tmp_path / "bench.json"
    done = run_job("--quick", "--master", "local[2]", "--out", str(out), "--data",
                   str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    meta, rows = data["meta"], data["rows"]
    assert meta["quick"] is True and meta["repeats"] == 1 and meta["warm_up"] == 0
    assert "jobs/benchmark.py --quick" in meta["command"]
    # which BLAS kernels every contender ran, and a forced choice, are on record
    assert meta["blas"].startswith("openblas ") and f"BLAS: {meta['blas']}" in done.stdout
    forced = os.environ.get("OPENBLAS_CORETYPE")
    assert (f"OPENBLAS_CORETYPE={forced} in the environment" in meta["blas"]) == bool(forced)
    cases = [c["name"] for c in meta["cases"]]
    assert {"dense-256", "long-inner"} <= set(cases)
    assert any(c.startswith("sparse-") and c.endswith("-sxd") for c in cases)
    assert any(c.startswith("sparse-") and c.endswith("-sxs") for c in cases)
    assert any(c.startswith("report:") for c in cases)
    assert {"file-256", "gram-200x1000-chunked", "spark-only-256"} <= set(cases)
    for case in FILE_CASES:  # whole processes: the job (auto) against a numpy script
        mine = {r["contender"]: r for r in rows if r["case"] == case}
        assert set(mine) == {"numpy", "auto"}, case
        assert mine["numpy"]["reference"] and mine["auto"]["checked"], mine
        assert mine["auto"]["max_abs_error"] <= 1e-12, mine
        # On local[2] the out-of-core jobs run in their own process: no JVM, no workers.
        assert mine["auto"]["ran"].endswith("job") and mine["auto"]["processes"] == 1, mine
        assert all(r["peak_rss_bytes"] > 0 and r["cpu_s_per_run"]["total"] > 0
                   for r in mine.values())
    for case in set(cases) - FILE_CASES:
        mine = [r for r in rows if r["case"] == case]
        # Operands only in Spark: the strategies taking only the driver's arrays do not run.
        expected = CONTENDERS - (set(strategies_taking("driver")) - set(strategies_taking(
            "spark")) if case.startswith("spark-only") else set())
        assert {r["ran"] if r["contender"] in ("numpy", "scipy") else r["contender"]
                for r in mine} == expected, case
        reference = [r for r in mine if r.get("reference")]
        assert len(reference) == 1 and reference[0]["contender"] == (
            "scipy" if case.startswith("sparse-") else "numpy")
        for r in mine:
            assert r["checked"] is True, r          # every product compared with numpy/scipy
            assert r["max_abs_error"] <= 1e-8 * 100, r
            assert r["runs"] == 1 and len(r["times_s"]) == 1
            assert r["median_s"] >= 0 and r["peak_rss_bytes"] > 0
            cpu = r["cpu_s_per_run"]
            assert set(cpu) == {"jvm", "python workers", "python"}, cpu
            assert all(v >= 0 for v in cpu.values()), cpu
            if r["contender"] not in ("numpy", "scipy"):   # milliseconds: may be below a tick
                assert cpu["jvm"] > 0, r
            assert r["x_numpy"] is not None and r["mllib_speedup"] is not None
            if r["contender"] not in ("numpy", "scipy"):
                assert r["shuffle_write_bytes"] >= 0 and r["shuffle_stages"] >= 0
            if r["contender"] == "inner":
                assert r["shuffle_stages"] == 1             # the one-shuffle multiply
            if r["contender"] == "auto":
                # "inner ref": a plan that moves its blocks by reference
                assert r["ran"].removesuffix(" ref") in {s.name for s in candidate_strategies()}
    assert "MLlib/x" in done.stdout and "CPU s/run: JVM" in done.stdout
    assert f"wrote {out}" in done.stdout


@pytest.mark.spark
@pytest.mark.slow
def test_interleaved_rounds_compare_runs_of_the_same_round(tmp_path):
    out = tmp_path / "bench.json"
    names = ["numpy", "mllib", "driver", "auto"]
    done = run_job("--quick", "--cases", "dense-256,file-256", "--contenders", ",".join(names),
                   "--repeats", "2", "--interleave", "--warm-up", "1", "--master", "local[2]",
                   "--out", str(out),
                   "--data", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["interleave"] is True and data["meta"]["warm_up"] == 1
    rows = {(r["case"], r["contender"]): r for r in data["rows"]}
    assert set(rows) == {("dense-256", n) for n in names} | {("file-256", "numpy"),
                                                             ("file-256", "auto")}
    for (case, _), r in rows.items():
        assert r["runs"] == 2 and r["rounds"] == [0, 1] and r["checked"] is True, r
        assert r.get("warm_up_runs", 0) == (0 if case == "file-256" else 1), r  # untimed
        base = rows[case, "numpy"]
        within = [t / b for t, b in zip(r["times_s"], base["times_s"], strict=True)]
        assert r["x_numpy"] == round(sum(within) / 2, 3), r  # the median of two
        if case == "dense-256":
            mllib = rows[case, "mllib"]["times_s"]
            assert r["mllib_speedup"] == round(
                sum(m / t for m, t in zip(mllib, r["times_s"], strict=True)) / 2, 3), r
    # Every contender once per round, the order turned by one in the second round.
    runs = re.findall(r"^dense-256 +(\S+) +round (\d):", done.stdout, re.MULTILINE)
    assert runs == [(n, "1") for n in names] + [(n, "2") for n in names[1:] + names[:1]]
    assert "medians of the ratios of runs made in the same round" in done.stdout


@pytest.mark.parametrize("args,needle", [
    (["--cases", "dense-3"], "unknown case 'dense-3'"),
    (["--contenders", "inner,nope"], "unknown contender 'nope'"),
    (["--repeats", "0"], "positive"),
    (["--warm-up", "-1"], "is negative"),
    (["--conf", "novalue"], "is not KEY=VALUE"),
])
def test_bad_arguments_one_line_exit_2(args, needle):
    done = run_in_process(JOB, *args)
    assert done.returncode == 2
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


TRANSPORT = JOB.parent / "transport.py"


@pytest.mark.spark
@pytest.mark.slow
def test_transport_measures_each_path_and_who_spends_the_cpu(tmp_path):
    out = tmp_path / "transport.json"
    done = subprocess.run([sys.executable, str(TRANSPORT), "--blocks", "6", "--side", "128",
                           "--fanout", "3", "--repeats", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert "jobs/transport.py --blocks 6" in data["command"]
    rows = {r["path"]: r for r in data["rows"]}
    assert set(rows) == {"read", "shuffle", "shuffle-ref", "collect"}
    block = 128 * 128 * 8
    assert rows["read"]["bytes"] == rows["collect"]["bytes"] == 6 * block
    assert rows["shuffle"]["bytes"] == rows["shuffle-ref"]["bytes"] == 6 * 3 * block
    for r in rows.values():
        assert len(r["times_s"]) == 2 and r["median_s"] > 0 and r["mb_per_s"] > 0
        assert set(r["cpu_s_per_run"]) == {"jvm", "python workers", "python"}
        assert r["cpu_s_per_run"]["jvm"] > 0
    assert "CPU s/run: JVM" in done.stdout


@pytest.mark.parametrize("args,needle", [
    (["--blocks", "0"], "positive"),
    (["--fanout", "x"], "--fanout"),
    (["--conf", "novalue"], "is not KEY=VALUE"),
])
def test_transport_bad_arguments_one_line_exit_2(args, needle):
    done = run_in_process(TRANSPORT, *args)
    assert done.returncode == 2
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


BENCH_PLAN = JOB.parent / "bench_plan.py"


def test_planning_benchmark_runs_without_spark(tmp_path):
    out = tmp_path / "plan.json"
    done = run_in_process(BENCH_PLAN, "--cases", "quick", "--json", out)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["strategy"] for r in rows] == list(STRATEGIES)
    assert all(r["plan_seconds"] >= 0 and r["traced_peak_bytes"] > 0 for r in rows)
    refused = run_in_process(BENCH_PLAN, "--cases", "nope")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "unknown case(s) ['nope']" in refused.stderr
