"""notebooks/cluster_planning.ipynb runs top to bottom on the venv's interpreter, without Spark."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_notebook

pytestmark = pytest.mark.slow  # Spark-free, but a kernel and the whole notebook: 20-30 s

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "cluster_planning.ipynb"


def test_planning_notebook_runs_and_cuboid_stays_near_the_bound(venv_kernel):
    text, images = run_notebook(NOTEBOOK, venv_kernel)
    assert "every cuboid plan fits its task memory: True" in text
    worst = {name: float(text.split(f"{name} / bound at most ")[1].split()[0])
             for name in ("cuboid", "inner")}
    assert 1.0 <= worst["cuboid"] <= 2.0 and worst["inner"] > 2.0  # issue 12, item 4's goal
    assert "cuboid within 2x of the bound in 30 of 30 square cases" in text
    assert "x bound" in text and "pyspark" not in text
    assert images == 3
