"""Y = X X^T out of core: plan, results against numpy, resume after kill -9, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_eq
from jobrun import run_in_process, run_process

from blockmatrix.errors import (
    InputNotFoundError,
    InvalidInputError,
    InvalidParameterError,
    OutputExistsError,
    OutputNotWritableError,
)
from blockmatrix.io.hdf5 import staging_dataset_name
from blockmatrix.ooc import (
    check_gram_request,
    gram_hdf5,
    make_tiles,
    output_lock,
    plan_gram,
)
from blockmatrix.ooc.workdir import work_paths
from blockmatrix.ooc.writer import INCOMPLETE_ATTR, YWriter

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "gram.py"


def write_x(path, shape, dtype="float64", chunks=None, name="X", seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    with h5py.File(path, "a") as f:
        f.create_dataset(name, data=x, chunks=chunks)
    return x


def read(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()]


def dataset_sha(path, name="X"):
    with h5py.File(path, "r") as f:
        return hashlib.sha256(np.ascontiguousarray(f[name][()]).tobytes()).hexdigest()


def file_sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(out_path, dataset="/Y"):
    work_dir, lock = work_paths(str(out_path), dataset)
    return [p for p in (work_dir, lock) if os.path.exists(p)]


# ----------------------------------------------------------------------------- plan (no Spark)

# (the default tile of 5000 on n = 10000 has the same tiling as 500 on 1000, in 1% of the memory
# and time this check needs)
@pytest.mark.parametrize("n,tile", [(1, 1), (10, 3), (10, 5), (300, 64), (1_000, 500),
                                    (1_003, 250)])
def test_tiles_cover_the_upper_triangle_once(n, tile):
    covered = np.zeros((n, n), dtype=int)
    for t in make_tiles(n, tile):
        assert t.i <= t.j and t.r0 <= t.c0
        covered[t.r0:t.r1, t.c0:t.c1] += 1
    assert (np.triu(covered) == np.triu(np.ones((n, n), dtype=int))).all()
    assert np.tril(covered, -1).sum() == sum(
        t.rows * t.cols for t in make_tiles(n, tile) if t.diagonal) - sum(
        t.rows * (t.rows + 1) // 2 for t in make_tiles(n, tile) if t.diagonal)


def test_tiles_are_submitted_largest_first():
    costs = [t.flops(1) for t in make_tiles(23, 4)]
    assert costs == sorted(costs, reverse=True)


def test_plan_counts_syrk_flops_and_reads():
    plan = plan_gram((300, 5000), "float64", tile=64, slab=700)
    assert plan.flops == 300 * 301 * 5000
    assert plan.num_slabs == 8
    nt = len({t.i for t in plan.tiles})
    assert plan.read_bytes == nt * 300 * 5000 * 8
    assert "predicted peak resident memory" in str(plan)


def test_default_memory_is_bounded_and_independent_of_length():
    short = plan_gram((10_000, 80_000), "float64")
    long = plan_gram((10_000, 160_000), "float64")
    assert short.total_bytes < 2.5e9
    assert long.total_bytes == short.total_bytes
    assert long.flops == 2 * short.flops


def test_slab_is_aligned_to_chunks():
    plan = plan_gram((100, 10_000), "float32", tile=50, slab=1000, chunks=(10, 300))
    assert plan.slab == 900
    assert plan.cache_bytes == 2 * 10 * 300 * 4


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_plan_rejects_non_positive_sizes(bad):
    with pytest.raises(InvalidParameterError, match="tile"):
        plan_gram((10, 10), "float64", tile=bad)


# ----------------------------------------------------------------------- results against numpy

CASES = [
    # (n, k, tile, slab, dtype, chunks)
    pytest.param(300, 5000, 64, 700, "float64", None, id="ragged-tiles-and-slabs"),
    pytest.param(257, 1000, 100, 333, "float32", None, id="float32"),
    pytest.param(200, 3001, 64, 512, "float64", (50, 128), id="chunked"),
    pytest.param(131, 999, 40, 250, "float32", (17, 900), id="chunks-wider-than-slab"),
    pytest.param(50, 7, 64, 3, "float64", None, id="one-tile-short-x"),
]


@pytest.mark.parametrize("n,k,tile,slab,dtype,chunks", CASES)
def test_gram_matches_numpy(sc, tmp_path, n, k, tile, slab, dtype, chunks):
    x = write_x(tmp_path / "x.h5", (n, k), dtype, chunks)
    before = file_sha(tmp_path / "x.h5")
    reports = []
    result = gram_hdf5(sc, str(tmp_path / "x.h5"), "/X", str(tmp_path / "y.h5"), "/Y",
                       tile=tile, slab=slab, progress=reports.append)
    y = read(tmp_path / "y.h5", "/Y")
    assert_eq(y, x @ x.T, dtype=dtype)
    assert np.array_equal(y, y.T)
    assert file_sha(tmp_path / "x.h5") == before
    assert sorted(result.computed) == sorted((t.i, t.j) for t in result.plan.tiles)
    assert reports and reports[-1].tiles_done == reports[-1].tiles_total
    assert leftovers(tmp_path / "y.h5") == []
    with h5py.File(tmp_path / "y.h5", "r") as f:
        assert INCOMPLETE_ATTR not in f["Y"].attrs


def test_output_in_the_input_file(sc, tmp_path):
    path = tmp_path / "data.h5"
    x = write_x(path, (220, 2000), chunks=(32, 256))
    with h5py.File(path, "a") as f:
        f["grp/other"] = np.arange(5)
    sha = dataset_sha(path)
    gram_hdf5(sc, str(path), "/X", str(path), "/grp/Y", tile=64, slab=300)
    assert_eq(read(path, "/grp/Y"), x @ x.T)
    assert dataset_sha(path) == sha
    assert (read(path, "/grp/other") == np.arange(5)).all()
    # Overwriting in place (same shape and dtype) and with another X both work.
    with pytest.raises(OutputExistsError):
        check_gram_request(str(path), "/X", str(path), "/grp/Y")
    gram_hdf5(sc, str(path), "/X", str(path), "/grp/Y", tile=100, slab=500, overwrite=True)
    assert_eq(read(path, "/grp/Y"), x @ x.T)
    assert dataset_sha(path) == sha
    assert leftovers(path, "/grp/Y") == []


def test_existing_other_output_file_keeps_its_data(sc, tmp_path):
    x = write_x(tmp_path / "x.h5", (90, 400))
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["keep"] = np.ones(3)
        f["Y"] = np.zeros((2, 2))
    gram_hdf5(sc, str(tmp_path / "x.h5"), "/X", str(tmp_path / "y.h5"), "/Y", tile=32,
              slab=100, overwrite=True)
    assert_eq(read(tmp_path / "y.h5", "/Y"), x @ x.T)
    assert (read(tmp_path / "y.h5", "/keep") == 1).all()


def test_a_second_job_on_the_same_output_refuses(sc, tmp_path):
    write_x(tmp_path / "x.h5", (20, 30))
    work_dir, lock = work_paths(str(tmp_path / "y.h5"), "/Y")
    with output_lock(lock, str(tmp_path / "y.h5")):
        with pytest.raises(OutputNotWritableError, match="another gram job"):
            gram_hdf5(sc, str(tmp_path / "x.h5"), "/X", str(tmp_path / "y.h5"), "/Y")
    assert not (tmp_path / "y.h5").exists() and not os.path.exists(work_dir)


# ------------------------------------------------------------------------- refusals (library)

@pytest.fixture
def files(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["X"] = np.ones((4, 6))
        f["X3"] = np.ones((2, 3, 4))
        f["Xi"] = np.ones((4, 6), dtype="int32")
        f["Xh"] = np.ones((4, 6), dtype="float16")
        f["Y"] = np.ones((4, 4))
    return tmp_path


@pytest.mark.parametrize("args,error,match", [
    (("missing.h5", "/X", "y.h5", "/Y"), InputNotFoundError, "does not exist"),
    (("x.h5", "/nope", "y.h5", "/Y"), InputNotFoundError, "not in"),
    (("x.h5", "/X3", "y.h5", "/Y"), InvalidInputError, "3 dimensions"),
    (("x.h5", "/Xi", "y.h5", "/Y"), InvalidInputError, "floating-point"),
    (("x.h5", "/Xh", "y.h5", "/Y"), InvalidInputError, "float64 or float32"),
    (("x.h5", "/X", "x.h5", "/Y"), OutputExistsError, "--overwrite"),
    (("x.h5", "/X", "x.h5", "/X"), InvalidParameterError, "destroy X"),
    (("x.h5", "/X", "nodir/y.h5", "/Y"), OutputNotWritableError, "does not exist"),
])
def test_check_refuses(files, args, error, match):
    a, b, c, d = args
    with pytest.raises(error, match=match):
        check_gram_request(str(files / a), b, str(files / c), d)


def test_the_writer_refuses_a_file_another_process_holds(tmp_path):
    path = tmp_path / "x.h5"
    write_x(path, (3, 4))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'r'); "
         "print('open', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(OutputNotWritableError, match="--resume"):
            YWriter(str(path), "/Y", 3, "float64")
    finally:
        holder.communicate("")
    writer = YWriter(str(path), "/Y", 3, "float64")
    writer.close(complete=False)
    with h5py.File(path, "r") as f:  # an existing file: written under a staging name
        assert "Y" not in f
        assert f[staging_dataset_name("/Y")].attrs[INCOMPLETE_ATTR] == 1


# ------------------------------------------------------------------------------- the CLI job

def run_job(*args, env=None, **kwargs):
    return run_process(JOB, *args, env=env, **kwargs)


@pytest.mark.parametrize("args,match", [
    (["{d}/missing.h5::/X", "{d}/y.h5::/Y"], "does not exist"),
    (["{d}/x.h5::/nope", "{d}/y.h5::/Y"], "not in"),
    (["{d}/x.h5::/X3", "{d}/y.h5::/Y"], "not 2"),
    (["{d}/x.h5::/Xi", "{d}/y.h5::/Y"], "floating-point"),
    (["{d}/x.h5::/X", "{d}/x.h5::/Y"], "already exists"),
    (["{d}/x.h5::/X", "{d}/y.h5::/Y", "--tile", "0"], "not positive"),
    (["{d}/x.h5::/X", "{d}/y.h5::/Y", "--slab", "-4"], "not positive"),
    (["{d}/x.h5::/X", "{d}/nodir/y.h5::/Y"], "does not exist"),
    (["{d}/x.h5", "{d}/y.h5::/Y"], "FILE.h5::/dataset"),
])
def test_cli_refuses_with_one_line_and_writes_nothing(files, args, match):
    before = {p.name: file_sha(p) for p in files.iterdir()}
    proc = run_in_process(JOB, *(a.format(d=files) for a in args))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert {p.name: file_sha(p) for p in files.iterdir()} == before


# ------------------------------------------------------------------ resume after a real kill -9

def start_job(args, throttle):
    """The job with each slab of a task and each tile the writer writes slowed down."""
    env = dict(os.environ, BLOCKMATRIX_TEST_PAUSE=f"gram.slab={throttle},gram.writer={throttle}")
    return subprocess.Popen([sys.executable, str(JOB), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def kill_when(proc, condition, timeout=180):
    """SIGKILL the job's whole process group (driver, JVM, workers) once ``condition()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the job never reached the point to kill it"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def tile_files(work_dir):
    return sorted(p.name for p in Path(work_dir).glob("tile-*.npy"))


