"""notebooks/shuffle_volume.ipynb runs top to bottom on the venv's interpreter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.spark, pytest.mark.slow]  # the notebook starts local Spark: minutes

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "shuffle_volume.ipynb"


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A kernel spec, in a private folder, that runs this very interpreter."""
    spec = tmp_path / "kernels" / "blockmatrix-test"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "blockmatrix test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "blockmatrix-test"


def test_notebook_runs_and_the_plans_match_spark(venv_kernel):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name=venv_kernel,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("name") == "stdout")
    assert "auto pick: broadcast" in text
    assert "predicted stage counts all measured: True" in text
    worst = float(text.split("largest |measured / predicted - 1| = ")[1].split(";")[0])
    assert worst < 0.05
    images = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) == 2
