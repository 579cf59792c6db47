"""inner with blocks shuffled by reference (blockmatrix.spilled): the same products as numpy and
scipy, only references through Spark's shuffle, the folder gone with the product, a lost file
reported in one line."""

from __future__ import annotations

import gc
import os

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import assert_eq

from blockmatrix import BlockMatrix, held
from blockmatrix.cost import RECORD_OVERHEAD_BYTES
from blockmatrix.errors import InvalidInputError, InvalidParameterError, raised_from_tasks
from blockmatrix.metrics import record
from blockmatrix.plan import MultiplyOptions
from blockmatrix.sources import DriverArray
from blockmatrix.sparkconf import multiply_defaults
from blockmatrix.spilled import (
    FOLDER_PREFIX,
    SpilledRef,
    read_spilled,
    spill_array,
    spill_partition,
)
from blockmatrix.strategies import get_strategy
from blockmatrix.strategies._common import driver_array_file


def spark_only(sc, a, rows, cols, parts=3):
    """``a`` as blocks that live only in Spark (an RDD of blocks, no source)."""
    m = BlockMatrix.from_numpy(sc, a, rows, cols, num_partitions=parts)
    return BlockMatrix.from_blocks(m.blocks, m.shape, rows, cols)


def sparse(shape, density, seed, dtype=np.float64):
    m = sp.random(*shape, density=density, random_state=seed, format="lil", dtype=dtype)
    m[: shape[0] // 3, : shape[1] // 3] = 0  # missing blocks
    return m.tocsr()


rng = np.random.default_rng(11)
CASES = {
    "dense ragged float64": (rng.standard_normal((45, 37)), rng.standard_normal((37, 29)), 10),
    "dense float32": (rng.standard_normal((30, 20)).astype(np.float32),
                      rng.standard_normal((20, 25)).astype(np.float32), 8),
    "sparse x sparse, missing blocks": (sparse((40, 50), 0.05, 1), sparse((50, 30), 0.05, 2), 9),
    "sparse x dense": (sparse((40, 50), 0.1, 3), rng.standard_normal((50, 7)), 16),
    "thin x fat": (rng.standard_normal((60, 4)), rng.standard_normal((4, 70)), 16),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mid_splits", [1, 2])
def test_by_reference_matches_numpy(sc, name, mid_splits):
    a, b, block = CASES[name]
    A, B = spark_only(sc, a, block, block), spark_only(sc, b, block, block)
    C = A.multiply(B, "inner", by_reference=True, num_mid_splits=mid_splits)
    assert C.plan.by_reference and "by reference" in C.plan.note
    expected = a @ b
    got = C.to_scipy() if sp.issparse(expected) else C.to_numpy()
    assert_eq(got.toarray() if sp.issparse(got) else got,
              expected.toarray() if sp.issparse(expected) else expected)


def test_only_references_cross_the_shuffle(sc):
    a, b = rng.standard_normal((64, 64)), rng.standard_normal((64, 64))
    A, B = spark_only(sc, a, 16, 16), spark_only(sc, b, 16, 16)
    with record(sc, "by value") as by_value:
        plain = A.multiply(B, "inner")
        plain.blocks.count()
    with record(sc, "by reference") as by_ref:
        C = A.multiply(B, "inner", by_reference=True)
        C.blocks.count()
    assert by_value.shuffle_write_bytes == pytest.approx(plain.plan.shuffle_bytes, rel=0.05)
    assert 0 < by_ref.shuffle_write_bytes <= C.plan.shuffle_bytes  # the plan is an upper bound
    assert by_ref.shuffle_write_bytes < by_value.shuffle_write_bytes / 10
    assert C.plan.spilled_bytes == a.nbytes + b.nbytes
    # The tasks read every copy the shuffle by value delivers.
    assert C.plan.read_bytes == \
        plain.plan.shuffle_bytes - plain.plan.shuffle_records * RECORD_OVERHEAD_BYTES
    assert_eq(C.to_numpy(), a @ b)


def test_a_file_backed_operand_is_read_and_the_other_goes_by_reference(sc, tmp_path):
    a, b = rng.standard_normal((30, 40)), rng.standard_normal((40, 20))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["A"] = a
    A = BlockMatrix.from_hdf5(sc, str(tmp_path / "a.h5"), "/A", 10, 10)
    C = A.multiply(spark_only(sc, b, 10, 10), "inner", by_reference=True)
    assert C.plan.spilled_bytes == b.nbytes
    assert_eq(C.to_numpy(), a @ b)


def test_the_folder_lives_as_long_as_the_product(sc):
    a = rng.standard_normal((20, 20))
    A = spark_only(sc, a, 10, 10)
    C = A.multiply(A, "inner", by_reference=True)
    C.blocks.count()
    (folder,) = C._held.folders
    assert os.path.basename(folder).startswith(FOLDER_PREFIX) and os.listdir(folder)
    assert_eq(C.to_numpy(), a @ a)  # computed again from the same map output
    kept = C._held
    del C
    gc.collect()
    held.release_pending()
    assert kept.released and not os.path.exists(folder)


def test_a_lost_file_is_one_line(sc):
    a = rng.standard_normal((20, 20))
    A = spark_only(sc, a, 10, 10)
    C = A.multiply(A, "inner", by_reference=True)
    C.blocks.count()  # the map output (the references) stays with Spark
    for name in os.listdir(C._held.folders[0]):
        os.unlink(os.path.join(C._held.folders[0], name))
    with pytest.raises(InvalidInputError, match=r"a block shuffled by reference, failed in a "
                                                r"task .*by_reference=False") as caught:
        with raised_from_tasks():
            C.to_numpy()
    assert "\n" not in str(caught.value)


def test_by_reference_needs_a_folder_every_task_reads(sc):
    a = rng.standard_normal((20, 20))
    A = spark_only(sc, a, 10, 10)
    options = MultiplyOptions(by_reference=True, reference_parent=None)
    plan = get_strategy("inner").plan(A.layout(), A.layout(), options)
    with pytest.raises(InvalidParameterError, match="needs a folder every task can read.*"
                                                    "spark.blockmatrix.referenceDir"):
        get_strategy("inner").execute(plan, A.blocks, A.blocks, options)
    with pytest.raises(InvalidParameterError, match="by_reference must be True or False"):
        MultiplyOptions(by_reference="yes")


def test_auto_weighs_the_by_reference_variants(sc):
    a = rng.standard_normal((64, 64))
    A = spark_only(sc, a, 16, 16)
    C = A.multiply(A, "auto")
    labels = {c.label for c in C.plan.candidates}
    assert "inner, by reference" in labels, labels
    by_ref = next(c for c in C.plan.candidates if c.label == "inner, by reference")
    plain = next(c for c in C.plan.candidates if c.label == "inner")
    assert by_ref.moved_bytes < plain.moved_bytes / 10
    assert_eq(C.to_numpy(), a @ a)
    # Planned without Spark (no folder known), auto offers no such variant.
    plan = get_strategy("auto").plan(A.layout(), A.layout(), MultiplyOptions(num_cores=2))
    assert not [c for c in plan.candidates if "by reference" in c.label]


def test_spilled_blocks_read_back_exactly(tmp_path):
    blocks = [((0, 0), np.arange(12.0).reshape(3, 4)),
              ((0, 1), sp.random(5, 6, density=0.3, random_state=0, format="csr",
                                 dtype=np.float32)),
              ((1, 0), np.zeros((0, 4))),
              ((1, 1), sp.csr_matrix((2, 2)))]
    refs = list(spill_partition(0, iter(blocks), str(tmp_path)))
    assert [key for key, _ in refs] == [key for key, _ in blocks]
    for (_, block), (_, ref) in zip(blocks, refs, strict=True):
        assert isinstance(ref, SpilledRef)
        back = read_spilled(ref)
        assert sp.issparse(back) == sp.issparse(block) and back.dtype == block.dtype
        assert_eq(back.toarray() if sp.issparse(back) else back,
                  block.toarray() if sp.issparse(block) else block)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_broadcast_by_reference_puts_the_drivers_array_in_a_file_once(sc, transposed, in_memory,
                                                                       monkeypatch):
    monkeypatch.setattr(held, "MEMORY_FILES", in_memory)  # False: a platform without memfd
    a, b = rng.standard_normal((50, 43)), rng.standard_normal((33, 43)).astype(np.float32)
    A = BlockMatrix.from_numpy(sc, a, 10, 10, num_partitions=2)
    B = BlockMatrix.from_numpy(sc, b if transposed else np.ascontiguousarray(b.T), 10, 10)
    B = B.T if transposed else B
    C = A.multiply(B, "broadcast", by_reference=True)
    assert C.plan.delivery == "driver-file" and C.plan.broadcast_bytes == 0
    assert C.plan.spilled_bytes == C.plan.operand_bytes and C.plan.read_bytes > 0
    assert "put once by the driver in a file every task reads" in C.plan.note
    assert_eq(C.to_numpy(), a @ b.T.astype(np.float64))
    if in_memory:  # a local master: the tasks read an in-memory file, nothing on disk
        (fd,) = C._held.descriptors
        assert not C._held.folders and os.fstat(fd).st_size == b.nbytes
    else:
        (folder,) = C._held.folders
        assert [name for name in os.listdir(folder) if name.startswith("driver-array-")]


@pytest.mark.parametrize("local_master", [True, False])
def test_the_options_say_whether_the_drivers_array_may_be_an_in_memory_file(sc, tmp_path,
                                                                            local_master):
    """multiply takes local_master from Spark; False (a cluster's tasks) writes to the folder."""
    assert multiply_defaults(sc)["local_master"] is True  # the tests' local[2]
    a = rng.standard_normal((20, 30))
    options = MultiplyOptions(local_master=local_master, reference_parent=str(tmp_path))
    with held.collecting() as kept:
        source = driver_array_file(sc, options, DriverArray(a))
    try:
        in_memory = local_master and held.MEMORY_FILES
        assert bool(kept.descriptors) == in_memory and bool(kept.folders) != in_memory
        assert source.path.startswith("/proc/" if in_memory else str(tmp_path))
        assert_eq(np.fromfile(source.path, dtype=a.dtype).reshape(a.shape), a)
    finally:
        kept.release()


def test_the_in_memory_file_lives_as_long_as_the_product(sc):
    a = rng.standard_normal((40, 30))
    A = BlockMatrix.from_numpy(sc, a, 10, 10)
    C = A.multiply(A.T, "broadcast", by_reference=True)
    assert_eq(C.to_numpy(), a @ a.T)
    (fd,) = C._held.descriptors
    path = f"/proc/{os.getpid()}/fd/{fd}"
    assert os.path.exists(path)
    kept = C._held
    del C
    gc.collect()
    held.release_pending()
    assert kept.released and not os.path.exists(path)


def test_a_sparse_drivers_array_is_still_broadcast(sc):
    a, s = rng.standard_normal((30, 40)), sparse((40, 20), 0.1, 5)
    C = BlockMatrix.from_numpy(sc, a, 10, 10).multiply(BlockMatrix.from_numpy(sc, s, 10, 10),
                                                      "broadcast", by_reference=True)
    assert C.plan.delivery == "driver" and C.plan.spilled_bytes == 0
    assert_eq(C.to_numpy(), a @ s.toarray())


def test_auto_weighs_broadcast_by_reference_for_the_drivers_arrays(sc):
    a = rng.standard_normal((64, 64))
    A = BlockMatrix.from_numpy(sc, a, 16, 16)
    C = A.multiply(A, "auto")
    labels = {c.label for c in C.plan.candidates}
    assert {"broadcast", "broadcast, by reference", "inner, by reference"} <= labels, labels
    assert_eq(C.to_numpy(), a @ a)


def test_a_drivers_array_reads_back_block_by_block(tmp_path):
    a = rng.standard_normal((23, 17))
    for transposed in (False, True):
        source = spill_array(str(tmp_path), DriverArray(a, transposed))
        matrix = a.T if transposed else a
        handle = source.open()
        try:
            for i in range(-(-matrix.shape[0] // 5)):
                for j in range(-(-matrix.shape[1] // 17)):
                    assert_eq(source.read_block(handle, i, j, 5, 17),
                              matrix[i * 5:(i + 1) * 5, j * 17:(j + 1) * 17])
        finally:
            handle.close()
    os.truncate(source.path, 100)
    handle = source.open()
    with pytest.raises(OSError, match="the file ends before"):
        source.read_block(handle, 1, 0, 5, 17)
    handle.close()
