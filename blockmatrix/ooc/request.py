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
    zarr_output_tile,
    zarr_slab,
)
from .workdir import clean_partial_files, finished_tiles, work_paths
from .zarrwork import ZarrWork

__all__ = ["GramRequest", "OocRequest", "check_gram_request", "check_matmul_request",
           "operand_of", "plan_request", "start_state", "write_state"]

#: Supported dtypes of the inputs (and outputs): BLAS has syrk/gemm for these.
SUPPORTED_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))

STATE_VERSION = 2

#: Attribute of a published Zarr output holding the request that produced it (JSON), as
#: :data:`blockmatrix.ooc.writer.REQUEST_ATTR` is for HDF5.
ZARR_REQUEST_ATTR = "blockmatrix_request"
#: Prefix of a Zarr location given where an HDF5 file path is expected: ``zarr:URL``.
ZARR_PREFIX = "zarr:"


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
    output_zarr: object = None

    @property
    def zarr_work(self):
        """The :class:`~blockmatrix.ooc.zarrwork.ZarrWork` of a Zarr output (else None)."""
        return ZarrWork(self.output_zarr) if self.output_zarr is not None else None

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
        """``FILE::/dataset`` of the output, or its Zarr URL."""
        if self.output_zarr is not None:
            return self.output_zarr.url
        return f"{self.output_path}::{self.output_dataset}"

    def check_inputs_unchanged(self) -> None:
        """Refuse inputs whose files changed since the caller opened them (before any task)."""
        for op, stamp in zip(self.operands, self.stamps, strict=False):
            if stamp is None:
                continue
            try:
                now = operand_stamp(op)
            except OSError:
                now = None
            if _plain(now) != _plain(stamp):
                raise InputChangedError(
                    f"input {op.path} changed since it was opened ({_plain(stamp)} -> "
                    f"{_plain(now)}): its data would not match the plan; open it again")


#: The request of Y = X X^T (the symmetric case of :class:`OocRequest`).
GramRequest = OocRequest


