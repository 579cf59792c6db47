"""Out-of-core C = A @ B from HDF5: balanced tiles (no Spark), matmul_hdf5, the ooc strategy,
and jobs/multiply.py's file-to-file path (kill -9 and --resume, read errors, 8192 x 8192)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_eq

from blockmatrix import BlockMatrix
from blockmatrix.errors import (
    InputChangedError,
    InvalidParameterError,
    OutputExistsError,
    ShapeMismatchError,
)
from blockmatrix.ooc import (
    DEFAULT_SLAB,
    balanced_gram_tile,
    balanced_product_tile,
    check_matmul_request,
    make_product_tiles,
    make_tiles,
    matmul_hdf5,
    plan_gram,
    plan_product,
)
from blockmatrix.ooc.tiles import IMBALANCE_GOAL, balanced_block_tile, imbalance
from blockmatrix.ooc.workdir import work_paths

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "jobs" / "multiply.py"


# ----------------------------------------------------------------- balanced tiles (no Spark)

SIZES = [2000, 3000, 4096, 6000, 8192, 10_000, 20_000, 40_000]
CORES = [1, 2, 3, 4, 6, 8, 12, 16]


@pytest.mark.parametrize("cores", CORES)
def test_balanced_gram_tiles_keep_the_busiest_core_within_the_goal(cores):
    for n in SIZES:
        tile = balanced_gram_tile(n, cores, DEFAULT_SLAB, 8)
        works = [t.flops(1) for t in make_tiles(n, tile)]
        assert imbalance(works, cores) <= IMBALANCE_GOAL, (n, cores, tile)
        assert tile <= 5000  # never more memory than the old default tile


@pytest.mark.parametrize("cores", CORES)
def test_balanced_product_tiles_keep_the_busiest_core_within_the_goal(cores):
    for m in SIZES[::2]:
        for p in (1024, 4096, 8192, 30_000):
            tile = balanced_product_tile(m, p, cores, DEFAULT_SLAB, 8)
            works = [t.flops(1) for t in make_product_tiles(m, p, tile, tile)]
            assert imbalance(works, cores) <= IMBALANCE_GOAL, (m, p, cores, tile)
            rows, cols = balanced_block_tile(m, p, 1024, 1024, cores, DEFAULT_SLAB, 8)
            works = [t.flops(1) for t in make_product_tiles(m, p, rows, cols)]
            assert rows % 1024 == 0 or rows == m
            if m * p >= cores * 4 * 1024 ** 2:  # enough whole blocks to deal evenly
                assert imbalance(works, cores) <= IMBALANCE_GOAL, (m, p, cores, rows, cols)


def test_the_issues_case_6000_rows_on_two_cores():
    old = [t.flops(1) for t in make_tiles(6000, 5000)]
    assert imbalance(old, 2) > 1.3  # 12.5 : 5 : 0.5
    plan = plan_gram((6000, 30_000), "float64", tile=None, concurrent_tasks=2)
    assert plan.tile == 3000 and plan.balance < 1.001
    assert "busiest core 1.00x" in str(plan)


def test_product_plan_memory_is_bounded_and_flat_in_k():
    plan = plan_product((8192, 8192, 8192), "float64", concurrent_tasks=2)
    assert len(plan.tiles) == 4 and plan.balance == 1.0
    longer = plan_product((8192, 16_384, 8192), "float64", concurrent_tasks=2)
    assert longer.total_bytes == plan.total_bytes and longer.flops == 2 * plan.flops
    assert plan.task_bytes <= 400 << 20
    assert "predicted peak resident memory" in str(plan)
    forced = plan_product((100, 50, 70), "float32", tile=30, slab=20, a_chunks=(10, 8),
                          b_chunks=(8, 10))
    assert (forced.tile_rows, forced.tile_cols, forced.slab) == (30, 30, 16)
    assert len(forced.tiles) == 4 * 3


# -------------------------------------------------------------------- matmul_hdf5 on Spark

def write(path, name, array, chunks=None):
    with h5py.File(path, "a") as f:
        f.create_dataset(name, data=array, chunks=chunks)
    return array


def read(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()]


@pytest.fixture
def operands(tmp_path):
    rng = np.random.default_rng(7)
    a = write(tmp_path / "a.h5", "A", rng.standard_normal((150, 130)), chunks=(20, 30))
    b = write(tmp_path / "b.h5", "B", rng.standard_normal((130, 110)))
    write(tmp_path / "b.h5", "Bt", np.ascontiguousarray(b.T), chunks=(25, 13))
    write(tmp_path / "a.h5", "A32", a.astype(np.float32))
    sq = write(tmp_path / "a.h5", "S", rng.standard_normal((130, 130)))
    return tmp_path, a, b, sq


CASES = [
    # (a, b, c, tile, slab, expected)
    pytest.param(("a.h5", "/A"), ("b.h5", "/B"), ("c.h5", "/C"), 64, 50,
                 lambda a, b, s: a @ b, id="files-ragged-tiles-and-slabs"),
    pytest.param(("a.h5", "/A"), ("b.h5", "/Bt", True), ("c.h5", "/C"), 40, 64,
                 lambda a, b, s: a @ b, id="b-read-transposed-chunked"),
    pytest.param(("a.h5", "/S", True), ("b.h5", "/B"), ("a.h5", "/C"), None, None,
                 lambda a, b, s: s.T @ b, id="a-transposed-c-into-a-file"),
    pytest.param(("a.h5", "/S"), ("a.h5", "/S"), ("b.h5", "/SS"), 50, 33,
                 lambda a, b, s: s @ s, id="same-dataset-c-into-b-file"),
    pytest.param(("a.h5", "/A32"), ("b.h5", "/B"), ("c.h5", "/C"), None, 1000,
                 lambda a, b, s: a.astype(np.float32).astype(np.float64) @ b, id="mixed-dtypes"),
]


@pytest.mark.parametrize("a,b,c,tile,slab,expected", CASES)
def test_matmul_hdf5_matches_numpy(sc, operands, a, b, c, tile, slab, expected):
    folder, x, y, s = operands
    a = (str(folder / a[0]), *a[1:])
    b = (str(folder / b[0]), *b[1:])
    c = (str(folder / c[0]), c[1])
    before = {p: read(p, "/A") for p in [str(folder / "a.h5")]}
    reports = []
    result = matmul_hdf5(sc, a, b, c, tile=tile, slab=slab, progress=reports.append)
    assert_eq(read(*c), expected(x, y, s))
    assert np.array_equal(read(str(folder / "a.h5"), "/A"), before[str(folder / "a.h5")])
    assert sorted(result.computed) == sorted((t.i, t.j) for t in result.plan.tiles)
    assert reports and reports[-1].tiles_done == reports[-1].tiles_total
    work_dir, lock = work_paths(*c)
    assert not os.path.exists(work_dir) and not os.path.exists(lock)


def test_matmul_request_refusals(operands):
    folder, *_ = operands
    a, b = (str(folder / "a.h5"), "/A"), (str(folder / "b.h5"), "/B")
    with pytest.raises(ShapeMismatchError, match=r"A.shape\[1\] \(130\) != B.shape\[0\] \(150\)"):
        check_matmul_request(a, a, str(folder / "c.h5"), "/C")
    with pytest.raises(InvalidParameterError, match="destroy B"):
        check_matmul_request(a, b, str(folder / "b.h5"), "/B", overwrite=True)
    with pytest.raises(OutputExistsError, match="already exists"):
        check_matmul_request(a, b, str(folder / "b.h5"), "/Bt")
    with pytest.raises(InvalidParameterError, match="tile"):
        check_matmul_request(a, b, str(folder / "c.h5"), "/C", tile=0)
    with pytest.raises(InvalidParameterError, match="location"):
        check_matmul_request("a.h5", b, str(folder / "c.h5"), "/C")


def test_a_changed_source_is_refused_before_any_task(sc, operands):
    folder, *_ = operands
    A = BlockMatrix.from_hdf5(sc, str(folder / "a.h5"), "/A", 50, 50)
    B = BlockMatrix.from_hdf5(sc, str(folder / "b.h5"), "/B", 50, 50)
    time.sleep(0.01)
    with h5py.File(folder / "b.h5", "a") as f:
        f["extra"] = np.ones(3)
    with pytest.raises(InputChangedError, match="changed since"):
        matmul_hdf5(sc, A.layout().source, B.layout().source, (str(folder / "c.h5"), "/C"))
    with pytest.raises(InputChangedError, match="changed since"):
        A.multiply(B, strategy="ooc")
    assert not (folder / "c.h5").exists()


# ------------------------------------------------------------------------ the ooc strategy

def test_the_ooc_strategy_reads_its_operands_from_the_files(sc, operands):
    folder, x, y, s = operands
    A = BlockMatrix.from_hdf5(sc, str(folder / "a.h5"), "/A", 32, 40)
    B = BlockMatrix.from_hdf5(sc, str(folder / "b.h5"), "/B", 40, 24)
    C = A.multiply(B, strategy="ooc")
    assert C.plan.strategy == "ooc" and C.plan.num_shuffles == 0
    assert C.plan.read_bytes >= x.nbytes + y.nbytes and not C.plan.unavailable
    C.validate()
    assert_eq(C.to_numpy(), x @ y)
    S = BlockMatrix.from_hdf5(sc, str(folder / "a.h5"), "/S", 40, 40)
    assert_eq(S.T.multiply(B, strategy="ooc").to_numpy(), s.T @ y)
    # With both operands in files nothing need move: auto picks a plan without a shuffle
    # (ooc, or cuboid, which reads its blocks from the files too), having weighed ooc.
    picked = A.multiply(B, strategy="auto").plan
    assert picked.num_shuffles == 0 and picked.strategy in ("ooc", "cuboid"), picked.reason
    assert "ooc" in {c.strategy for c in picked.candidates if c.fits}


def test_auto_prices_the_trip_to_the_file_when_c_is_written(sc, operands):
    folder, x, y, _ = operands
    A = BlockMatrix.from_hdf5(sc, str(folder / "a.h5"), "/A", 40, 40)
    B = BlockMatrix.from_hdf5(sc, str(folder / "b.h5"), "/B", 40, 40)
    C = A.multiply(B, strategy="auto")
    # Not knowing where C goes, auto broadcasts B (the fastest way to blocks in Spark) ...
    assert C.plan.strategy == "broadcast", C.plan.reason
    C.to_hdf5(str(folder / "c.h5"), "/C")
    # ... and asked again once C goes to a file, it writes file to file, and says why.
    assert C.plan.strategy == "ooc", C.plan.reason
    assert "written to a file: ooc goes file to file" in C.plan.reason
    assert_eq(read(str(folder / "c.h5"), "/C"), x @ y)
    # The product stays usable as blocks.
    assert_eq(C.to_numpy(), x @ y)


def test_the_ooc_strategy_is_unavailable_without_files(sc, operands):
    folder, x, y, _ = operands
    A = BlockMatrix.from_numpy(sc, x, 32, 40)
    B = BlockMatrix.from_hdf5(sc, str(folder / "b.h5"), "/B", 40, 24)
    from blockmatrix.strategies import get_strategy

    options_plan = get_strategy("ooc").plan(A.layout(), B.layout(),
                                            __import__("blockmatrix.plan").plan.MultiplyOptions())
    assert options_plan.unavailable.startswith("A is held by the driver")
    with pytest.raises(InvalidParameterError, match="needs both operands read from HDF5"):
        A.multiply(B, strategy="ooc")
    product = BlockMatrix.from_numpy(sc, x, 32, 40).multiply(A.T.multiply(A), strategy="inner")
    plan = get_strategy("ooc").plan(product.layout(), B.layout(),
                                    __import__("blockmatrix.plan").plan.MultiplyOptions())
    assert plan.unavailable == ("A is held only by Spark: the out-of-core product needs both "
                                "operands read from HDF5 or Zarr")
    auto = A.multiply(B, strategy="auto").plan
    assert auto.strategy != "ooc" and "ooc (A is held by the driver" in auto.reason


# ------------------------------------------------------------------- jobs/multiply.py (ooc)

def job(*args, env=None, popen=False, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    argv = [sys.executable, str(JOB), *map(str, args)]
    if popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO, start_new_session=True, text=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "multiply.py: error:" in line]


@pytest.mark.spark
def test_the_job_goes_file_to_file_and_refuses_ooc_flags_elsewhere(operands):
    folder, x, y, _ = operands
    out = folder / "c.h5"
    result = job(f"{folder}/a.h5::/A", f"{folder}/b.h5::/B", f"{out}::/C", "--block-size", 32,
                 "--master", "local[2]", "--tile", 64, "--verify")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "strategy: ooc" in result.stdout and "tiles      6 of 64 x 64" in result.stdout
    assert "predicted peak resident memory" in result.stdout and "GFLOP/s" in result.stdout
    assert "verified against numpy" in result.stdout and "(OK" in result.stdout
    assert_eq(read(out, "/C"), x @ y)
    refused = job(f"{folder}/a.h5::/A", f"{folder}/b.h5::/B", f"{folder}/d.h5::/C",
                  "--block-size", 32, "--strategy", "inner", "--tile", 64)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tile apply to the out-of-core strategy only" in lines[0]
    assert not (folder / "d.h5").exists()


@pytest.mark.spark
@pytest.mark.parametrize("runner", ["spark", "local"])
def test_a_read_error_inside_a_task_is_one_line(operands, runner):
    folder, *_ = operands
    rng = np.random.default_rng(3)
    write(folder / "big.h5", "A", rng.standard_normal((400, 3000)))
    write(folder / "big.h5", "B", rng.standard_normal((3000, 300)))
    size = os.path.getsize(folder / "big.h5")
    # Every slab of every task takes 0.3 s: the file is cut short while the tasks read it.
    proc = job(f"{folder}/big.h5::/A", f"{folder}/big.h5::/B", f"{folder}/c.h5::/C",
               "--block-size", 100, "--master", "local[2]", "--tile", 200, "--slab", 300,
               "--runner", runner, env={"BLOCKMATRIX_TEST_PAUSE": "gram.slab=0.3"}, popen=True)
    work_dir, _ = work_paths(str(folder / "c.h5"), "/C")
    deadline = time.monotonic() + 120
    while not list(Path(work_dir).glob("*.progress")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    os.truncate(folder / "big.h5", size // 3)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    assert len(error_lines(out)) == 1, out[-3000:]
    assert "Traceback" not in out and "Py4J" not in out and "at org.apache" not in out
    assert re.search(r"input .*big.h5 changed while the tasks read it", error_lines(out)[0])
    assert not (folder / "c.h5").exists()


@pytest.mark.spark
def test_the_job_killed_then_resumed_reuses_its_finished_tiles(operands):
    folder, *_ = operands
    rng = np.random.default_rng(5)
    a = write(folder / "k.h5", "A", rng.standard_normal((300, 2000)))
    b = write(folder / "k.h5", "B", rng.standard_normal((2000, 300)))
    out = folder / "k.h5"  # C goes into the operands' own file
    args = [f"{out}::/A", f"{out}::/B", f"{out}::/C", "--block-size", 100,
            "--master", "local[2]"]
    work_dir, _ = work_paths(str(out), "/C")
    proc = job(*args, "--tile", 100, "--slab", 500, env={"BLOCKMATRIX_TEST_PAUSE":
                                                          "gram.slab=0.15"}, popen=True)
    deadline = time.monotonic() + 180
    while len(list(Path(work_dir).glob("tile-*.npy"))) < 2:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = len(list(Path(work_dir).glob("tile-*.npy")))
    assert 2 <= done < 9
    refused = job(*args, "--resume", "--tile", 50)
    assert refused.returncode == 2 and "--tile" in refused.stderr
    resumed = job(*args, "--resume", "--verify")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    match = re.search(r"tiles computed (\d+), reused (\d+), total 9", resumed.stdout)
    assert match and int(match[2]) >= done and int(match[1]) + int(match[2]) == 9
    assert "(OK" in resumed.stdout
    assert_eq(read(out, "/C"), a @ b)
    assert np.array_equal(read(out, "/A"), a)
    assert not os.path.exists(work_dir)


# --------------------------------------------------------------- 8192 x 8192, shipped defaults

@pytest.mark.spark
@pytest.mark.slow
def test_8192_file_to_file_with_the_shipped_defaults(tmp_path):
    sys.path.insert(0, str(JOB.parent))  # the benchmark plumbing lives with the jobs
    from _support.memory import TreePeakRSS

    n = 8192
    rng = np.random.default_rng(11)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        data = f.create_dataset("A", (n, n), dtype="float64")
        for r in range(0, n, 1024):
            data[r:r + 1024] = rng.standard_normal((1024, n))
    with h5py.File(tmp_path / "b.h5", "w") as f:
        data = f.create_dataset("B", (n, n), dtype="float64")
        for r in range(0, n, 1024):
            data[r:r + 1024] = rng.standard_normal((1024, n))
    argv = [sys.executable, str(JOB), f"{tmp_path}/a.h5::/A", f"{tmp_path}/b.h5::/B",
            f"{tmp_path}/c.h5::/C", "--block-size", 1024]
    proc = subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    with TreePeakRSS(proc.pid, interval=0.05) as peak:
        out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, (out[-2000:], err[-3000:])
    assert "OutOfMemoryError" not in err and "strategy: ooc" in out
    rows = np.sort(rng.choice(n, 16, replace=False))
    with h5py.File(tmp_path / "a.h5", "r") as fa, h5py.File(tmp_path / "b.h5", "r") as fb, \
            h5py.File(tmp_path / "c.h5", "r") as fc:
        b = fb["B"][()]
        assert_eq(fc["C"][rows], fa["A"][rows] @ b)
    numpy_bytes = 3 * n * n * 8  # A, B and C in memory at once (numpy's peak measured 1.57 GiB)
    # The issue's goal is half of numpy's. Measured 0.54 GiB in process (no Spark started):
    # the Python process, one 4096^2 tile and two pairs of slab buffers. On Spark (JVM, daemon,
    # two workers and their tasks) it was 1.2-1.35 GiB.
    assert "no Spark" in out
    assert peak.peak_bytes < 0.5 * numpy_bytes, peak.peak_breakdown
