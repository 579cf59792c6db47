"""Out-of-core products from HDF5 on Spark: Y = X X^T in memory bounded by two flags.

The parts, each importing only those listed before it:

``tiles``
    Tile and slab planning from shapes and sizes alone (no Spark, no HDF5).
``workdir``
    The work folder beside the output (finished tiles, progress notes) and the output's lock.
``kernels``
    The executor side: one task computes one tile, slab by slab, with BLAS.
``request``
    Every check of a request before anything is written; the resume state.
``writer``
    The single writer of Y.
``run``
    The driver of a run (:class:`GramRun`) and what it reports.
``gram``
    The entry point :func:`gram_hdf5`.

>>> from blockmatrix.ooc import gram_hdf5, plan_gram
"""

from .gram import gram_hdf5, spark_slots
from .kernels import compute_tile
from .request import GramRequest, check_gram_request
from .run import GramProgress, GramResult, GramRun
from .tiles import DEFAULT_SLAB, DEFAULT_TILE, GramPlan, GramTile, Tile, make_tiles, plan_gram
from .workdir import output_lock

__all__ = [
    "DEFAULT_SLAB",
    "DEFAULT_TILE",
    "GramPlan",
    "GramProgress",
    "GramRequest",
    "GramResult",
    "GramRun",
    "GramTile",
    "Tile",
    "check_gram_request",
    "compute_tile",
    "gram_hdf5",
    "make_tiles",
    "output_lock",
    "plan_gram",
    "spark_slots",
]
