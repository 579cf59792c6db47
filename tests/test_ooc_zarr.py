"""The out-of-core gram and file-to-file multiply with Zarr inputs and outputs.

Inputs are read by the tasks straight into their slab buffers (transposed ones as stored, BLAS
doing the transpose); Zarr outputs are written by the tasks, chunk-aligned tiles, published
when complete. HDF5 in and Zarr out, Zarr in and HDF5 out, Zarr in and out; local folders and
the loopback S3 server of ``s3server``. Every result is checked against numpy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_eq

zarr = pytest.importorskip("zarr", minversion="3")
pytest.importorskip("fsspec")

from s3server import BUCKET, environment, s3_server  # noqa: E402, F401 (fixture s3_env)

from blockmatrix import BlockMatrix  # noqa: E402
from blockmatrix.errors import (  # noqa: E402
    InputChangedError,
    InvalidParameterError,
    OutputExistsError,
)
from blockmatrix.io import zarr_store as zs  # noqa: E402
from blockmatrix.ooc import (  # noqa: E402
    check_gram_request,
    gram_hdf5,
    make_tiles,
    matmul_hdf5,
)
from blockmatrix.ooc.zarrwork import ZarrWork  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
rng = np.random.default_rng(31)


@pytest.fixture(scope="module")
def workers(sc, s3_env):
    """The S3 environment in Spark's Python workers too (one set of workers for the module)."""
    with environment(sc.environment, s3_env or {}):
        yield


def put_zarr(url: str, a: np.ndarray, chunks) -> str:
    """Store ``a`` at ``url`` with zarr itself; return the ``zarr:URL`` spec."""
    array = zarr.create_array(store=url, shape=a.shape, dtype=a.dtype, chunks=chunks,
                              zarr_format=3, overwrite=True)
    array[...] = a
    return f"zarr:{url}"


def put_h5(path: Path, name: str, a: np.ndarray) -> tuple[str, str]:
    with h5py.File(path, "a") as f:
        f.create_dataset(name, data=a, chunks=(16, 32))
    return str(path), name


def read_zarr(url: str) -> np.ndarray:
    return zarr.open_array(store=url, mode="r")[...]


def read_h5(path, name) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][...]


def check_published(url: str, tile: int | None) -> None:
    """The output is a complete array chunked so that every tile is whole chunks, no leftovers."""
    array = zarr.open_array(store=url, mode="r")
    attrs = array.attrs.asdict()
    assert "blockmatrix_incomplete" not in attrs and "blockmatrix_request" in attrs
    if tile is not None:
        assert tile % array.chunks[0] == 0 and tile % array.chunks[1] == 0, (array.chunks, tile)
    loc = zs.parse_url(url)
    fs = loc.filesystem()
    fs.invalidate_cache()
    for left in (loc.staging, ZarrWork(loc).location):
        assert not fs.exists(left.path), left


# ------------------------------------------------------------------------- local folders

@pytest.mark.parametrize("x_in, y_out, dtype", [("zarr", "zarr", np.float64),
                                                ("hdf5", "zarr", np.float32),
                                                ("zarr", "hdf5", np.float32)])
def test_gram_against_numpy(sc, workers, tmp_path, x_in, y_out, dtype):
    x = rng.standard_normal((130, 257)).astype(dtype)  # ragged tiles and slabs
    src = (put_zarr(str(tmp_path / "x.zarr"), x, (30, 70)), None) if x_in == "zarr" \
        else put_h5(tmp_path / "x.h5", "/X", x)
    out = (f"zarr:{tmp_path / 'y.zarr'}", None) if y_out == "zarr" \
        else (str(tmp_path / "y.h5"), "/Y")
    plans = []
    result = gram_hdf5(sc, *src, *out, tile=50, slab=60, on_plan=plans.append)
    assert len(result.computed) == 6 and not result.reused
    if x_in == "zarr":
        assert plans[0].slab == 70  # a whole chunk of X along k per slab
    y = read_zarr(str(tmp_path / "y.zarr")) if y_out == "zarr" else read_h5(*out)
    assert y.dtype == dtype
    assert_eq(y, x.astype(np.float64) @ x.T.astype(np.float64), dtype)
    if y_out == "zarr":
        check_published(str(tmp_path / "y.zarr"), 50)


