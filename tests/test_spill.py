"""The inner strategy's task: k-ordered groups in bounded memory, accumulation in place."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from blockmatrix._spill import grouped_by_key
from blockmatrix.strategies.inner import LEFT, RIGHT, multiply_delivered


@given(st.lists(st.tuples(st.integers(0, 9), st.integers()), max_size=60), st.integers(0, 20))
def test_groups_come_in_key_order_with_every_record(records, budget):
    groups = list(grouped_by_key(records, lambda r: r[0], lambda r: 1, budget))
    assert [k for k, _ in groups] == sorted({k for k, _ in records})
    assert sorted(r for _, g in groups for r in g) == sorted(records)
    assert all(r[0] == k for k, g in groups for r in g)


def test_spill_folder_is_removed(tmp_path):
    records = [(k % 3, k) for k in range(10)]
    list(grouped_by_key(records, lambda r: r[0], lambda r: 1, 2, spill_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


BLOCK = 64  # a 64 x 64 float64 block is 32 KiB


def _long_inner_records(num_k, num_tasks=1):
    """A task's records for (1 x N blocks) @ (N x 1 blocks), made lazily, in shuffled order."""
    order = np.random.default_rng(0).permutation(2 * num_k)
    for n in order:
        k, side = divmod(int(n), 2)
        block = np.full((BLOCK, BLOCK), 1.0 / (k + 1))
        yield k * num_tasks, (LEFT if side == 0 else RIGHT, 0, block)


def _peak_of_task(num_k, budget_bytes, tmp_path):
    import os

    os.environ["SPARK_LOCAL_DIRS"] = str(tmp_path)
    tracemalloc.start()
    tracemalloc.reset_peak()
    result = list(multiply_delivered(_long_inner_records(num_k), num_tasks=1,
                                     budget_bytes=budget_bytes))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, peak


def test_task_memory_does_not_grow_with_the_inner_dimension(tmp_path):
    """SPARK-18218: a 1 x N by N x 1 product must not hold all N blocks of each side."""
    block_bytes = BLOCK * BLOCK * 8
    peaks = {}
    for num_k in (16, 128):
        result, peak = _peak_of_task(num_k, budget_bytes=0, tmp_path=tmp_path)
        [((i, j), c)] = result
        expected = sum(BLOCK / (k + 1) ** 2 for k in range(num_k))
        np.testing.assert_allclose(c, np.full((BLOCK, BLOCK), expected))
        peaks[num_k] = peak
    # Holding the inputs would take 2 * 128 blocks. What is held: the output block, one k-slice
    # (2 blocks), the block being made, pickled or unpickled, and BLAS/pickle scratch.
    assert peaks[128] < 10 * block_bytes, peaks
    assert peaks[128] < peaks[16] + block_bytes, peaks


def test_buffer_budget_bounds_what_waits_in_memory(tmp_path):
    block_bytes = BLOCK * BLOCK * 8
    budget = 8 * block_bytes
    _, bounded = _peak_of_task(128, budget_bytes=budget, tmp_path=tmp_path)
    _, unbounded = _peak_of_task(128, budget_bytes=1 << 40, tmp_path=tmp_path)
    assert bounded < budget + 8 * block_bytes
    assert unbounded > 200 * block_bytes  # everything held: what the budget prevents
