"""Zarr (format 3) input and output through fsspec: local directories and object storage.

A location is a local path (``data/x.zarr``, ``file:///data/x.zarr``) or a URL that fsspec
knows (``s3://bucket/x.zarr``, ``gs://...``, ``abfs://...``). Storage options (endpoint,
region, credentials) come from where the storage's own client looks: environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ...), its config files
(``~/.aws/config``, ``~/.aws/credentials``) and fsspec's configuration (``FSSPEC_S3_*``
variables, ``~/.config/fsspec/``). Never from a parameter: a URL with credentials in it is
refused, and no message prints anything but the URL.

Inputs are opened read-only; every check that can refuse a request runs before anything is
written. Outputs are **staged and published when complete**
(:func:`staged_output`): the driver creates a staging array beside the target
(``.NAME.blockmatrix-staging``), tasks write chunk-aligned tiles into it in parallel, each
writing whole chunks that no other task touches (:func:`write_tile`, :func:`write_blocks`),
and the driver publishes once every task has succeeded:

- on a local file system by renaming the staging folder onto the target (an existing target
  is first renamed aside, then removed);
- on object storage, which has no rename, by copying the chunk objects to the target prefix
  and writing the array's metadata (``zarr.json``) last, so that the target never looks like
  an array before it is complete.

A killed write leaves at most the staging array (and, on object storage, a target prefix
without ``zarr.json`` marked by ``.blockmatrix-publishing``), which the next write of the same
target removes. Local targets are guarded by the output lock (:mod:`blockmatrix.io.lock`);
object storage has no lock: one writer per target.

The packages (zarr, fsspec and, for S3, s3fs) are the ``zarr`` extra: this module imports
them only when a function needs them (:func:`require_zarr`).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .._testhooks import pause
from ..errors import (
    InputNotFoundError,
    InvalidBlockError,
    InvalidInputError,
    InvalidParameterError,
    MissingDependencyError,
    OutputExistsError,
    OutputNotWritableError,
    unreadable_in_task,
)
from .hdf5 import (
    DTYPE_ATTR,
    INCOMPLETE_ATTR,
    PRODUCER_ATTR,
    SHAPE_ATTR,
    STAGING_TAG,
    block_slices,
    can_create_in,
    check_space,
    dense_nbytes,
)
from .lock import lock_path_of, output_lock

#: How to install what this module needs.
INSTALL_HINT = "pip install 'blockmatrix[zarr]'"
#: The array metadata document of Zarr format 3; format 2's documents.
METADATA_KEY, V2_KEYS = "zarr.json", (".zarray", ".zgroup")
#: Written into a target prefix on object storage while chunks are copied there.
PUBLISHING_KEY = ".blockmatrix-publishing"
#: Tag of the name an existing local target is renamed to while it is replaced.
RETIRED_TAG = "blockmatrix-retired"
#: Attribute that makes each published ``zarr.json`` unique (its hash changes on rewrite).
WRITE_ID_ATTR = "blockmatrix_write_id"
#: fsspec file-information fields that change when an object is rewritten.
STAMP_FIELDS = ("size", "ETag", "etag", "LastModified", "last_modified", "mtime", "md5Hash",
                "generation", "VersionId", "version_id")
#: Protocols whose data live in one process only: no executor could read them.
PROCESS_LOCAL = frozenset({"memory"})

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.DOTALL)


def require_zarr():
    """The ``zarr`` module, or a :class:`MissingDependencyError` saying how to install it."""
    try:
        import fsspec  # noqa: F401
        import zarr
    except ImportError as exc:
        raise MissingDependencyError(
            f"Zarr input and output need the packages zarr (>= 3) and fsspec, which are not "
            f"installed ({exc}): {INSTALL_HINT}") from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise MissingDependencyError(
            f"Zarr input and output need zarr >= 3 (Zarr format 3), found zarr "
            f"{zarr.__version__}: {INSTALL_HINT}")
    return zarr


# ---------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class ZarrLocation:
    """Where a Zarr array is: a local folder, or a prefix on a file system fsspec knows.

    Parameters
    ----------
    protocol : str
        ``"file"`` for a local folder, else the fsspec protocol (``"s3"``, ``"gs"``, ...).
    path : str
        The absolute local path, or the path inside the file system (``bucket/key``).
    """

    protocol: str
    path: str

    @property
    def local(self) -> bool:
        """Whether the array is a folder of the local file system (rename publishes it)."""
        return self.protocol == "file"

    @property
    def url(self) -> str:
        """The location as zarr and the messages take it (a path for a local folder)."""
        return self.path if self.local else f"{self.protocol}://{self.path}"

    def __str__(self) -> str:
        return self.url

    @property
    def _paths(self):
        """The path module of the location: the OS's, or URLs' (``/`` always)."""
        return os.path if self.local else posixpath

    def key(self, name: str) -> str:
        """The path of the object ``name`` inside the array (``zarr.json``, ``c/0/0``)."""
        return self._paths.join(self.path, name)

    def sibling(self, tag: str) -> ZarrLocation:
        """A hidden location beside this one, ``.NAME.TAG``."""
        parent, name = self._paths.split(self.path)
        return ZarrLocation(self.protocol, self._paths.join(parent, f".{name}.{tag}"))

    @property
    def staging(self) -> ZarrLocation:
        """Where an output is written until it is complete."""
        return self.sibling(STAGING_TAG)

    @property
    def parent(self) -> str:
        """The folder (or prefix) that holds the array."""
        return self._paths.dirname(self.path)

    def filesystem(self):
        """The fsspec file system of the location, configured from the usual places."""
        import fsspec

        return fsspec.filesystem(self.protocol)


def parse_url(url, param: str = "url") -> ZarrLocation:
    """Check a Zarr location and return it in canonical form.

    >>> parse_url("s3://bucket/data/x.zarr/")
    ZarrLocation(protocol='s3', path='bucket/data/x.zarr')
    >>> parse_url("file:///data/x.zarr").url
    '/data/x.zarr'

    Raises
    ------
    InvalidParameterError
        Not a string, empty, a chained or HDF5 location, credentials in the URL, a protocol
        only one process sees, or an object-storage URL without a key inside its bucket.
    MissingDependencyError
        A URL whose protocol needs packages that are not installed.
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise InvalidParameterError(
            f"{param} must be the path or URL of a Zarr array, got {url!r}: e.g. "
            f"'data/x.zarr' or 's3://bucket/x.zarr'")
    if "::" in url:
        raise InvalidParameterError(
            f"{param} ({url!r}) contains '::' (an HDF5 FILE::/dataset location, or a chained "
            f"fsspec URL): give the Zarr array's own path or URL, e.g. 's3://bucket/x.zarr'")
    match = _SCHEME.match(url)
    protocol, rest = (match.group(1).lower(), match.group(2)) if match else ("file", url)
    if protocol in ("file", "local"):
        path = os.path.abspath(os.path.expanduser(rest)).rstrip(os.sep) or os.sep
        if path == os.sep:
            raise InvalidParameterError(
                f"{param} ({url!r}) is the root folder: give the array's own folder, "
                f"e.g. '/data/x.zarr'")
        return ZarrLocation("file", path)
    host = rest.split("/", 1)[0]
    if "@" in host:
        # Never repeat the URL: what precedes the @ may be a secret.
        raise InvalidParameterError(
            f"{param} has credentials in its URL ({protocol}://...@...): remove them and give "
            f"them where the storage client looks (environment variables such as "
            f"AWS_ACCESS_KEY_ID, or its config files), never on a command line")
    if protocol in PROCESS_LOCAL:
        raise InvalidParameterError(
            f"{param} ({url!r}) is on fsspec's {protocol!r} file system, which only this "
            f"process sees: the executors must read and write the array, so use a folder they "
            f"share or object storage (e.g. s3://bucket/x.zarr)")
    path = rest.strip("/")
    if "/" not in path:
        raise InvalidParameterError(
            f"{param} ({url!r}) names no array inside the bucket {path!r}: give a key, "
            f"e.g. '{protocol}://{path or 'bucket'}/x.zarr'")
    _check_protocol(protocol, url, param)
    return ZarrLocation(protocol, path)


