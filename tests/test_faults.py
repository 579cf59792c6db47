"""Faults survived: killed executors and Python workers, killed and doubled X X^T jobs, low memory.

The multiply faults run ``jobs/multiply.py`` under spark-submit on a standalone cluster of two
workers capped at 512 MB each (executors ``spark.executor.memory=512m``). The X X^T faults run
``jobs/gram.py`` as users run it (``python jobs/gram.py --master local[2]``) and kill the whole
process group: driver, its JVM and the Python workers. Every test ends with the exact result
compared with numpy.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
from cluster import (
    FAST_START_JVM,
    REPO,
    kill_tree,
    spark_submit,
    spark_submit_popen,
    start_cluster,
)
from conftest import assert_eq

MULTIPLY = REPO / "jobs" / "multiply.py"
GRAM = REPO / "jobs" / "gram.py"
EXECUTOR_MEMORY = "512m"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Master + two workers with ``--memory 512m --cores 1`` each; all killed afterwards."""
    running = start_cluster(tmp_path_factory.mktemp("spark-512m"),
                            worker_memory=(EXECUTOR_MEMORY, EXECUTOR_MEMORY))
    try:
        yield running
    finally:
        running.stop()


def write_h5(path: Path, **arrays) -> None:
    with h5py.File(path, "a") as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=value)


