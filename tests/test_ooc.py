"""The seams of blockmatrix.ooc: Spark-free planning, the output lock, the pause hook, BLAS pins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_eq

from blockmatrix import _testhooks
from blockmatrix._testhooks import PAUSE_ENV, parse_pauses, pause
from blockmatrix.errors import OutputNotWritableError, PerformanceWarning
from blockmatrix.ooc import GramTile, Tile, gram_hdf5, output_lock
from blockmatrix.ooc.kernels import compute_tile, warn_if_blas_unpinned
from blockmatrix.ooc.workdir import work_paths
from blockmatrix.ooc.writer import YWriter

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, **kwargs)


# ------------------------------------------------------------------------------------ tiles

def test_planning_needs_neither_spark_nor_hdf5():
    # The package __init__ files are skipped (they import the Spark side), and any import of
    # pyspark, h5py or scipy fails.
    proc = python(f"""
        import sys, types
        for name in ("pyspark", "h5py", "scipy"):
            sys.modules[name] = None
        for name in ("blockmatrix", "blockmatrix.ooc"):
            package = types.ModuleType(name)
            package.__path__ = [{str(ROOT)!r} + "/" + name.replace(".", "/")]
            sys.modules[name] = package
        from blockmatrix.ooc.tiles import plan_gram
        plan = plan_gram((10_000, 80_000), "float64", chunks=(100, 300))
        print(len(plan.tiles), plan.slab)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["3", "1800"]


def test_a_general_tile_is_gemm_even_on_the_diagonal():
    general, gram = Tile(0, 0, 0, 4, 0, 4), GramTile(0, 0, 0, 4, 0, 4)
    assert general.diagonal and gram.diagonal
    assert not general.uses_syrk and gram.uses_syrk
    assert general.flops(10) == 2 * 4 * 4 * 10 and gram.flops(10) == 4 * 5 * 10
    assert general.read_elements(10) == 80 and gram.read_elements(10) == 40
    off = GramTile(0, 1, 0, 4, 4, 6)
    assert not off.diagonal and not off.uses_syrk and off.flops(10) == 2 * 4 * 2 * 10


def test_a_tile_of_a_non_square_grid_is_not_diagonal_by_its_indices():
    assert not Tile(1, 1, 3, 6, 5, 10).diagonal


# ---------------------------------------------------------------------------- the pause hook

@pytest.mark.parametrize("spec,expected", [
    ("gram.writer=0.2,gram.slab=0.05", {"gram.writer": 0.2, "gram.slab": 0.05}),
    (" gram.slab = 1 , ", {"gram.slab": 1.0}),
    ("a.b=0", {"a.b": 0.0}),
    ("", {}),
])
def test_pause_spec_parses(spec, expected):
    assert parse_pauses(spec) == expected


@pytest.mark.parametrize("spec", ["gram.slab", "gram.slab=", "=1", "gram.slab=x",
                                  "gram.slab=-1", "gram.slab=nan"])
def test_pause_spec_refuses_what_is_not_point_equals_seconds(spec):
    with pytest.raises(ValueError, match=PAUSE_ENV):
        parse_pauses(spec)


def test_pause_sleeps_only_at_the_named_point(monkeypatch):
    monkeypatch.setenv(PAUSE_ENV, "test.here=0.3")
    start = time.perf_counter()
    pause("test.elsewhere")
    assert time.perf_counter() - start < 0.1
    pause("test.here")
    assert time.perf_counter() - start >= 0.3


def test_pause_parses_nothing_when_unset(monkeypatch):
    monkeypatch.delenv(PAUSE_ENV, raising=False)
    calls = []
    monkeypatch.setattr(_testhooks, "parse_pauses", calls.append)
    pause("gram.writer")
    assert calls == []


def write_x(path, shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape)
    with h5py.File(path, "w") as f:
        f["X"] = x
    return x