def _check_protocol(protocol: str, url: str, param: str) -> None:
    require_zarr()
    from fsspec.registry import get_filesystem_class, known_implementations

    if protocol not in known_implementations:
        raise InvalidParameterError(
            f"{param} ({url!r}) uses the protocol {protocol!r}, which fsspec does not know: "
            f"use a local path or a protocol such as s3://, gs://, abfs://")
    try:
        get_filesystem_class(protocol)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{param} ({url!r}) needs fsspec's {protocol!r} file system, whose package is not "
            f"installed ({str(exc).splitlines()[0]}): install it (for s3://, "
            f"{INSTALL_HINT})") from None


def as_location(url, param: str = "url") -> ZarrLocation:
    """``url`` as a :class:`ZarrLocation` (one is returned unchanged)."""
    return url if isinstance(url, ZarrLocation) else parse_url(url, param)


# ---------------------------------------------------------------------------- reading


def _read_metadata(loc: ZarrLocation, param: str) -> dict | None:
    """The ``zarr.json`` document at ``loc``, None if there is none (refusing format 2)."""
    fs = loc.filesystem()
    fs.invalidate_cache(loc.path)
    try:
        raw = fs.cat_file(loc.key(METADATA_KEY))
    except (FileNotFoundError, NotADirectoryError):
        for v2 in V2_KEYS:
            if fs.exists(loc.key(v2)):
                raise InvalidInputError(
                    f"{param} {loc} is Zarr format 2 ({v2}), not format 3: convert it, e.g. "
                    f"zarr.from_array(store, data=zarr.open_array(old), zarr_format=3)") from None
        return None
    except PermissionError as exc:
        raise InvalidInputError(
            f"{param} {loc} cannot be read ({_first_line(exc)}): check the credentials in "
            f"the environment or the storage client's config") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidInputError(
            f"{param} {loc}/{METADATA_KEY} is not JSON: it is not a Zarr array; give "
            f"another location") from None


