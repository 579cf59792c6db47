"""Property tests: every product equals numpy / scipy, or a typed error comes before any job.

Hypothesis draws shapes (up to 60 x 60), block sizes (grids of 1 to 3 blocks), densities,
dtypes (float32, float64), formats (dense, CSR), operand sources (the driver, HDF5 files) and a
strategy from the registry (read when the module is collected, so a new strategy is drawn with
no edit here), sometimes with non-conforming shapes or block sizes, or a memory budget too
small for the blocks. Each example either computes ``A @ B`` exactly as numpy does
(``conftest.assert_eq``), or raises a :class:`~blockmatrix.errors.BlockMatrixError` before
Spark ran any job for it (the job ids of the test's job group before and after); a refusal of a
request that was valid is a failure.

The examples are derandomized (the same 200 in every run) and share the session's context.
"""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest
from conftest import assert_eq, dense
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockmatrix import BlockMatrix, strategies
from blockmatrix.errors import (
    BlockMatrixError,
    BlockSizeMismatchError,
    InvalidParameterError,
    ShapeMismatchError,
)
from blockmatrix.samples import random_matrix

#: The registry as collected; a strategy that reads only files gets file operands.
STRATEGY_NAMES = sorted(strategies.STRATEGIES)
EXAMPLES = 200
GROUP = "blockmatrix-property-tests"
_counter = itertools.count()


def sources_of(name: str) -> list[str]:
    taken = strategies.get_strategy(name).operand_sources
    return [s for s in ("driver", "file") if s in taken]


@st.composite
def requests(draw):
    """One product request: operands (numpy / scipy), block sizes, strategy, options."""
    name = draw(st.sampled_from(STRATEGY_NAMES))
    source = draw(st.sampled_from(sources_of(name)))
    n, m, k = (draw(st.integers(1, 60)) for _ in range(3))
    # Grids of 1 to 3 blocks along each axis, edge blocks ragged: strategies whose tasks grow
    # with the block triples (pasa) stay at a few dozen tasks.
    rows, inner, cols = (draw(st.integers(-(-d // 3), d + 3)) for d in (n, m, k))
    flaw = draw(st.sampled_from(["none"] * 8 + ["inner dimension", "inner block", "budget"]))
    m_b = m + draw(st.integers(1, 5)) if flaw == "inner dimension" else m
    inner_b = inner + draw(st.integers(1, 4)) if flaw == "inner block" else inner
    dtypes = [draw(st.sampled_from(["float64", "float32"])) for _ in range(2)]
    formats = ["dense", "dense"] if source == "file" else [
        draw(st.sampled_from(["dense", "csr"])) for _ in range(2)]
    stored = [draw(st.sampled_from([1.0, 0.6, 0.3])) for _ in range(2)]
    fill = [draw(st.sampled_from([1.0, 0.5, 0.1])) if f == "csr" else 1.0 for f in formats]
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    a = random_matrix((n, m), (rows, inner), rng, stored=stored[0], fill=fill[0],
                      format=formats[0], dtype=dtypes[0])
    b = random_matrix((m_b, k), (inner_b, cols), rng, stored=stored[1], fill=fill[1],
                      format=formats[1], dtype=dtypes[1])
    budget = draw(st.integers(64, 4096)) if flaw == "budget" else None
    return dict(name=name, source=source, a=a, b=b, blocks=((rows, inner), (inner_b, cols)),
                flaw=flaw, budget=budget, splits=draw(st.integers(1, 3)))


def operand(sc, x, block, source, folder, label):
    if source == "driver":
        return BlockMatrix.from_numpy(sc, x, *block)
    path = folder / f"{label}-{next(_counter)}.h5"
    with h5py.File(path, "w") as f:
        f["X"] = dense(x)
    return BlockMatrix.from_hdf5(sc, str(path), "/X", *block)


def group_jobs(sc) -> set[int]:
    return set(sc.statusTracker().getJobIdsForGroup(GROUP))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("property-operands")


@pytest.mark.filterwarnings("ignore::blockmatrix.errors.PerformanceWarning")  # tiny budgets
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(request=requests())
def test_every_product_equals_numpy_or_is_refused_before_any_job(sc, folder, request):
    sc.setJobGroup(GROUP, "property tests", interruptOnCancel=False)
    A = operand(sc, request["a"], request["blocks"][0], request["source"], folder, "a")
    B = operand(sc, request["b"], request["blocks"][1], request["source"], folder, "b")
    before = group_jobs(sc)
    try:
        C = A.multiply(B, strategy=request["name"], num_mid_splits=request["splits"],
                       num_partitions=2, memory_budget_bytes=request["budget"])
    except BlockMatrixError as exc:
        assert group_jobs(sc) == before, f"{type(exc).__name__} after a Spark job: {exc}"
        expected_error = {"none": (), "inner dimension": ShapeMismatchError,
                          "inner block": BlockSizeMismatchError,
                          "budget": InvalidParameterError}[request["flaw"]]
        assert expected_error and isinstance(exc, expected_error), (request["flaw"], exc)
        return
    assert request["flaw"] in ("none", "budget"), f"{request['flaw']} was not refused"
    a, b = request["a"], request["b"]
    expected = a @ b
    assert_eq(dense(C.to_numpy()), dense(expected),
              dtype=np.result_type(a.dtype, b.dtype))
