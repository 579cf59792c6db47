"""Zarr in and out, on a local folder and on a real S3-protocol server on loopback.

The S3 store is moto's server mode (``ThreadedMotoServer`` on 127.0.0.1 and a free port) read
and written through s3fs, started and stopped by a module fixture. Its endpoint and
credentials reach the driver and the Python workers through environment variables only
(``os.environ`` and the SparkContext's ``environment``, which Spark hands to the workers), as a
user's would. Every result is checked against numpy; reads in tasks are checked by the bytes
the tasks counted (``file_read_bytes``) against the plan.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_eq

zarr = pytest.importorskip("zarr", minversion="3")
pytest.importorskip("fsspec")

from s3server import BUCKET, environment, s3_server  # noqa: E402

from blockmatrix import BlockMatrix  # noqa: E402
from blockmatrix.errors import (  # noqa: E402
    InputChangedError,
    InputNotFoundError,
    InsufficientSpaceError,
    InvalidBlockError,
    InvalidInputError,
    InvalidParameterError,
    MissingDependencyError,
    OutputExistsError,
    OutputNotWritableError,
)
from blockmatrix.io import zarr_store as zs  # noqa: E402
from blockmatrix.io.lock import lock_path_of, output_lock  # noqa: E402
from blockmatrix.metrics import record  # noqa: E402

s3_env = s3_server  # the module's fixture (one server for this module)

ROOT = Path(__file__).resolve().parent.parent
rng = np.random.default_rng(13)


# ---------------------------------------------------------------------------- stores


@pytest.fixture(scope="module")
def workers(sc, s3_env):
    """The S3 environment in Spark's Python workers too (the SparkContext's ``environment``,
    which Spark hands to the workers it starts).

    Requested by every Spark test of the module, local stores included, so that all its jobs
    run in one set of workers (Spark starts new ones for a new environment, and each imports
    zarr again).
    """
    with environment(sc.environment, s3_env or {}):
        yield


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, workers, s3_env):
    """A folder (or prefix) to put arrays in: ``store("x")`` is the URL of array x."""
    if request.param == "local":
        return lambda name: str(tmp_path / f"{name}.zarr")
    if s3_env is None:
        pytest.skip("s3fs and moto[server] (the test extra) are not installed")
    prefix = f"s3://{BUCKET}/{request.node.name.replace('[', '-').strip(']')}"
    return lambda name: f"{prefix}/{name}.zarr"


def put(url: str, a: np.ndarray, chunks="auto") -> str:
    """Store ``a`` as a Zarr array at ``url`` (written by zarr itself, not by blockmatrix)."""
    array = zarr.create_array(store=url, shape=a.shape, dtype=a.dtype, chunks=chunks,
                              zarr_format=3, overwrite=True)
    array[...] = a
    return url


def stored_objects(url: str) -> list[str]:
    loc = zs.parse_url(url)
    fs = loc.filesystem()
    fs.invalidate_cache()
    return sorted(p[len(loc.path):] for p in fs.find(loc.path)) if fs.exists(loc.path) else []


# ---------------------------------------------------------------------------- reading and writing


@pytest.mark.parametrize(("store", "dtype"), [("local", "float64"), ("s3", "float32")],
                         indirect=["store"])
def test_from_zarr_to_zarr_round_trip(sc, store, dtype):
    """Ragged edge blocks, chunks that do not match the blocks on input; to_zarr publishes."""
    a = rng.standard_normal((23, 17)).astype(dtype)
    url = put(store("a"), a, chunks=(5, 4))
    A = BlockMatrix.from_zarr(sc, url, 6, 5, num_partitions=3)
    assert A.dtype == np.dtype(dtype) and A.layout().source_kind == "file"
    out = store("out")
    assert A.to_zarr(out) == 4 * 4
    back = zarr.open_array(out, mode="r")
    assert back.dtype == np.dtype(dtype) and back.chunks == (6, 5)
    np.testing.assert_array_equal(back[...], a)
    attrs = back.attrs.asdict()
    assert attrs[zs.SHAPE_ATTR] == [23, 17] and attrs[zs.DTYPE_ATTR] == np.dtype(dtype).str
    assert attrs[zs.PRODUCER_ATTR].startswith("blockmatrix BlockMatrix.to_zarr")
    assert zs.INCOMPLETE_ATTR not in attrs
    assert stored_objects(zs.parse_url(out).staging.url) == []  # staging removed
    np.testing.assert_array_equal(BlockMatrix.from_zarr(sc, out, 6, 5).T.to_numpy(), a.T)


@pytest.mark.parametrize(("store", "strategy"),
                         [("local", "inner"), ("local", "broadcast"), ("s3", "broadcast")],
                         indirect=["store"])
def test_multiply_reads_zarr_blocks_in_the_tasks(sc, store, strategy):
    a, b = rng.standard_normal((30, 20)), rng.standard_normal((20, 14))
    A = BlockMatrix.from_numpy(sc, a, 8, 6, num_partitions=3)
    # B read transposed from its transpose's array (the source's transpose), as a user's X.T.
    B = BlockMatrix.from_zarr(sc, put(store("bt"), np.ascontiguousarray(b.T)), 5, 6).T
    with record(sc, f"zarr {strategy}") as m:
        C = A.multiply(B, strategy=strategy)
        result = C.to_numpy()
    assert_eq(result, a @ b)
    assert C.plan.read_bytes > 0 and m.file_read_bytes == C.plan.read_bytes
    if strategy == "broadcast":
        assert C.plan.delivery == "file" and C.plan.broadcast_bytes == 0
        assert m.shuffle_stages == C.plan.num_shuffles  # partial sums only, never B
    else:  # only A's blocks are shuffled: B's are read where they are needed
        spark_only = A.multiply(BlockMatrix.from_numpy(sc, b, 6, 5), strategy="inner").plan
        assert C.plan.shuffles[0].records < spark_only.shuffles[0].records
        assert m.shuffle_stages == 1 and m.shuffle_write_bytes < spark_only.shuffle_bytes
    out = store("c")
    C.to_zarr(out, chunks=(4, 5))  # chunks dividing the 8x5 blocks
    assert zarr.open_array(out, mode="r").chunks == (4, 5)
    assert_eq(BlockMatrix.from_zarr(sc, out, 8, 5).to_numpy(), a @ b)


def test_both_operands_in_zarr_multiply_without_a_shuffle(sc, tmp_path, workers):
    a, b = rng.standard_normal((16, 12)), rng.standard_normal((12, 10))
    A = BlockMatrix.from_zarr(sc, put(str(tmp_path / "a.zarr"), a), 4, 4)
    B = BlockMatrix.from_zarr(sc, put(str(tmp_path / "b.zarr"), b), 4, 4)
    with record(sc, "zarr inner, both in files") as m:
        C = A.multiply(B, strategy="inner")
        result = C.to_numpy()
    assert_eq(result, a @ b)
    assert C.plan.num_shuffles == m.shuffle_stages == 0
    assert m.file_read_bytes == C.plan.read_bytes > 0
    # The out-of-core product reads Zarr too (tests/test_ooc_zarr.py).
    assert_eq(A.multiply(B, strategy="ooc").to_numpy(), a @ b)


def test_overwrite_is_refused_and_leaves_the_old_array(sc, store):
    old = rng.standard_normal((9, 7))
    new = np.zeros((9, 7))
    new[4:, 4:] = rng.standard_normal((5, 3))  # three of four blocks absent: zero, not stored
    url = store("c")
    BlockMatrix.from_numpy(sc, old, 4, 4).to_zarr(url)
    before = stored_objects(url)
    X = BlockMatrix.from_zarr(sc, url, 4, 4)
    with pytest.raises(OutputExistsError, match=r"url .*c\.zarr is already a Zarr array.*"
                                                r"overwrite=True"):
        BlockMatrix.from_numpy(sc, new, 4, 4).to_zarr(url)
    assert stored_objects(url) == before
    np.testing.assert_array_equal(zarr.open_array(url, mode="r")[...], old)
    BlockMatrix.from_numpy(sc, sp.csr_matrix(new), 4, 4).to_zarr(url, overwrite=True)
    # Sparse blocks are written densely; the old array's chunks are gone: those the new one
    # leaves at zero show zero.
    np.testing.assert_array_equal(zarr.open_array(url, mode="r")[...], new)
    # A matrix read from the old array refuses to run on the new one.
    with pytest.raises(InputChangedError, match="rewritten since BlockMatrix.from_zarr"):
        X.multiply(BlockMatrix.from_numpy(sc, np.eye(7), 4, 4), strategy="broadcast")


def test_a_failed_write_leaves_no_array(sc, store):
    url = store("c")
    rdd = sc.parallelize([((0, 0), np.ones((4, 4))), ((1, 0), np.ones((3, 4)))], 2)
    with pytest.raises(InvalidBlockError, match=r"block \(1, 0\) has shape \(3, 4\).*"
                                                r"expected \(4, 4\).*nothing was published"):
        BlockMatrix.from_blocks(rdd, (8, 4), 4, 4).to_zarr(url)
    twice = sc.parallelize([((0, 0), np.ones((4, 4))), ((0, 0), np.ones((4, 4)))], 2)
    with pytest.raises(InvalidBlockError, match=r"occur more than once, e.g. \(0, 0\)"):
        BlockMatrix.from_blocks(twice, (4, 4), 4, 4).to_zarr(url)
    assert stored_objects(url) == []
    assert stored_objects(zs.parse_url(url).staging.url) == []


def kill_during_publish(url: str, env: dict, ready) -> None:
    """Run a staged write in a process (no Spark) and kill it in its publication."""
    script = (
        "import sys, numpy as np\n"
        "from blockmatrix.io import zarr_store as zs\n"
        "a = np.full((8, 6), 3.0)\n"
        "with zs.staged_output(sys.argv[1], a.shape, a.dtype, (2, 3), overwrite=True) as st:\n"
        "    zs.write_tile(zs.open_array(st.staging_url, 'r+'), 0, 0, a)\n"
        "    st.publish()\n")
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT),
                 "BLOCKMATRIX_TEST_PAUSE": "zarr.publish=60"}
    proc = subprocess.Popen([sys.executable, "-c", script, url], env=child_env,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the writer never reached its publication"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_a_killed_publication_leaves_no_array_and_the_next_write_cleans(sc, store, s3_env):
    """Killed between its steps: locally the old array moved aside and the new one staged;
    on S3 every chunk copied but not zarr.json. Neither looks like an array at the target."""
    url = store("c")
    BlockMatrix.from_numpy(sc, np.ones((8, 6)), 4, 3).to_zarr(url)
    loc = zs.parse_url(url)
    env = s3_env if not loc.local else {}
    if loc.local:
        ready = lambda: os.path.isdir(loc.sibling(zs.RETIRED_TAG).path)  # noqa: E731
    else:
        ready = lambda: "/c/3/1" in stored_objects(url)  # noqa: E731  (2x3 chunks: new)
    kill_during_publish(url, env, ready)
    with pytest.raises(InputNotFoundError, match="is not a Zarr array|does not exist"):
        zs.inspect_input(url)
    with pytest.raises((FileNotFoundError, ValueError)):
        zarr.open_array(url, mode="r")
    assert stored_objects(loc.staging.url)  # the staged array is left...
    new = rng.standard_normal((8, 6))
    BlockMatrix.from_numpy(sc, new, 4, 3).to_zarr(url)  # ...and the next write cleans it
    np.testing.assert_array_equal(zarr.open_array(url, mode="r")[...], new)
    assert stored_objects(loc.staging.url) == []
    assert zs.PUBLISHING_KEY not in "".join(stored_objects(url))
    assert not os.path.exists(loc.sibling(zs.RETIRED_TAG).path)


def test_the_staged_writer_resumes_and_regions_are_read_into_buffers(tmp_path):
    """The module's own API, as the out-of-core engine uses it (no Spark): tiles written
    into the staging array, kept by a resumed run, published; regions read into a buffer."""
    url, a = str(tmp_path / "y.zarr"), rng.standard_normal((10, 8))
    with pytest.raises(RuntimeError, match="interrupted"), \
            zs.staged_output(url, a.shape, a.dtype, (5, 4), resume=True) as staged:
        zs.write_tile(zs.open_array(staged.staging_url, "r+"), 0, 0, a[:5])
        raise RuntimeError("interrupted")
    assert not os.path.exists(url)
    with zs.staged_output(url, a.shape, a.dtype, (5, 4), resume=True) as staged:
        staging = zs.open_array(staged.staging_url, "r+")
        np.testing.assert_array_equal(staging[:5], a[:5])  # the first run's tile is kept
        zs.write_tile(staging, 5, 0, a[5:])
        staged.publish()
    out = np.empty((3, 4))
    assert zs.read_region(zs.open_array(url), slice(4, 7), slice(2, 6), out) is out
    np.testing.assert_array_equal(out, a[4:7, 2:6])
    assert zs.inspect_input(url) == ((10, 8), np.dtype("float64"), (5, 4))
    with pytest.raises(RuntimeError), \
            zs.staged_output(url, a.shape, a.dtype, (5, 4), overwrite=True) as staged:
        zs.write_tile(zs.open_array(staged.staging_url, "r+"), 0, 0, np.zeros((5, 8)))
        raise RuntimeError("interrupted")
    assert not os.path.exists(zs.parse_url(url).staging.path)  # no resume: removed
    np.testing.assert_array_equal(zarr.open_array(url, mode="r")[...], a)
    with output_lock(lock_path_of(url), url), pytest.raises(
            OutputNotWritableError, match=r"y\.zarr' is being written by another to_zarr job"):
        with zs.staged_output(url, a.shape, a.dtype, (5, 4), overwrite=True):
            pass


# ---------------------------------------------------------------------------- refusals


def test_inputs_that_are_not_2d_real_zarr3_arrays_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    put(str(tmp_path / "three.zarr"), np.zeros((2, 2, 2)))
    put(str(tmp_path / "complex.zarr"), np.zeros((2, 2), complex))
    zarr.create_group(store=str(tmp_path / "group.zarr"), zarr_format=3)
    zarr.create_array(store=str(tmp_path / "v2.zarr"), shape=(2, 2), dtype="f8", zarr_format=2)
    cases = {
        "missing.zarr": (InputNotFoundError, r"url .*missing\.zarr does not exist: check"),
        "empty": (InputNotFoundError, r"url .*empty is not a Zarr array \(no zarr.json there\)"),
        "three.zarr": (InvalidInputError, r"has 3 dimensions \(shape \(2, 2, 2\)\), not 2"),
        "complex.zarr": (InvalidInputError, r"dtype complex128, which is not a real number"),
        "group.zarr": (InvalidInputError, r"is a Zarr group, not an array: name the array"),
        "v2.zarr": (InvalidInputError, r"is Zarr format 2 \(.zarray\), not format 3: convert"),
    }
    for name, (error, message) in cases.items():
        with pytest.raises(error, match=message):
            zs.inspect_input(str(tmp_path / name), param="url")
    with pytest.raises(InvalidInputError, match="not a floating-point type"):
        zs.inspect_input(put(str(tmp_path / "int.zarr"), np.zeros((2, 2), np.int32)),
                         float_only=True)


def test_urls_are_checked_before_anything_is_read():
    cases = {
        "s3://key:secret@bucket/x.zarr": r"url has credentials in its URL \(s3://\.\.\.@\.\.\.\)",
        "memory://x/y.zarr": r"only this process sees",
        "s3://bucket": r"names no array inside the bucket 'bucket'",
        "x.h5::/X": r"contains '::'",
        "nosuch://bucket/x.zarr": r"protocol 'nosuch', which fsspec does not know",
        "": r"must be the path or URL of a Zarr array",
    }
    for url, message in cases.items():
        with pytest.raises(InvalidParameterError, match=message) as info:
            zs.parse_url(url)
        assert "secret" not in str(info.value)


def test_outputs_that_cannot_be_written_are_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    zarr.create_group(store=str(tmp_path / "group.zarr"), zarr_format=3)
    with pytest.raises(OutputNotWritableError, match="folder .*nowhere' does not exist"):
        zs.check_output(str(tmp_path / "nowhere" / "c.zarr"), param="url")
    for name in ("other", "group.zarr"):
        with pytest.raises(InvalidInputError, match="is not a Zarr array .* will not be "
                                                    "overwritten: remove it"):
            zs.check_output(str(tmp_path / name), overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep"
    with pytest.raises(InvalidParameterError, match=r"chunks \(3, 4\) does not divide the "
                                                    r"block shape \(8, 8\).*e.g. \(2, 4\)"):
        zs.output_chunks((3, 4), 8, 8, (20, 20))
    with pytest.raises(InvalidParameterError, match="chunks must be a pair of positive"):
        zs.output_chunks((0, 4), 8, 8, (20, 20))
    with pytest.raises(InsufficientSpaceError, match=r"url folder .* has .* free and writing "
                                                     r".*c\.zarr .* needs"):
        zs.check_output_space(str(tmp_path / "c.zarr"), (1 << 30, 1 << 30), "f8", param="url")


def test_a_missing_bucket_is_refused(s3_env):
    if s3_env is None:
        pytest.skip("s3fs and moto[server] (the test extra) are not installed")
    with pytest.raises(OutputNotWritableError, match=r"bucket s3://no-such-bucket does not "
                                                     r"exist"):
        zs.check_output("s3://no-such-bucket/c.zarr")


def test_without_the_extra_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'blockmatrix\[zarr\]'"):
        zs.inspect_input("x.zarr")


def test_the_package_imports_without_zarr():
    code = ("import sys; sys.modules['zarr'] = sys.modules['fsspec'] = None; "
            "import blockmatrix, blockmatrix.matrix, blockmatrix.io.zarr_store")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
