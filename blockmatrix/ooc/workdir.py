"""The work folder beside the output, and the lock that keeps a second job off the output.

The work folder ``.NAME.DATASET.gram-work/`` holds the durable record of a run's progress:

* ``tile-IIIII-JJJJJ.npy``: a finished tile, written by its task under a temporary name
  (``...tmp-PID-RANDOM``) and renamed, so that a tile file either is complete or does not
  exist (:func:`save_tile`, read back by :func:`finished_tiles`);
* ``tile-IIIII-JJJJJ.progress``: ``SLABS_DONE SLABS_TOTAL`` of a running task
  (:func:`write_progress_note`, read by :func:`running_flops`);
* ``output.h5``: a new output file being written, linked into place at the end;
* ``state.json``: the resume state (:mod:`blockmatrix.ooc.request`).

Tasks write tile files and notes; only the driver reads them. The lock ``.NAME.gram-lock``
(:func:`output_lock`) is held by the driver for the whole run.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..io.lock import lock_path_of, output_lock
from .tiles import Tile

__all__ = [
    "finished_tiles",
    "npy_header",
    "output_lock",
    "running_flops",
    "save_tile",
    "work_paths",
    "write_progress_note",
]

#: Name of a new output file while it is written, inside the work folder.
STAGED_OUTPUT = "output.h5"


def work_paths(output_path: str, output_dataset: str) -> tuple[str, str]:
    """The work folder and the lock file of a run, both beside the output file.

    >>> work_paths("/data/x.h5", "/grp/Y")
    ('/data/.x.h5.grp__Y.gram-work', '/data/.x.h5.gram-lock')
    """
    folder, base = os.path.split(os.path.abspath(output_path))
    tag = output_dataset.strip("/").replace("/", "__")
    return os.path.join(folder, f".{base}.{tag}.gram-work"), lock_path_of(output_path)


# ---------------------------------------------------------------------- written by tasks

def note_path(work_dir: str, tile: Tile) -> str:
    """The progress note of a running tile's task."""
    return os.path.join(work_dir, Path(tile.name).stem + ".progress")


def write_progress_note(path: str, done: int, total: int) -> None:
    """Replace the note at ``path`` with ``done total`` (slabs), atomically."""
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{done} {total}\n")
    os.replace(tmp, path)


def save_tile(acc: np.ndarray, work_dir: str, tile: Tile) -> str:
    """Write a finished tile under a temporary name, then rename it into place."""
    final = os.path.join(work_dir, tile.name)
    tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, acc, allow_pickle=False)
    except OSError:
        with contextlib.suppress(OSError):  # a full disk: give its space back at once
            os.unlink(tmp)
        raise
    os.replace(tmp, final)
    return final


# ----------------------------------------------------------------------- read by the driver

def npy_header(path: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of a ``.npy`` file (reads the header only)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        return tuple(shape), bool(fortran), np.dtype(dtype), f.tell()


def _tile_file_ok(path: str, tile: Tile, dtype: np.dtype) -> bool:
    """Whether ``path`` holds a complete tile of the right shape and dtype."""
    try:
        shape, _, file_dtype, offset = npy_header(path)
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return False
    return (tuple(shape) == (tile.rows, tile.cols) and np.dtype(file_dtype) == dtype
            and size == offset + tile.rows * tile.cols * dtype.itemsize)


def finished_tiles(work_dir: str, tiles: Iterable[Tile], dtype) -> set[tuple[int, int]]:
    """Indices of the tiles whose files in ``work_dir`` are complete."""
    by_name = {t.name: t for t in tiles}
    dt = np.dtype(dtype)
    try:
        names = os.listdir(work_dir)
    except FileNotFoundError:
        return set()
    return {(by_name[n].i, by_name[n].j) for n in names
            if n in by_name and _tile_file_ok(os.path.join(work_dir, n), by_name[n], dt)}


def running_flops(work_dir: str, tiles: Iterable[Tile], k: int, done: set) -> float:
    """Flops done so far by the tasks of ``tiles`` not in ``done``, from their notes."""
    flops = 0.0
    for t in tiles:
        if (t.i, t.j) in done:
            continue
        try:
            slabs, total = Path(note_path(work_dir, t)).read_text().split()
            flops += t.flops(k) * int(slabs) / max(1, int(total))
        except (OSError, ValueError):
            continue
    return flops


def clean_partial_files(work_dir: str) -> None:
    """Remove what killed tasks and writers left half-done (temporary tiles, progress notes)."""
    for name in os.listdir(work_dir):
        if ".tmp-" in name or name.endswith(".progress") or name == STAGED_OUTPUT:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(work_dir, name))
