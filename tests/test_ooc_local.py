"""Out-of-core runs in this process (``runner="local"``): no Spark, every core on each tile.

None of these tests is marked ``spark``: they run with ``JAVA_HOME`` pointing nowhere, so a
job or a call that started Spark anyway would fail. The cases and their numpy references are
the Spark runner's own (tests/test_gram.py, tests/test_ooc_matmul.py).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_eq
from jobrun import run_in_process
from test_gram import CASES as GRAM_CASES
from test_gram import read, write_x
from test_ooc_matmul import CASES as MATMUL_CASES
from test_ooc_matmul import operands  # noqa: F401 (the fixture)

from blockmatrix.cli.common import given_flags
from blockmatrix.errors import InvalidParameterError
from blockmatrix.ooc import gram_hdf5, matmul_hdf5, plan_gram, plan_product
from blockmatrix.ooc.tiles import DEFAULT_TASK_BUDGET_BYTES, LOCAL_BUDGET_BYTES
from blockmatrix.ooc.workdir import work_paths

REPO = Path(__file__).resolve().parent.parent
GRAM = REPO / "jobs" / "gram.py"
MULTIPLY = REPO / "jobs" / "multiply.py"


@pytest.mark.parametrize("n,k,tile,slab,dtype,chunks", GRAM_CASES)
def test_gram_in_process_matches_numpy(tmp_path, n, k, tile, slab, dtype, chunks):
    x = write_x(tmp_path / "x.h5", (n, k), dtype, chunks)
    reports = []
    result = gram_hdf5(None, str(tmp_path / "x.h5"), "/X", str(tmp_path / "y.h5"), "/Y",
                       tile=tile, slab=slab, progress=reports.append, cores=2)
    y = read(tmp_path / "y.h5", "/Y")
    assert_eq(y, x @ x.T, dtype=dtype)
    assert np.array_equal(y, y.T)
    assert result.plan.in_process and result.plan.threads_per_task == 2
    assert sorted(result.computed) == sorted((t.i, t.j) for t in result.plan.tiles)
    assert {s["pid"] for s in result.task_stats} == {os.getpid()}
    assert reports[-1].tiles_done == reports[-1].tiles_total
    assert "tiles computed in this process in" in str(result)


@pytest.mark.parametrize("a,b,c,tile,slab,expected", MATMUL_CASES)
def test_matmul_in_process_matches_numpy(operands, a, b, c, tile, slab, expected):  # noqa: F811
    folder, x, y, s = operands
    a = (str(folder / a[0]), *a[1:])
    b = (str(folder / b[0]), *b[1:])
    c = (str(folder / c[0]), c[1])
    before = read(str(folder / "a.h5"), "/A")
    result = matmul_hdf5(None, a, b, c, tile=tile, slab=slab, cores=1)
    assert_eq(read(*c), expected(x, y, s))
    assert np.array_equal(read(str(folder / "a.h5"), "/A"), before)
    assert result.plan.in_process
    work_dir, lock = work_paths(*c)
    assert not os.path.exists(work_dir) and not os.path.exists(lock)


def test_a_zarr_output_in_process(operands):  # noqa: F811
    pytest.importorskip("zarr")
    from blockmatrix.io import zarr_store

    folder, x, y, _ = operands
    url = f"zarr:{folder / 'c.zarr'}"
    matmul_hdf5(None, (str(folder / "a.h5"), "/A"), (str(folder / "b.h5"), "/B"), url, tile=64,
                slab=50, cores=2)
    assert_eq(zarr_store.open_array(str(folder / "c.zarr"))[...], x @ y)


# ------------------------------------------------------------------------------- the plan

def test_an_in_process_plan_counts_one_process_and_two_pairs_of_slabs():
    spark = plan_product((8192, 8192, 8192), "float64", concurrent_tasks=2)
    local = plan_product((8192, 8192, 8192), "float64", concurrent_tasks=1,
                         threads_per_task=2, runner="local")
    assert (local.tile_rows, local.slab) == (spark.tile_rows, spark.slab) == (4096, 2000)
    tile, slabs = 4096 * 4096 * 8, 2 * 4096 * 2000 * 8
    assert spark.task_bytes == tile + slabs and local.task_bytes == tile + 2 * slabs
    assert local.worker_bytes == 0 and local.total_bytes == local.driver_bytes
    assert local.driver_bytes == spark.driver_bytes + local.task_bytes
    assert local.total_bytes < 0.4 * 3 * 8192 * 8192 * 8  # numpy holds A, B and C
    assert local.task_bytes <= LOCAL_BUDGET_BYTES
    text = str(local)
    assert "in this process, no Spark: one tile at a time x 2 BLAS thread(s)" in text
    assert "JVM" not in text and "worker" not in text
    # k doubles, memory does not.
    assert plan_product((8192, 16384, 8192), "float64", concurrent_tasks=1,
                        runner="local").total_bytes == local.total_bytes


def test_an_in_process_gram_tile_fits_its_budget_with_read_ahead():
    plan = plan_gram((6000, 30000), "float64", tile=None, concurrent_tasks=1,
                     threads_per_task=2, runner="local")
    assert plan.tile == 6000 and len(plan.tiles) == 1  # one syrk over the whole of Y
    assert plan.task_bytes <= LOCAL_BUDGET_BYTES == 2 * DEFAULT_TASK_BUDGET_BYTES
    wide = plan_gram((6000, 60000), "float64", tile=None, concurrent_tasks=1, runner="local")
    assert wide.total_bytes == plan.total_bytes


def test_zero_cores_is_refused_before_anything_is_written(tmp_path):
    write_x(tmp_path / "x.h5", (20, 30))
    with pytest.raises(InvalidParameterError, match="cores must be a positive integer, got 0"):
        gram_hdf5(None, str(tmp_path / "x.h5"), "/X", str(tmp_path / "y.h5"), "/Y", cores=0)
    assert not (tmp_path / "y.h5").exists()


def test_an_unknown_runner_is_refused():
    with pytest.raises(InvalidParameterError, match="runner must be one of spark, local"):
        plan_gram((10, 10), "float64", runner="threads")


# --------------------------------------------------------------------------- stopping

def test_an_error_in_the_driver_stops_the_tiles_after_their_slab(tmp_path, monkeypatch):
    """The first progress report raises: the tile in hand stops, nothing is published."""
    monkeypatch.setenv("BLOCKMATRIX_TEST_PAUSE", "gram.slab=0.05")
    write_x(tmp_path / "x.h5", (200, 4000))
    out = tmp_path / "y.h5"

    def fail(report):
        raise RuntimeError("the driver gave up")

    with pytest.raises(RuntimeError, match="the driver gave up"):
        gram_hdf5(None, str(tmp_path / "x.h5"), "/X", str(out), "/Y", tile=50, slab=100,
                  progress=fail, progress_interval=0.0, cores=1)
    work_dir, _ = work_paths(str(out), "/Y")
    assert not out.exists()
    # 10 tiles of 40 slabs at 0.05 s each: stopped after its first slab, none finished.
    assert not list(Path(work_dir).glob("tile-*.npy"))


# ------------------------------------------------------------------------------- the jobs

def test_the_multiply_job_runs_in_process_on_a_local_master(operands):  # noqa: F811
    folder, x, y, _ = operands
    done = run_in_process(MULTIPLY, f"{folder}/a.h5::/A", f"{folder}/b.h5::/B",
                          f"{folder}/c.h5::/C", "--block-size", 32, "--master", "local[2]",
                          "--tile", 64, "--verify")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in this process, no Spark: one tile at a time x 2 BLAS thread(s)" in done.stdout
    assert "(in this process, no Spark, 2 BLAS threads)" in done.stdout
    assert "(OK" in done.stdout
    assert_eq(read(folder / "c.h5", "/C"), x @ y)


def test_the_gram_job_runs_in_process_by_default(tmp_path):
    x = write_x(tmp_path / "x.h5", (120, 900), chunks=(40, 300))
    done = run_in_process(GRAM, f"{tmp_path}/x.h5::/X", f"{tmp_path}/x.h5::/Y")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no Spark" in done.stdout and "Spark start-up" not in done.stdout
    assert_eq(read(tmp_path / "x.h5", "/Y"), x @ x.T)


@pytest.mark.parametrize("job", [GRAM, MULTIPLY])
def test_runner_local_on_a_cluster_master_is_refused(tmp_path, job):
    write_x(tmp_path / "x.h5", (20, 30))
    with h5py.File(tmp_path / "x.h5", "a") as f:
        f["XT"] = f["X"][()].T
    args = ([f"{tmp_path}/x.h5::/X", f"{tmp_path}/y.h5::/Y"] if job == GRAM else
            [f"{tmp_path}/x.h5::/X", f"{tmp_path}/x.h5::/XT", f"{tmp_path}/y.h5::/Y",
             "--block-size", 10])
    done = run_in_process(job, *args, "--runner", "local", "--master", "spark://127.0.0.1:1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--runner local computes the tiles in this process" in lines[0]
    assert "--master spark://127.0.0.1:1 is a cluster" in lines[0]
    assert not (tmp_path / "y.h5").exists()


# ------------------------------------------------------------------- memory flat in k

def write_blocks(path, name, shape, rng, band=1024):
    with h5py.File(path, "a") as f:
        data = f.create_dataset(name, shape, dtype="float64")
        for r in range(0, shape[0], band):
            data[r:r + band] = rng.standard_normal((min(band, shape[0] - r), shape[1]))


def test_the_jobs_peak_memory_does_not_grow_with_the_inner_dimension(tmp_path):
    """C = A @ B file to file, in process, with k and 2k: the same peak resident memory.

    Measured (not timed): the job runs in its own process, its whole tree sampled at 50 Hz.
    """
    sys.path.insert(0, str(REPO / "jobs"))  # the benchmark plumbing lives with the jobs
    from _support.memory import TreePeakRSS

    rng = np.random.default_rng(8)
    peaks = {}
    for k in (8192, 16384):
        a, b = tmp_path / f"a{k}.h5", tmp_path / f"b{k}.h5"
        write_blocks(a, "A", (1024, k), rng)
        write_blocks(b, "B", (k, 1024), rng)
        argv = [sys.executable, str(MULTIPLY), f"{a}::/A", f"{b}::/B",
                f"{tmp_path}/c{k}.h5::/C", "--block-size", "512", "--master", "local[2]"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO)
        with TreePeakRSS(proc.pid, interval=0.02) as peak:
            out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (out[-2000:], err[-2000:])
        assert "no Spark" in out
        peaks[k] = peak.peak_bytes
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb, \
                h5py.File(tmp_path / f"c{k}.h5", "r") as fc:
            assert_eq(fc["C"][:64], fa["A"][:64] @ fb["B"][()])
    # The operands doubled (64 -> 128 MiB each); the tile and slab buffers did not.
    assert peaks[16384] < peaks[8192] * 1.1 + (8 << 20), peaks


@pytest.mark.parametrize("module", ["multiply", "gram"])
def test_runner_auto_given_is_the_default_not_an_out_of_core_flag(module):
    """``--runner auto`` spelled out means what leaving it out means: a Spark strategy or a
    Parquet gram, which refuse out-of-core flags, take it."""
    cli = importlib.import_module(f"blockmatrix.cli.{module}")
    paths = (["a.h5::/A", "b.h5::/B", "c.h5::/C", "--block-size", "8"] if module == "multiply"
             else ["x.h5::/X", "y.h5::/Y"])
    spelled, omitted = (cli.parse_args([*paths, *extra]) for extra in (["--runner", "auto"], []))
    assert spelled.runner is omitted.runner is None
    assert given_flags(spelled, cli.OOC_FLAGS) == []
    forced = cli.parse_args([*paths, "--runner", "spark"])
    assert given_flags(forced, cli.OOC_FLAGS) == ["--runner"]
