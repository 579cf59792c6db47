"""cuboid against inner on a real standalone cluster of 4 one-core workers (loopback).

The product, 2048^2 in 128-blocks (16 x 16 x 16 blocks) planned for 64 tasks, is one where the
two differ: inner's 8 x 8 result grid sends every block to 8 tasks (16 |A| in all), cuboid's
4 x 4 x 4 cut every block to 4 and then 4 partials of every C block (12 |A|). At 16 tasks they
would tie (4 x 4 x 1 is cuboid's choice there, the same as inner's grid). Spark's measured
shuffle bytes are within 5% of each plan, and their ratio is the predicted one.
"""

from __future__ import annotations

import json

import pytest
from cluster import REPO, spark_submit, start_cluster

pytestmark = [pytest.mark.spark, pytest.mark.cluster, pytest.mark.slow]

DRIVER = REPO / "tests" / "cuboid_on_cluster.py"
N, BLOCK, TASKS = 2048, 128, 64


@pytest.fixture(scope="module")
def four_workers(tmp_path_factory):
    """A master and four workers of one core and 1 GB each."""
    cluster = start_cluster(tmp_path_factory.mktemp("spark-4-workers"),
                            worker_memory=("1g",) * 4, worker_cores=1)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_cuboid_moves_fewer_bytes_than_inner_as_predicted(four_workers):
    result = spark_submit(four_workers, DRIVER, N, BLOCK, TASKS, timeout=900,
                          executor_memory="768m")
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    print(json.dumps(out, indent=1))
    assert out["default_parallelism"] == 4
    inner, cuboid = out["inner"], out["cuboid"]
    assert cuboid["note"].startswith("cut 4 x 4 x 4")
    for run in (inner, cuboid):
        assert run["max_error"] < 1e-9
        assert run["measured_shuffles"] == run["predicted_shuffles"]
        assert abs(run["measured_bytes"] / run["predicted_bytes"] - 1) < 0.05, run
    predicted = cuboid["predicted_bytes"] / inner["predicted_bytes"]
    measured = cuboid["measured_bytes"] / inner["measured_bytes"]
    assert predicted == pytest.approx(0.75, rel=1e-3)
    assert measured == pytest.approx(predicted, rel=0.05)
    apps = four_workers.state().get("completedapps", [])
    assert any(app.get("cores", 0) >= 4 for app in apps), apps
