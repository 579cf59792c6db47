"""The GIL-free BLAS kernels of the out-of-core engine, and slabs read while BLAS runs."""

import threading

import numpy as np
import pytest
from test_ooc_matmul import write

from blockmatrix.errors import TaskReadError
from blockmatrix.ooc import blas
from blockmatrix.ooc.kernels import SlabReader, accumulate_slabs, compute_tile
from blockmatrix.ooc.tiles import GramTile, Operand, Tile


def fortran(rng, shape, dtype):
    return np.asfortranarray(rng.standard_normal(shape).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("m,k,n", [(7, 5, 3), (1, 9, 1), (4, 0, 6), (64, 33, 17)])
def test_gemm_accumulates_like_numpy(dtype, trans_a, trans_b, m, k, n):
    rng = np.random.default_rng(m * 100 + k + n)
    a = fortran(rng, (k, m) if trans_a else (m, k), dtype)
    b = fortran(rng, (n, k) if trans_b else (k, n), dtype)
    c = fortran(rng, (m, n), dtype)
    expected = c.astype(np.float64) + 2.0 * ((a.T if trans_a else a).astype(np.float64)
                                             @ (b.T if trans_b else b).astype(np.float64))
    out = blas.gemm(2.0, a, b, c, trans_a=trans_a, trans_b=trans_b)
    assert out is c
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * max(1, k))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("trans", [0, 1])
def test_syrk_updates_the_upper_triangle_only(dtype, trans):
    rng = np.random.default_rng(3)
    a = fortran(rng, (11, 6) if trans else (6, 11), dtype)
    c = fortran(rng, (6, 6), dtype)
    before = c.copy()
    op = a.T if trans else a
    blas.syrk(1.0, a, c, trans=trans)
    upper = np.triu_indices(6)
    lower = np.tril_indices(6, -1)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c[upper], (before + op @ op.T)[upper], rtol=tol, atol=tol * 11)
    np.testing.assert_array_equal(c[lower], before[lower])


@pytest.mark.parametrize("bad", ["c_order", "dtype", "shape"])
def test_a_bad_argument_is_refused_before_blas_sees_it(bad):
    a = np.ones((3, 4), order="F")
    b = np.ones((4, 2), order="F")
    c = np.zeros((3, 2), order="F")
    if bad == "c_order":
        c = np.zeros((3, 2))
    elif bad == "dtype":
        b = b.astype(np.float32, order="F")
    else:
        b = np.ones((5, 2), order="F")
    with pytest.raises(ValueError, match="must be a Fortran-ordered"):
        blas.gemm(1.0, a, b, c)


def test_an_integer_accumulator_is_refused():
    c = np.zeros((2, 2), dtype=np.int64, order="F")
    with pytest.raises(TypeError, match="float64 or float32"):
        blas.gemm(1.0, c, c, c)


def test_blas_lets_other_threads_run():
    """A thread runs while gemm does: the GIL is released for the call (scipy's is not)."""
    n = 1500
    a = np.asfortranarray(np.ones((n, n)))
    c = np.zeros((n, n), order="F")
    started = threading.Event()

    def multiply():
        started.set()
        for _ in range(3):
            blas.gemm(1.0, a, a, c)

    worker = threading.Thread(target=multiply)
    worker.start()
    started.wait()
    turns = 0
    while worker.is_alive():
        turns += 1
    worker.join()
    assert c[0, 0] == 3 * n
    # Holding the GIL for three calls would leave this thread a few turns at most (it gets the
    # GIL only between calls); released, it loops for the whole time BLAS runs.
    assert turns > 10_000


# ---------------------------------------------------------------- slabs read while BLAS runs

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("slab", [7, 40, 100])
def test_a_prefetched_tile_equals_numpy(tmp_path, dtype, slab):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((30, 97)), rng.standard_normal((97, 20))
    path = str(tmp_path / "ab.h5")
    write(path, "/A", a.astype(dtype), chunks=(10, 7))
    write(path, "/B", b.astype(dtype))
    ops = (Operand(path, "/A", (30, 97), dtype), Operand(path, "/B", (97, 20), dtype))
    tile = Tile(0, 1, 5, 27, 4, 19)
    stats = compute_tile(tile, operands=ops, dtype=dtype, slab=slab, threads=1,
                         work_dir=str(tmp_path), cache_bytes=1 << 20, prefetch=True)
    got = np.load(tmp_path / tile.name)
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, (a @ b)[5:27, 4:19], rtol=tol, atol=tol * 100)
    assert stats["read_bytes"] == (22 + 15) * 97 * np.dtype(dtype).itemsize


def test_a_prefetched_diagonal_gram_tile_equals_numpy(tmp_path):
    x = np.random.default_rng(6).standard_normal((12, 55))
    write(str(tmp_path / "x.h5"), "/X", x)
    tile = GramTile(0, 0, 0, 12, 0, 12)
    compute_tile(tile, path=str(tmp_path / "x.h5"), dataset="/X", dtype="float64", slab=10,
                 threads=1, work_dir=str(tmp_path), cache_bytes=0, prefetch=True)
    np.testing.assert_allclose(np.load(tmp_path / tile.name), x @ x.T, rtol=1e-12, atol=1e-12)


class FailsOnSecondRead:
    """A dataset whose second slab cannot be read (a disk that fails mid-run)."""

    def __init__(self, array):
        self.array, self.shape, self.reads = array, array.shape, 0

    def read_direct(self, buf, selection):
        self.reads += 1
        if self.reads == 2:
            raise OSError("Can't read data (file read failed)")
        buf[...] = self.array[selection]


def test_a_read_error_in_the_prefetching_thread_is_raised_in_the_task():
    data = FailsOnSecondRead(np.ones((4, 30)))

    def pair():
        return (SlabReader(data, left=True, transposed=False, extent=4, slab=10,
                           dtype=np.float64, location="x.h5::/X"),
                SlabReader(data, left=False, transposed=True, extent=0, slab=10,
                           dtype=np.float64, location="x.h5::/X"))

    acc = np.zeros((4, 4), order="F")
    with pytest.raises(TaskReadError, match=r"reading x.h5::/X failed in a task \(OSError"):
        accumulate_slabs(pair(), GramTile(0, 0, 0, 4, 0, 4), acc, 30, 10, None, spare=pair())
