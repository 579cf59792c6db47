"""The single writer of the output: space allocated at creation, then raw writes of tiles.

The driver is the only writer of the output (Y = X X^T, or C = A @ B). When the output file is
new, it streams tiles into a private file in the work folder while the tasks run and, at the
end, links that file into place (atomically, :func:`link_into_place`). When the output file
exists (in particular when it is an input file), it is opened for writing once, after every
task has finished reading the inputs, and the tiles are streamed into it (for Y, mirrored below
the diagonal). A kill during that final step
is recovered by ``resume=True``, which writes the same tiles again.
"""

from __future__ import annotations

import os
import posixpath

import h5py
import numpy as np

from .._testhooks import pause
from ..errors import OutputExistsError, OutputNotWritableError
from .tiles import WRITE_BAND_BYTES, Tile
from .workdir import npy_header

__all__ = ["INCOMPLETE_ATTR", "YWriter", "link_into_place"]

INCOMPLETE_ATTR = "blockmatrix_gram_incomplete"


class YWriter:
    """The single writer of Y: creates it with all its space allocated, then raw writes only.

    Y is contiguous and allocated when created (no fill), and marked with the attribute
    ``blockmatrix_gram_incomplete`` until :meth:`close` removes it; so after the creation
    (which is flushed at once) writing tiles never changes the file's metadata, and a kill
    while tiles are being written leaves a consistent file whose Y is marked incomplete.

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
    """

    def __init__(self, path: str, dataset: str, n, dtype, mode: str = "a", *,
                 symmetric: bool | None = None):
        self.dtype = np.dtype(dtype)
        self.symmetric = isinstance(n, int | np.integer) if symmetric is None else symmetric
        n = (int(n), int(n)) if isinstance(n, int | np.integer) else tuple(int(v) for v in n)
        try:
            self.file = h5py.File(path, mode)
        except OSError as exc:
            raise OutputNotWritableError(
                f"output file {path!r} cannot be opened for writing ({exc}); if another "
                f"process has it open, close that process and finish with --resume") from exc
        try:
            self.data = self._create(dataset, n)
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
        f.require_group(posixpath.dirname(dataset) or "/")
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        data = f.create_dataset(dataset, shape=shape, dtype=self.dtype, dcpl=dcpl)
        data.attrs[INCOMPLETE_ATTR] = 1
        return data

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
        """Mark Y complete (when ``complete``), flush and close the file."""
        try:
            if complete and INCOMPLETE_ATTR in self.data.attrs:
                del self.data.attrs[INCOMPLETE_ATTR]
            self.file.flush()
        finally:
            self.file.close()


def link_into_place(staged: str, output_path: str) -> None:
    """Put the staged new output file in place atomically, never replacing a file."""
    try:
        os.link(staged, output_path)
    except FileExistsError:
        raise OutputExistsError(
            f"output file {output_path!r} was created by someone else during the run: the "
            f"result is kept in {staged!r}") from None
    except OSError:
        if os.path.exists(output_path):
            raise
        os.rename(staged, output_path)
        return
    os.unlink(staged)
