"""The single writer of the output: space allocated at creation, then raw writes of tiles.

The driver is the only writer of the output (Y = X X^T, or C = A @ B). When the output file is
new, it streams tiles into a private file in the work folder while the tasks run and, at the
end, links that file into place (atomically, :func:`link_into_place`). When the output file
exists (in particular when it is an input file), it is opened for writing once, after every
task has finished reading the inputs, and the tiles are streamed into a staging dataset in it
(for Y, mirrored below the diagonal), moved to the output's name once complete
(:func:`~blockmatrix.io.hdf5.publish_dataset`). Either way the output never exists under its
name before it is complete, and records its shape, dtype and what produced it. A kill during
the final step is recovered by ``resume=True``, which writes the same tiles again.
"""

from __future__ import annotations

import h5py
import numpy as np

from .._testhooks import pause
from ..errors import OutputNotWritableError
from ..io.hdf5 import (
    INCOMPLETE_ATTR,
    create_allocated,
    link_new_file,
    mark_published,
    publish_dataset,
    staging_dataset_name,
)
from .tiles import WRITE_BAND_BYTES, Tile
from .workdir import npy_header

__all__ = ["INCOMPLETE_ATTR", "REQUEST_ATTR", "YWriter", "link_into_place"]

#: Attribute of a published output holding the request that produced it, as JSON (what a
#: ``--resume`` of a finished run compares with its own request).
REQUEST_ATTR = "blockmatrix_request"

#: A new output file is linked into place, never replacing a file.
link_into_place = link_new_file


class YWriter:
    """The single writer of Y: creates it with all its space allocated, then raw writes only.

    Y is contiguous and allocated when created (no fill), and marked with the attribute
    ``blockmatrix_gram_incomplete`` until :meth:`close` removes it; so after the creation
    (which is flushed at once) writing tiles never changes the file's metadata, and a kill
    while tiles are being written leaves a consistent file whose Y is marked incomplete. In an
    existing file (``mode="a"``) Y is written under
    :func:`~blockmatrix.io.hdf5.staging_dataset_name` and moved to its name by :meth:`close`.

    Parameters
    ----------
    path, dataset : str
        Where Y goes.
    n : int or (int, int)
        Rows and columns of Y (an int: square), or the shape of C.
    dtype : dtype-like
        dtype of Y.
    mode : {"a", "w-"}
        ``"a"`` for an existing file, ``"w-"`` for a new one.
    symmetric : bool, optional
        Whether tiles are mirrored below the diagonal (Y = X X^T); default: when ``n`` is an
        int.
    producer : str
        What produced Y, recorded in its attributes.
    request : str
        The request that produced Y, as JSON, recorded in its attributes.
    """

    def __init__(self, path: str, dataset: str, n, dtype, mode: str = "a", *,
                 symmetric: bool | None = None, producer: str = "", request: str = ""):
        self.dtype = np.dtype(dtype)
        self.dataset = dataset
        self.name = dataset if mode == "w-" else staging_dataset_name(dataset)
        self.producer, self.request = producer, request
        self.symmetric = isinstance(n, int | np.integer) if symmetric is None else symmetric
        n = (int(n), int(n)) if isinstance(n, int | np.integer) else tuple(int(v) for v in n)
        try:
            self.file = h5py.File(path, mode)
        except OSError as exc:
            raise OutputNotWritableError(
                f"output file {path!r} cannot be opened for writing ({exc}); if another "
                f"process has it open, close that process and finish with --resume") from exc
        try:
            self.data = self._create(self.name, n)
            self.file.flush()
        except BaseException:
            self.file.close()
            raise

    def _create(self, dataset: str, shape: tuple[int, int]) -> h5py.Dataset:
        f = self.file
        if dataset in f:
            old = f[dataset]
            if (isinstance(old, h5py.Dataset) and old.shape == shape
                    and old.dtype == self.dtype and old.chunks is None
                    and old.id.get_storage_size() == shape[0] * shape[1] * self.dtype.itemsize):
                old.attrs[INCOMPLETE_ATTR] = 1  # same layout: rewrite in place
                return old
            del f[dataset]
        return create_allocated(f, dataset, shape, self.dtype)

    def write_tile(self, tile: Tile, tile_path: str) -> None:
        """Copy a finished tile into the output, band by band (mirrored when symmetric)."""
        pause("gram.writer")
        _, fortran, _, offset = npy_header(tile_path)
        if not fortran:
            raise ValueError(f"tile file {tile_path} is not Fortran-ordered")
        rows = tile.rows
        band = max(1, WRITE_BAND_BYTES // max(1, rows * self.dtype.itemsize))
        for c0 in range(0, tile.cols, band):
            c1 = min(c0 + band, tile.cols)
            # Columns c0:c1 of the Fortran-ordered tile are rows c0:c1 of its transpose.
            block = np.fromfile(tile_path, dtype=self.dtype, count=(c1 - c0) * rows,
                                offset=offset + c0 * rows * self.dtype.itemsize)
            block = block.reshape(c1 - c0, rows)
            if not self.symmetric:
                self.data[tile.r0:tile.r1, tile.c0 + c0:tile.c0 + c1] = \
                    np.ascontiguousarray(block.T)
                continue
            self.data[tile.c0 + c0:tile.c0 + c1, tile.r0:tile.r1] = block
            if not tile.diagonal:
                self.data[tile.r0:tile.r1, tile.c0 + c0:tile.c0 + c1] = \
                    np.ascontiguousarray(block.T)

    def close(self, complete: bool = True) -> None:
        """Mark Y complete and publish it under its name (when ``complete``), then close."""
        try:
            if complete:
                if self.request:
                    self.data.attrs[REQUEST_ATTR] = self.request
                mark_published(self.data, self.producer)
                self.file.flush()
                if self.name != self.dataset:
                    publish_dataset(self.file, self.name, self.dataset)
            self.file.flush()
        finally:
            self.file.close()