def phase(work_dir):
    try:
        return json.loads((Path(work_dir) / "state.json").read_text())["phase"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_resume_after_kill_during_the_tasks(tmp_path):
    x = write_x(tmp_path / "x.h5", (300, 5000))
    sha = file_sha(tmp_path / "x.h5")
    out = tmp_path / "y.h5"
    work_dir, _ = work_paths(str(out), "/Y")
    job = start_job([f"{tmp_path}/x.h5::/X", f"{out}::/Y", "--tile", "64", "--slab", "700",
                     "--master", "local[2]"], throttle=0.15)
    kill_when(job, lambda: len(tile_files(work_dir)) >= 3)
    done = tile_files(work_dir)
    assert 3 <= len(done) < 15 and not out.exists()
    # Without --resume a fresh run would start over; --tile must match the interrupted run.
    refused = run_job(f"{tmp_path}/x.h5::/X", f"{out}::/Y", "--resume", "--tile", "32")
    assert refused.returncode == 2 and "--tile" in refused.stderr
    report = tmp_path / "report.json"
    proc = run_job(f"{tmp_path}/x.h5::/X", f"{out}::/Y", "--resume", "--master", "local[2]",
                   "--report", report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(report.read_text())
    computed = {f"tile-{i:05d}-{j:05d}.npy" for i, j in summary["computed"]}
    reused = {f"tile-{i:05d}-{j:05d}.npy" for i, j in summary["reused"]}
    assert len(summary["computed"]) + len(done) == 15 and reused >= set(done)
    assert not computed & set(done)
    assert file_sha(tmp_path / "x.h5") == sha
    y = read(out, "/Y")
    assert_eq(y, x @ x.T)
    # Exactly the result of an uninterrupted run with the same tile, slab and BLAS threads (the
    # job ran its tiles in process on local[2]'s two cores).
    gram_hdf5(None, str(tmp_path / "x.h5"), "/X", str(tmp_path / "ref.h5"), "/Y", tile=64,
              slab=700, cores=2)
    assert np.array_equal(y, read(tmp_path / "ref.h5", "/Y"))
    assert leftovers(out) == []


@pytest.mark.spark
@pytest.mark.slow
def test_resume_after_kill_while_writing_into_the_input_file(tmp_path):
    path = tmp_path / "data.h5"
    x = write_x(path, (256, 3000), chunks=(64, 500))
    sha = dataset_sha(path)
    work_dir, _ = work_paths(str(path), "/Y")
    job = start_job([f"{path}::/X", f"{path}::/Y", "--tile", "64", "--slab", "1000",
                     "--master", "local[2]"], throttle=0.4)
    finalizing = []

    def writing_y():  # a few tiles into the final write (0.4 s per tile, 10 tiles)
        if phase(work_dir) == "finalizing" and not finalizing:
            finalizing.append(time.monotonic())
        return bool(finalizing) and time.monotonic() - finalizing[0] > 1.0

    kill_when(job, writing_y)
    with h5py.File(path, "r") as f:  # the file is readable, X intact, Y not published
        assert "Y" not in f
        assert INCOMPLETE_ATTR in f[staging_dataset_name("/Y")].attrs
    assert dataset_sha(path) == sha
    refused = run_job(f"{path}::/X", f"{path}::/Y")
    assert refused.returncode == 2 and "--resume" in refused.stderr, refused.stderr
    report = tmp_path / "report.json"
    proc = run_job(f"{path}::/X", f"{path}::/Y", "--resume", "--master", "local[2]",
                   "--report", report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(report.read_text())
    assert summary["computed"] == [] and len(summary["reused"]) == 10
    assert dataset_sha(path) == sha
    assert_eq(read(path, "/Y"), x @ x.T)
    with h5py.File(path, "r") as f:
        assert INCOMPLETE_ATTR not in f["Y"].attrs
        assert staging_dataset_name("/Y") not in f
    assert leftovers(path) == []
