"""jobs/make_sample.py: a seeded random matrix written block by block; one-line refusals."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from jobrun import run_in_process, run_process

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "make_sample.py"
sys.path.insert(0, str(ROOT / "jobs"))

import make_sample  # noqa: E402


def run_job(*args):
    return run_process(JOB, *args, timeout=120)


def read(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()], f[name].chunks


def test_writes_a_seeded_matrix_whatever_the_layout(tmp_path):
    proc = run_job(f"{tmp_path}/a.h5::/A", "--rows", 1100, "--cols", 9000, "--seed", 3)
    assert proc.returncode == 0, proc.stderr
    assert "1100 x 9000 float64" in proc.stdout
    contiguous, chunks = read(tmp_path / "a.h5", "/A")
    assert contiguous.shape == (1100, 9000) and contiguous.dtype == np.float64
    assert chunks is None
    assert abs(contiguous.mean()) < 0.01 and 0.98 < contiguous.std() < 1.02
    # The same seed in chunked storage gives the same numbers; another seed does not.
    assert main(f"{tmp_path}/b.h5::/g/B", "--rows", 1100, "--cols", 9000, "--seed", 3,
                "--chunks", "100,1000") == 0
    chunked, chunks = read(tmp_path / "b.h5", "/g/B")
    assert chunks == (100, 1000) and np.array_equal(chunked, contiguous)
    assert main(f"{tmp_path}/b.h5::/C", "--rows", 1100, "--cols", 9000, "--seed", 4) == 0
    assert not np.array_equal(read(tmp_path / "b.h5", "/C")[0], contiguous)


def main(*args):
    return make_sample.main([str(a) for a in args])


def test_float32_density_and_overwrite(tmp_path):
    target = f"{tmp_path}/s.h5::/S"
    assert main(target, "--rows", 300, "--cols", 200, "--dtype", "float32",
                "--density", "0.1") == 0
    sparse, _ = read(tmp_path / "s.h5", "/S")
    assert sparse.dtype == np.float32
    assert 0.07 < np.count_nonzero(sparse) / sparse.size < 0.13
    assert main(target, "--rows", 5, "--cols", 4, "--overwrite") == 0
    assert read(tmp_path / "s.h5", "/S")[0].shape == (5, 4)


def test_writes_a_zarr_array_with_the_same_numbers(tmp_path):
    zarr = pytest.importorskip("zarr")
    assert main(f"{tmp_path}/a.h5::/A", "--rows", 1100, "--cols", 1500, "--seed", 3) == 0
    assert main(f"zarr:{tmp_path}/a.zarr", "--rows", 1100, "--cols", 1500, "--seed", 3) == 0
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    assert z.chunks == (1024, 1024) and z.attrs["blockmatrix_producer"] == \
        "blockmatrix make_sample"
    assert np.array_equal(z[...], read(tmp_path / "a.h5", "/A")[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "a.zarr"]  # nothing staged


def test_blocks_are_reproducible():
    a = make_sample.sample_block(9, 1, 2, (3, 4), "float64", 0.5)
    b = make_sample.sample_block(9, 1, 2, (3, 4), "float64", 0.5)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("args,match", [
    (["{d}/e.h5::/E", "--rows", "0", "--cols", "3"], "not positive"),
    (["{d}/e.h5::/E", "--rows", "2"], "--cols"),
    (["{d}/e.h5::/E", "--rows", "2", "--cols", "3", "--density", "0"], "(0, 1]"),
    (["{d}/e.h5::/E", "--rows", "2", "--cols", "3", "--density", "x"], "not a number"),
    (["{d}/e.h5::/E", "--rows", "2", "--cols", "3", "--chunks", "2"], "ROWS,COLS"),
    (["{d}/e.h5::/E", "--rows", "2", "--cols", "3", "--chunks", "4,1"], "exceeds"),
    (["{d}/e.h5::/E", "--rows", "2", "--cols", "3", "--dtype", "int8"], "invalid choice"),
    (["{d}/old.h5::/A", "--rows", "2", "--cols", "3"], "already exists"),
    (["{d}/nodir/e.h5::/E", "--rows", "2", "--cols", "3"], "does not exist"),
    (["{d}/e.h5", "--rows", "2", "--cols", "3"], "FILE.h5::/dataset"),
    (["parquet:{d}/e.parquet", "--rows", "2", "--cols", "3"], "writes an HDF5 dataset"),
    (["zarr:{d}/nodir/e.zarr", "--rows", "2", "--cols", "3"], "does not exist"),
])
def test_refuses_with_one_line_and_writes_nothing(tmp_path, args, match):
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f["A"] = np.ones((2, 2))
    before = hashlib.sha256((tmp_path / "old.h5").read_bytes()).hexdigest()
    proc = run_in_process(JOB, *(a.format(d=tmp_path) for a in args))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.h5"]
    assert hashlib.sha256((tmp_path / "old.h5").read_bytes()).hexdigest() == before