def inspect_input(url, param: str = "input", float_only: bool = False
                  ) -> tuple[tuple[int, int], np.dtype, tuple[int, int]]:
    """Check that ``url`` is a readable 2-D real Zarr (format 3) array; return its layout.

    Reads metadata only.

    Returns
    -------
    shape : (int, int)
    dtype : numpy.dtype
        In native byte order (the reads convert).
    chunks : (int, int)
        The array's chunk shape (for a sharded array, the inner chunks).

    Raises
    ------
    InputNotFoundError
        Nothing there, or a folder or prefix holding no Zarr metadata.
    InvalidInputError
        Zarr format 2, a group, not 2-D, not real numbers, or marked incomplete.
    """
    loc = as_location(url, param)
    zarr = require_zarr()
    meta = _read_metadata(loc, param)
    if meta is None and loc.local and not os.path.exists(loc.path):
        raise InputNotFoundError(f"{param} {loc} does not exist: check the path")
    if meta is None:
        raise InputNotFoundError(
            f"{param} {loc} is not a Zarr array (no {METADATA_KEY} there): check the path "
            f"or URL")
    where = f"{param} {loc}"
    if meta.get("node_type") != "array":
        raise InvalidInputError(
            f"{where} is a Zarr {meta.get('node_type', 'node')}, not an array: name the "
            f"array inside it, e.g. {loc.key('X')}")
    try:
        array = zarr.open_array(store=loc.url, mode="r", zarr_format=3)
        shape, dtype, chunks = tuple(array.shape), np.dtype(array.dtype), tuple(array.chunks)
        attrs = array.attrs.asdict()
    except Exception as exc:  # a zarr.json zarr cannot parse: codecs, data type, ...
        raise InvalidInputError(
            f"{where} cannot be opened by zarr {zarr.__version__} ({_first_line(exc)}): "
            f"rewrite it with zarr >= 3, or check the installed codecs") from None
    if len(shape) != 2:
        raise InvalidInputError(
            f"{where} has {len(shape)} dimensions (shape {shape}), not 2: give a 2-D array")
    if dtype.kind not in "biuf":
        raise InvalidInputError(
            f"{where} has dtype {dtype}, which is not a real number type: store it as float64 "
            f"or float32 (complex, string and structured data are not supported)")
    if float_only and dtype.kind != "f":
        raise InvalidInputError(
            f"{where} has dtype {dtype}, not a floating-point type: convert it to float64 or "
            f"float32 first")
    if attrs.get(INCOMPLETE_ATTR):
        raise InvalidInputError(
            f"{where} is marked incomplete (its writer was interrupted): write it again "
            f"before reading it")
    return (int(shape[0]), int(shape[1])), dtype.newbyteorder("="), tuple(int(c) for c in chunks)


