"""The jobs' locations beside ``FILE.h5::/dataset``: ``parquet:PATH`` (and the published
Parquet writer under it) and ``zarr:URL``, against numpy and scipy."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_eq
from jobrun import run_in_process, run_process
from s3server import BUCKET, s3_server  # noqa: F401 (the s3_env fixture)

from blockmatrix import BlockMatrix
from blockmatrix.cli import locations
from blockmatrix.errors import InvalidInputError, MissingColumnError, OutputExistsError
from blockmatrix.io import parquet

REPO = Path(__file__).resolve().parent.parent
MULTIPLY, GRAM = REPO / "jobs" / "multiply.py", REPO / "jobs" / "gram.py"


@pytest.fixture(scope="module")
def spark(sc):
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory):
    """A sparse A (coordinates, last two rows zero), a dense X (rows) in Parquet; B in HDF5."""
    folder = tmp_path_factory.mktemp("tables")
    sc = spark.sparkContext
    a = sp.random(40, 30, density=0.1, random_state=5, format="lil")
    a[38:] = 0  # trailing zero rows: the recorded shape keeps them
    a = a.tocsr()
    a.eliminate_zeros()
    b = np.random.default_rng(6).standard_normal((30, 20))
    x = np.random.default_rng(7).standard_normal((25, 18)).astype(np.float32)
    BlockMatrix.from_numpy(sc, a, 16, 16).to_coordinates().write.parquet(str(folder / "a"))
    BlockMatrix.from_numpy(sc, x, 16, 16).to_rows().write.parquet(str(folder / "x"))
    with h5py.File(folder / "b.h5", "w") as f:
        f["B"] = b
    return folder, a, b, x


def read_coordinates(spark, path) -> np.ndarray:
    return BlockMatrix.from_coordinates(spark.read.parquet(str(path))).to_numpy()


def run_job(job: Path, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return run_process(job, *args, env=env, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_multiply_job_reads_and_writes_parquet(spark, tables):
    folder, a, b, _ = tables
    out = folder / "c"
    result = run_job(MULTIPLY, f"parquet:{folder}/a", f"{folder}/b.h5::/B", f"parquet:{out}",
                     "--block-size", "16", "--master", "local[2]", "--verify")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote a table of coordinates (i, j, v) of C (40x20)" in result.stdout
    assert "verified against numpy" in result.stdout and "OK" in result.stdout
    c = read_coordinates(spark, out)
    assert c.shape == (40, 20)
    assert_eq(c, a @ b)
    assert not [p for p in os.listdir(folder) if "staging" in p or "lock" in p]


@pytest.mark.slow
def test_gram_job_reads_rows_from_parquet_and_writes_hdf5(tables):
    folder, _, _, x = tables
    result = run_job(GRAM, f"parquet:{folder}/x", f"{folder}/y.h5::/Y", "--block-size", "8",
                     "--master", "local[2]")
    assert result.returncode == 0, result.stderr[-3000:]
    with h5py.File(folder / "y.h5", "r") as f:
        y = f["Y"][()]
    assert y.dtype == np.float64  # to_rows wrote pyspark.ml vectors: doubles
    xd = x.astype(np.float64)
    assert_eq(y, xd @ xd.T)


@pytest.mark.slow
def test_multiply_job_reads_and_writes_zarr(tables):
    zarr = pytest.importorskip("zarr")
    folder, _, b, _ = tables
    a = np.random.default_rng(8).standard_normal((26, 30)).astype(np.float32)
    zarr.create_array(str(folder / "a.zarr"), shape=a.shape, chunks=(10, 10),
                      dtype=a.dtype)[...] = a
    result = run_job(MULTIPLY, f"zarr:{folder}/a.zarr", f"{folder}/b.h5::/B",
                     f"zarr:{folder}/c.zarr", "--block-size", "10", "--master", "local[2]",
                     "--verify")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "strategy: ooc, file to file" in result.stdout  # Zarr goes out of core too
    assert "verified against numpy" in result.stdout and "OK" in result.stdout
    c = zarr.open_array(str(folder / "c.zarr"), mode="r")
    assert c.shape == (26, 20) and c.dtype == np.float64
    assert_eq(c[...], a.astype(np.float64) @ b)


@pytest.mark.spark
@pytest.mark.slow
def test_gram_job_goes_out_of_core_on_object_storage(s3_env, tmp_path):
    """zarr:s3:// in and out; the credentials reach the job through its environment only."""
    if s3_env is None:
        pytest.skip("the test extra's s3fs and moto are not installed")
    zarr = pytest.importorskip("zarr")
    x = np.random.default_rng(9).standard_normal((70, 150))
    zarr.create_array(f"s3://{BUCKET}/jobs/x.zarr", shape=x.shape, chunks=(35, 50),
                      dtype=x.dtype)[...] = x
    env = dict(os.environ, PYTHONUNBUFFERED="1", **s3_env)
    result = run_process(GRAM, f"zarr:s3://{BUCKET}/jobs/x.zarr",
                         f"zarr:s3://{BUCKET}/jobs/y.zarr", "--tile", "40", "--master",
                         "local[2]", env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "testing" not in result.stdout + result.stderr  # no credential in any line
    y = zarr.open_array(f"s3://{BUCKET}/jobs/y.zarr", mode="r")
    assert_eq(y[...], x @ x.T)


GRAM_REFUSALS = [
    (["parquet:{d}/x", "parquet:{d}/x", "--overwrite"], "is the input", "another output"),
    (["parquet:{d}/x", "{d}/y2.h5::/Y", "--tile", "4"], "--tile apply out of core only",
     "drop --tile"),
    (["{d}/b.h5::/B", "{d}/y2.h5::/Y", "--block-size", "4"], "--block-size (4) applies to a "
     "Parquet input or output", "drop --block-size"),
    (["parquet:{d}/x", "parquet:{d}/a"], "'{d}/a' already exists", "--overwrite"),
    (["parquet:{d}/nope", "{d}/y2.h5::/Y"], "'{d}/nope' does not exist", "check the path"),
]


@pytest.mark.parametrize("args, problem, fix", GRAM_REFUSALS)
def test_gram_job_refuses_before_spark(tables, args, problem, fix):
    folder = tables[0]
    before = sorted(p.name for p in folder.iterdir())
    result = run_in_process(GRAM, *(arg.format(d=folder) for arg in args), cwd=REPO)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and problem.format(d=folder) in line and fix in line, line
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_table_without_matrix_columns_is_refused_by_name(sc, spark, tmp_path):
    spark.createDataFrame([(0, 1.0)], ["row", "value"]).write.parquet(str(tmp_path / "t"))
    with pytest.raises(MissingColumnError, match=r"columns \['row', 'value'\].*coordinates i, "
                                                 r"j, v .*rename its columns"):
        locations.parse(f"parquet:{tmp_path}/t", "A").read(sc, 4, 4)


def test_a_file_that_is_not_parquet_is_refused_in_one_line(sc, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "part-0.parquet").write_bytes(b"not parquet at all")
    location = locations.parse(f"parquet:{tmp_path}/t", "A")
    location.inspect("A")  # it looks like a table until Spark reads it
    with pytest.raises(InvalidInputError, match=r"t cannot be read as Parquet \(.*Could not "
                                                r"read footer.*give a table written by") as caught:
        location.read(sc, 4, 4)
    assert "\n" not in str(caught.value)


def test_a_failed_write_publishes_nothing_and_keeps_the_old_table(sc, spark, tmp_path):
    path = str(tmp_path / "c")
    old = BlockMatrix.from_numpy(sc, np.eye(3), 2, 2)
    parquet.write_published(old.to_coordinates(), path)
    with pytest.raises(OutputExistsError, match="already exists"):
        parquet.write_published(old.to_coordinates(), path)

    def fail(row):
        raise ValueError("a task failed")

    failing = spark.createDataFrame(sc.parallelize([1, 2], 2).map(fail), "i long")
    with pytest.raises(Exception, match="a task failed"):
        parquet.write_published(failing, path, overwrite=True)
    assert_eq(read_coordinates(spark, path), np.eye(3))
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no staging folder, no lock left

    new = BlockMatrix.from_numpy(sc, 2 * np.ones((4, 2)), 2, 2)
    parquet.write_published(new.to_coordinates(), path, overwrite=True)
    assert_eq(read_coordinates(spark, path), 2 * np.ones((4, 2)))
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_an_interrupted_writers_leftovers_are_removed_by_the_next(sc, tmp_path):
    path = str(tmp_path / "c")
    os.makedirs(parquet.staging_path(path))
    Path(parquet.staging_path(path), "part-0.parquet").write_bytes(b"half")
    parquet.write_published(BlockMatrix.from_numpy(sc, np.ones((2, 2)), 2, 2).to_coordinates(),
                            path)
    assert sorted(os.listdir(tmp_path)) == ["c"]