def read(path: Path, dataset: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[dataset][()]


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 180):
    """Poll ``condition()`` until it returns something truthy; fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job ended (code {proc.returncode}) before {what}:\n"
                        f"{out[-2000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
    kill_tree(proc)
    return out, err


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    """A and B, 1536 x 1536 float64 in one HDF5 file (256-blocks: a 6 x 6 grid each)."""
    folder = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(61)
    a, b = rng.standard_normal((1536, 1536)), rng.standard_normal((1536, 1536))
    write_h5(folder / "in.h5", A=a, B=b)
    return folder, a, a @ b


def submit_square(cluster, square, out: Path) -> subprocess.Popen:
    """The multiply job on the cluster, each slab of a task slowed to 1 s.

    Unslowed, a tile of this product takes tens of milliseconds: a kill up to a second after
    a task was seen running could land after the last one.
    """
    folder, _, _ = square
    return spark_submit_popen(cluster, MULTIPLY, f"{folder}/in.h5::/A", f"{folder}/in.h5::/B",
                              f"{out}::/C", "--block-size", 256, "--verify",
                              executor_memory=EXECUTOR_MEMORY,
                              conf={"spark.executorEnv.BLOCKMATRIX_TEST_PAUSE": "gram.slab=1.0"})


def busy(processes: list[psutil.Process], interval: float = 0.2) -> psutil.Process | None:
    """One of ``processes`` that used CPU during ``interval`` seconds (it is running a task)."""
    before = {}
    for p in processes:
        try:
            before[p] = sum(p.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    time.sleep(interval)
    for p, used in before.items():
        try:
            if sum(p.cpu_times()[:2]) - used > 0.02:
                return p
        except psutil.NoSuchProcess:
            continue
    return None


def check_multiply_survived(out: str, err: str, code: int, path: Path, expected) -> None:
    assert code == 0, (out[-2000:], err[-4000:])
    assert "verified against numpy" in out and "(OK" in out, out[-2000:]
    assert_eq(read(path, "/C"), expected)


def test_executor_jvm_killed_during_multiply(cluster, square, tmp_path):
    out = tmp_path / "C.h5"
    proc = submit_square(cluster, square, out)
    # Python workers under an executor that burn CPU: tasks are running.
    victim_worker = wait_until(lambda: busy(cluster.python_workers()), proc,
                               "a task was running in an executor")
    executor = next(e for e in cluster.executor_processes()
                    if victim_worker in e.children(recursive=True))
    time.sleep(random.uniform(0, 1.0))
    cluster.descendants()  # recorded, so the teardown checks that the victim is gone
    executor.send_signal(signal.SIGKILL)
    stdout, stderr = finish(proc)
    check_multiply_survived(stdout, stderr, proc.returncode, out, square[2])
    assert "Lost executor" in stderr or "ExecutorLost" in stderr, stderr[-4000:]


def test_python_worker_killed_mid_task(cluster, square, tmp_path):
    out = tmp_path / "C.h5"
    proc = submit_square(cluster, square, out)
    victim = wait_until(lambda: busy(cluster.python_workers()), proc,
                        "a Python worker was running a task")
    victim.send_signal(signal.SIGKILL)
    stdout, stderr = finish(proc)
    check_multiply_survived(stdout, stderr, proc.returncode, out, square[2])
    assert "Lost task" in stderr, stderr[-4000:]  # the task failed and was retried


def test_long_inner_dimension_in_512mb_executors(cluster, tmp_path):
    """1 x 40 blocks times 40 x 1 blocks of 1024 x 1024: 640 MB of input, 8 MB of output.

    Every input block meets on the one reducer of the one output block (SPARK-18218). The
    reducer buffers at most ``spark.python.worker.memory`` (128 MB here) of blocks and spills
    the rest to local disk; the JVM side spills its shuffle too.
    """
    n, blocks = 1024, 40
    rng = np.random.default_rng(62)
    a = np.empty((n, n * blocks))
    b = np.empty((n * blocks, n))
    path = tmp_path / "long.h5"
    with h5py.File(path, "w") as f:
        da = f.create_dataset("A", shape=a.shape, dtype="f8", chunks=(n, n))
        db = f.create_dataset("B", shape=b.shape, dtype="f8", chunks=(n, n))
        for k in range(blocks):
            a[:, k * n:(k + 1) * n] = rng.standard_normal((n, n))
            b[k * n:(k + 1) * n] = rng.standard_normal((n, n))
            da[:, k * n:(k + 1) * n] = a[:, k * n:(k + 1) * n]
            db[k * n:(k + 1) * n] = b[k * n:(k + 1) * n]
    assert a.nbytes + b.nbytes > 512 << 20  # more than an executor's whole memory
    out = tmp_path / "C.h5"
    result = spark_submit(cluster, MULTIPLY, f"{path}::/A", f"{path}::/B", f"{out}::/C",
                          "--block-size", n, executor_memory=EXECUTOR_MEMORY,
                          conf={"spark.python.worker.memory": "128m"}, timeout=400)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    expected = a @ b
    del a, b
    assert_eq(read(out, "/C"), expected)


# ---------------------------------------------------------------------- X X^T job faults

def gram_popen(*args, throttle: float = 0.0, runner: str = "auto") -> subprocess.Popen:
    """jobs/gram.py with each slab of a task and each tile the writer writes slowed down."""
    pause = f"gram.slab={throttle},gram.writer={throttle}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", BLOCKMATRIX_TEST_PAUSE=pause,
               JAVA_TOOL_OPTIONS=FAST_START_JVM)
    return subprocess.Popen([sys.executable, str(GRAM), *map(str, args), "--master", "local[2]",
                             "--runner", runner],
                            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def make_x(path: Path, rows: int = 400, cols: int = 4000) -> tuple[np.ndarray, int, bytes]:
    """X in a contiguous dataset; returns X, the file offset of its data and its raw bytes."""
    x = np.random.default_rng(63).standard_normal((rows, cols))
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x)
        offset = f["X"].id.get_offset()
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(x.nbytes)
    assert raw == x.tobytes()
    return x, offset, raw


def raw_bytes(path: Path, offset: int, count: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(count)


@pytest.mark.spark  # the job starts local Spark in its subprocess
@pytest.mark.slow
@pytest.mark.parametrize("killed,resumed_on", [("spark", "local"), ("local", "spark")])
def test_gram_killed_at_a_random_moment_then_resumed(tmp_path, killed, resumed_on):
    """Killed on one runner, resumed on the other: the finished tiles are the same files."""
    from blockmatrix.ooc import make_tiles
    from blockmatrix.ooc.workdir import finished_tiles, work_paths

    path = tmp_path / "x.h5"
    x, offset, raw = make_x(path)
    tile, slab = 100, 500  # 10 tiles on and above the diagonal, 8 slabs each
    tiles = make_tiles(x.shape[0], tile)
    work_dir, _ = work_paths(str(path), "/Y")
    proc = gram_popen(f"{path}::/X", f"{path}::/Y", "--tile", tile, "--slab", slab,
                      throttle=0.15, runner=killed)
    wait_until(lambda: finished_tiles(work_dir, tiles, x.dtype), proc, "a first tile finished")
    seed = random.randrange(1 << 30)
    time.sleep(random.Random(seed).uniform(0, 3.0))
    assert proc.poll() is None, "the job finished before the kill: raise the throttle"
    kill_tree(proc)  # SIGKILL to the driver (and its JVM and every Python worker on Spark)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = finished_tiles(work_dir, tiles, x.dtype)
    assert before, "no finished tile survived the kill"
    report = tmp_path / "report.json"
    resumed = gram_popen(f"{path}::/X", f"{path}::/Y", "--resume", "--report", report,
                         runner=resumed_on)
    out, err = finish(resumed)
    assert resumed.returncode == 0, (f"kill after seed {seed}", out[-2000:], err[-3000:])
    done = json.loads(report.read_text())
    every = {(t.i, t.j) for t in tiles}
    assert {tuple(k) for k in done["reused"]} == before
    assert {tuple(k) for k in done["computed"]} == every - before
    assert raw_bytes(path, offset, x.nbytes) == raw  # X byte for byte, in place
    with h5py.File(path, "r") as f:
        assert set(f) == {"X", "Y"}
        np.testing.assert_array_equal(f["X"][()], x)
        assert_eq(f["Y"][()], x @ x.T)
    assert not os.path.exists(work_dir)


@pytest.mark.spark  # the job starts local Spark in its subprocess
@pytest.mark.slow
def test_second_gram_job_on_the_same_output_refuses(tmp_path):
    from blockmatrix.ooc.workdir import work_paths

    path = tmp_path / "x.h5"
    x, offset, raw = make_x(path)
    work_dir, lock = work_paths(str(path), "/Y")
    # 10 tiles of 8 slabs, 0.3 s per slab: the first job holds the output for > 10 s.
    first = gram_popen(f"{path}::/X", f"{path}::/Y", "--tile", 100, "--slab", 500,
                       throttle=0.3)
    wait_until(lambda: os.path.exists(lock), first, "the first job took the output's lock")
    second = gram_popen(f"{path}::/X", f"{path}::/Y", "--tile", 100, "--slab", 500)
    out2, err2 = finish(second)
    assert first.poll() is None, "the first job ended before the second was refused"
    assert second.returncode == 2, (out2[-2000:], err2[-3000:])
    lines = [line for line in err2.splitlines() if "gram.py: error:" in line]
    assert len(lines) == 1 and "another gram job" in lines[0], err2[-3000:]
    assert "wait for it to finish" in lines[0]
    out1, err1 = finish(first)
    assert first.returncode == 0, (out1[-2000:], err1[-3000:])
    assert raw_bytes(path, offset, x.nbytes) == raw
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["X"][()], x)
        assert_eq(f["Y"][()], x @ x.T)
    assert not os.path.exists(lock) and not os.path.exists(work_dir)
