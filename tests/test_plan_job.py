"""What-if planning without data or Spark: explain_product, the bound in reports, jobs/plan.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest
from cluster import REPO
from jobrun import run_in_process

from blockmatrix import explain_product
from blockmatrix.bounds import lower_bound_bytes
from blockmatrix.errors import InvalidParameterError, ShapeMismatchError
from blockmatrix.explain import Rates, communication_bytes, explain_multiply
from blockmatrix.layout import BlockLayout
from blockmatrix.strategies import get_strategy, multiplying_strategies, register, unregister

PLAN = REPO / "jobs" / "plan.py"


@pytest.fixture(scope="module")
def report():
    # 32 x 32 x 32 blocks of 1024: every planner affordable
    return explain_product((32768, 32768), (32768, 32768), 1024, cores=256, task_memory="2g")


def test_every_strategy_is_planned_with_the_bound(report):
    assert set(report.plans) == {s.name for s in multiplying_strategies()}
    n = 32768
    assert report.lower_bound_bytes == pytest.approx(lower_bound_bytes(n, n, n, 256, 2 << 30))
    for name, plan in report.plans.items():
        assert report.bound_ratio(name) == communication_bytes(plan) / report.lower_bound_bytes
        if not plan.unavailable:  # ooc: what-if operands are not files
            assert report.bound_ratio(name) >= 1.0  # nothing moves less than the bound
    assert report.bound_ratio("cuboid") < report.bound_ratio("inner")
    text = str(report)
    assert "x bound" in text and "bound:" in text and "Irony-Toledo-Tiskin" in text
    rows = {row["strategy"]: row for row in report.rows()}
    assert rows["cuboid"]["bound_ratio"] == report.bound_ratio("cuboid")
    assert rows["inner"]["communication_bytes"] == communication_bytes(report["inner"])


def test_plans_are_those_of_the_layouts(report):
    # what-if layouts are ordinary layouts: explain_multiply gives the same report
    same = explain_multiply(report.left, report.right, num_partitions=256, num_cores=256,
                            memory_budget_bytes=2 << 30)
    assert {n: p.shuffle_bytes for n, p in same.plans.items()} == \
        {n: p.shuffle_bytes for n, p in report.plans.items()}
    assert same.lower_bound_bytes == report.lower_bound_bytes


def test_rates_default_to_the_cost_model_and_can_be_stated(report):
    for name, plan in report.plans.items():
        assert report.predicted_seconds(name) == plan.predicted_seconds(256)
    slow = explain_product((32768, 32768), (32768, 32768), 1024, cores=256, task_memory="2g",
                           strategy="cuboid", network_bytes_per_core_s=1e6,
                           dense_flops_per_core_s=1e12)
    plan = slow["cuboid"]
    assert slow.predicted_seconds("cuboid") == pytest.approx(
        Rates(network_bytes_per_core_s=1e6, dense_flops_per_core_s=1e12).seconds(plan, 256))
    assert slow.predicted_seconds("cuboid") > 10 * report.predicted_seconds("cuboid")
    assert "rates:" in str(slow)


def test_block_sparse_what_if_is_seeded():
    args = {"cores": 256, "task_memory": "256m", "strategy": "cuboid"}
    one = explain_product((16384, 16384), (16384, 16384), 512, density=0.25, **args)
    again = explain_product((16384, 16384), (16384, 16384), 512, density=0.25, **args)
    assert len(one.left.keys) == len(again.left.keys) and 180 < len(one.left.keys) < 330
    assert one["cuboid"].shuffle_bytes == again["cuboid"].shuffle_bytes
    dense = explain_product((16384, 16384), (16384, 16384), 512, **args)
    assert 0 < one.lower_bound_bytes < dense.lower_bound_bytes


def test_large_grids_plan_every_strategy_and_skip_slow_planners():
    big = explain_product((262144, 262144), (262144, 262144), 2048, cores=512,
                          task_memory="8g")
    assert list(big.plans) == [s.name for s in multiplying_strategies()]
    assert big.skipped == {} and big.auto_choice == "cuboid"
    slow = dataclasses.replace(get_strategy("pasa"), name="slow-pasa", linear_planner=False)
    register(slow)
    try:
        again = explain_product((262144, 262144), (262144, 262144), 2048, cores=512,
                                task_memory="8g")
        assert set(again.skipped) == {"slow-pasa"} and "slow-pasa" not in again.plans
        assert "not planned: 2097152 block triples" in str(again)
        named = explain_product((262144, 262144), (262144, 262144), 2048, cores=512,
                                task_memory="8g", strategy="slow-pasa")
        assert set(named.plans) == {"slow-pasa"}
    finally:
        unregister("slow-pasa")


@pytest.mark.parametrize("kwargs,match", [
    ({"block_size": 0}, "block_size must be a positive integer"),
    ({"cores": -1}, "cores must be a positive integer"),
    ({"task_memory": 0}, "task_memory must be a positive integer"),
    ({"density": 1.5}, r"density must be in \(0, 1\]"),
    ({"flops": 3}, "unknown rate"),
])
def test_bad_parameters_are_refused(kwargs, match):
    args = {"block_size": 64, "cores": 4, "task_memory": "1g", **kwargs}
    with pytest.raises(InvalidParameterError, match=match):
        explain_product((256, 256), (256, 256), **args)


def test_shapes_must_conform():
    with pytest.raises(ShapeMismatchError, match=r"A.shape\[1\] \(256\) != B.shape\[0\]"):
        explain_product((256, 256), (128, 256), 64, cores=4, task_memory="1g")


def test_explain_multiply_reports_the_bound_for_layouts():
    a = BlockLayout((400, 400), 100, 100, {(i, j): 80000 for i in range(4) for j in range(4)})
    report = explain_multiply(a, a, num_cores=8, memory_budget_bytes=1 << 20)
    assert report.lower_bound_bytes == pytest.approx(lower_bound_bytes(400, 400, 400, 8, 1 << 20))


# ---------------------------------------------------------------------- the job


def run_plan(*args):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(PLAN), *map(str, args)], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    return result, time.perf_counter() - started


def test_job_prints_the_report_without_spark():
    # the job run in a Python that reports afterwards whether Spark's context was imported
    probe = ("import runpy, sys\n"
             "sys.argv = ['plan.py', *sys.argv[1:]]\n"
             "try:\n"
             f"    runpy.run_path({str(PLAN)!r}, run_name='__main__')\n"
             "except SystemExit as exit:\n"
             "    assert not exit.code, exit.code\n"
             "print('pyspark.context loaded:', 'pyspark.context' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe, "--a", "262144x262144", "--b",
                             "262144x262144", "--block", "2048", "--cores", "512",
                             "--task-memory", "8g"], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pyspark.context loaded: False" in result.stdout
    assert "auto pick: cuboid" in result.stdout and "x bound" in result.stdout
    result, seconds = run_plan("--a", "32768x32768", "--b", "32768x32768", "--block", 1024,
                               "--cores", 256, "--task-memory", "2g", "--strategy", "inner")
    assert result.returncode == 0, result.stderr
    assert seconds < 5, seconds
    assert "\ninner " in result.stdout and "planned in" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--a", "0x5", "--b", "5x5"], "argument --a: a shape is ROWSxCOLS"),
    (["--a", "5x5", "--b", "5by5"], "argument --b: a shape is ROWSxCOLS"),
    (["--a", "64x32", "--b", "64x64"], "A.shape[1] (32) != B.shape[0] (64)"),
    (["--a", "64x64", "--b", "64x64", "--density", "2"], "density must be in (0, 1]"),
    (["--a", "64x64", "--b", "64x64", "--strategy", "nope"], "strategy 'nope' is not one of"),
])
def test_job_refuses_bad_sizes_in_one_line(args, message):
    base = ["--block", 8, "--cores", 4, "--task-memory", "1g"]
    result = run_in_process(PLAN, *args, *base, cwd=REPO)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
