"""Out-of-core products from HDF5 on Spark: C = A @ B and Y = X X^T, in bounded memory.

The memory is set by two flags (tile and slab); the gram is the symmetric case of the engine.

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
    The driver of a run (:class:`OocRun`, alias ``GramRun``), what it reports, and
    :func:`~blockmatrix.ooc.run.run_request`, the whole run of a checked request.
``gram``, ``matmul``
    The entry points :func:`gram_hdf5` and :func:`matmul_hdf5`.

>>> from blockmatrix.ooc import gram_hdf5, matmul_hdf5, plan_gram, plan_product
"""

from .gram import gram_hdf5
from .kernels import compute_tile
from .matmul import matmul_hdf5
from .request import GramRequest, OocRequest, check_gram_request, check_matmul_request
from .run import GramProgress, GramResult, GramRun, OocRun, run_request, spark_slots
from .tiles import (
    DEFAULT_SLAB,
    DEFAULT_TASK_BUDGET_BYTES,
    DEFAULT_TILE,
    GramPlan,
    GramTile,
    Operand,
    ProductPlan,
    Tile,
    balanced_gram_tile,
    balanced_product_tile,
    make_product_tiles,
    make_tiles,
    plan_gram,
    plan_product,
)
from .workdir import output_lock

__all__ = [
    "DEFAULT_SLAB",
    "DEFAULT_TASK_BUDGET_BYTES",
    "DEFAULT_TILE",
    "GramPlan",
    "GramProgress",
    "GramRequest",
    "GramResult",
    "GramRun",
    "GramTile",
    "OocRequest",
    "OocRun",
    "Operand",
    "ProductPlan",
    "Tile",
    "balanced_gram_tile",
    "balanced_product_tile",
    "check_gram_request",
    "check_matmul_request",
    "compute_tile",
    "gram_hdf5",
    "make_product_tiles",
    "make_tiles",
    "matmul_hdf5",
    "output_lock",
    "plan_gram",
    "plan_product",
    "run_request",
    "spark_slots",
]