@pytest.mark.parametrize("a_in, b_in, c_out, dtype", [
    ("zarr^T", "hdf5", "zarr", np.float64),
    ("hdf5", "zarr^T", "hdf5", np.float32),
    ("zarr", "zarr", "zarr", np.float32),
])
def test_matmul_against_numpy(sc, workers, tmp_path, a_in, b_in, c_out, dtype):
    a = rng.standard_normal((90, 130)).astype(dtype)
    b = rng.standard_normal((130, 70)).astype(dtype)

    def operand(name, m, kind):
        if kind == "hdf5":
            return put_h5(tmp_path / f"{name}.h5", f"/{name}", m)
        if kind == "zarr^T":  # stored transposed, read transposed
            return put_zarr(str(tmp_path / f"{name}.zarr"), np.ascontiguousarray(m.T),
                            (25, 40)), True
        return put_zarr(str(tmp_path / f"{name}.zarr"), m, (25, 40))

    c = f"zarr:{tmp_path / 'c.zarr'}" if c_out == "zarr" else (str(tmp_path / "c.h5"), "/C")
    result = matmul_hdf5(sc, operand("A", a, a_in), operand("B", b, b_in), c, tile=32)
    assert len(result.computed) == 9
    got = read_zarr(str(tmp_path / "c.zarr")) if c_out == "zarr" else read_h5(*c)
    assert got.dtype == dtype
    assert_eq(got, a.astype(np.float64) @ b.astype(np.float64), dtype)
    if c_out == "zarr":
        check_published(str(tmp_path / "c.zarr"), 32)


def test_the_ooc_strategy_reads_zarr_and_to_zarr_goes_file_to_file(sc, workers, tmp_path):
    a, b = rng.standard_normal((96, 80)), rng.standard_normal((64, 80))
    put_zarr(str(tmp_path / "a.zarr"), a, (32, 40))
    put_zarr(str(tmp_path / "b.zarr"), b, (32, 40))
    A = BlockMatrix.from_zarr(sc, str(tmp_path / "a.zarr"), 32, 32)
    B = BlockMatrix.from_zarr(sc, str(tmp_path / "b.zarr"), 32, 32)
    product = A.multiply(B.T, strategy="ooc")
    assert product.plan.strategy == "ooc" and not product.plan.unavailable
    assert_eq(product.to_numpy(), a @ b.T)
    out = str(tmp_path / "c.zarr")
    product.to_zarr(out)
    assert_eq(read_zarr(out), a @ b.T)
    # Written by matmul_hdf5's tasks (its request recorded), not block by block.
    assert json.loads(zarr.open_array(store=out).attrs["blockmatrix_request"])["kind"] == \
        "matmul"
    check_published(out, None)
    product.to_hdf5(str(tmp_path / "c.h5"), "/C")  # Zarr in, the single HDF5 writer out
    assert_eq(read_h5(tmp_path / "c.h5", "/C"), a @ b.T)


def test_a_changed_input_is_refused_before_any_task(sc, workers, tmp_path):
    x = rng.standard_normal((40, 50))
    spec = put_zarr(str(tmp_path / "x.zarr"), x, (20, 25))
    out = tmp_path / "y.zarr"
    request = check_gram_request(spec, None, f"zarr:{out}", None)
    time.sleep(0.01)  # a new modification time for the rewritten metadata
    put_zarr(str(tmp_path / "x.zarr"), 2 * x, (20, 25))
    with pytest.raises(InputChangedError, match="changed since it was opened"):
        gram_hdf5(sc, spec, None, f"zarr:{out}", None, request=request)
    assert not out.exists()
    assert not os.path.exists(zs.parse_url(str(out)).staging.path)
    with pytest.raises(InvalidParameterError, match="is the input X"):
        check_gram_request(spec, None, spec, None)


