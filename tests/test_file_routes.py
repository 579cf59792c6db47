"""outer, pasa and cuboid read file-backed operands in their tasks instead of shuffling them.

Each case runs on real HDF5 files and checks the product against numpy, the shuffles Spark
measured against the plan and against the same product of operands only Spark holds, and the
bytes the tasks read against the plan's ``read_bytes`` (:mod:`blockmatrix.metrics`).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import assert_eq

from blockmatrix import BlockMatrix
from blockmatrix.errors import InputChangedError
from blockmatrix.metrics import record
from blockmatrix.units import format_bytes

STRATEGIES = ["outer", "pasa", "cuboid"]
BLOCK = 100
rng = np.random.default_rng(11)


@pytest.fixture(scope="module")
def operands(tmp_path_factory):
    """A (190 x 150) and B (150 x 130) in 2 x 2 blocks, every edge block ragged; float32 too."""
    a, b = rng.standard_normal((190, 150)), rng.standard_normal((150, 130))
    path = tmp_path_factory.mktemp("file_routes") / "ab.h5"
    with h5py.File(path, "w") as f:
        f["A"], f["B"], f["AT"] = a, b, a.T
        f["B32"] = b.astype(np.float32)
    return a, b, str(path)


def _operands(sc, a, b, path, case):
    """``(A, B, a, b)``: both operands in the file, or A's transpose in it and B only in
    Spark, or A only in Spark and B in the file (float32)."""
    if case == "both":
        return (BlockMatrix.from_hdf5(sc, path, "/A", BLOCK, BLOCK),
                BlockMatrix.from_hdf5(sc, path, "/B", BLOCK, BLOCK), a, b)
    if case == "A.T":
        return (BlockMatrix.from_hdf5(sc, path, "/AT", BLOCK, BLOCK).T,
                BlockMatrix.from_numpy(sc, b, BLOCK, BLOCK), a, b)
    a, b = a.astype(np.float32), b.astype(np.float32)
    return (BlockMatrix.from_numpy(sc, a, BLOCK, BLOCK),
            BlockMatrix.from_hdf5(sc, path, "/B32", BLOCK, BLOCK), a, b)


@pytest.mark.parametrize("case", ["both", "A.T", "B float32"])
@pytest.mark.parametrize("name", STRATEGIES)
def test_file_blocks_are_read_not_shuffled(sc, operands, name, case):
    A, B, a, b = _operands(sc, *operands, case)
    spark_only = BlockMatrix.from_numpy(sc, a, BLOCK, BLOCK).explain_multiply(
        BlockMatrix.from_numpy(sc, b, BLOCK, BLOCK), strategy=name)[name]
    with record(sc, f"{name}, {case} in a file") as m:
        C = A.multiply(B, strategy=name)
        result = C.to_numpy()
    assert_eq(result, a @ b, dtype=a.dtype)
    plan = C.plan
    assert plan.read_bytes > 0 and spark_only.read_bytes == 0
    assert m.file_read_bytes == plan.read_bytes  # what the tasks read, as planned
    assert plan.shuffle_bytes < spark_only.shuffle_bytes
    assert m.shuffle_stages == plan.num_shuffles < spark_only.num_shuffles + (case != "both")
    assert m.shuffle_write_bytes == pytest.approx(plan.shuffle_bytes, rel=0.05, abs=4096)
    assert m.shuffle_write_bytes < spark_only.shuffle_bytes
    assert f"read from files: {format_bytes(plan.read_bytes)}" in str(plan)


def test_reads_count_each_use_of_a_block(sc, operands):
    """The plans' read bytes are the blocks each strategy's destinations give its tasks."""
    a, b, path = operands
    A = BlockMatrix.from_hdf5(sc, path, "/A", BLOCK, BLOCK)
    B = BlockMatrix.from_hdf5(sc, path, "/B", BLOCK, BLOCK)
    report = A.explain_multiply(B)
    # outer: every block once; pasa: A's once per block column of B, B's per block row of A
    assert report["outer"].read_bytes == a.nbytes + b.nbytes
    assert report["pasa"].read_bytes == 2 * a.nbytes + 2 * b.nbytes
    cuboid = report["cuboid"]
    assert cuboid.read_bytes == cuboid.Q * a.nbytes + cuboid.P * b.nbytes
    assert report["outer"].num_shuffles == 1 and report["pasa"].num_shuffles == 1
    assert cuboid.num_shuffles == (cuboid.R > 1)


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_changed_file_is_refused_before_any_task_reads_it(sc, operands, tmp_path, name):
    a, b, _ = operands
    path = tmp_path / "b.h5"
    with h5py.File(path, "w") as f:
        f["B"] = b
    A = BlockMatrix.from_numpy(sc, a, BLOCK, BLOCK)
    B = BlockMatrix.from_hdf5(sc, str(path), "/B", BLOCK, BLOCK)
    with h5py.File(path, "a") as f:
        f["B"][0, 0] = 7.0
    os.utime(path, ns=(0, 1))  # a rewrite within the clock's resolution still changes mtime
    with record(sc, "refused") as m, pytest.raises(InputChangedError, match="changed since"):
        A.multiply(B, strategy=name)
    assert m.job_ids == []


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_zarr_operand_is_read_in_the_tasks_too(sc, operands, tmp_path, name):
    """Any file source FileReader opens (here a local Zarr array) takes the same route."""
    zarr = pytest.importorskip("zarr")
    a, b, _ = operands
    url = str(tmp_path / "b.zarr")
    zarr.create_array(store=url, shape=b.shape, dtype=b.dtype, chunks=(50, 50),
                      zarr_format=3)[...] = b
    A = BlockMatrix.from_numpy(sc, a, BLOCK, BLOCK)
    spark_only = A.explain_multiply(BlockMatrix.from_numpy(sc, b, BLOCK, BLOCK),
                                    strategy=name)[name]
    with record(sc, f"{name}, B in zarr") as m:
        C = A.multiply(BlockMatrix.from_zarr(sc, url, BLOCK, BLOCK), strategy=name)
        result = C.to_numpy()
    assert_eq(result, a @ b)
    assert m.file_read_bytes == C.plan.read_bytes > 0
    assert m.shuffle_write_bytes < spark_only.shuffle_bytes
