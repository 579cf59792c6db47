"""Every check of an out-of-core request before anything is written, and the resume state.

:func:`check_gram_request` (Y = X X^T) and :func:`check_matmul_request` (C = A @ B) read
metadata only and write nothing: a request they accept names inputs that BLAS can multiply, an
output that may be written, and sizes that fit the interrupted run being resumed, if any. Both
return one :class:`OocRequest`: a gram is the symmetric request with one operand. That run's
state is ``state.json`` in the work folder (:func:`read_state`, :func:`write_state`): what it
was asked, a stamp of its inputs, and its phase (``computing`` while tasks run, ``finalizing``
once the output is the run's to rewrite).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from ..errors import (
    InputChangedError,
    InvalidInputError,
    InvalidParameterError,
    OutputExistsError,
    OutputNotWritableError,
    ShapeMismatchError,
)
from ..io import hdf5
from ..io.lock import output_lock
from .tiles import (
    DEFAULT_SLAB,
    GramPlan,
    Operand,
    ProductPlan,
    check_positive,
    plan_gram,
    plan_product,
)
from .workdir import clean_partial_files, finished_tiles, work_paths

__all__ = ["GramRequest", "OocRequest", "check_gram_request", "check_matmul_request",
           "operand_of", "plan_request", "start_state", "write_state"]

#: Supported dtypes of the inputs (and outputs): BLAS has syrk/gemm for these.
SUPPORTED_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))

STATE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class OocRequest:
    """A validated request: the operands, where the output goes, the sizes, the resume state.

    Built by :func:`check_gram_request` or :func:`check_matmul_request`, which read metadata
    only and write nothing.

    Attributes
    ----------
    operands : tuple of Operand
        ``(X,)`` for Y = X X^T (the symmetric case), ``(A, B)`` for C = A @ B.
    shape : tuple of int
        ``(n, k)`` of X, or ``(m, k, p)`` of a product.
    chunks : tuple of int or None
        X's chunk shape (gram only; a product's operands carry theirs).
    tile : int or None
        Tile size; None: balanced over the cores when the run is planned.
    slab : int
        Elements of the long axis read per step.
    stamps : tuple
        ``(size, mtime_ns)`` of each operand's file as the caller saw it, checked again just
        before the tasks start (empty: checked at planning only).
    complete : bool
        ``resume`` found no interrupted run but the output this request produces, complete:
        there is nothing to do.
    note : str
        One line for the user about what ``resume`` found (empty when nothing to say).
    """

    operands: tuple
    output_path: str
    output_dataset: str
    shape: tuple
    dtype: str
    chunks: tuple[int, int] | None
    tile: int | None
    slab: int
    resume: bool
    overwrite: bool
    same_file: bool
    work_dir: str
    lock_path: str
    state: dict | None = None
    stamps: tuple = ()
    complete: bool = False
    note: str = ""

    @property
    def symmetric(self) -> bool:
        """Whether this is Y = X X^T (one operand, tiles on or above the diagonal only)."""
        return len(self.operands) == 1

    @property
    def kind(self) -> str:
        """``"gram"`` or ``"matmul"``."""
        return "gram" if self.symmetric else "matmul"

    @property
    def input_path(self) -> str:
        """File of the (first) operand."""
        return self.operands[0].path

    @property
    def input_dataset(self) -> str:
        """Dataset of the (first) operand."""
        return self.operands[0].dataset

    @property
    def input_location(self) -> str:
        """``FILE::/dataset`` of X, or ``A and B`` locations of a product."""
        return " and ".join(op.location for op in self.operands)

    @property
    def input_paths(self) -> list[str]:
        """The distinct files the tasks read."""
        return sorted({op.path for op in self.operands})

    @property
    def request_json(self) -> str:
        """What produced the output, as recorded in its attributes (see :func:`request_of`)."""
        return request_of(self.operands, self.shape, self.dtype)

    @property
    def output_location(self) -> str:
        """``FILE::/dataset`` of the output."""
        return f"{self.output_path}::{self.output_dataset}"

    def check_inputs_unchanged(self) -> None:
        """Refuse inputs whose files changed since the caller opened them (before any task)."""
        for op, stamp in zip(self.operands, self.stamps, strict=False):
            if stamp is not None and tuple(input_stamp(op.path)) != tuple(stamp):
                raise InputChangedError(
                    f"input {op.path} changed since it was opened (size, mtime {tuple(stamp)} "
                    f"-> {tuple(input_stamp(op.path))}): its data would not match the plan; "
                    f"open it again")


#: The request of Y = X X^T (the symmetric case of :class:`OocRequest`).
GramRequest = OocRequest


def input_stamp(path: str) -> list[int]:
    """Size and modification time of an input: a resumed run refuses a changed one."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def request_of(operands, shape, dtype) -> str:
    """The JSON a published output records of the request that produced it."""
    return json.dumps({"kind": "gram" if len(operands) == 1 else "matmul",
                       "inputs": _inputs_of(operands), "shape": [int(v) for v in shape],
                       "dtype": np.dtype(dtype).name}, sort_keys=True)