def input_stamp(path: str) -> list[int]:
    """Size and modification time of an input: a resumed run refuses a changed one."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def operand_stamp(op: Operand) -> list:
    """What changes when an operand is rewritten, as JSON-ready lists.

    An HDF5 file's size and mtime, or a Zarr array's metadata stamp
    (:func:`~blockmatrix.io.zarr_store.metadata_stamp`).
    """
    if op.is_zarr:
        from ..io import zarr_store

        return _plain(zarr_store.metadata_stamp(op.path))
    return input_stamp(op.path)


def _plain(value):
    """``value`` as JSON gives it back (tuples become lists): stamps compare after a trip."""
    return json.loads(json.dumps(value))


def request_of(operands, shape, dtype) -> str:
    """The JSON a published output records of the request that produced it."""
    return json.dumps({"kind": "gram" if len(operands) == 1 else "matmul",
                       "inputs": _inputs_of(operands), "shape": [int(v) for v in shape],
                       "dtype": np.dtype(dtype).name}, sort_keys=True)


def published_request(output_path: str, output_dataset: str) -> str | None:
    """The request JSON recorded by a complete published output, or None."""
    import h5py

    from . import writer

    try:
        with h5py.File(output_path, "r") as f:
            data = f.get(output_dataset)
            if not isinstance(data, h5py.Dataset) or hdf5.INCOMPLETE_ATTR in data.attrs:
                return None
            value = data.attrs.get(writer.REQUEST_ATTR)
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
    return [[op.path if op.is_zarr else os.path.abspath(op.path), op.dataset,
             bool(op.transposed)] for op in operands]


def check_state(state: dict, operands, output_path: str, shape, dtype, tile: int | None,
                slab: int | None) -> None:
    """Refuse to resume a run whose state does not belong to this request."""
    expected = {"kind": "gram" if len(operands) == 1 else "matmul",
                "inputs": _inputs_of(operands),
                "output": output_path if "://" in output_path else os.path.abspath(output_path),
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
            if stamp != operand_stamp(op):
                raise InvalidInputError(
                    f"resume: input {op.path!r} changed since the interrupted run (size "
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
    stamps = _zarr_stamps(operands, stamps)
    zloc = zarr_location(output_path)
    if zloc is not None:
        return _zarr_request(operands, shape, dtype, chunks, zloc, tile, slab, resume,
                             overwrite, stamps)
    same_file = os.path.exists(output_path) and any(
        not op.is_zarr and os.path.samefile(op.path, output_path) for op in operands)
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


def _zarr_stamps(operands, stamps) -> tuple:
    """The callers' stamps, with each Zarr operand's taken now where none was given.

    Checked again just before the tasks start: a Zarr input rewritten meanwhile is refused
    before any task reads it.
    """
    stamps = tuple(stamps) + (None,) * (len(operands) - len(stamps))
    return tuple(operand_stamp(op) if st is None and op.is_zarr else st
                 for op, st in zip(operands, stamps, strict=True))


def _zarr_request(operands, shape, dtype, chunks, loc, tile, slab, resume, overwrite,
                  stamps) -> OocRequest:
    """The request of a Zarr output: its target, lock (local), work location, resume state."""
    from ..io import zarr_store
    from ..io.lock import lock_path_of

    for name, op in zip(("A", "B") if len(operands) == 2 else ("X",), operands, strict=True):
        if op.is_zarr and op.path == loc.url:
            raise InvalidParameterError(
                f"output ({loc.url}) is the input {name}: writing there would destroy "
                f"{name}; choose another output location")
    job = "gram" if len(operands) == 1 else "out-of-core multiply"
    lock_path = lock_path_of(loc.path) if loc.local else ""
    if lock_path and os.path.exists(lock_path):
        with output_lock(lock_path, loc.path, job=job):
            pass
    work = ZarrWork(loc)
    state = _version_ok(work.read_state()) if resume else None
    complete, note = False, ""
    if tile is not None:
        tile = zarr_output_tile(tile)[0]
    if state is not None:
        check_state(state, operands, loc.url, shape, dtype, tile, slab)
        tile, slab = state["tile"], state["slab"]
        overwrite = overwrite or state.get("overwrite", False)
        if _published_zarr_request(loc) == request_of(operands, shape, dtype) and \
                not _exists(loc.staging):
            # Killed after its publication, before removing its work: the run is complete.
            work.remove()
            state, complete = None, True
            note = f"{loc.url} is complete (its run was published): nothing to do"
    elif resume:
        if _published_zarr_request(loc) == request_of(operands, shape, dtype):
            complete, note = True, (f"{loc.url} is complete (a finished run of this request "
                                    f"produced it): nothing to do")
        else:
            note = (f"resume: no earlier run of {loc.url} was found (no work location "
                    f"{work.url}): starting from the beginning")
    elif not overwrite and _version_ok(work.read_state()) is not None:
        raise OutputExistsError(
            f"output {loc.url}: an interrupted run of it left its work in {work.url!r}: pass "
            f"--resume (resume=True) to finish it, or --overwrite (overwrite=True) to start "
            f"over")
    if not complete:
        zarr_store.check_output(loc, overwrite=overwrite, param="output")
        n_rows, n_cols = (shape[0], shape[0]) if len(operands) == 1 else (shape[0], shape[2])
        zarr_store.check_output_space(loc, (n_rows, n_cols), dtype, param="output")
    return OocRequest(
        operands=tuple(operands), output_path=loc.url, output_dataset="", shape=tuple(shape),
        dtype=np.dtype(dtype).name, chunks=tuple(chunks) if chunks is not None else None,
        tile=int(tile) if tile is not None else None,
        slab=int(slab if slab is not None else DEFAULT_SLAB), resume=resume,
        overwrite=overwrite, same_file=False, work_dir=work.url, lock_path=lock_path,
        state=state, stamps=tuple(stamps), complete=complete, note=note, output_zarr=loc)


def _exists(loc) -> bool:
    """Whether anything is at the location ``loc`` (a folder, or objects under a prefix)."""
    fs = loc.filesystem()
    fs.invalidate_cache(loc.path)
    return bool(fs.exists(loc.path))


def _version_ok(state: dict | None) -> dict | None:
    return state if state is not None and state.get("version") == STATE_VERSION else None


def _published_zarr_request(loc) -> str | None:
    """The request recorded by a complete Zarr array at ``loc``, or None."""
    from ..io import zarr_store

    try:
        attrs = zarr_store.open_array(loc, "r").attrs.asdict()
    except Exception:  # nothing there, or not an array: no record
        return None
    if attrs.get(hdf5.INCOMPLETE_ATTR):
        return None
    return attrs.get(ZARR_REQUEST_ATTR)


def zarr_location(spec):
    """The :class:`~blockmatrix.io.zarr_store.ZarrLocation` of a Zarr spec, or None.

    A spec is Zarr when it is a ``ZarrLocation`` or a string ``"zarr:URL"``
    (``zarr:data/x.zarr``, ``zarr:s3://bucket/x.zarr``).

    >>> zarr_location("zarr:/data/x.zarr")
    ZarrLocation(protocol='file', path='/data/x.zarr')
    >>> zarr_location("/data/x.h5") is None
    True
    """
    from ..io import zarr_store

    if isinstance(spec, zarr_store.ZarrLocation):
        return spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, str) and spec.startswith(ZARR_PREFIX):
        return zarr_store.parse_url(spec[len(ZARR_PREFIX):])
    return None


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
        Location of X (2-D, float64 or float32); or ``input_path`` a Zarr array,
        ``"zarr:URL"`` or a :class:`~blockmatrix.io.zarr_store.ZarrLocation`, and
        ``input_dataset`` None.
    output_path, output_dataset : str
        Location of Y; the file may be the input file. Or ``output_path`` a Zarr array as
        above (``output_dataset`` None): the tasks write their tiles into it, published
        when complete.
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
    zin = zarr_location(input_path)
    if zin is not None:
        x, _ = operand_of(zin, "input")
        if x.shape[0] == 0:
            raise InvalidInputError(
                f"input {x.location} has no rows (shape {x.shape}): Y would be empty")
        return _request((x,), x.shape, x.dtype, x.chunks, output_path, output_dataset, tile,
                        slab, resume, overwrite)
    shape, dtype, chunks = _inspect_x(input_path, input_dataset)
    same_file = (zarr_location(output_path) is None and os.path.exists(output_path)
                 and os.path.samefile(input_path, output_path))
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

    ``spec`` is an :class:`~blockmatrix.sources.HDF5Dataset` or
    :class:`~blockmatrix.sources.ZarrArray` (its stamp is checked now and again before the
    tasks start), an :class:`Operand`, ``(path, dataset)`` / ``(path, dataset, transposed)``,
    or a Zarr array: a :class:`~blockmatrix.io.zarr_store.ZarrLocation`, ``"zarr:URL"``, or
    ``(zarr, transposed)``.
    """
    zarr_spec, transposed = spec, False
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], bool):
        zarr_spec, transposed = spec
    if getattr(spec, "format", None) == "zarr" or zarr_location(zarr_spec) is not None or (
            isinstance(spec, Operand) and spec.is_zarr):
        return _zarr_operand(spec, zarr_spec, transposed, name)
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


