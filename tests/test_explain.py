"""Planning without Spark: seed formulas, key-set counting, budgets, auto's choice, the report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from blockmatrix.cost import DRIVER_FILE_WRITE_BYTES_PER_S, RECORD_OVERHEAD_BYTES
from blockmatrix.errors import (
    InvalidParameterError,
    PerformanceWarning,
    ShapeMismatchError,
    UnknownStrategyError,
)
from blockmatrix.explain import (
    Rates,
    explain_layouts,
    explain_multiply,
    seed_inner_elements,
    seed_outer_elements,
    seed_pasa_elements,
    shuffle_elements,
)
from blockmatrix.layout import BlockLayout, split_evenly
from blockmatrix.partitioner import MatrixMultPartitioner
from blockmatrix.plan import MultiplyOptions
from blockmatrix.sources import DriverArray, HDF5Dataset
from blockmatrix.strategies import auto as auto_strategy
from blockmatrix.strategies import candidate_strategies, get_strategy, multiplying_strategies
from blockmatrix.strategies._common import RIGHT


def dense_layout(rows, cols, r, c, itemsize=8, keys=None, num_partitions=1, rows_aligned=False):
    lay = BlockLayout((rows, cols), r, c, {})
    keys = keys if keys is not None else [(i, j) for i in range(lay.num_row_blocks)
                                          for j in range(lay.num_col_blocks)]
    sizes = {k: lay.block_shape(*k)[0] * lay.block_shape(*k)[1] * itemsize for k in keys}
    parts = {k: k[0] % num_partitions for k in keys} if rows_aligned else None
    return BlockLayout((rows, cols), r, c, sizes, num_partitions=num_partitions,
                       key_partitions=parts)


# (n, m, k, r): C (n x k) = A (n x m) B (m x k) in r x r blocks
SEED_SHAPES = [(40, 40, 40, 10), (60, 20, 30, 10), (10, 80, 10, 10), (80, 10, 20, 10),
               (30, 30, 30, 30)]


@pytest.mark.parametrize("n,m,k,r", SEED_SHAPES)
def test_dense_plans_agree_with_seed_formulas(n, m, k, r):
    a, b = dense_layout(n, m, r, r), dense_layout(m, k, r, r)
    # every result block its own reducer, every inner block its own outer task
    parts = max(n // r, k // r, m // r) ** 2
    report = explain_multiply(a, b, num_partitions=parts)
    assert shuffle_elements(report["inner"]) == seed_inner_elements(n, m, k, r)
    assert shuffle_elements(report["outer"]) == seed_outer_elements(n, m, k, r)
    assert shuffle_elements(report["pasa"]) == seed_pasa_elements(n, m, k, r)
    assert report["outer"].shuffles[0].records == (n // r + k // r) * (m // r)


def test_seed_formulas_by_hand():
    # 2 x 2 blocks each way, r = 1: inner sends A and B twice each
    assert seed_inner_elements(2, 2, 2, 1) == 16
    assert seed_outer_elements(2, 2, 2, 1) == 2 * (2 + 2 + 4)
    assert seed_pasa_elements(2, 2, 2, 1) == 24
    assert seed_pasa_elements(2, 1, 2, 1) == 8  # one inner block: Marlin skips the reduce


def test_block_sparse_counts_the_key_sets():
    # A has blocks (0,0), (1,1); B has (0,0), (0,1): A (1,1) has no counterpart (B row 1 empty)
    a = dense_layout(20, 20, 10, 10, keys=[(0, 0), (1, 1)])
    b = dense_layout(20, 20, 10, 10, keys=[(0, 0), (0, 1)])
    block = 10 * 10 * 8 + RECORD_OVERHEAD_BYTES
    report = explain_multiply(a, b, num_partitions=4)
    inner = report["inner"]
    # A(0,0) goes to C(0,0) and C(0,1); B(0,0), B(0,1) once each; A(1,1) nowhere
    assert inner.shuffles[0].records == 4
    assert inner.shuffle_bytes == 4 * block
    outer = report["outer"]
    # only k = 0 meets: A(0,0), B(0,0), B(0,1); then two partial blocks
    assert [s.records for s in outer.shuffles] == [3, 2]
    assert outer.shuffle_bytes == 5 * block
    pasa = report["pasa"]
    # no checks: A blocks x 2 block columns, B blocks x 2 block rows; 2 products
    assert [s.records for s in pasa.shuffles] == [8, 2]
    assert pasa.shuffle_bytes == 10 * block
    assert pasa.shuffle_bytes >= inner.shuffle_bytes


@pytest.mark.parametrize("shape", [(40, 30, 20, 10), (10, 80, 10, 10), (60, 10, 60, 10)])
@pytest.mark.parametrize("drop", [0, 2, 3])
def test_pasa_never_shuffles_less_than_inner(shape, drop):
    n, m, k, r = shape
    keys_a = [(i, j) for i in range(n // r) for j in range(m // r) if drop == 0 or (i + j) % drop]
    keys_b = [(i, j) for i in range(m // r) for j in range(k // r) if drop == 0 or (i * j) % drop]
    a = dense_layout(n, m, r, r, keys=keys_a)
    b = dense_layout(m, k, r, r, keys=keys_b)
    report = explain_multiply(a, b)
    assert report["pasa"].shuffle_bytes >= report["inner"].shuffle_bytes


def test_mid_splits_spread_a_long_inner_dimension():
    # 1 x 16 blocks times 16 x 1 blocks: with s = 1 one task gets everything
    a = dense_layout(10, 160, 10, 10)
    b = dense_layout(160, 10, 10, 10)
    one = explain_multiply(a, b, strategy="inner")["inner"]
    four = explain_multiply(a, b, strategy="inner", num_mid_splits=4)["inner"]
    assert one.max_task_input_bytes == one.shuffle_bytes
    assert four.max_task_input_bytes * 4 == pytest.approx(one.max_task_input_bytes, rel=0.01)
    assert four.num_shuffles == 2 and one.num_shuffles == 1


def test_broadcast_zero_shuffles_when_rows_are_aligned():
    a = dense_layout(40, 40, 10, 10, num_partitions=2, rows_aligned=True)
    b = dense_layout(40, 20, 10, 10)
    plan = explain_multiply(a, b, strategy="broadcast")["broadcast"]
    assert plan.num_shuffles == 0 and plan.side == RIGHT  # B broadcast
    assert plan.broadcast_bytes == b.nbytes == plan.moved_bytes


def test_broadcast_split_rows_or_unknown_partitions_cost_one_shuffle():
    b = dense_layout(40, 20, 10, 10)
    # row 1's blocks in two partitions
    a = dense_layout(40, 40, 10, 10)
    parts = {key: 0 if key < (1, 2) else 1 for key in a.keys}
    split = BlockLayout(a.shape, 10, 10, a.block_nbytes, num_partitions=2, key_partitions=parts)
    plan = explain_multiply(split, b, strategy="broadcast")["broadcast"]
    assert plan.num_shuffles == 1
    assert plan.shuffles[0].records == 3 * 2 + 2 * 2  # C is 4x2 blocks; row 1 gets 2 partials
    unknown = BlockLayout(a.shape, 10, 10, a.block_nbytes, num_partitions=2)
    assert explain_multiply(unknown, b, strategy="broadcast")["broadcast"].num_shuffles == 1


def test_broadcast_refused_over_budget_and_auto_avoids_it():
    a = dense_layout(400, 400, 100, 100, num_partitions=4, rows_aligned=True)
    b = dense_layout(400, 100, 100, 100)
    budget_ok = explain_multiply(a, b, memory_budget_bytes=64 << 20)
    assert budget_ok.auto_choice == "broadcast"
    assert budget_ok["broadcast"].fits_budget
    tight = b.nbytes - 1
    refused = explain_multiply(a, b, memory_budget_bytes=tight)
    assert not refused["broadcast"].fits_budget
    assert refused.auto_choice != "broadcast"
    assert "broadcast" in refused.auto_reason and "over budget" in refused.auto_reason
    with pytest.raises(InvalidParameterError, match="memory_budget_bytes"):
        refused["broadcast"].check_runnable()


def test_auto_plan_carries_choice_and_reason():
    a = dense_layout(400, 400, 100, 100, num_partitions=4, rows_aligned=True)
    b = dense_layout(400, 100, 100, 100)
    plan = auto_strategy.plan(a, b, MultiplyOptions(memory_budget_bytes=64 << 20))
    assert plan.strategy == "broadcast"
    assert plan.chosen_by_auto
    assert {c.label for c in plan.candidates} == {s.name for s in candidate_strategies()}
    assert [c.strategy for c in plan.candidates if c.fits and c.label == "broadcast"]
    assert plan.reason.startswith("broadcast: least predicted time")
    assert "reason: broadcast" in str(plan)


def test_compute_estimate_follows_each_strategys_tasks():
    # 2 x 2 blocks of 1000 x 1000 times the same: 8 products of 2e9 flops (0.05 s each)
    a = dense_layout(2000, 2000, 1000, 1000, num_partitions=2, rows_aligned=True)
    report = explain_multiply(a, a, num_partitions=4, num_cores=2)
    one = 2 * 1000 ** 3 / 40e9
    for p in report.plans.values():
        assert p.compute_seconds == pytest.approx(0 if p.unavailable else 8 * one)
    assert report["inner"].max_task_compute_seconds == pytest.approx(2 * one)  # (i, j): 2 k
    assert report["outer"].max_task_compute_seconds == pytest.approx(4 * one)  # per k
    assert report["pasa"].max_task_compute_seconds == pytest.approx(one)       # per triple
    assert report["broadcast"].max_task_compute_seconds == pytest.approx(4 * one)  # per row
    assert "compute: 0.4 core-s predicted, busiest task 0.1 s" in str(report["inner"])


def test_csr_blocks_are_costed_by_their_fill():
    dense = dense_layout(1000, 1000, 1000, 1000)
    # a CSR block with 10% of its entries: nnz * 12 + 1001 * 4 bytes
    sparse = BlockLayout((1000, 1000), 1000, 1000, {(0, 0): 100_000 * 12 + 1001 * 4})
    dd = explain_multiply(dense, dense, strategy="inner")["inner"].compute_seconds
    sd = explain_multiply(sparse, dense, strategy="inner")["inner"].compute_seconds
    assert dd == pytest.approx(2e9 / 40e9)
    assert sd == pytest.approx(0.1 * 2e9 / 1e9, rel=1e-3)


def test_auto_stripes_a_long_inner_dimension_over_idle_cores():
    # the benchmark's long-inner case: 1 x 64 blocks times 64 x 1, blocks 1024 x 1024
    a = dense_layout(1024, 64 * 1024, 1024, 1024, num_partitions=2, rows_aligned=True)
    b = dense_layout(64 * 1024, 1024, 1024, 1024, num_partitions=2)
    # B (512 MiB) over the budget: broadcast, which measures fastest here, is refused
    options = MultiplyOptions(memory_budget_bytes=256 << 20, task_buffer_bytes=64 << 20,
                              num_cores=2)
    plans = auto_strategy.candidate_plans(a, b, options)
    assert "inner, 2 mid splits" in plans
    one, two = plans["inner"], plans["inner, 2 mid splits"]
    assert one.max_task_compute_seconds == pytest.approx(one.compute_seconds)  # one task
    assert two.max_task_compute_seconds == pytest.approx(one.compute_seconds / 2)
    chosen = auto_strategy.plan(a, b, options)
    # cuboid's 1 x 1 x 2 cut is the same plan (contiguous stripes instead of k % 2): equal
    # predicted time but for float rounding, which decides between the two
    assert plans["cuboid"].predicted_seconds(2) == pytest.approx(two.predicted_seconds(2))
    if chosen.strategy == "cuboid":
        assert (chosen.P, chosen.Q, chosen.R) == (1, 1, 2)
        assert chosen.reason.startswith("cuboid: least predicted time")
    else:
        assert chosen.strategy == "inner" and chosen.num_mid_splits == 2
        assert chosen.reason.startswith("inner, 2 mid splits: least predicted time")
    assert "on 2 core(s)" in chosen.reason and "over budget: broadcast" in chosen.reason
    roomy = auto_strategy.plan(a, b, dataclasses.replace(options, memory_budget_bytes=1 << 30))
    assert roomy.strategy == "broadcast"
    # one core: nothing to stripe over; a mid split asked for by the caller is kept
    assert "inner, 2 mid splits" not in auto_strategy.candidate_plans(
        a, b, MultiplyOptions(memory_budget_bytes=1 << 30, num_cores=1))
    no_variant = auto_strategy.candidate_plans(a, b, MultiplyOptions(num_mid_splits=4, num_cores=2))
    assert set(no_variant) == {s.name for s in candidate_strategies()}


def test_predicted_time_counts_stages_bytes_and_the_busiest_task():
    a = dense_layout(2000, 2000, 1000, 1000, num_partitions=2, rows_aligned=True)
    plans = auto_strategy.candidate_plans(a, a, MultiplyOptions(num_cores=2))
    inner, broadcast = plans["inner"], plans["broadcast"]
    # both operands taken from Spark once (460 MB/s per core), then shuffled
    assert inner.predicted_seconds(2) == pytest.approx(
        2 * 0.1 + 0.15 + 2 * a.nbytes / (2 * 460e6) + inner.shuffle_bytes / 120e6
        + max(inner.max_task_compute_seconds, inner.compute_seconds / 2))
    assert broadcast.num_shuffles == 0
    # blocks only in Spark: collected (a stage of its own), then broadcast; the other operand
    # taken from Spark by the tasks
    assert broadcast.predicted_seconds(2) == pytest.approx(
        2 * 0.1 + a.nbytes / 143e6 + a.nbytes / 243e6 + a.nbytes / (2 * 460e6)
        + broadcast.max_task_compute_seconds)
    assert inner.predicted_seconds(1) > inner.predicted_seconds(2)


@pytest.mark.parametrize("cores", [0, -1, 1.5, True, "2"])
def test_num_cores_must_be_a_positive_integer(cores):
    with pytest.raises(InvalidParameterError, match=f"num_cores must be a positive integer.*"
                                                    f"got {cores!r}"):
        MultiplyOptions(num_cores=cores)


def test_auto_when_nothing_fits_takes_least_memory():
    a = dense_layout(400, 400, 100, 100)
    b = dense_layout(400, 400, 100, 100)
    report = explain_multiply(a, b, memory_budget_bytes=1000)
    assert "no plan fits" in report.auto_reason
    least = min((p for p in report.plans.values() if not p.unavailable),
                key=lambda p: p.max_task_memory_bytes)
    assert report.auto_choice == least.strategy
    with pytest.warns(PerformanceWarning, match="no plan fits the 1000 B task memory budget"):
        chosen = auto_strategy.plan(a, b, MultiplyOptions(memory_budget_bytes=1000))
    assert chosen.strategy == least.strategy


def test_report_prints_a_table():
    a = dense_layout(40, 30, 10, 10)
    b = dense_layout(30, 20, 10, 10)
    report = explain_multiply(a, b)
    text = str(report)
    for word in ("strategy", "shuffles", "records", "shuffle bytes", "read bytes", "task input",
                 "task memory", "task output", "flops", "predicted s", "auto pick", "why"):
        assert word in text
    for name in report.plans:
        assert name in text
    assert list(report.plans) == [s.name for s in multiplying_strategies()]
    rows = report.rows()
    assert sum(r["auto_choice"] for r in rows) == 1
    single = explain_multiply(a, b, strategy="outer")
    assert list(single.plans) == ["outer"]


def test_bad_input_is_rejected():
    a = dense_layout(40, 30, 10, 10)
    with pytest.raises(ShapeMismatchError, match="A.shape"):
        explain_multiply(a, a)
    with pytest.raises(UnknownStrategyError):
        explain_multiply(a, a.transpose(), strategy="nope")
    with pytest.raises(InvalidParameterError, match="memory_budget_bytes"):
        explain_multiply(a, a.transpose(), memory_budget_bytes=0)
    with pytest.raises(InvalidParameterError, match="unknown option"):
        explain_multiply(a, a.transpose(), num_parts=3)


def test_matrix_mult_partitioner_is_a_bijection():
    p = MatrixMultPartitioner(3, 4, 5)
    seqs = [p((i, j, ll)) for i in range(3) for j in range(5) for ll in range(4)]
    assert sorted(seqs) == list(range(p.num_partitions))
    with pytest.raises(InvalidParameterError):
        p((3, 0, 0))


def test_split_evenly_keeps_order_and_balances():
    for n_items in (0, 1, 5, 16, 17, 100):
        for slices in (1, 2, 3, 8):
            runs = split_evenly(list(range(n_items)), slices)
            assert len(runs) == slices
            assert [x for run in runs for x in run] == list(range(n_items))
            assert max(map(len, runs)) - min(map(len, runs)) <= 1


def test_broadcast_delivery_follows_the_operands_source(tmp_path):
    import numpy as np

    from blockmatrix.sources import DriverArray, HDF5Dataset

    a = dense_layout(2000, 2000, 1000, 1000, num_partitions=2, rows_aligned=True)
    held = dataclasses.replace(a, source=DriverArray(np.zeros(a.shape)))
    stored = dataclasses.replace(a, source=HDF5Dataset(str(tmp_path / "a.h5"), "/A", a.shape,
                                                       np.dtype(np.float64), (0, 0)))
    spark_only = explain_multiply(a, a, strategy="broadcast")["broadcast"]
    driver = explain_multiply(a, held, strategy="broadcast")["broadcast"]
    file = explain_multiply(a, stored, strategy="broadcast")["broadcast"]
    assert (spark_only.delivery, driver.delivery, file.delivery) == ("collect", "driver", "file")
    assert spark_only.collected_bytes == a.nbytes and driver.collected_bytes == 0
    assert driver.broadcast_bytes == a.nbytes and file.broadcast_bytes == 0
    # each of the 2 partitions (a block row of A each) meets all of B's blocks
    assert file.read_bytes == 2 * a.nbytes and spark_only.read_bytes == 0
    assert driver.predicted_seconds(2) == pytest.approx(
        spark_only.predicted_seconds(2) - 0.1 - a.nbytes / 143e6)
    assert "read by every task from its file" in file.note
    assert "from the driver's own array" in driver.note


def test_the_driver_writes_a_by_reference_operand_alone():
    """A driver-file operand costs one writer's write, not a write spread over the cores."""
    a = dense_layout(2000, 2000, 1000, 1000, num_partitions=2, rows_aligned=True)
    held = dataclasses.replace(a, source=DriverArray(np.zeros(a.shape)))
    options = MultiplyOptions(num_cores=2, by_reference=True, memory_budget_bytes=1 << 30)
    plan = get_strategy("broadcast").plan(a, held, options)
    assert plan.delivery == "driver-file" and plan.spilled_bytes == a.nbytes
    terms = plan.seconds_terms(2, Rates())
    assert terms["driver write"] == pytest.approx(a.nbytes / DRIVER_FILE_WRITE_BYTES_PER_S)
    assert terms["read"] == pytest.approx(plan.read_bytes / (2 * Rates().disk_bytes_per_core_s))
    slow = plan.seconds_terms(2, Rates(disk_bytes_per_core_s=Rates().disk_bytes_per_core_s / 10))
    assert slow["driver write"] == pytest.approx(10 * terms["driver write"])
    # an operand broadcast as before writes nothing
    by_value = get_strategy("broadcast").plan(a, held, dataclasses.replace(
        options, by_reference=False))
    assert "driver write" not in by_value.seconds_terms(2, Rates())