def published_request(output_path: str, output_dataset: str) -> str | None:
    """The request JSON recorded by a complete published output, or None."""
    import h5py

    from .writer import REQUEST_ATTR

    try:
        with h5py.File(output_path, "r") as f:
            data = f.get(output_dataset)
            if not isinstance(data, h5py.Dataset) or hdf5.INCOMPLETE_ATTR in data.attrs:
                return None
            value = data.attrs.get(REQUEST_ATTR)
    except OSError:
        return None
    return value.decode() if isinstance(value, bytes) else value


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


def _inputs_of(operands) -> list:
    return [[os.path.abspath(op.path), op.dataset, bool(op.transposed)] for op in operands]


def check_state(state: dict, operands, output_path: str, shape, dtype, tile: int | None,
                slab: int | None) -> None:
    """Refuse to resume a run whose state does not belong to this request."""
    expected = {"kind": "gram" if len(operands) == 1 else "matmul",
                "inputs": _inputs_of(operands), "output": os.path.abspath(output_path),
                "shape": list(shape), "dtype": np.dtype(dtype).name}
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
    if state.get("phase") == "computing":
        for op, stamp in zip(operands, state.get("input_stamps", []), strict=False):
            if stamp != input_stamp(op.path):
                raise InvalidInputError(
                    f"resume: input file {op.path!r} changed since the interrupted run (size "
                    f"or modification time): its finished tiles cannot be reused; run without "
                    f"--resume")


def _sizes(tile, slab) -> tuple[int | None, int | None]:
    if tile is not None:
        tile = check_positive(tile, "tile")
    if slab is not None:
        slab = check_positive(slab, "slab")
    return tile, slab


def _request(operands, shape, dtype, chunks, output_path, output_dataset, tile, slab, resume,
             overwrite, stamps=()) -> OocRequest:
    """The request once the operands are checked: output, lock, resume state."""
    same_file = os.path.exists(output_path) and any(
        os.path.samefile(op.path, output_path) for op in operands)
    work_dir, lock_path = work_paths(output_path, output_dataset)
    if os.path.exists(lock_path):
        # Another job on this output is refused here, before Spark starts, and before its
        # work folder is taken for an interrupted run's. (Only a running job holds the lock;
        # the file exists while it does.)
        job = "gram" if len(operands) == 1 else "out-of-core multiply"
        with output_lock(lock_path, output_path, job=job):
            pass
    state = read_state(work_dir) if resume else None
    complete, note = False, ""
    if state is not None:
        check_state(state, operands, output_path, shape, dtype, tile, slab)
        tile, slab = state["tile"], state["slab"]
        overwrite = overwrite or state.get("overwrite", False) or state.get("y_ours", False)
    elif resume:
        complete, note = _resume_without_state(operands, shape, dtype, output_path,
                                               output_dataset, work_dir)
    elif not overwrite and read_state(work_dir) is not None:
        raise OutputExistsError(
            f"output {output_path}::{output_dataset}: an interrupted run of it left its work "
            f"in {work_dir!r}: pass --resume (resume=True) to finish it, or --overwrite "
            f"(overwrite=True) to start over")
    if not complete:
        _check_output(output_path, output_dataset, overwrite, resume, work_dir)
    return OocRequest(
        operands=tuple(operands), output_path=str(output_path), output_dataset=output_dataset,
        shape=tuple(shape), dtype=np.dtype(dtype).name,
        chunks=tuple(chunks) if chunks is not None else None,
        tile=int(tile) if tile is not None else None,
        slab=int(slab if slab is not None else DEFAULT_SLAB), resume=resume,
        overwrite=overwrite, same_file=same_file, work_dir=work_dir, lock_path=lock_path,
        state=state, stamps=tuple(stamps), complete=complete, note=note)