def _zarr_operand(spec, zarr_spec, transposed: bool, name: str) -> tuple[Operand, tuple]:
    """A Zarr operand (metadata only; never opened for writing) and its metadata stamp."""
    from ..io import zarr_store

    if getattr(spec, "format", None) == "zarr":  # a ZarrArray source of a BlockMatrix
        spec.check_unchanged()
        url, transposed, stamp = spec.url, spec.transposed, _plain(spec.stamp)
    elif isinstance(spec, Operand):
        url, transposed, stamp = spec.path, spec.transposed, None
    else:
        url, stamp = zarr_location(zarr_spec).url, None
    shape, dtype, chunks = zarr_store.inspect_input(url, name, float_only=True)
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise InvalidInputError(
            f"{name} {url} has dtype {dtype}: BLAS multiplies float64 or float32 only; "
            f"convert {name} to one of them first")
    op = Operand(zarr_store.as_location(url).url, "", tuple(shape), np.dtype(dtype).name,
                 tuple(chunks), bool(transposed), store="zarr")
    if stamp is None:
        stamp = operand_stamp(op)
    return op, stamp


def check_matmul_request(a, b, output_path: str, output_dataset: str, tile: int | None = None,
                         slab: int | None = None, resume: bool = False,
                         overwrite: bool = False) -> OocRequest:
    """Validate a C = A @ B request without writing anything.

    Parameters
    ----------
    a, b : HDF5Dataset, ZarrArray, Operand, (path, dataset[, transposed]) or Zarr
        The operands (2-D, float64 or float32; the same file or different ones, possibly the
        same dataset, possibly read transposed). A Zarr array is ``"zarr:URL"``, a
        ``ZarrLocation``, or ``(either, transposed)``.
    output_path, output_dataset : str
        Location of C; the file may be A's or B's. Or ``output_path`` a Zarr array
        (``"zarr:URL"`` or a ``ZarrLocation``, ``output_dataset`` None).
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
        if (zarr_location(output_path) is None and not op.is_zarr
                and os.path.exists(output_path) and os.path.samefile(op.path, output_path)
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
                 threads_per_task: int = 1, runner: str = "spark") -> GramPlan | ProductPlan:
    """The plan of a validated request, counting the tiles an interrupted run finished.

    Zarr inputs read at least a whole chunk along the long axis per slab
    (:func:`~blockmatrix.ooc.tiles.zarr_slab`); a Zarr output's tile is a whole number of
    its chunks (:func:`~blockmatrix.ooc.tiles.zarr_output_tile`).
    """
    k = request.shape[1]
    k_chunks = [op.oriented_chunks[0 if i else 1] for i, op in enumerate(request.operands)
                if op.is_zarr]
    slab = zarr_slab(request.slab, k, k_chunks)
    if request.symmetric:
        plan = plan_gram(request.shape, request.dtype, request.tile, slab,
                         concurrent_tasks, threads_per_task, request.operands[0].oriented_chunks,
                         runner=runner)
    else:
        a, b = request.operands
        plan = plan_product(request.shape, request.dtype, request.tile, slab,
                            concurrent_tasks, threads_per_task, a.oriented_chunks,
                            b.oriented_chunks, runner=runner)
    if request.output_zarr is not None and request.tile is None:
        # The balanced tile, grown to a whole number of chunks (replanned with that tile).
        tile = zarr_output_tile(plan.tile)[0]
        if tile != plan.tile:
            return plan_request(dataclasses.replace(request, tile=tile), concurrent_tasks,
                                threads_per_task, runner)
    if request.resume and request.state is not None:
        if request.output_zarr is not None:
            done = request.zarr_work.finished(plan.tiles)
        else:
            done = finished_tiles(request.work_dir, plan.tiles, request.dtype)
        plan = dataclasses.replace(plan, done=frozenset(done))
    return plan


def output_chunks(request: OocRequest, plan) -> tuple[int, int]:
    """Chunks of a Zarr output: each tile side cut into equal chunks of at most 1024.

    Every tile boundary is then a chunk boundary (the tile is a whole number of chunks).
    """
    rows, cols = plan.out_shape
    tile_rows = plan.tile if request.symmetric else plan.tile_rows
    tile_cols = plan.tile if request.symmetric else plan.tile_cols
    return (min(rows, zarr_output_tile(tile_rows)[1]), min(cols, zarr_output_tile(tile_cols)[1]))


def start_state(request: OocRequest, plan) -> dict:
    """The state of the run about to start, its work folder ready.

    Resuming, the interrupted run's state, with what its killed tasks and writer left half-done
    removed; otherwise a new state in a new, empty work folder (an interrupted run that is not
    resumed is started over).
    """
    if request.output_zarr is not None:
        return _start_zarr_state(request, plan)
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


def _start_zarr_state(request: OocRequest, plan) -> dict:
    """The state of a run writing a Zarr output, its work location ready (see start_state)."""
    work = request.zarr_work
    if request.state is not None:
        work.clean_partial()
        return dict(request.state)
    work.reset()
    state = {"version": STATE_VERSION, "kind": request.kind,
             "inputs": _inputs_of(request.operands), "output": request.output_zarr.url,
             "output_dataset": "", "shape": list(request.shape), "dtype": plan.dtype,
             "tile": plan.tile, "slab": request.slab, "overwrite": request.overwrite,
             "chunks": list(output_chunks(request, plan)),
             "input_stamps": [operand_stamp(op) for op in request.operands],
             "phase": "computing", "tiles_done": []}
    work.write_state(state)
    return state
