"""Every block by its fastest path: broadcast from the driver's array or read from the file.

Each case checks the product against numpy and the path Spark took (jobs and stages from its
status store), and that a file changed after it was opened is refused before any task reads it.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import assert_eq

from blockmatrix import BlockMatrix
from blockmatrix.errors import (
    InputChangedError,
    InvalidInputError,
    TaskReadError,
    raised_from_tasks,
    task_error_line,
)
from blockmatrix.io import hdf5
from blockmatrix.metrics import record
from blockmatrix.sources import HDF5Dataset
from blockmatrix.strategies._common import LEFT, FileReader

rng = np.random.default_rng(21)


@pytest.fixture(scope="module")
def operands(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    a, b = rng.standard_normal((60, 40)), rng.standard_normal((40, 25))
    path = folder / "ab.h5"
    with h5py.File(path, "w") as f:
        f["A"], f["B"], f["BT"] = a, b, b.T
    return a, b, str(path)


def test_driver_held_operand_is_broadcast_without_a_collect(sc, operands):
    a, b, _ = operands
    A = BlockMatrix.from_numpy(sc, a, 10, 10, num_partitions=3)
    B = BlockMatrix.from_numpy(sc, b, 10, 10)
    with record(sc, "driver broadcast") as m:
        C = A.multiply(B, strategy="broadcast")
        result = C.to_numpy()
    assert C.plan.delivery == "driver" and C.plan.collected_bytes == 0
    assert len(m.job_ids) == 1  # the product's collect, no job to collect B first
    assert_eq(result, a @ b)


def test_spark_only_operand_is_collected_then_broadcast(sc, operands):
    a, b, _ = operands
    A = BlockMatrix.from_numpy(sc, a, 10, 10, num_partitions=3)
    B = BlockMatrix.from_blocks(BlockMatrix.from_numpy(sc, b, 10, 10).blocks, b.shape, 10, 10)
    with record(sc, "collect broadcast") as m:
        C = A.multiply(B, strategy="broadcast")
        result = C.to_numpy()
    assert C.plan.delivery == "collect" and C.plan.collected_bytes == b.nbytes
    assert len(m.job_ids) >= 2  # B's layout and its collect come first
    assert_eq(result, a @ b)


@pytest.mark.parametrize("transposed", [False, True])
def test_file_operand_is_read_by_every_task(sc, operands, transposed):
    a, b, path = operands
    A = BlockMatrix.from_numpy(sc, a, 10, 10, num_partitions=3)
    B = (BlockMatrix.from_hdf5(sc, path, "/BT", 10, 10).T if transposed
         else BlockMatrix.from_hdf5(sc, path, "/B", 10, 10))
    with record(sc, "file broadcast") as m:
        C = A.multiply(B, strategy="broadcast")
        result = C.to_numpy()
    assert C.plan.delivery == "file" and C.plan.broadcast_bytes == 0
    assert C.plan.read_bytes == 3 * b.nbytes  # 3 partitions, each meets all of B
    assert m.file_read_bytes == C.plan.read_bytes
    assert "read by every task from its file" in C.plan.note
    assert_eq(result, a @ b)


def test_a_file_changed_after_opening_is_refused_before_any_job(sc, operands, tmp_path):
    a, b, _ = operands
    path = tmp_path / "b.h5"
    with h5py.File(path, "w") as f:
        f["B"] = b
    A = BlockMatrix.from_numpy(sc, a, 10, 10)
    B = BlockMatrix.from_hdf5(sc, str(path), "/B", 10, 10)
    with h5py.File(path, "a") as f:
        f["B"][0, 0] = 7.0
    os.utime(path, ns=(0, 1))  # a rewrite within the clock's resolution still changes mtime
    with record(sc, "refused") as m, pytest.raises(InputChangedError, match="changed since"):
        A.multiply(B, strategy="broadcast")
    assert m.job_ids == []


@pytest.mark.parametrize("in_file", ["A", "B", "both", "A.T"])
def test_inner_reads_file_blocks_in_the_tasks(sc, operands, in_file):
    a, b, path = operands
    if in_file == "A.T":
        with h5py.File(path, "a") as f:
            if "AT" not in f:
                f["AT"] = a.T
        A = BlockMatrix.from_hdf5(sc, path, "/AT", 10, 10).T
    elif in_file in ("A", "both"):
        A = BlockMatrix.from_hdf5(sc, path, "/A", 10, 10)
    else:
        A = BlockMatrix.from_numpy(sc, a, 10, 10)
    B = (BlockMatrix.from_hdf5(sc, path, "/B", 10, 10) if in_file in ("B", "both")
         else BlockMatrix.from_numpy(sc, b, 10, 10))
    spark_only = BlockMatrix.from_numpy(sc, a, 10, 10).multiply(
        BlockMatrix.from_numpy(sc, b, 10, 10), strategy="inner").plan
    with record(sc, f"inner, {in_file} in a file") as m:
        C = A.multiply(B, strategy="inner")
        result = C.to_numpy()
    assert_eq(result, a @ b)
    plan = C.plan
    assert plan.read_bytes > 0
    assert m.file_read_bytes == plan.read_bytes  # what the tasks read, as planned
    assert plan.shuffle_bytes + plan.read_bytes < spark_only.shuffle_bytes
    assert m.shuffle_stages == plan.num_shuffles == (0 if in_file == "both" else 1)
    if plan.num_shuffles:
        assert m.shuffle_write_bytes < 0.7 * spark_only.shuffle_bytes


def test_a_file_a_task_cannot_read_is_one_marked_line(tmp_path):
    """What a task raises for a file it cannot open: one line the driver shows as it is
    (errors.raised_from_tasks), naming the file and the shared-storage requirement."""
    missing = tmp_path / "not-on-this-executor.h5"
    source = HDF5Dataset(str(missing), "/A", (4, 4), np.dtype("float64"), (0, 0))
    reader = FileReader({LEFT: (source, 2, 2)})
    with pytest.raises(TaskReadError) as caught:
        reader.read(LEFT, (0, 0))
    line = task_error_line(caught.value)
    assert f"reading {missing}::/A failed in a task" in line and "share" in line
    with pytest.raises(TaskReadError, match="same path"):
        next(hdf5.read_blocks([(0, 0)], str(missing), "/A", 2, 2))
    with pytest.raises(InvalidInputError, match="failed in a task"), raised_from_tasks():
        raise RuntimeError(f"Py4JJavaError: ... {caught.value}\n\tat org.apache.spark")
