"""Shared fixtures: one local[2] SparkContext for the session, the markers, numpy comparisons.

Markers (registered in pytest.ini): ``spark`` on every test that starts Spark, ``cluster`` on
those that start a standalone cluster, ``slow`` on those that take more than about 20 s. A test
gets ``spark`` (and ``cluster``) here, from the fixtures it uses; a test that starts Spark only
in a subprocess (a job, the notebook) is marked in its module. ``pytest -m "not spark"`` then
runs the Spark-free part, and cannot start a JVM by mistake: a test not marked ``spark`` runs
with ``JAVA_HOME`` pointing nowhere, so a Spark it starts, in this process or a child, fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from blockmatrix.session import spark_context

#: Fixtures that start Spark: the session's local context, and the standalone clusters of
#: tests/cluster.py (``standalone_cluster``) and tests/test_faults.py (``cluster``).
SPARK_FIXTURES = {"sc"}
CLUSTER_FIXTURES = {"standalone_cluster", "cluster"}

#: Tests that start Spark only in a job subprocess, in a module this file marks for now
#: because its owner is splitting it (tests/test_gram.py): move the marks there.
MARKED_HERE = {
    "test_gram.py::test_resume_after_kill_while_writing_into_the_input_file": ("spark", "slow"),
    "test_gram.py::test_resume_after_kill_during_the_tasks": ("slow",),
}

#: Where ``JAVA_HOME`` points for a test not marked ``spark`` (spark-class runs
#: ``$JAVA_HOME/bin/java``; the path names the problem in the error it prints).
NO_JAVA_HOME = "/nonexistent/this-test-is-not-marked-spark"


def pytest_collection_modifyitems(config, items):
    """Mark ``spark`` / ``cluster`` / ``slow`` from the fixtures each test uses."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        names = [name for key, marks in MARKED_HERE.items() if item.nodeid.endswith(key)
                 for name in marks]
        if fixtures & CLUSTER_FIXTURES or item.get_closest_marker("cluster"):
            names += ["spark", "cluster", "slow"]  # a cluster and spark-submit: minutes
        elif fixtures & SPARK_FIXTURES:
            names.append("spark")
        for name in dict.fromkeys(names):
            item.add_marker(name)


@pytest.fixture(autouse=True)
def _no_jvm_unless_marked_spark(request, monkeypatch):
    """Make a test that starts Spark without the ``spark`` marker fail instead of passing."""
    if request.node.get_closest_marker("spark") is None:
        monkeypatch.setenv("JAVA_HOME", NO_JAVA_HOME)


@pytest.fixture(scope="session")
def sc():
    """A real local[2] SparkContext configured from conf/, shared by every Spark test."""
    context = spark_context("local[2]", app_name="blockmatrix-tests",
                            extra_conf={"spark.ui.showConsoleProgress": "false"})
    context.setLogLevel("ERROR")
    yield context
    context.stop()


def dense(x) -> np.ndarray:
    """A dense ndarray from a dense or sparse result."""
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def assert_eq(actual, expected, dtype=None) -> None:
    """Compare a result with numpy's, with a tolerance fit for the result's dtype."""
    actual, expected = dense(actual), dense(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if dtype is not None:
        assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    tol = 1e-4 if actual.dtype == np.float32 else 1e-10
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)
