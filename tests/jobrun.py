"""Running the command-line jobs from tests: as a real process, or in this one.

A job's refusal happens before Spark starts, so most refusal tests need no new interpreter: a
fresh Python spends most of a second importing numpy, scipy and h5py before it reads its first
argument, and the suite runs about a hundred refusals. :func:`run_in_process` runs the job's file
as ``__main__`` here (``runpy``), with ``sys.argv``, the working folder, stdout and stderr swapped
for the call, and returns what :func:`run_process` returns for a real process. Each job keeps at
least one test that runs it as a real process, so the exit code and the single stderr line are
also checked as a shell sees them.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"


def run_process(script: Path, *args, cwd=None, env=None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python script args...`` as a process; text output captured."""
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_in_process(script: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    """Run ``script`` as ``__main__`` in this interpreter, as :func:`run_process` would.

    The exit code is the job's ``SystemExit`` code (0 when it returns); an exception that
    escapes the job becomes exit code 1 with its traceback on stderr, as Python prints it.
    Only for runs that end before Spark starts: a job that gets as far as starting Spark here
    would start it in the test's own process (and, in a test not marked ``spark``, fail to,
    since such a test runs without Java).
    """
    argv = [str(script), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    if str(JOBS) not in sys.path:
        sys.path.insert(0, str(JOBS))  # the jobs import their plumbing as _support
    code = 0
    try:
        sys.argv = argv
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as done:
                code = exit_code(done.code, err)
            except Exception:  # noqa: BLE001 (reported as the interpreter would)
                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def exit_code(code, stderr: io.StringIO) -> int:
    """The process exit code ``sys.exit(code)`` gives: a message goes to stderr, exit 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=stderr)
    return 1
