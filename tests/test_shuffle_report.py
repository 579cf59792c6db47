"""jobs/shuffle_report.py as a user runs it: a subprocess on a tiny sweep, and bad arguments."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from jobrun import run_in_process, run_process

from blockmatrix.strategies import strategies_taking

JOB = Path(__file__).resolve().parent.parent / "jobs" / "shuffle_report.py"


def run_job(*args, timeout=600):
    return run_process(JOB, *args, timeout=timeout)


@pytest.mark.spark
@pytest.mark.slow
def test_tiny_sweep_writes_csv_json_png(tmp_path):
    out = tmp_path / "report"
    done = run_job(str(out), "--master", "local[2]", "--block-sizes", "20", "--grid", "2",
                   "--shapes", "square,1xN", "--densities", "1,0.5")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "shuffle_report.csv").open()))
    assert len(rows) == 2 * 2 * len(strategies_taking("driver"))  # shapes x densities
    for row in rows:
        assert row["predicted_shuffles"] == row["measured_shuffles"], row
    data = json.loads((out / "shuffle_report.json").read_text())
    assert len(data["rows"]) == len(rows) and data["config"]["grid"] == 2
    assert (out / "shuffle_report.png").read_bytes()[:4] == b"\x89PNG"
    assert "largest |measured/predicted - 1|" in done.stdout


@pytest.mark.parametrize("args,needle", [
    (["--block-sizes", "0"], "positive"),
    (["--densities", "1.5"], "outside (0, 1]"),
    (["--strategies", "inner,nope"], "'nope' is not one of"),
    (["--shapes", "round"], "'round' is not one of"),
    ([], None),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, needle):
    argv = [str(tmp_path / "x")] + args if args else []
    done = run_in_process(JOB, *argv)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shuffle_report.py: error:")
    if needle:
        assert needle in lines[0]
    assert not (tmp_path / "x").exists()


def test_out_dir_that_is_a_file_is_rejected(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    done = run_in_process(JOB, target)
    assert done.returncode == 2 and "not a folder" in done.stderr
