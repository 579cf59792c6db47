"""Outputs are atomic, have one writer, resume idempotently, and survive a full disk.

* A writer killed at random points (``kill -9``, slowed by the ``hdf5.writer`` and
  ``hdf5.publish`` pause points) never leaves a dataset under the output's name that is not
  complete; the next write cleans what it left and succeeds.
* A second job on the same output is refused before Spark starts: the tests that show it are
  not marked ``spark``, so the jobs they start find no Java (``tests/conftest.py``).
* ``--resume`` of a finished run says the output is complete and exits 0, without Spark.
* With the output (and so the tile folder beside it) on a small tmpfs the test mounts, a run
  that cannot fit is refused in one line naming the folder and the space it needs; one that
  runs out of space half-way exits 2 in one line, keeps its finished tiles, and resumes.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_eq
from jobrun import run_process

from blockmatrix import BlockMatrix
from blockmatrix.errors import InsufficientSpaceError, OutputExistsError, OutputNotWritableError
from blockmatrix.io import hdf5
from blockmatrix.io.lock import lock_path_of, output_lock
from blockmatrix.ooc import check_gram_request, check_matmul_request, gram_hdf5, matmul_hdf5
from blockmatrix.ooc.workdir import work_paths

REPO = Path(__file__).resolve().parent.parent
GRAM, MULTIPLY = REPO / "jobs" / "gram.py", REPO / "jobs" / "multiply.py"
NO_JAVA = "/nonexistent/no-spark-expected-here"


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read(path, dataset):
    with h5py.File(path, "r") as f:
        return f[dataset][()]


def job_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_job(script, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return run_process(script, *args, env=env or job_env(), timeout=timeout)


def one_line(proc, prog) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------- killed writers (no Spark)

#: A writer of ``/C`` (40 x 40 in 5 x 5 blocks) through hdf5.write_output, the code path of
#: BlockMatrix.to_hdf5, fed by a generator as Spark's toLocalIterator feeds it.
WRITER = """
import sys
import numpy as np
from blockmatrix.io import hdf5
c = np.arange(1600.0).reshape(40, 40)
blocks = (((i, j), c[5 * i:5 * i + 5, 5 * j:5 * j + 5]) for i in range(8) for j in range(8))
hdf5.write_output(sys.argv[1], "/C", c.shape, c.dtype, blocks, 5, 5, producer="test writer")
"""
EXPECTED_C = np.arange(1600.0).reshape(40, 40)


def start_writer(path: Path, pauses: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                            env=job_env(BLOCKMATRIX_TEST_PAUSE=pauses),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def outcome(path: Path, keep: np.ndarray | None) -> str:
    """What a killed writer left under the name: ``absent`` or ``complete`` (else fail)."""
    if not path.exists():
        return "absent"
    with h5py.File(path, "r") as f:  # the file opens: a kill never corrupts it
        if keep is not None:
            np.testing.assert_array_equal(f["keep"][()], keep)
        if "C" not in f:
            return "absent"
        data = f["C"]
        assert hdf5.INCOMPLETE_ATTR not in data.attrs
        assert tuple(data.attrs[hdf5.SHAPE_ATTR]) == (40, 40)
        assert data.attrs[hdf5.DTYPE_ATTR] == "<f8"
        assert data.attrs[hdf5.PRODUCER_ATTR] == "test writer"
        np.testing.assert_array_equal(data[()], EXPECTED_C)
        return "complete"


@pytest.mark.parametrize("existing", [
    pytest.param(False, id="new-file", marks=pytest.mark.slow),  # the simpler path of the two
    pytest.param(True, id="existing-file"),
])
def test_a_killed_writer_never_leaves_an_output_that_looks_complete(tmp_path, existing):
    keep = np.full((3, 3), 7.0) if existing else None
    # Seconds after the staging file appeared: the blocks take 1.3 s, then 0.4 s to publish.
    delays = sorted(random.Random(14).sample([0.1 * k for k in range(19)], 4))
    seen = set()
    for n, delay in enumerate(delays):
        path = tmp_path / f"c{n}.h5"
        if existing:
            with h5py.File(path, "w") as f:
                f["keep"] = keep
        proc = start_writer(path, "hdf5.writer=0.02,hdf5.publish=0.4")
        deadline = time.monotonic() + 60
        while not Path(hdf5.staging_file_path(path)).exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = outcome(path, keep)
        seen.add(left)
        # The next write cleans what the killed one left and succeeds (or finds C complete).
        rerun = subprocess.run([sys.executable, "-c", WRITER, str(path)], env=job_env(),
                               capture_output=True, text=True)
        if left == "complete":
            assert rerun.returncode != 0 and "already exists" in rerun.stderr
        else:
            assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert outcome(path, keep) == "complete"
        assert not list(tmp_path.glob(".*")), list(tmp_path.glob(".*"))  # staging, lock
        with h5py.File(path, "r") as f:
            assert hdf5.staging_dataset_name("/C") not in f
    assert "absent" in seen, seen  # some kills landed before the output was published


@pytest.mark.spark
@pytest.mark.slow  # two Spark starts: 24 s on the loaded reference machine
def test_a_killed_multiply_job_leaves_no_output_and_the_rerun_writes_it(sc, tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((48, 30)), rng.standard_normal((30, 40))
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["A"], f["B"] = a, b
    before = sha(tmp_path / "in.h5")
    out = tmp_path / "c.h5"
    staged = Path(hdf5.staging_file_path(out))
    proc = subprocess.Popen(
        [sys.executable, str(MULTIPLY), f"{tmp_path}/in.h5::/A", f"{tmp_path}/in.h5::/B",
         f"{out}::/C", "--block-size", "8", "--strategy", "inner", "--master", "local[1]"],
        env=job_env(BLOCKMATRIX_TEST_PAUSE="hdf5.writer=0.5"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not staged.exists():  # the writer started: blocks are going into the staging file
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing under C's name, only the staging file
    assert sha(tmp_path / "in.h5") == before
    A = BlockMatrix.from_hdf5(sc, str(tmp_path / "in.h5"), "/A", 8, 8)
    B = BlockMatrix.from_hdf5(sc, str(tmp_path / "in.h5"), "/B", 8, 8)
    A.multiply(B, strategy="inner").to_hdf5(str(out), "/C")  # not "already exists"
    assert_eq(read(out, "/C"), a @ b)
    assert not staged.exists() and not Path(lock_path_of(out)).exists()


# ------------------------------------------------------------ one writer per output


@pytest.fixture
def inputs(tmp_path) -> Path:
    rng = np.random.default_rng(5)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["A"] = rng.standard_normal((12, 9))
        f["B"] = rng.standard_normal((9, 7))
        f["X"] = rng.standard_normal((6, 20))
    return tmp_path


@pytest.mark.parametrize("script, args", [
    (MULTIPLY, ["in.h5::/A", "in.h5::/B", "c.h5::/C", "--block-size", "4"]),
    (MULTIPLY, ["in.h5::/A", "in.h5::/B", "c.h5::/C", "--block-size", "4", "--strategy",
                "inner"]),
    (GRAM, ["in.h5::/X", "c.h5::/Y"]),
], ids=["multiply-ooc", "multiply-inner", "gram"])
def test_a_second_job_on_the_same_output_is_refused_before_spark(inputs, script, args):
    """Not marked spark: the job has no Java, so a refusal after Spark started would differ."""
    before = sha(inputs / "in.h5")
    with output_lock(lock_path_of(inputs / "c.h5"), str(inputs / "c.h5"), job="test"):
        proc = subprocess.run([sys.executable, str(script), *args], cwd=inputs,
                              capture_output=True, text=True, env=job_env(JAVA_HOME=NO_JAVA),
                              timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc, script.name)
    assert "is being written by another" in line and f"(pid {os.getpid()})" in line, line
    assert "wait for it to finish" in line
    assert not (inputs / "c.h5").exists() and sha(inputs / "in.h5") == before


def test_to_hdf5_is_refused_while_another_job_writes_the_file(sc, inputs):
    out = inputs / "c.h5"
    C = BlockMatrix.from_numpy(sc, np.ones((4, 4)), 2, 2)
    with output_lock(lock_path_of(out), str(out), job="test"):
        with pytest.raises(OutputNotWritableError, match="being written by another"):
            C.to_hdf5(str(out), "/C")
    assert not out.exists()
    C.to_hdf5(str(out), "/C")
    assert_eq(read(out, "/C"), np.ones((4, 4)))


# --------------------------------------------------------------------- --resume


def test_resume_of_a_finished_run_is_complete_and_exits_0(sc, inputs):
    x, d = read(inputs / "in.h5", "/X"), inputs
    gram_hdf5(sc, str(d / "in.h5"), "/X", str(d / "y.h5"), "/Y")
    matmul_hdf5(sc, (str(d / "in.h5"), "/A"), (str(d / "in.h5"), "/B"), (str(d / "c.h5"), "/C"))
    ys, cs = sha(d / "y.h5"), sha(d / "c.h5")
    no_spark = job_env(JAVA_HOME=NO_JAVA)  # a finished run needs no Spark
    for script, args, out in [
            (GRAM, [f"{d}/in.h5::/X", f"{d}/y.h5::/Y", "--resume"], "y.h5::/Y"),
            (MULTIPLY, [f"{d}/in.h5::/A", f"{d}/in.h5::/B", f"{d}/c.h5::/C", "--block-size",
                        "4", "--resume"], "c.h5::/C")]:
        proc = run_job(script, *args, env=no_spark)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr == "" and len(proc.stdout.strip().splitlines()) == 1, proc.stdout
        assert out in proc.stdout and "is complete" in proc.stdout and "nothing to do" in \
            proc.stdout
    assert sha(d / "y.h5") == ys and sha(d / "c.h5") == cs
    assert_eq(read(d / "y.h5", "/Y"), x @ x.T)


def test_resume_without_an_earlier_run_says_so_and_starts(inputs):
    d = inputs
    request = check_gram_request(str(d / "in.h5"), "/X", str(d / "y.h5"), "/Y", resume=True)
    assert not request.complete
    assert "no earlier run" in request.note and "starting from the beginning" in request.note
    request = check_matmul_request((str(d / "in.h5"), "/A"), (str(d / "in.h5"), "/B"),
                                   str(d / "c.h5"), "/C", resume=True)
    assert "no earlier run" in request.note
    assert not (d / "y.h5").exists() and not (d / "c.h5").exists()


def test_resume_refuses_an_output_another_request_produced(sc, inputs):
    d = inputs
    gram_hdf5(sc, str(d / "in.h5"), "/X", str(d / "y.h5"), "/Y")
    before = sha(d / "y.h5")
    with pytest.raises(OutputExistsError, match="produced by another request.*--overwrite"):
        check_matmul_request((str(d / "in.h5"), "/A"), (str(d / "in.h5"), "/B"),
                             str(d / "y.h5"), "/Y", resume=True)
    with h5py.File(d / "plain.h5", "w") as f:
        f["Y"] = np.zeros((6, 6))
    with pytest.raises(OutputExistsError, match="not produced by a finished run"):
        check_gram_request(str(d / "in.h5"), "/X", str(d / "plain.h5"), "/Y", resume=True)
    assert sha(d / "y.h5") == before


# ------------------------------------------------------------------ disk full (tmpfs)


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs, mounted for the test (as root) and unmounted after it."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): the disk-full "
                    f"tests need root and mount")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill ``folder``'s file system, leaving about ``leave`` bytes free."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free - leave
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while free > 0:
            try:
                f.write(chunk[:free])
                f.flush()
            except OSError:
                break
            free -= len(chunk)
    return filler


def test_to_hdf5_that_cannot_fit_is_refused_before_any_job(sc, small_disk, tmp_path):
    a = np.random.default_rng(1).standard_normal((1100, 1100))  # 9.2 MiB > 8 MiB
    A = BlockMatrix.from_numpy(sc, a, 275, 275)
    jobs = sc.statusTracker().getJobIdsForGroup()
    with pytest.raises(InsufficientSpaceError) as caught:
        A.to_hdf5(str(small_disk / "c.h5"), "/C")
    message = str(caught.value)
    assert str(small_disk) in message and "needs 9.2 MiB" in message, message
    assert "free" in message and "choose another folder" in message
    assert sorted(sc.statusTracker().getJobIdsForGroup()) == sorted(jobs)
    assert os.listdir(small_disk) == []


def test_out_of_core_product_that_cannot_fit_is_refused(sc, small_disk, tmp_path):
    rng = np.random.default_rng(2)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["A"], f["B"] = rng.standard_normal((800, 20)), rng.standard_normal((20, 800))
    before = sha(tmp_path / "in.h5")
    with pytest.raises(InsufficientSpaceError) as caught:
        matmul_hdf5(sc, (str(tmp_path / "in.h5"), "/A"), (str(tmp_path / "in.h5"), "/B"),
                    (str(small_disk / "c.h5"), "/C"))
    message = str(caught.value)
    assert f"output and tile folder '{small_disk}'" in message, message
    assert "needs 9.8 MiB" in message and "its tiles and the output" in message, message
    assert os.listdir(small_disk) == [] and sha(tmp_path / "in.h5") == before


@pytest.mark.spark
@pytest.mark.slow  # two job processes: 36 s on the loaded reference machine
def test_a_run_that_fills_the_disk_exits_2_and_resumes_once_space_is_freed(small_disk,
                                                                        tmp_path):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((600, 400)), rng.standard_normal((400, 600))
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["A"], f["B"] = a, b
    before = sha(tmp_path / "in.h5")
    out = small_disk / "c.h5"
    work_dir, _ = work_paths(str(out), "/C")
    args = [f"{tmp_path}/in.h5::/A", f"{tmp_path}/in.h5::/B", f"{out}::/C", "--block-size",
            "100", "--tile", "150", "--slab", "50", "--master", "local[2]"]
    proc = subprocess.Popen([sys.executable, str(MULTIPLY), *args],
                            env=job_env(BLOCKMATRIX_TEST_PAUSE="gram.slab=0.1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(Path(work_dir).glob("tile-*.npy"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    filler = fill(small_disk)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, (stdout[-2000:], stderr[-3000:])
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("multiply.py: error: "), stderr[-3000:]
    assert f"'{small_disk}' ran out of space" in line and "needed" in line, line
    assert "--resume" in line or "run again" in line, line
    assert not out.exists() and sha(tmp_path / "in.h5") == before  # nothing looks complete
    done = len(list(Path(work_dir).glob("tile-*.npy")))
    assert done >= 2
    filler.unlink()
    proc = run_job(MULTIPLY, *args, "--resume")
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "reused" in proc.stdout
    assert_eq(read(out, "/C"), a @ b)
    assert sha(tmp_path / "in.h5") == before
    assert sorted(os.listdir(small_disk)) == ["c.h5"]


@pytest.mark.spark
def test_a_spill_folder_too_small_for_the_shuffle_is_refused_in_one_line(small_disk,
                                                                          tmp_path):
    """Spark's local folder (SPARK_LOCAL_DIRS) on the 8 MiB tmpfs: the outer multiply's
    shuffle is refused after planning, before any job, naming the folder (inner would read
    both operands from the file and shuffle nothing: outer reads them too, but shuffles its
    partial products)."""
    rng = np.random.default_rng(5)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["A"] = rng.standard_normal((800, 800))
        f["B"] = rng.standard_normal((800, 800))
    before = sha(tmp_path / "in.h5")
    proc = run_job(MULTIPLY, f"{tmp_path}/in.h5::/A", f"{tmp_path}/in.h5::/B",
                   f"{tmp_path}/c.h5::/C", "--block-size", 100, "--strategy", "outer",
                   "--master", "local[2]", env=job_env(SPARK_LOCAL_DIRS=str(small_disk)))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("multiply.py: error: spill folder ") and str(small_disk) in last
    assert "the outer multiply's shuffle needs" in last and "MiB" in last
    assert "Traceback" not in proc.stderr and "at org.apache" not in proc.stderr
    assert not (tmp_path / "c.h5").exists() and sha(tmp_path / "in.h5") == before