def test_the_writer_pauses_before_each_tile(tmp_path, monkeypatch):
    tile = GramTile(0, 0, 0, 3, 0, 3)
    np.save(tmp_path / tile.name, np.asfortranarray(np.eye(3)))
    writer = YWriter(str(tmp_path / "y.h5"), "/Y", 3, "float64", "w-")
    monkeypatch.setenv(PAUSE_ENV, "gram.writer=0.3")
    start = time.perf_counter()
    writer.write_tile(tile, str(tmp_path / tile.name))
    assert time.perf_counter() - start >= 0.3
    writer.close()


def compute(tmp_path, tile, slab):
    return compute_tile(tile, path=str(tmp_path / "x.h5"), dataset="/X", dtype="float64",
                        slab=slab, threads=1, work_dir=str(tmp_path), cache_bytes=0)


def test_a_task_pauses_after_each_slab(tmp_path, monkeypatch):
    write_x(tmp_path / "x.h5", (4, 30))
    monkeypatch.setenv(PAUSE_ENV, "gram.slab=0.1")
    start = time.perf_counter()
    compute(tmp_path, GramTile(0, 0, 0, 4, 0, 4), slab=10)  # 3 slabs
    assert time.perf_counter() - start >= 0.3


# -------------------------------------------------------------------------- the output lock

HOLD_LOCK = """
    import sys
    from blockmatrix.ooc import output_lock
    with output_lock(sys.argv[1], "y.h5"):
        print("held", flush=True)
        sys.stdin.read()
"""


def hold_lock_in_another_process(lock):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), lock],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_the_output_lock_refuses_a_second_job_and_names_it(tmp_path):
    _, lock = work_paths(str(tmp_path / "y.h5"), "/Y")
    holder = hold_lock_in_another_process(lock)
    try:
        with pytest.raises(OutputNotWritableError) as refused:
            with output_lock(lock, str(tmp_path / "y.h5")):
                pass
        assert str(refused.value) == (
            f"output file {str(tmp_path / 'y.h5')!r} is being written by another gram job "
            f"(pid {holder.pid}): wait for it to finish, or choose another output file")
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not os.path.exists(lock)  # removed on release
    with output_lock(lock, str(tmp_path / "y.h5")):
        assert Path(lock).read_text().strip() == str(os.getpid())


def test_a_killed_jobs_lock_does_not_block(tmp_path):
    _, lock = work_paths(str(tmp_path / "y.h5"), "/Y")
    holder = hold_lock_in_another_process(lock)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    assert os.path.exists(lock)  # stale: the file is left, its flock is gone with the process
    with output_lock(lock, str(tmp_path / "y.h5")):
        assert Path(lock).read_text().strip() == str(os.getpid())
    assert not os.path.exists(lock)


# ------------------------------------------------------------------ BLAS threads per task

@pytest.fixture
def without_threadpoolctl(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # any import of it fails


def test_the_driver_warns_when_blas_threads_cannot_be_pinned(without_threadpoolctl):
    with pytest.warns(PerformanceWarning, match=r"not pinned per task.*blockmatrix\[ooc\]"):
        warn_if_blas_unpinned(1)


def test_no_warning_when_threadpoolctl_is_installed():
    pytest.importorskip("threadpoolctl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_blas_unpinned(1)


def test_a_task_runs_unpinned_without_threadpoolctl(tmp_path, without_threadpoolctl):
    x = write_x(tmp_path / "x.h5", (6, 50))
    tile = GramTile(0, 1, 0, 4, 4, 6)
    stats = compute(tmp_path, tile, slab=16)
    assert (stats["i"], stats["j"]) == (0, 1)
    assert_eq(np.load(tmp_path / tile.name), x[0:4] @ x[4:6].T)


def test_gram_hdf5_warns_once_without_threadpoolctl(sc, tmp_path, without_threadpoolctl):
    x = write_x(tmp_path / "x.h5", (40, 30))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gram_hdf5(sc, str(tmp_path / "x.h5"), "/X", str(tmp_path / "y.h5"), "/Y", tile=16,
                  slab=10)
    assert [w.category for w in caught if issubclass(w.category, PerformanceWarning)] == [
        PerformanceWarning]
    with h5py.File(tmp_path / "y.h5", "r") as f:
        assert_eq(f["Y"][()], x @ x.T)
