"""Y = X X^T for a tall-and-wide X in HDF5, out of core, in memory bounded by two flags.

X is ``n x k`` with ``k`` (the long axis) possibly far larger than memory; Y is ``n x n``.
:func:`gram_hdf5` checks the request, takes the output's lock, plans the tiles from the shape,
dtype and two sizes alone, and runs them: one Spark task per tile on or above the diagonal,
each saving its tile beside the output (the durable record that ``resume=True`` continues
from), while the driver, the only writer of Y, writes the finished tiles into Y.
"""

from __future__ import annotations

from collections.abc import Callable

from .request import GramRequest, check_gram_request
from .run import GramProgress, GramResult, run_request, spark_slots
from .tiles import GramPlan

__all__ = ["gram_hdf5", "spark_slots"]


def gram_hdf5(sc, input_path, input_dataset: str | None, output_path,
              output_dataset: str | None,
              tile: int | None = None, slab: int | None = None, resume: bool = False,
              overwrite: bool = False, progress: Callable[[GramProgress], None] | None = None,
              *, on_plan: Callable[[GramPlan], None] | None = None,
              request: GramRequest | None = None,
              progress_interval: float = 5.0, cores: int | None = None) -> GramResult:
    """Compute Y = X X^T from ``input_path::input_dataset`` into ``output_path::output_dataset``.

    Parameters
    ----------
    sc : pyspark.SparkContext or None
        The context to run the tasks on; its task slots and ``spark.task.cpus`` set how many
        tasks run at once and with how many BLAS threads. None computes the tiles in this
        process instead, one at a time with ``cores`` BLAS threads, reading the next slabs
        while BLAS runs: no JVM, no worker processes (for files on this machine).
    input_path, input_dataset : str
        X, ``n x k``, float64 or float32; opened read-only by the tasks. Or ``input_path`` a
        Zarr array, ``"zarr:URL"`` or a :class:`~blockmatrix.io.zarr_store.ZarrLocation`,
        and ``input_dataset`` None: the tasks read their slabs from its chunks.
    output_path, output_dataset : str
        Y, ``n x n``, same dtype as X; the file may be the input file. Or ``output_path`` a
        Zarr array as above (``output_dataset`` None): the tasks write their tiles (and the
        mirrored ones) into a staging array, chunks dividing the tile, published when
        complete.
    tile : int, optional
        Rows of an output tile (default: balanced over the task slots within the memory of the
        old default tile, :func:`~blockmatrix.ooc.tiles.balanced_gram_tile`; or the interrupted
        run's).
    slab : int, optional
        Columns of X read per step (default :data:`~blockmatrix.ooc.tiles.DEFAULT_SLAB`, or the
        interrupted run's).
    resume : bool
        Continue an interrupted run: its finished tiles are not computed again.
    overwrite : bool
        Replace an existing Y.
    progress : callable, optional
        Called with a :class:`~blockmatrix.ooc.run.GramProgress` when a tile finishes and every
        ``progress_interval`` seconds.
    on_plan : callable, optional
        Called with the :class:`~blockmatrix.ooc.tiles.GramPlan` before any task starts.
    request : GramRequest, optional
        An already validated request (from
        :func:`~blockmatrix.ooc.request.check_gram_request`); the location arguments must
        match it.
    progress_interval : float
        Seconds between progress reports.
    cores : int, optional
        With ``sc`` None: BLAS threads (default: every core this process may use).

    Returns
    -------
    GramResult

    Raises
    ------
    BlockMatrixError
        Any refusal of :func:`~blockmatrix.ooc.request.check_gram_request`, or another job
        holding the output's lock; nothing is written then.

    Warns
    -----
    PerformanceWarning
        threadpoolctl is not installed, so the tasks cannot pin their BLAS threads.
    """
    if request is None:
        request = check_gram_request(input_path, input_dataset, output_path, output_dataset,
                                     tile, slab, resume, overwrite)
    return run_request(sc, request, progress, on_plan, progress_interval, cores)
