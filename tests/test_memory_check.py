"""The memory check: a product whose exit or plan the configured memory cannot take is refused
before any job, in one line naming the setting, the values and the fix.

The refusals need no data: HDF5 datasets created without writing their storage (read, they are
zeros) have the sizes of the 8192 x 8192 products that used to end in an OutOfMemoryError, in
files of a few kilobytes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from jobrun import run_process

from blockmatrix import BlockMatrix
from blockmatrix.errors import InsufficientMemoryError
from blockmatrix.layout import BlockLayout
from blockmatrix.memory import COLLECT, STREAM, MemoryConf, check_exit, check_plan
from blockmatrix.plan import MultiplyOptions
from blockmatrix.strategies import get_strategy

pytestmark = pytest.mark.spark  # the job test starts Spark in a subprocess

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "jobs" / "multiply.py"

#: The shipped conf/spark-defaults.conf, local mode.
SHIPPED = MemoryConf.from_conf({"spark.master": "local[2]", "spark.driver.memory": "2g"})


def dense(n: int, block: int, partitions: int = 2) -> BlockLayout:
    nb = -(-n // block)
    sizes = {(i, j): min(block, n - i * block) * min(block, n - j * block) * 8
             for i in range(nb) for j in range(nb)}
    return BlockLayout((n, n), block, block, sizes, np.dtype(np.float64), partitions)


def plan_of(strategy: str, n: int, block: int, num_partitions=None):
    layout = dense(n, block)
    return get_strategy(strategy).plan(layout, layout, MultiplyOptions(
        num_partitions=num_partitions, num_cores=2, memory_budget_bytes=512 << 20))


@pytest.mark.parametrize("strategy", ["inner", "outer", "broadcast"])
def test_the_8192_products_that_died_are_refused_naming_the_setting_and_the_fix(strategy):
    plan = plan_of(strategy, 8192, 1024)
    with pytest.raises(InsufficientMemoryError) as refused:
        check_exit(plan, STREAM, SHIPPED)
    line = str(refused.value)
    assert "\n" not in line
    assert "spark.driver.memory >= " in line and "(configured 2048 MiB)" in line
    fix = re.search(r"set spark\.driver\.memory=(\d+)g \(\+", line)
    assert fix, line
    # The memory it names is enough, and so is the number of partitions it names.
    bigger = MemoryConf.from_conf({"spark.master": "local[2]",
                                   "spark.driver.memory": f"{fix.group(1)}g"})
    check_exit(plan, STREAM, bigger)
    if strategy != "broadcast":  # broadcast keeps A's partitions: no num_partitions to name
        parts = int(re.search(r"num_partitions >= (\d+)", line).group(1))
        check_exit(plan_of(strategy, 8192, 1024, parts), STREAM, SHIPPED)


@pytest.mark.parametrize("strategy,num_partitions", [("cuboid", None), ("pasa", None),
                                                     ("inner", 8)])
def test_the_8192_products_that_were_written_pass(strategy, num_partitions):
    check_exit(plan_of(strategy, 8192, 1024, num_partitions), STREAM, SHIPPED)


def test_collecting_the_8192_product_is_refused_and_to_hdf5_is_named():
    plan = plan_of("inner", 8192, 1024, 8)
    with pytest.raises(InsufficientMemoryError, match=r"to_numpy/to_scipy .*collects 512\.0 "
                       r"MiB .* spark\.driver\.memory=3g .* to_hdf5"):
        check_exit(plan, COLLECT, SHIPPED)
    check_exit(plan_of("inner", 4096, 1024), COLLECT, SHIPPED)


def test_max_result_size_and_a_small_driver_are_named():
    small = MemoryConf.from_conf({"spark.master": "local[2]", "spark.driver.memory": "1g",
                                  "spark.driver.maxResultSize": "16m"})
    plan = plan_of("inner", 2048, 512)  # 32 MiB product, partitions of up to 18 MiB
    with pytest.raises(InsufficientMemoryError,
                       match=r"needs spark\.driver\.maxResultSize >= 32 MiB \(configured "
                             r"16 MiB\): set spark\.driver\.maxResultSize=128m"):
        check_exit(plan, COLLECT, small)
    with pytest.raises(InsufficientMemoryError, match=r"spark\.driver\.maxResultSize >= 18 MiB"):
        check_exit(plan, STREAM, small)
    tiny = MemoryConf.from_conf({"spark.master": "local", "spark.driver.memory": "512m"})
    with pytest.raises(InsufficientMemoryError,
                       match=r"to_hdf5 .* spark\.driver\.memory=2g .*num_partitions >= "):
        check_exit(plan_of("inner", 4096, 1024), STREAM, tiny)


def test_a_broadcast_that_collects_its_operand_is_checked_as_a_collect():
    layout = dense(4096, 1024)
    spark_only = BlockLayout(layout.shape, 1024, 1024, layout.block_nbytes, layout.dtype, 2)
    plan = get_strategy("broadcast").plan(spark_only, spark_only, MultiplyOptions(
        num_cores=2, memory_budget_bytes=1 << 30))
    assert plan.collected_bytes == 128 << 20
    check_plan(plan, SHIPPED)
    small = MemoryConf.from_conf({"spark.master": "local", "spark.driver.memory": "512m"})
    with pytest.raises(InsufficientMemoryError, match=r"strategy='broadcast' .* or use "
                                                      r"strategy='inner'"):
        check_plan(plan, small)


@pytest.fixture(scope="module")
def unwritten(tmp_path_factory):
    """A and B, 8192 x 8192 float64 datasets whose storage was never written (zeros)."""
    folder = tmp_path_factory.mktemp("unwritten")
    with h5py.File(folder / "in.h5", "w") as f:
        f.create_dataset("A", shape=(8192, 8192), dtype="f8")
        f.create_dataset("B", shape=(8192, 8192), dtype="f8")
    assert (folder / "in.h5").stat().st_size < 1 << 20
    return folder


def test_the_exits_refuse_before_any_job_and_write_nothing(sc, unwritten):
    A = BlockMatrix.from_hdf5(sc, str(unwritten / "in.h5"), "/A", 1024, 1024)
    B = BlockMatrix.from_hdf5(sc, str(unwritten / "in.h5"), "/B", 1024, 1024)
    C = A.multiply(B, strategy="inner")
    jobs_before = sc.statusTracker().getJobIdsForGroup()
    with pytest.raises(InsufficientMemoryError, match="to_numpy/to_scipy"):
        C.to_numpy()
    with pytest.raises(InsufficientMemoryError, match="num_partitions >= "):
        C.to_hdf5(str(unwritten / "out.h5"), "/C")
    assert not (unwritten / "out.h5").exists()
    assert sc.statusTracker().getJobIdsForGroup() == jobs_before


def test_the_job_refuses_the_8192_inner_product_with_the_shipped_defaults(unwritten):
    """The case that died with an OutOfMemoryError after the multiply: now one line, exit 2."""
    before = sorted(p.name for p in unwritten.iterdir())
    result = run_process(JOB, f"{unwritten}/in.h5::/A", f"{unwritten}/in.h5::/B",
                         f"{unwritten}/out.h5::/C", "--block-size", "1024", "--strategy",
                         "inner", "--master", "local[2]", cwd=REPO,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert re.search(r"multiply\.py: error: to_hdf5 .* set spark\.driver\.memory=\d+g .*"
                     r"\(--num-partitions >= \d+\)", lines[0]), lines[0]
    assert "Traceback" not in result.stderr and "OutOfMemoryError" not in result.stderr
    assert sorted(p.name for p in unwritten.iterdir()) == before


@pytest.mark.slow
def test_the_job_runs_the_8192_inner_product_with_the_partitions_the_refusal_names(
        tmp_path):
    """The fix the refusal names works at the shipped defaults (about 100 s on 2 cores)."""
    for name, seed in (("A", 1), ("B", 2)):
        made = run_process(REPO / "jobs" / "make_sample.py", f"{tmp_path}/{name}.h5::/{name}",
                           "--rows", "8192", "--cols", "8192", "--seed", seed, cwd=REPO)
        assert made.returncode == 0, made.stderr
    args = (f"{tmp_path}/A.h5::/A", f"{tmp_path}/B.h5::/B", f"{tmp_path}/C.h5::/C",
            "--block-size", "1024", "--strategy", "inner", "--master", "local[2]")
    refused = run_process(JOB, *args, cwd=REPO)
    assert refused.returncode == 2, refused.stderr[-3000:]
    parts = re.search(r"--num-partitions >= (\d+)", refused.stderr).group(1)
    result = run_process(JOB, *args, "--num-partitions", parts, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OutOfMemoryError" not in result.stderr
    with h5py.File(tmp_path / "A.h5", "r") as fa, h5py.File(tmp_path / "B.h5", "r") as fb, \
            h5py.File(tmp_path / "C.h5", "r") as fc:
        rows = slice(4000, 4100)  # a band of C against numpy (all of it would take 10 s)
        expected = fa["A"][rows] @ fb["B"][()]
        np.testing.assert_allclose(fc["C"][rows], expected, rtol=1e-9, atol=1e-9)