def _resume_without_state(operands, shape, dtype, output_path: str, output_dataset: str,
                          work_dir: str) -> tuple[bool, str]:
    """What ``resume`` means when no interrupted run is found: ``(complete, note)``.

    The output this very request produced, complete, means the run is finished: nothing to
    do. No output means no earlier run: the run starts from the beginning, and says so.
    """
    location = f"{output_path}::{output_dataset}"
    recorded = published_request(output_path, output_dataset)
    if recorded is not None and recorded == request_of(operands, shape, dtype):
        return True, (f"{location} is complete (a finished run of this request produced it): "
                      f"nothing to do")
    if os.path.exists(output_path) and recorded is None and _has_dataset(output_path,
                                                                        output_dataset):
        raise OutputExistsError(
            f"resume: {location} exists but was not produced by a finished run of this request "
            f"(no record of it, and no interrupted run in {work_dir!r}): pass --overwrite to "
            f"replace it, or choose another output")
    if recorded is not None:
        raise OutputExistsError(
            f"resume: {location} was produced by another request ({recorded}), and no "
            f"interrupted run is in {work_dir!r}: pass --overwrite to replace it, or choose "
            f"another output")
    return False, (f"resume: no earlier run of {location} was found (no work folder "
                   f"{work_dir!r}): starting from the beginning")


