"""Every check of a Y = X X^T request before anything is written, and the resume state.

:func:`check_gram_request` reads metadata only and writes nothing: a request it accepts names
an input X that BLAS can multiply, an output that may be written, and sizes that fit the
interrupted run being resumed, if any. That run's state is ``state.json`` in the work folder
(:func:`read_state`, :func:`write_state`): what it was asked, a stamp of its input, and its
phase (``computing`` while tasks run, ``finalizing`` once Y is the run's to rewrite).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from ..errors import (
    InvalidInputError,
    InvalidParameterError,
    OutputExistsError,
    OutputNotWritableError,
)
from ..io import hdf5
from .tiles import DEFAULT_SLAB, DEFAULT_TILE, GramPlan, check_positive, plan_gram
from .workdir import clean_partial_files, finished_tiles, work_paths

__all__ = ["GramRequest", "check_gram_request", "plan_request", "start_state", "write_state"]

#: Supported dtypes of X (and Y): BLAS has syrk/gemm for these.
SUPPORTED_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))

STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class GramRequest:
    """A validated request: where X is, where Y goes, the sizes, and the interrupted run's state.

    Built by :func:`check_gram_request`, which reads metadata only and writes nothing.
    """

    input_path: str
    input_dataset: str
    output_path: str
    output_dataset: str
    shape: tuple[int, int]
    dtype: str
    chunks: tuple[int, int] | None
    tile: int
    slab: int
    resume: bool
    overwrite: bool
    same_file: bool
    work_dir: str
    lock_path: str
    state: dict | None = None

    @property
    def input_location(self) -> str:
        """``FILE::/dataset`` of X."""
        return f"{self.input_path}::{self.input_dataset}"

    @property
    def output_location(self) -> str:
        """``FILE::/dataset`` of Y."""
        return f"{self.output_path}::{self.output_dataset}"


def input_stamp(path: str) -> list[int]:
    """Size and modification time of the input: a resumed run refuses a changed X."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def read_state(work_dir: str) -> dict | None:
    """The interrupted run's state in ``work_dir``, or None (none, unreadable, other version)."""
    try:
        with open(os.path.join(work_dir, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if state.get("version") == STATE_VERSION else None


def write_state(work_dir: str, state: dict) -> None:
    """Replace ``state.json`` in ``work_dir`` atomically and durably (fsync before rename)."""
    final = os.path.join(work_dir, "state.json")
    tmp = f"{final}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def check_state(state: dict, input_path: str, input_dataset: str, output_path: str,
                shape, dtype, tile: int | None, slab: int | None) -> None:
    """Refuse to resume a run whose state does not belong to this request."""
    expected = {"input": os.path.abspath(input_path), "input_dataset": input_dataset,
                "output": os.path.abspath(output_path), "shape": list(shape),
                "dtype": np.dtype(dtype).name}
    for key, value in expected.items():
        if state.get(key) != value:
            raise InvalidParameterError(
                f"resume: the interrupted run had {key} {state.get(key)!r}, this request has "
                f"{value!r}: repeat the interrupted request, or run without --resume to start "
                f"over")
    for name, given in (("tile", tile), ("slab", slab)):
        if given is not None and given != state[name]:
            raise InvalidParameterError(
                f"resume: --{name} ({given}) differs from the interrupted run's ({state[name]}): "
                f"omit --{name} to continue with {state[name]}, or run without --resume")
    if state.get("phase") == "computing" and state.get("input_stamp") != input_stamp(
            input_path):
        raise InvalidInputError(
            f"resume: input file {input_path!r} changed since the interrupted run (size or "
            f"modification time): its finished tiles cannot be reused; run without --resume")


def check_gram_request(input_path: str, input_dataset: str, output_path: str,
                       output_dataset: str, tile: int | None = None, slab: int | None = None,
                       resume: bool = False, overwrite: bool = False) -> GramRequest:
    """Validate a Y = X X^T request without writing anything.

    Parameters
    ----------
    input_path, input_dataset : str
        Location of X (2-D, float64 or float32).
    output_path, output_dataset : str
        Location of Y; the file may be the input file.
    tile, slab : int, optional
        Sizes; ``None`` means the default, or the interrupted run's value when resuming.
    resume : bool
        Continue an interrupted run from its finished tiles.
    overwrite : bool
        Replace an existing Y.

    Returns
    -------
    GramRequest

    Raises
    ------
    InvalidParameterError
        A size is not positive, Y would replace X, or a resumed run does not match.
    InputNotFoundError, InvalidInputError
        X is missing, not 2-D, not float32/float64, or changed since the interrupted run.
    OutputExistsError
        Y exists and ``overwrite`` is False.
    OutputNotWritableError
        The output file or its folder cannot be written.
    """
    if tile is not None:
        tile = check_positive(tile, "tile")
    if slab is not None:
        slab = check_positive(slab, "slab")
    shape, dtype, chunks = _inspect_x(input_path, input_dataset)
    same_file = os.path.exists(output_path) and os.path.samefile(input_path, output_path)
    if same_file and output_dataset == input_dataset:
        raise InvalidParameterError(
            f"output ({output_path}::{output_dataset}) is the input dataset X: writing Y there "
            f"would destroy X; choose another output dataset name")
    work_dir, lock_path = work_paths(output_path, output_dataset)
    state = read_state(work_dir) if resume else None
    if state is not None:
        check_state(state, input_path, input_dataset, output_path, shape, dtype, tile, slab)
        tile, slab = state["tile"], state["slab"]
        overwrite = overwrite or state.get("overwrite", False) or state.get("y_ours", False)
    _check_output(output_path, output_dataset, overwrite, resume, work_dir)
    return GramRequest(
        input_path=str(input_path), input_dataset=input_dataset, output_path=str(output_path),
        output_dataset=output_dataset, shape=tuple(shape), dtype=np.dtype(dtype).name,
        chunks=tuple(chunks) if chunks is not None else None,
        tile=int(tile if tile is not None else DEFAULT_TILE),
        slab=int(slab if slab is not None else DEFAULT_SLAB), resume=resume,
        overwrite=overwrite, same_file=same_file, work_dir=work_dir, lock_path=lock_path,
        state=state)


def _inspect_x(input_path: str, input_dataset: str) -> tuple:
    """Shape, dtype and chunks of X, refused unless BLAS can compute X X^T from it."""
    shape, dtype, chunks = hdf5.inspect_input(input_path, input_dataset, "input",
                                              float_only=True)
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise InvalidInputError(
            f"input {input_path}::{input_dataset} has dtype {dtype}: BLAS computes X X^T in "
            f"float64 or float32 only; convert X to one of them first")
    if shape[0] == 0:
        raise InvalidInputError(
            f"input {input_path}::{input_dataset} has no rows (shape {shape}): Y would be empty")
    return shape, dtype, chunks


def _check_output(output_path: str, output_dataset: str, overwrite: bool, resume: bool,
                  work_dir: str) -> None:
    """Refuse an existing Y (unless ``overwrite``) and an output folder that is not writable."""
    try:
        hdf5.check_output(output_path, output_dataset, overwrite=overwrite, param="output")
    except OutputExistsError as exc:
        if not resume and read_state(work_dir) is not None:
            raise OutputExistsError(
                f"{exc}; it may be the incomplete Y of an interrupted run, whose work is in "
                f"{work_dir!r}: pass --resume to finish that run") from None
        raise
    folder = os.path.dirname(os.path.abspath(output_path))
    if not hdf5.can_create_in(folder):
        raise OutputNotWritableError(
            f"output folder {folder!r} is not writable: the job keeps its finished tiles and "
            f"lock beside the output; choose an output in a writable folder")


def plan_request(request: GramRequest, concurrent_tasks: int = 2,
                 threads_per_task: int = 1) -> GramPlan:
    """The plan of a validated request, counting the tiles an interrupted run finished."""
    plan = plan_gram(request.shape, request.dtype, request.tile, request.slab,
                     concurrent_tasks, threads_per_task, request.chunks)
    if request.resume and request.state is not None:
        done = finished_tiles(request.work_dir, plan.tiles, request.dtype)
        plan = dataclasses.replace(plan, done=frozenset(done))
    return plan


def start_state(request: GramRequest, plan: GramPlan) -> dict:
    """The state of the run about to start, its work folder ready.

    Resuming, the interrupted run's state, with what its killed tasks and writer left half-done
    removed; otherwise a new state in a new, empty work folder (an interrupted run that is not
    resumed is started over).
    """
    if request.state is not None:
        clean_partial_files(request.work_dir)
        return dict(request.state)
    if os.path.isdir(request.work_dir):
        shutil.rmtree(request.work_dir)
    os.makedirs(request.work_dir)
    state = {"version": STATE_VERSION, "input": os.path.abspath(request.input_path),
             "input_dataset": request.input_dataset,
             "output": os.path.abspath(request.output_path),
             "output_dataset": request.output_dataset, "shape": list(plan.shape),
             "dtype": plan.dtype, "tile": request.tile, "slab": request.slab,
             "overwrite": request.overwrite, "input_stamp": input_stamp(request.input_path),
             "phase": "computing", "y_ours": False}
    write_state(request.work_dir, state)
    return state
