"""A job run in the test's process ends as the same job run as a real process.

The refusal tables run the jobs in process (tests/jobrun.py); this checks, for every job, that a
refusal looks the same both ways: exit code, stdout and the one stderr line.
"""

from __future__ import annotations

import pytest
from jobrun import JOBS, run_in_process, run_process

#: A refusal of each job: argparse's (an unknown flag) for every job, plus a refusal that
#: reaches the job's own checks (a BlockMatrixError turned into one line by
#: blockmatrix.cli.common.run).
REFUSALS = [(script.name, ["--no-such-flag"]) for script in sorted(JOBS.glob("*.py"))] + [
    ("multiply.py", ["{d}/missing.h5::/A", "{d}/missing.h5::/B", "{d}/C.h5::/C",
                     "--block-size", "8"]),
    ("gram.py", ["{d}/missing.h5::/X", "{d}/y.h5::/Y"]),
    ("bench_gram.py", ["--contenders", "numpy,nope", "--data", "{d}/data"]),
    ("plan.py", ["--a", "64x32", "--b", "64x64", "--block", "8", "--cores", "4",
                 "--task-memory", "1g"]),
]


@pytest.mark.parametrize("job, args", REFUSALS,
                         ids=[f"{job} {' '.join(args)[:30]}" for job, args in REFUSALS])
def test_in_process_run_ends_as_the_process_does(tmp_path, job, args):
    argv = [a.format(d=tmp_path) for a in args]
    as_process = run_process(JOBS / job, *argv, timeout=120)
    in_process = run_in_process(JOBS / job, *argv)
    assert as_process.returncode == 2, as_process.stderr
    assert as_process.stderr.count("\n") == 1, as_process.stderr
    assert (in_process.returncode, in_process.stdout, in_process.stderr) == (
        as_process.returncode, as_process.stdout, as_process.stderr)
    assert list(tmp_path.iterdir()) == []


def test_an_exception_escaping_the_job_is_exit_1_with_its_traceback(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("print('before')\nraise RuntimeError('boom')\n")
    done = run_in_process(script)
    assert (done.returncode, done.stdout) == (1, "before\n")
    assert done.stderr.startswith("Traceback") and "RuntimeError: boom" in done.stderr