def _has_dataset(path: str, dataset: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return dataset in f
    except OSError:
        return False


def check_gram_request(input_path: str, input_dataset: str, output_path: str,
                       output_dataset: str, tile: int | None = None, slab: int | None = None,
                       resume: bool = False, overwrite: bool = False) -> OocRequest:
    """Validate a Y = X X^T request without writing anything.

    Parameters
    ----------
    input_path, input_dataset : str
        Location of X (2-D, float64 or float32).
    output_path, output_dataset : str
        Location of Y; the file may be the input file.
    tile, slab : int, optional
        Sizes; ``None`` means the default (for the tile: balanced over the cores), or the
        interrupted run's value when resuming.
    resume : bool
        Continue an interrupted run from its finished tiles.
    overwrite : bool
        Replace an existing Y.

    Returns
    -------
    OocRequest

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
    tile, slab = _sizes(tile, slab)
    shape, dtype, chunks = _inspect_x(input_path, input_dataset)
    same_file = os.path.exists(output_path) and os.path.samefile(input_path, output_path)
    if same_file and output_dataset == input_dataset:
        raise InvalidParameterError(
            f"output ({output_path}::{output_dataset}) is the input dataset X: writing Y there "
            f"would destroy X; choose another output dataset name")
    x = Operand(os.path.abspath(input_path), input_dataset, tuple(shape), np.dtype(dtype).name,
                tuple(chunks) if chunks is not None else None)
    return _request((x,), shape, dtype, chunks, output_path, output_dataset, tile, slab, resume,
                    overwrite)


def operand_of(spec, name: str) -> tuple[Operand, tuple | None]:
    """An :class:`Operand` and its expected file stamp from a source or a location.

    ``spec`` is an :class:`~blockmatrix.sources.HDF5Dataset` (its stamp is checked now and
    again before the tasks start), an :class:`Operand`, or ``(path, dataset)`` /
    ``(path, dataset, transposed)``.
    """
    stamp = None
    if hasattr(spec, "check_unchanged"):  # an HDF5Dataset source of a BlockMatrix
        spec.check_unchanged()
        stamp = tuple(spec.stamp)
        path, dataset, transposed = spec.path, spec.dataset, spec.transposed
    elif isinstance(spec, Operand):
        path, dataset, transposed = spec.path, spec.dataset, spec.transposed
    else:
        try:
            if isinstance(spec, str | bytes | os.PathLike):
                raise TypeError("a bare path names no dataset")
            path, dataset, *rest = spec
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"{name} must be an HDF5Dataset or a (path, dataset) location, got "
                f"{spec!r}: pass e.g. ('{name}.h5', '/{name}')") from None
        transposed = bool(rest[0]) if rest else False
    shape, dtype, chunks = hdf5.inspect_input(path, dataset, name, float_only=True)
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise InvalidInputError(
            f"{name} {path}::{dataset} has dtype {dtype}: BLAS multiplies float64 or float32 "
            f"only; convert {name} to one of them first")
    op = Operand(os.path.abspath(path), dataset, tuple(shape), np.dtype(dtype).name,
                 tuple(chunks) if chunks is not None else None, bool(transposed))
    return op, stamp


def check_matmul_request(a, b, output_path: str, output_dataset: str, tile: int | None = None,
                         slab: int | None = None, resume: bool = False,
                         overwrite: bool = False) -> OocRequest:
    """Validate a C = A @ B request without writing anything.

    Parameters
    ----------
    a, b : HDF5Dataset, Operand or (path, dataset[, transposed])
        The operands (2-D, float64 or float32; the same file or different ones, possibly the
        same dataset, possibly read transposed).
    output_path, output_dataset : str
        Location of C; the file may be A's or B's.
    tile, slab : int, optional
        Sizes; ``None``: the balanced tile and the default slab, or the interrupted run's.
    resume, overwrite : bool
        As :func:`check_gram_request`.

    Returns
    -------
    OocRequest

    Raises
    ------
    ShapeMismatchError
        ``A.shape[1] != B.shape[0]``.
    InputChangedError
        A source's file changed since it was opened.
    InvalidParameterError, InputNotFoundError, InvalidInputError, OutputExistsError,
    OutputNotWritableError
        As :func:`check_gram_request`.
    """
    tile, slab = _sizes(tile, slab)
    (op_a, stamp_a), (op_b, stamp_b) = operand_of(a, "A"), operand_of(b, "B")
    (m, k), (k2, p) = op_a.matrix_shape, op_b.matrix_shape
    if k != k2:
        raise ShapeMismatchError(
            f"A.shape[1] ({k}) != B.shape[0] ({k2}): A is {m}x{k} and B is {k2}x{p}, so A B is "
            f"undefined")
    if m == 0 or p == 0:
        raise InvalidInputError(
            f"C = A @ B would be empty ({m} x {p}): give operands with rows and columns")
    for name, op in (("A", op_a), ("B", op_b)):
        if (os.path.exists(output_path) and os.path.samefile(op.path, output_path)
                and output_dataset == op.dataset):
            raise InvalidParameterError(
                f"output ({output_path}::{output_dataset}) is the input dataset {name}: writing "
                f"C there would destroy {name}; choose another output dataset name")
    dtype = np.result_type(op_a.dtype, op_b.dtype)
    return _request((op_a, op_b), (m, k, p), dtype, None, output_path, output_dataset, tile,
                    slab, resume, overwrite, (stamp_a, stamp_b))


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


def plan_request(request: OocRequest, concurrent_tasks: int = 2,
                 threads_per_task: int = 1) -> GramPlan | ProductPlan:
    """The plan of a validated request, counting the tiles an interrupted run finished."""
    if request.symmetric:
        plan = plan_gram(request.shape, request.dtype, request.tile, request.slab,
                         concurrent_tasks, threads_per_task, request.chunks)
    else:
        a, b = request.operands
        plan = plan_product(request.shape, request.dtype, request.tile, request.slab,
                            concurrent_tasks, threads_per_task, a.oriented_chunks,
                            b.oriented_chunks)
    if request.resume and request.state is not None:
        done = finished_tiles(request.work_dir, plan.tiles, request.dtype)
        plan = dataclasses.replace(plan, done=frozenset(done))
    return plan


def start_state(request: OocRequest, plan) -> dict:
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
    state = {"version": STATE_VERSION, "kind": request.kind,
             "inputs": _inputs_of(request.operands),
             "output": os.path.abspath(request.output_path),
             "output_dataset": request.output_dataset, "shape": list(request.shape),
             "dtype": plan.dtype, "tile": plan.tile, "slab": request.slab,
             "overwrite": request.overwrite,
             "input_stamps": [input_stamp(op.path) for op in request.operands],
             "phase": "computing", "y_ours": False}
    write_state(request.work_dir, state)
    return state