# ----------------------------------------------------------------------- object storage

def test_gram_and_matmul_on_s3(sc, workers, s3_env):
    if s3_env is None:
        pytest.skip("s3fs and moto[server] (the test extra) are not installed")
    prefix = f"s3://{BUCKET}/ooc"
    x = rng.standard_normal((70, 90))
    spec = put_zarr(f"{prefix}/x.zarr", x, (20, 30))
    gram_hdf5(sc, spec, None, f"zarr:{prefix}/y.zarr", None, tile=30)
    assert_eq(read_zarr(f"{prefix}/y.zarr"), x @ x.T)
    check_published(f"{prefix}/y.zarr", 30)
    b = rng.standard_normal((90, 50))
    b_spec = put_zarr(f"{prefix}/b.zarr", b, (30, 25))
    result = matmul_hdf5(sc, spec, b_spec, f"zarr:{prefix}/c.zarr", tile=32)
    assert len(result.computed) == 6
    assert_eq(read_zarr(f"{prefix}/c.zarr"), x @ b)
    check_published(f"{prefix}/c.zarr", 32)
    with pytest.raises(OutputExistsError, match="already a Zarr array"):
        matmul_hdf5(sc, spec, b_spec, f"zarr:{prefix}/c.zarr", tile=32)


# ------------------------------------------------------------------ killed, then resumed

KILLED_RUN = textwrap.dedent("""
    import sys
    from blockmatrix.ooc import gram_hdf5
    from blockmatrix.session import spark_context
    sc = spark_context("local[2]", app_name="killed",
                       extra_conf={"spark.ui.showConsoleProgress": "false"})
    gram_hdf5(sc, sys.argv[1], None, sys.argv[2], None, tile=30, slab=40,
              progress_interval=0.1)
""")


@pytest.mark.spark
def test_killed_then_resumed_computes_only_the_unfinished_tiles(sc, workers, tmp_path):
    x = rng.standard_normal((150, 200))
    spec = put_zarr(str(tmp_path / "x.zarr"), x, (30, 40))
    out = tmp_path / "y.zarr"
    work = ZarrWork(zs.parse_url(str(out)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), BLOCKMATRIX_TEST_PAUSE="gram.slab=0.15")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, spec, f"zarr:{out}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=ROOT)
    deadline = time.monotonic() + 180
    recorded: list = []
    while len(recorded) < 2:  # the driver has recorded finished tiles in the resume state
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
        recorded = (work.read_state() or {}).get("tiles_done", [])
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the job: driver, JVM and workers
    proc.communicate()
    marked = work.finished(make_tiles(150, 30))
    assert {tuple(t) for t in recorded} <= marked and len(marked) < 15
    # Nothing that looks like an array at the target: the tiles are in the staging array.
    assert not out.exists() and os.path.isdir(zs.parse_url(str(out)).staging.path)
    with pytest.raises(OutputExistsError, match="--resume"):
        gram_hdf5(sc, spec, None, f"zarr:{out}", None)
    state = work.read_state()
    result = gram_hdf5(sc, spec, None, f"zarr:{out}", None, resume=True)
    assert set(result.reused) == marked
    assert set(result.computed) == {(t.i, t.j) for t in result.plan.tiles} - marked
    assert_eq(read_zarr(str(out)), x @ x.T)
    check_published(str(out), 30)
    # Killed after its publication, before its work was removed: resuming finds it complete.
    work.reset()
    work.write_state(state)
    again = gram_hdf5(sc, spec, None, f"zarr:{out}", None, resume=True)
    assert again.complete and "nothing to do" in str(again)
    check_published(str(out), 30)
