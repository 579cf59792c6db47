"""jobs/multiply.py as users run it: a subprocess on embedded local Spark."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_eq
from jobrun import run_in_process, run_process

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "jobs" / "multiply.py"


def run_job(*args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return run_process(JOB, *args, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("job")
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((130, 90)), rng.standard_normal((90, 70)).astype(np.float32)
    with h5py.File(folder / "in.h5", "w") as f:
        f["A"] = a
        f.create_dataset("B", data=b, chunks=(16, 16))
        f["v"] = np.ones(5)
        f["i"] = np.ones((3, 3), dtype=complex)
    return folder, a, b


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.spark
@pytest.mark.slow
def test_job_writes_the_product_and_reports_spark_figures(inputs):
    folder, a, b = inputs
    out = folder / "out.h5"
    result = run_job(f"{folder}/in.h5::/A", f"{folder}/in.h5::/B", f"{out}::/C",
                     "--block-size", 32, "--master", "local[2]", "--verify",
                     "--strategy", "inner")
    assert result.returncode == 0, result.stderr[-3000:]
    # both operands are HDF5 files: inner's tasks read their blocks, nothing is shuffled
    assert "0 shuffle(s)" in result.stdout and "read from files by tasks" in result.stdout
    assert "shuffle write" in result.stdout and "wrote" in result.stdout
    assert "verified against numpy" in result.stdout and "OK" in result.stdout
    # one line per finished stage, and no console bar (--progress lines, the default)
    stages = [line for line in result.stdout.splitlines() if line.startswith("stage ")]
    assert stages and all(" done (tasks " in line and "ETA" in line for line in stages)
    assert "[Stage" not in result.stderr + result.stdout
    with h5py.File(out, "r") as f:
        assert f["C"].dtype == np.float64
        assert_eq(f["C"][()], a @ b.astype(np.float64))


@pytest.mark.spark
@pytest.mark.slow
def test_job_writes_into_the_input_file(inputs, tmp_path):
    folder, a, _ = inputs
    path = tmp_path / "same.h5"
    with h5py.File(path, "w") as f:
        f["A"] = a
    result = run_job(f"{path}::/A", f"{path}::/A", f"{path}::/AtA", "--block-size", 40)
    assert result.returncode == 2  # A A is undefined for a non-square A
    result = run_job(f"{path}::/A", f"{folder}/in.h5::/B", f"{path}::/AB", "--block-size", 30,
                     "--master", "local[2]")
    assert result.returncode == 0, result.stderr[-3000:]
    with h5py.File(path, "r") as f:
        assert_eq(f["A"][()], a)
        assert set(f) == {"A", "AB"}
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


@pytest.mark.parametrize("make_args, message", [
    (lambda d: [f"{d}/nope.h5::/A", f"{d}/in.h5::/B", f"{d}/o.h5::/C", "--block-size", 8],
     "does not exist"),
    (lambda d: [f"{d}/in.h5::/Z", f"{d}/in.h5::/B", f"{d}/o.h5::/C", "--block-size", 8],
     "'/Z' is not in"),
    (lambda d: [f"{d}/in.h5::/v", f"{d}/in.h5::/B", f"{d}/o.h5::/C", "--block-size", 8],
     "not 2"),
    (lambda d: [f"{d}/in.h5::/i", f"{d}/in.h5::/i", f"{d}/o.h5::/C", "--block-size", 8],
     "not a real number type"),
    (lambda d: [f"{d}/in.h5::/B", f"{d}/in.h5::/B", f"{d}/o.h5::/C", "--block-size", 8],
     r"A.shape[1] (70) != B.shape[0] (90)"),
    (lambda d: [f"{d}/in.h5::/A", f"{d}/in.h5::/B", f"{d}/o.h5::/C", "--block-size", 0],
     "0 is not positive"),
    (lambda d: [f"{d}/in.h5::/A", f"{d}/in.h5::/B", f"{d}/o.h5::/C", "--block-size", "x"],
     "not an integer"),
    (lambda d: [f"{d}/in.h5::/A", f"{d}/in.h5::/B", f"{d}/o.h5::/C", "--block-size", 8,
                "--strategy", "magic"], "invalid choice"),
    (lambda d: [f"{d}/in.h5", f"{d}/in.h5::/B", f"{d}/o.h5::/C", "--block-size", 8],
     "not of the form FILE.h5::/dataset"),
    (lambda d: [f"{d}/in.h5::/A", f"{d}/in.h5::/B", f"{d}/in.h5::/A", "--block-size", 8,
                "--overwrite"], "would destroy an input"),
    (lambda d: [f"{d}/in.h5::/A", f"{d}/in.h5::/B", f"{d}/in.h5::/B", "--block-size", 8],
     "is the input dataset B"),
    (lambda d: [f"{d}/in.h5::/A", f"{d}/in.h5::/B", f"{d}/in.h5::/v", "--block-size", 8],
     "already exists"),
    (lambda d: [f"{d}/in.h5::/A", f"{d}/in.h5::/B", f"{d}/no/such/dir/o.h5::/C",
                "--block-size", 8], "does not exist: create it"),
    (lambda d: [f"{d}/in.h5::/A", f"{d}/in.h5::/B", "--block-size", 8], "required"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(inputs, make_args, message):
    folder, _, _ = inputs
    before = {p.name: digest(p) for p in folder.iterdir()}
    result = run_in_process(JOB, *make_args(folder), cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert {p.name: digest(p) for p in folder.iterdir()} == before


@pytest.mark.spark
@pytest.mark.slow
def test_job_under_spark_submit_with_the_properties_file(inputs):
    folder, a, b = inputs
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    result = subprocess.run(
        [str(spark_submit), "--properties-file", "conf/spark-defaults.conf", "--master",
         "local[2]", str(JOB), f"{folder}/in.h5::/A", f"{folder}/in.h5::/B",
         f"{folder}/submitted.h5::/C", "--block-size", "50"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert " INFO " not in result.stderr  # conf/log4j2.properties keeps Spark quiet
    with h5py.File(folder / "submitted.h5", "r") as f:
        assert_eq(f["C"][()], a @ b.astype(np.float64))
