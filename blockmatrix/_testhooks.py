"""Named pause points, so that a test can slow a run down and interrupt it half-way.

Production code calls :func:`pause` at a few named points; it does nothing unless the
environment variable ``BLOCKMATRIX_TEST_PAUSE`` names that point, as comma-separated
``POINT=SECONDS`` pairs::

    BLOCKMATRIX_TEST_PAUSE="gram.writer=0.2,gram.slab=0.05"

A test that must kill a job at a known stage sets the variable for the job's process; Spark
executors in local mode inherit the environment, so the pause reaches the tasks too and no test
parameter has to be threaded through production signatures. The points in use:

``gram.slab``
    In a task of :func:`blockmatrix.ooc.gram_hdf5`, after each slab of X is accumulated.
``gram.writer``
    In the single writer of Y, before each tile is written.
``zarr.tile``
    In a task writing a Zarr output (:func:`blockmatrix.io.zarr_store.write_tile`), before
    each tile.
``zarr.publish``
    In a Zarr output's publication: locally between moving an old array aside and renaming
    the new one in; on object storage after the chunks are copied, before ``zarr.json``.

Any other module may add points of its own (``<module>.<stage>``): nothing here knows them.
When the variable is unset a pause costs one environment lookup; its value is parsed once.

>>> parse_pauses("gram.writer=0.2, gram.slab=0.05")
{'gram.writer': 0.2, 'gram.slab': 0.05}
>>> parse_pauses("")
{}
>>> parse_pauses("gram.writer")
Traceback (most recent call last):
...
ValueError: BLOCKMATRIX_TEST_PAUSE: 'gram.writer' is not POINT=SECONDS (e.g. gram.writer=0.2)
"""

from __future__ import annotations

import functools
import os
import time

__all__ = ["PAUSE_ENV", "parse_pauses", "pause"]

#: The environment variable naming the pauses.
PAUSE_ENV = "BLOCKMATRIX_TEST_PAUSE"


@functools.lru_cache(maxsize=8)
def parse_pauses(spec: str) -> dict[str, float]:
    """Seconds per point of a ``POINT=SECONDS,...`` spec (cached: parsed once per value).

    Parameters
    ----------
    spec : str
        The value of :data:`PAUSE_ENV`.

    Returns
    -------
    dict of str to float

    Raises
    ------
    ValueError
        A pair is not ``POINT=SECONDS`` or its seconds are not a non-negative number.
    """
    pauses = {}
    for pair in filter(None, (part.strip() for part in spec.split(","))):
        point, sep, seconds = pair.partition("=")
        try:
            value = float(seconds) if sep and point.strip() else -1.0
        except ValueError:
            value = -1.0
        if not value >= 0:  # also refuses nan
            raise ValueError(f"{PAUSE_ENV}: {pair!r} is not POINT=SECONDS "
                             f"(e.g. gram.writer=0.2)")
        pauses[point.strip()] = value
    return pauses


def pause(point: str) -> None:
    """Sleep for the seconds :data:`PAUSE_ENV` gives ``point``; return at once otherwise.

    Parameters
    ----------
    point : str
        The name of the pause point, ``<module>.<stage>``.
    """
    spec = os.environ.get(PAUSE_ENV)
    if spec:
        seconds = parse_pauses(spec).get(point, 0.0)
        if seconds:
            time.sleep(seconds)