def test_the_report_predicts_every_plan_as_the_plan_does_ooc_too():
    # one function predicts seconds for plans and reports: ooc's terms (a stage and the busiest
    # core) used to be the plan's own while the report costed it as Spark stages
    def in_file(name, rows, cols):
        lay = dense_layout(rows, cols, 500, 500)
        return dataclasses.replace(lay, source=HDF5Dataset(
            "/nowhere.h5", name, (rows, cols), np.dtype("float64"), (1, 1)))

    a, b = in_file("/A", 4000, 3000), in_file("/B", 3000, 2500)
    options = MultiplyOptions(num_partitions=3, num_cores=3)  # tiles that do not deal evenly
    report = explain_layouts(a, b, None, options)
    assert not report["ooc"].unavailable
    for name, plan in report.plans.items():
        assert report.predicted_seconds(name) == plan.predicted_seconds(3)
    slow_disk = explain_layouts(a, b, None, options, Rates(disk_bytes_per_core_s=1e6))
    assert slow_disk.predicted_seconds("ooc") > 100 * report.predicted_seconds("ooc")
    # cuboid reads its file-backed operands too: only its read term changes
    cuboid = report["cuboid"]
    assert cuboid.read_bytes > 0 and cuboid.shuffle_bytes == 0
    assert slow_disk.predicted_seconds("cuboid") - report.predicted_seconds("cuboid") == \
        pytest.approx(cuboid.read_bytes / 3 * (1 / 1e6 - 1 / Rates().disk_bytes_per_core_s))
