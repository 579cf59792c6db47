"""Shared fixtures: one local[2] SparkContext for the session, the markers, numpy comparisons.

Markers (registered in pytest.ini): ``spark`` on every test that starts Spark, ``cluster`` on
those that start a standalone cluster, ``slow`` on those that take more than about 20 s. A test
gets ``spark`` (and ``cluster``) here, from the fixtures it uses; a test that starts Spark only
in a subprocess (a job, the notebook) is marked in its module, and one marked ``cluster`` there
gets ``spark`` and ``slow`` here. ``pytest -m "not spark"`` then runs the Spark-free part, and
cannot start a JVM by mistake: a test not marked ``spark`` runs (its fixtures' set-up included)
with ``JAVA_HOME`` pointing nowhere, so a Spark it starts, in this process or a child, fails.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from blockmatrix.session import spark_context

#: Fixtures that start Spark: the session's local context, and the standalone clusters of
#: tests/cluster.py (``standalone_cluster``) and tests/test_faults.py (``cluster``).
SPARK_FIXTURES = {"sc"}
CLUSTER_FIXTURES = {"standalone_cluster", "cluster"}

#: Where ``JAVA_HOME`` points for a test not marked ``spark`` (spark-class runs
#: ``$JAVA_HOME/bin/java``; the path names the problem in the error it prints).
NO_JAVA_HOME = "/nonexistent/this-test-is-not-marked-spark"


def pytest_collection_modifyitems(config, items):
    """Mark ``spark`` / ``cluster`` / ``slow`` from the fixtures each test uses."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        names = []
        if fixtures & CLUSTER_FIXTURES or item.get_closest_marker("cluster"):
            names += ["spark", "cluster", "slow"]  # a cluster and spark-submit: minutes
        elif fixtures & SPARK_FIXTURES:
            names.append("spark")
        for name in dict.fromkeys(names):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Make a test that starts Spark without the ``spark`` marker fail instead of passing.

    A hook around the whole test rather than a fixture, so that a module- or session-scoped
    fixture set up for an unmarked test (a cluster, say) is denied Java too.
    """
    if item.get_closest_marker("spark") is not None:
        return (yield)
    saved = os.environ.get("JAVA_HOME")
    os.environ["JAVA_HOME"] = NO_JAVA_HOME
    try:
        return (yield)
    finally:
        if saved is None:
            os.environ.pop("JAVA_HOME", None)
        else:
            os.environ["JAVA_HOME"] = saved


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


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A Jupyter kernel spec, in a private folder, that runs this very interpreter."""
    spec = tmp_path / "kernels" / "blockmatrix-test"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "blockmatrix test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "blockmatrix-test"


def run_notebook(path: Path, kernel: str) -> tuple[str, int]:
    """Execute a notebook top to bottom in its folder; its stdout text and number of images."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name=kernel,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", [])]
    text = "\n".join(out.get("text", "") for out in outputs if out.get("name") == "stdout")
    return text, sum("image/png" in out.get("data", {}) for out in outputs)