def metadata_stamp(url) -> tuple:
    """What changes when the array at ``url`` is rewritten: its ``zarr.json``'s file info.

    Local: size, modification time (ns) and inode (a published rewrite is a new folder).
    Object storage: size, ETag (a content hash; every published ``zarr.json`` holds a new
    :data:`WRITE_ID_ATTR`), last modification and version where the store gives them.
    Chunks rewritten in place, leaving ``zarr.json`` alone, are not seen.

    Raises
    ------
    OSError
        The metadata cannot be read.
    """
    loc = as_location(url)
    if loc.local:
        st = os.stat(loc.key(METADATA_KEY))
        return (("size", st.st_size), ("mtime_ns", st.st_mtime_ns), ("ino", st.st_ino))
    fs = loc.filesystem()
    fs.invalidate_cache(loc.path)
    info = fs.info(loc.key(METADATA_KEY))
    return tuple((k, str(info[k])) for k in STAMP_FIELDS if k in info)


def open_array(url, mode: str = "r"):
    """The ``zarr.Array`` at ``url`` (driver or task side); ``mode`` ``"r"`` or ``"r+"``."""
    zarr = require_zarr()
    return zarr.open_array(store=as_location(url).url, mode=mode, zarr_format=3)


class ArrayHandle:
    """An open Zarr array, as a task's reader holds it (``close`` releases nothing)."""

    def __init__(self, array):
        self.array = array

    def close(self) -> None:
        """Nothing to close: zarr holds no file open between reads."""


def open_input(url) -> ArrayHandle:
    """A read-only :class:`ArrayHandle` on ``url`` (task side)."""
    return ArrayHandle(open_array(url, "r"))


def read_region(array, rows: slice, cols: slice, out: np.ndarray | None = None) -> np.ndarray:
    """Read ``array[rows, cols]`` into ``out`` (allocated when None); return it.

    Task side: the buffer of a block or a slab is reused, and zarr decodes the chunks
    straight into it (no second copy).
    """
    if out is None:
        n_rows = len(range(*rows.indices(array.shape[0])))
        n_cols = len(range(*cols.indices(array.shape[1])))
        out = np.empty((n_rows, n_cols), dtype=np.dtype(array.dtype).newbyteorder("="))
    from zarr.core.buffer.cpu import NDBuffer

    array.get_basic_selection((rows, cols), out=NDBuffer.from_numpy_array(out))
    return out


def read_block(array, i: int, j: int, rows_per_block: int, cols_per_block: int,
               dtype=None) -> np.ndarray:
    """Block ``(i, j)`` of ``array`` as a new C-ordered ndarray (task side)."""
    rows, cols = block_slices(i, j, tuple(array.shape), rows_per_block, cols_per_block)
    out = np.empty((rows.stop - rows.start, cols.stop - cols.start),
                   dtype=np.dtype(dtype if dtype is not None else array.dtype).newbyteorder("="))
    return read_region(array, rows, cols, out)


