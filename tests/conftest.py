"""Shared fixtures: one local[2] SparkContext for the whole session, numpy comparison helpers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from blockmatrix.session import spark_context


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
