"""Shared plumbing of the command-line jobs: one-line errors and exit code 2 on bad input.

In the package (not beside the jobs) because the installed console scripts use it; it needs
nothing beyond the standard library, :mod:`blockmatrix.errors` and the master parsing of
:mod:`blockmatrix.session` (which imports pyspark only when it starts Spark).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from blockmatrix.errors import BlockMatrixError, InvalidParameterError
from blockmatrix.session import local_master_cores, under_spark_submit, usable_cores

#: Exit code for rejected input (arguments, files, shapes), as argparse uses.
EXIT_BAD_INPUT = 2


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str):
        """Print ``prog: error: message`` (one line) and exit with code 2."""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def program(job_file: str) -> str:
    """The name a job's messages start with: the console script's when it runs as one.

    argparse names a program after ``sys.argv[0]`` in the same way; a job run as
    ``python jobs/X.py``, in a test's process or from ``spark-submit`` keeps its file name.

    >>> program("multiply.py") in ("multiply.py", "blockmatrix-multiply")
    True
    """
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("blockmatrix-") else job_file


#: What ``--progress`` takes: the job's own lines, or Spark's console progress bar.
PROGRESS_CHOICES = ("lines", "spark")


def progress_conf(choice: str) -> dict[str, str]:
    """The Spark property ``--progress CHOICE`` sets: Spark's console bar only when asked for.

    >>> progress_conf("lines")
    {'spark.ui.showConsoleProgress': 'false'}
    """
    return {"spark.ui.showConsoleProgress": "true" if choice == "spark" else "false"}


#: What ``--runner`` takes: where an out-of-core run computes its tiles.
RUNNER_CHOICES = ("auto", "local", "spark")
RUNNER_HELP = ("out of core: where the tiles are computed. auto (default): in this process when "
               "the master is local (no JVM, no worker processes: every core on BLAS, the next "
               "slabs read while it runs), as Spark tasks otherwise; local: in this process; "
               "spark: as Spark tasks")


class _RunnerAction(argparse.Action):
    """Store ``--runner``'s choice, ``auto`` (the default) as None: no out-of-core flag given."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, None if value == "auto" else value)


def add_runner_argument(parser: argparse.ArgumentParser) -> None:
    """``--runner auto|local|spark``; ``--runner auto`` leaves ``args.runner`` None, as omitted.

    >>> parser = argparse.ArgumentParser()
    >>> add_runner_argument(parser)
    >>> [parser.parse_args(a).runner for a in ([], ["--runner", "auto"], ["--runner", "local"])]
    [None, None, 'local']
    """
    parser.add_argument("--runner", choices=RUNNER_CHOICES, default=None, action=_RunnerAction,
                        help=RUNNER_HELP)


def in_process_cores(runner: str | None, master: str | None) -> int | None:
    """BLAS threads of an out-of-core run in this process, or None to run it on Spark.

    ``--runner auto`` (None) runs in process exactly when the master is an embedded local one
    (:func:`~blockmatrix.session.local_master_cores`): Spark would run the tasks on this
    machine anyway, and the JVM and its Python workers only add their start and their memory.
    """
    if runner == "spark":
        return None
    cores = local_master_cores(master)
    if cores is None and runner == "local":
        if under_spark_submit():
            return usable_cores()
        raise InvalidParameterError(
            f"--runner local computes the tiles in this process, and --master {master} is a "
            f"cluster: drop --runner local to run the tiles as Spark tasks there, or pass a "
            f"local master such as --master 'local[*]'")
    return cores


def positive_int(text: str) -> int:
    """An argparse type: a positive integer.

    >>> positive_int("8")
    8
    """
    return _int_at_least(text, 1, "is not positive")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0.

    >>> non_negative_int("0")
    0
    """
    return _int_at_least(text, 0, "is negative")


def _int_at_least(text: str, minimum: int, problem: str) -> int:
    """``text`` as an integer >= ``minimum``; else an argparse error saying ``problem``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} {problem}: give an integer >= {minimum}")
    return value


def where_it_ran(cores: int | None, sc) -> str:
    """``master local[*]``, or ``in this process, no Spark, 2 BLAS threads``, for the last line."""
    if sc is not None:
        return f"master {sc.master}"
    return f"in this process, no Spark, {cores} BLAS thread{'s' if cores != 1 else ''}"


def given_flags(args, names: Sequence[str]) -> list[str]:
    """The ``--NAME`` flags among ``names`` that the command line gave (not None, not False).

    >>> given_flags(argparse.Namespace(tile=8, slab=None, resume=False), ("tile", "slab", "resume"))
    ['--tile']
    """
    return [f"--{name}" for name in names if getattr(args, name) not in (None, False)]


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None,
        prog: str) -> int:
    """Call ``main(argv)``; a :class:`BlockMatrixError` becomes one stderr line and exit 2."""
    try:
        return main(argv)
    except BlockMatrixError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
