"""Parquet tables as job inputs and outputs: checked before Spark, published when complete.

A matrix in Parquet is a table of coordinates ``(i, j, v)`` or of rows ``(i, vector)``, as
:meth:`~blockmatrix.BlockMatrix.to_coordinates` and :meth:`~blockmatrix.BlockMatrix.to_rows`
write them (with the matrix's shape in the column metadata). Spark writes a Parquet "file" as
a folder of part files, one per task; :func:`write_published` has the tasks write into a
staging folder beside the output and renames it into place only after the last task finished,
so an output folder never looks complete before it is (a killed write leaves the staging
folder, which the next write removes). Paths are file system paths: on a cluster, storage every
executor sees.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..errors import (
    InputNotFoundError,
    InvalidInputError,
    OutputExistsError,
    OutputNotWritableError,
)
from .hdf5 import STAGING_TAG, can_create_in
from .lock import lock_path_of, output_lock

#: What a ``parquet:`` location starts with.
PREFIX = "parquet:"


def parse_location(spec: str, param: str = "location") -> str:
    """The path of a ``parquet:PATH`` location.

    >>> parse_location("parquet:data/a.parquet")
    'data/a.parquet'
    """
    path = spec[len(PREFIX):] if spec.startswith(PREFIX) else ""
    if not path:
        raise InvalidInputError(
            f"{param} ({spec!r}) is not of the form parquet:PATH: give the table's folder or "
            f"file, e.g. 'parquet:data/a.parquet'")
    return path


def check_input(path: str, param: str = "input") -> None:
    """Refuse, before Spark starts, a table that is not there or still being written.

    The columns and values are checked when the table is read (one aggregate job, by
    :meth:`~blockmatrix.BlockMatrix.from_coordinates` or ``from_rows``).
    """
    if not os.path.exists(path):
        raise InputNotFoundError(f"{param} Parquet table {path!r} does not exist: check the path")
    if os.path.isdir(path) and not any(
            name.endswith(".parquet") for name in os.listdir(path)):
        raise InvalidInputError(
            f"{param} folder {path!r} holds no .parquet part files: give a table written by "
            f"Spark (df.write.parquet) or a .parquet file")


def check_output(path: str, overwrite: bool = False, param: str = "output") -> None:
    """Check, without writing anything, that a Parquet table can be written at ``path``.

    Raises
    ------
    OutputExistsError
        Something exists at ``path`` and ``overwrite`` is False.
    OutputNotWritableError
        The folder does not exist or is not writable, or ``path`` is a file that is not a
        Parquet table.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputNotWritableError(
            f"{param} folder {str(folder)!r} does not exist: create it or choose another path")
    if not can_create_in(folder):
        raise OutputNotWritableError(
            f"{param} folder {str(folder)!r} is not writable: choose a writable location")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"{param} {str(target)!r} already exists: pass --overwrite to replace it, or "
                f"choose another path")
        if not target.is_dir():
            raise OutputNotWritableError(
                f"{param} {str(target)!r} exists and is not a folder written by Spark; it will "
                f"not be replaced: remove it or choose another path")


def staging_path(path: str, what: str = "staging") -> str:
    """The staging (or replaced) folder beside a Parquet output.

    >>> staging_path("/data/c.parquet")
    '/data/.c.parquet.blockmatrix-staging'
    """
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{STAGING_TAG if what == 'staging' else what}")


def clean_leftovers(path: str) -> list[str]:
    """Remove what an interrupted writer of ``path`` left (call it holding the lock)."""
    removed = []
    for leftover in (staging_path(path), staging_path(path, "blockmatrix-replaced")):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover)
            removed.append(leftover)
    return removed


def write_published(df, path: str, overwrite: bool = False, job: str = "multiply") -> None:
    """Write the DataFrame ``df`` as a Parquet table at ``path``, published when complete.

    Holds the output's lock throughout (one writer per output). The tasks write into a
    staging folder; then a new output is renamed into place, and an existing one (with
    ``overwrite``) is first renamed aside, then removed once the new one is in place. Killed
    at any point, no folder at ``path`` holds part of the new table.
    """
    with output_lock(lock_path_of(path), path, job=job):
        check_output(path, overwrite=overwrite)
        clean_leftovers(path)
        staged = staging_path(path)
        try:
            df.write.parquet(staged)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(staged)
            raise
        replaced = staging_path(path, "blockmatrix-replaced")
        if os.path.exists(path):
            os.rename(path, replaced)
        os.rename(staged, path)
        if os.path.exists(replaced):
            shutil.rmtree(replaced)
