"""blockmatrix.progress: one line per finished stage, short stages included."""

from __future__ import annotations

import time

from blockmatrix.progress import StageProgress


def test_a_line_per_finished_stage_even_shorter_than_a_poll(sc):
    lines = []
    with StageProgress(sc, flops=1e9, emit=lines.append, interval=5.0):
        # two jobs, the second with a shuffle: three stages, all far shorter than a poll
        assert sc.parallelize(range(8), 4).map(lambda x: (time.sleep(0.05), x * x)[1]).sum() == 140
        counts = sc.parallelize(range(40), 4).map(lambda x: (x % 5, 1)).reduceByKey(
            lambda a, b: a + b, 2).collectAsMap()
    assert counts == {k: 8 for k in range(5)}
    # (how many stages each line has seen depends on when the polls fell)
    assert [line.split("/")[0] for line in lines] == ["stage 1", "stage 2", "stage 3"], lines
    assert lines[-1].startswith("stage 3/3 done (tasks 10/10)") and "GFLOP/s" in lines[-1]


def test_stages_before_the_block_are_not_watched(sc):
    sc.parallelize(range(4), 2).count()
    lines = []
    with StageProgress(sc, emit=lines.append):
        pass
    assert lines == []
