"""notebooks/shuffle_volume.ipynb runs top to bottom on the venv's interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_notebook

pytestmark = [pytest.mark.spark, pytest.mark.slow]  # the notebook starts local Spark: minutes

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "shuffle_volume.ipynb"


def test_notebook_runs_and_the_plans_match_spark(venv_kernel):
    text, images = run_notebook(NOTEBOOK, venv_kernel)
    # from_numpy operands on a local master: auto multiplies them on the driver
    assert "auto pick: driver" in text
    assert "predicted stage counts all measured: True" in text
    worst = float(text.split("largest |measured / predicted - 1| = ")[1].split(";")[0])
    assert worst < 0.05
    assert images == 2
