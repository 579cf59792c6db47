"""The work location of a run whose output is a Zarr array: its state and its tiles' marks.

A Zarr output is written by the tasks themselves, each tile straight into the staging array
(:func:`~blockmatrix.io.zarr_store.staged_output`); no tile file exists. What records a
run's progress is on the output's own storage (a local folder or object storage, which every
executor can write), beside the target, ``.NAME.blockmatrix-work``:

* ``tile-IIIII-JJJJJ.done``: an empty object a task writes once its tile's chunks are in the
  staging array (:func:`~blockmatrix.ooc.kernels.mark_tile_done`); a tile without its mark is
  computed again;
* ``tile-IIIII-JJJJJ.progress``: a running task's slab count (local folders only);
* ``state.json``: the resume state, with the tiles the driver has seen finish.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable

from .tiles import Tile

__all__ = ["WORK_TAG", "ZarrWork"]

#: Tag of the work location beside a Zarr output.
WORK_TAG = "blockmatrix-work"
#: Suffix of a finished tile's mark.
DONE = ".done"


class ZarrWork:
    """The work location beside the Zarr output ``output`` (a ``ZarrLocation``).

    >>> from blockmatrix.io.zarr_store import ZarrLocation
    >>> ZarrWork(ZarrLocation("s3", "b/out/c.zarr")).url
    's3://b/out/.c.zarr.blockmatrix-work'
    """

    def __init__(self, output):
        self.output = output
        self.location = output.sibling(WORK_TAG)

    @property
    def url(self) -> str:
        """Where the marks go, as the tasks are given it."""
        return self.location.url

    @property
    def local_dir(self) -> str | None:
        """The folder, when local (progress notes are written there); else None."""
        return self.location.path if self.location.local else None

    def _fs(self):
        fs = self.location.filesystem()
        fs.invalidate_cache(self.location.path)  # listings are cached by object stores' clients
        return fs

    def read_state(self) -> dict | None:
        """The interrupted run's ``state.json``, or None (none or unreadable)."""
        try:
            raw = self._fs().cat_file(self.location.key("state.json"))
            return json.loads(raw)
        except (OSError, ValueError):
            return None

    def write_state(self, state: dict) -> None:
        """Replace ``state.json`` (atomically: a rename locally, one PUT on object storage)."""
        data = json.dumps(state, indent=1).encode()
        final = self.location.key("state.json")
        if self.location.local:
            tmp = f"{final}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        else:
            self._fs().pipe_file(final, data)

    def finished(self, tiles: Iterable[Tile]) -> set[tuple[int, int]]:
        """Indices of ``tiles`` whose done marks are there."""
        by_stem = {t.name[:-len(".npy")]: t for t in tiles}
        try:
            names = self._fs().ls(self.location.path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        stems = {os.path.basename(n.rstrip("/"))[:-len(DONE)] for n in names
                 if n.endswith(DONE)}
        return {(by_stem[s].i, by_stem[s].j) for s in stems & by_stem.keys()}

    def reset(self) -> None:
        """An empty work location (what an earlier run left is removed)."""
        self.remove()
        if self.location.local:
            os.makedirs(self.location.path)

    def clean_partial(self) -> None:
        """Remove what killed tasks left half-done (progress notes, temporary state)."""
        if self.location.local and os.path.isdir(self.location.path):
            for name in os.listdir(self.location.path):
                if ".tmp-" in name or name.endswith(".progress"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.location.path, name))

    def remove(self) -> None:
        """Remove the work location and all in it (nothing there is fine)."""
        fs = self._fs()
        with contextlib.suppress(FileNotFoundError):
            if fs.exists(self.location.path):
                fs.rm(self.location.path, recursive=True)
        fs.invalidate_cache(self.location.path)