def read_blocks(keys: Iterable[tuple[int, int]], url: str, rows_per_block: int,
                cols_per_block: int) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Yield ``((i, j), block)`` for ``keys``, read from the array at ``url`` (task side).

    The array is opened once per task; every block is yielded, all-zero ones included.
    """
    try:
        array = open_array(url, "r")
    except (OSError, KeyError, ValueError) as exc:
        raise unreadable_in_task(url, exc) from None
    for i, j in keys:
        try:
            block = read_block(array, i, j, rows_per_block, cols_per_block)
        except (OSError, KeyError, ValueError) as exc:
            raise unreadable_in_task(url, exc) from None
        yield (i, j), block


# ---------------------------------------------------------------------------- output checks


def _target_state(loc: ZarrLocation, param: str) -> str:
    """What is at an output location: absent, array, leftover (ours), or other."""
    meta = _read_metadata(loc, param)
    if meta is not None:
        return "array" if meta.get("node_type") == "array" else "other"
    fs = loc.filesystem()
    if fs.exists(loc.key(PUBLISHING_KEY)):
        return "leftover"
    if loc.local:
        if not os.path.exists(loc.path):
            return "absent"
        return "other" if not os.path.isdir(loc.path) or os.listdir(loc.path) else "absent"
    try:
        return "other" if fs.ls(loc.path, detail=False) else "absent"
    except FileNotFoundError:
        return "absent"


def check_output(url, overwrite: bool = False, param: str = "output") -> ZarrLocation:
    """Check, without writing anything, that a Zarr array can be written at ``url``.

    Returns
    -------
    ZarrLocation
        The parsed location.

    Raises
    ------
    OutputExistsError
        An array is there and ``overwrite`` is False.
    OutputNotWritableError
        The local folder does not exist or is not writable, or the bucket does not exist.
    InvalidInputError
        Something that is not a Zarr array is there (a file, a group, a folder with other
        files): it is never overwritten.
    """
    loc = as_location(url, param)
    require_zarr()
    if loc.local:
        if not os.path.isdir(loc.parent):
            raise OutputNotWritableError(
                f"{param} folder {loc.parent!r} does not exist: create it or choose another "
                f"location")
        if not can_create_in(loc.parent):
            raise OutputNotWritableError(
                f"{param} folder {loc.parent!r} is not writable: choose a writable location")
    else:
        bucket = loc.path.split("/", 1)[0]
        fs = loc.filesystem()
        try:
            found = fs.exists(bucket)
        except PermissionError as exc:
            raise OutputNotWritableError(
                f"{param} bucket {loc.protocol}://{bucket} cannot be reached "
                f"({_first_line(exc)}): check the credentials in the environment or the "
                f"storage client's config") from None
        if not found:
            raise OutputNotWritableError(
                f"{param} bucket {loc.protocol}://{bucket} does not exist (or these "
                f"credentials cannot see it): create it, or check AWS_ENDPOINT_URL and the "
                f"credentials")
    state = _target_state(loc, param)
    if state == "other":
        raise InvalidInputError(
            f"{param} {loc} exists and is not a Zarr array (a file, a group, or a folder with "
            f"other content); it will not be overwritten: remove it or choose another location")
    if state == "array" and not overwrite:
        raise OutputExistsError(
            f"{param} {loc} is already a Zarr array: pass overwrite=True (--overwrite) to "
            f"replace it, or choose another location")
    return loc


def output_chunks(chunks, rows_per_block: int, cols_per_block: int,
                  shape: tuple[int, int], param: str = "chunks") -> tuple[int, int]:
    """The chunk shape of an output written block by block; chunks must divide the blocks.

    Default: the block shape, cut to the matrix (a matrix smaller than a block is one
    chunk). Each task writes only whole chunks of its own blocks, so a chunk that straddled
    two blocks would be written by two tasks: such chunks are refused, not rounded.

    >>> output_chunks(None, 256, 128, (1000, 100))
    (256, 100)
    >>> output_chunks((64, 128), 256, 128, (1000, 1000))
    (64, 128)
    """
    if chunks is None:
        return (max(1, min(rows_per_block, shape[0])), max(1, min(cols_per_block, shape[1])))
    try:
        r, c = (int(x) for x in chunks)
        valid = r >= 1 and c >= 1 and all(float(x) == int(x) for x in chunks)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InvalidParameterError(
            f"{param} must be a pair of positive integers (rows, cols), got {chunks!r}: e.g. "
            f"({rows_per_block}, {cols_per_block}), the block shape")
    if rows_per_block % r or cols_per_block % c:
        raise InvalidParameterError(
            f"{param} ({r}, {c}) does not divide the block shape ({rows_per_block}, "
            f"{cols_per_block}): each task writes whole chunks of its own blocks, so a chunk "
            f"may not straddle two blocks; choose chunks dividing the block shape, e.g. "
            f"({_divisor_near(rows_per_block, r)}, {_divisor_near(cols_per_block, c)})")
    return r, c


def _divisor_near(n: int, wanted: int) -> int:
    """The largest divisor of ``n`` not above ``wanted`` (at least 1)."""
    return max(d for d in range(1, min(n, max(wanted, 1)) + 1) if n % d == 0)


def check_output_space(url, shape: tuple[int, int], dtype, param: str = "output") -> None:
    """Refuse a local output folder without room for the array, uncompressed.

    The staging array is written beside the target (an existing one stays until the new one
    is published), so the need is one dense copy. Object storage is not checked.
    """
    loc = as_location(url, param)
    if loc.local:
        check_space(loc.parent, dense_nbytes(shape, dtype),
                    f"writing {loc} ({shape[0]}x{shape[1]} {np.dtype(dtype).name})", param)


# ---------------------------------------------------------------------------- writing


def write_tile(array, r0: int, c0: int, tile) -> None:
    """Write ``tile`` (dense or sparse) at ``(r0, c0)`` of the open ``array`` (task side).

    The tile must cover whole chunks (those on the array's edges up to the edge): the caller
    owns them, no other task writes them.
    """
    pause("zarr.tile")
    dense = tile.toarray() if hasattr(tile, "toarray") else np.asarray(tile)
    array[r0:r0 + dense.shape[0], c0:c0 + dense.shape[1]] = dense


def write_blocks(items, url: str, shape: tuple[int, int], rows_per_block: int,
                 cols_per_block: int) -> Iterator[tuple[np.ndarray, str]]:
    """Write a task's ``((i, j), block)`` into the staging array at ``url`` (task side).

    Yields one record ``(keys, problem)``: the ``(n, 2)`` int64 keys written, for the
    driver's check that no two blocks shared a key (and so a chunk), and ``""`` or the first
    block that does not fit the grid (wrong shape, index outside it), which is not written.
    Returned rather than raised: the driver raises it as a typed error, and the worker, which
    an exception would end, stays for the next task.
    """
    array, keys, problem = None, [], ""
    for (i, j), block in items:
        rows, cols = block_slices(i, j, shape, rows_per_block, cols_per_block)
        want = (rows.stop - rows.start, cols.stop - cols.start)
        if not (0 <= i and 0 <= j and want[0] > 0 and want[1] > 0) or \
                tuple(block.shape) != want:
            problem = problem or (
                f"block ({i}, {j}) has shape {tuple(block.shape)}, which does not fit a "
                f"{shape[0]}x{shape[1]} matrix in {rows_per_block}x{cols_per_block} blocks"
                + (f" (expected {want})" if min(want) > 0 and min(i, j) >= 0 else
                   " (its index is outside the grid)"))
            continue
        if array is None:
            array = open_array(url, "r+")
        write_tile(array, rows.start, cols.start, block)
        keys.append((i, j))
    yield np.array(keys, dtype=np.int64).reshape(-1, 2), problem


def check_written(records, op: str = "to_zarr") -> int:
    """Refuse what :func:`write_blocks`' records report (driver side); the blocks written.

    Raises
    ------
    InvalidBlockError
        A block did not fit the grid, or two blocks had one index (and so wrote the same
        chunks): the output must not be published.
    """
    problems = [p for _, p in records if p]
    if problems:
        raise InvalidBlockError(
            f"{op}: {problems[0]}; nothing was published: run BlockMatrix.validate() to find "
            f"the bad blocks, and fix them")
    keys = (np.concatenate([k for k, _ in records]) if records
            else np.zeros((0, 2), np.int64))
    unique, counts = np.unique(keys, axis=0, return_counts=True)
    if len(unique) < len(keys):
        first = tuple(int(x) for x in unique[np.argmax(counts > 1)])
        raise InvalidBlockError(
            f"{op}: {int((counts > 1).sum())} block indices occur more than once, e.g. "
            f"{first}; nothing was published: sum duplicates first with rdd.reduceByKey, or "
            f"run BlockMatrix.validate() to find them")
    return len(keys)


class StagedOutput:
    """An output being written: the staging array, then its publication (driver side).

    Made by :func:`staged_output`. Tasks write into :attr:`staging_url` (``mode="r+"``);
    :meth:`publish` puts the complete array at the target.
    """

    def __init__(self, location: ZarrLocation, shape: tuple[int, int], dtype,
                 chunks: tuple[int, int], producer: str = "", overwrite: bool = False,
                 param: str = "output"):
        self.location, self.staging = location, location.staging
        self.shape, self.dtype, self.chunks = shape, np.dtype(dtype), tuple(chunks)
        self.producer, self.overwrite = producer or "blockmatrix", overwrite
        self.param, self.published = param, False
        #: More attributes the published array records (e.g. the request that produced it).
        self.extra_attributes: dict = {}

    @property
    def url(self) -> str:
        """The target's URL."""
        return self.location.url

    @property
    def staging_url(self) -> str:
        """The URL the tasks write into."""
        return self.staging.url

    def attributes(self) -> dict:
        """The attributes of the published array: shape, dtype, producer, a write id."""
        return {**self.extra_attributes, SHAPE_ATTR: list(self.shape),
                DTYPE_ATTR: self.dtype.str, PRODUCER_ATTR: self.producer,
                WRITE_ID_ATTR: uuid.uuid4().hex}

    def create(self) -> None:
        """Create the empty staging array (all fill value, zero), marked incomplete."""
        zarr = require_zarr()
        zarr.create_array(store=self.staging_url, shape=self.shape, dtype=self.dtype,
                          chunks=self.chunks, fill_value=0, zarr_format=3, overwrite=True,
                          attributes={INCOMPLETE_ATTR: 1})

    def staging_matches(self) -> bool:
        """Whether a staging array of this shape, dtype and chunks, incomplete, is there."""
        try:
            array = open_array(self.staging_url, "r")
        except (OSError, ValueError):
            return False
        return (tuple(array.shape) == tuple(self.shape)
                and np.dtype(array.dtype).newbyteorder("=") == self.dtype.newbyteorder("=")
                and tuple(array.chunks) == self.chunks
                and bool(array.attrs.asdict().get(INCOMPLETE_ATTR)))

    def publish(self) -> None:
        """Put the complete staging array at the target (call once every tile is written).

        Raises
        ------
        OutputExistsError
            An array appeared at the target during the write and overwriting was not asked
            for (only without a lock: object storage).
        """
        if not self.overwrite and _target_state(self.location, self.param) == "array":
            raise OutputExistsError(
                f"{self.param} {self.location} became a Zarr array while this one was "
                f"written (another writer?): nothing was published; pass overwrite=True to "
                f"replace it, or choose another location")
        open_array(self.staging_url, "r+").attrs.put(self.attributes())
        if self.location.local:
            _publish_local(self.staging, self.location)
        else:
            _publish_objects(self.staging, self.location)
        self.published = True

    def discard(self) -> None:
        """Remove the staging array (best effort: the next write removes what is left)."""
        with contextlib.suppress(OSError):
            _remove(self.staging)


def _publish_local(staging: ZarrLocation, target: ZarrLocation) -> None:
    """Rename the staging folder onto the target; an existing target goes aside first.

    POSIX cannot rename a folder over a non-empty one: a kill between the two renames leaves
    no array at the target (never a partial one), the old one aside and the new one staged,
    both removed by the next write.
    """
    retired = target.sibling(RETIRED_TAG)
    if os.path.isdir(target.path) and os.listdir(target.path):
        os.rename(target.path, retired.path)
    elif os.path.isdir(target.path):
        os.rmdir(target.path)
    pause("zarr.publish")
    os.rename(staging.path, target.path)
    shutil.rmtree(retired.path, ignore_errors=True)


def _publish_objects(staging: ZarrLocation, target: ZarrLocation) -> None:
    """Copy the staged objects to the target prefix, ``zarr.json`` last; remove the staging.

    An old array at the target first stops being one (its ``zarr.json`` goes), then its
    objects go (a chunk the new array leaves at fill value must not show an old value); the
    target prefix is marked with :data:`PUBLISHING_KEY` until the new ``zarr.json`` is there.
    """
    fs = target.filesystem()
    fs.pipe_file(target.key(PUBLISHING_KEY), b"")
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(target.key(METADATA_KEY))
    fs.invalidate_cache(target.path)
    old = [p for p in fs.find(target.path) if p != target.key(PUBLISHING_KEY)]
    if old:
        fs.rm(old)
    fs.invalidate_cache(staging.path)
    staged = fs.find(staging.path)
    prefix = staging.path + "/"
    chunks = [p for p in staged if p != staging.key(METADATA_KEY)]
    if chunks:
        fs.copy(chunks, [target.key(p[len(prefix):]) for p in chunks])
    pause("zarr.publish")
    fs.copy(staging.key(METADATA_KEY), target.key(METADATA_KEY))
    fs.rm_file(target.key(PUBLISHING_KEY))
    fs.invalidate_cache(target.path)
    _remove(staging)


def _remove(loc: ZarrLocation) -> None:
    """Remove the folder or every object under the prefix ``loc`` (nothing there is fine)."""
    if loc.local:
        if os.path.isdir(loc.path):
            shutil.rmtree(loc.path)
        return
    fs = loc.filesystem()
    fs.invalidate_cache(loc.path)
    found = fs.find(loc.path)
    if found:
        fs.rm(found)
    fs.invalidate_cache(loc.path)


def clean_leftovers(url, param: str = "output", keep_staging: bool = False) -> list[str]:
    """Remove what an interrupted writer of ``url`` left; say what was removed.

    The staging array (unless ``keep_staging``), a local target renamed aside, and on object
    storage a target prefix marked :data:`PUBLISHING_KEY` (a publication cut short). Call it
    holding the output's lock where there is one.
    """
    loc = as_location(url, param)
    removed = []
    leftovers = ([] if keep_staging else [loc.staging]) + (
        [loc.sibling(RETIRED_TAG)] if loc.local else [])
    for left in leftovers:
        if left.local and os.path.exists(left.path) or not left.local and \
                left.filesystem().find(left.path):
            _remove(left)
            removed.append(left.url)
    if not loc.local and _target_state(loc, param) == "leftover":
        _remove(loc)
        removed.append(loc.url)
    return removed


@contextlib.contextmanager
def staged_output(url, shape: tuple[int, int], dtype, chunks: tuple[int, int],
                  overwrite: bool = False, producer: str = "", job: str = "to_zarr",
                  param: str = "output", resume: bool = False,
                  take_lock: bool = True) -> Iterator[StagedOutput]:
    """Write a Zarr array staged, and publish it when complete (driver side).

    Checks the target (:func:`check_output`; again under a local target's lock, held
    throughout), removes what an interrupted writer left (:func:`clean_leftovers`), creates
    the staging array and yields the :class:`StagedOutput`: have the tasks write their
    chunk-aligned tiles into ``staged.staging_url`` (:func:`write_tile`), then call
    ``staged.publish()``. Leaving the block without publishing (an error in the tasks, a
    refused check) removes the staging array; a killed process leaves it for the next write
    to remove.

    With ``resume``, a staging array of the same shape, dtype and chunks left by an
    interrupted run is kept, tiles and all (the caller knows which tiles it finished), and
    is kept again if this run fails too; anything else left is removed as usual.

    ``take_lock=False`` is for a caller that already holds a local target's lock
    (:func:`~blockmatrix.io.lock.output_lock` on :func:`~blockmatrix.io.lock.lock_path_of`
    the path, as the jobs take it before Spark starts): a second one would refuse.

    Raises
    ------
    OutputExistsError, OutputNotWritableError, InvalidInputError
        As :func:`check_output`; a local target locked by another job.
    """
    loc = check_output(url, overwrite, param)
    guard = (output_lock(lock_path_of(loc.path), loc.path, job=job)
             if loc.local and take_lock else contextlib.nullcontext())
    with guard:
        check_output(loc, overwrite, param)
        staged = StagedOutput(loc, tuple(int(n) for n in shape), dtype, chunks, producer,
                              overwrite, param)
        kept = resume and staged.staging_matches()
        clean_leftovers(loc, param, keep_staging=kept)
        if not kept:
            staged.create()
        try:
            yield staged
        finally:
            if not staged.published and not resume:
                staged.discard()


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
