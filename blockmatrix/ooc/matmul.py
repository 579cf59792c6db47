"""C = A @ B for HDF5 operands, out of core, in memory bounded by two flags.

The general case of the engine whose symmetric case is :func:`~blockmatrix.ooc.gram_hdf5`:
:func:`matmul_hdf5` checks the request (:func:`~blockmatrix.ooc.request.check_matmul_request`),
takes the output's lock, plans the tiles of C from the shapes, dtype and two sizes alone
(balanced over the task slots), and runs them: one Spark task per tile of C, each reading
slabs of A's row block and B's column block over the whole inner dimension and saving its tile
beside the output (what ``resume=True`` continues from), while the driver, the only writer of
C, writes the finished tiles into C. A and B may be the same file or dataset, C may go into
either's file, and either may be read transposed.
"""

from __future__ import annotations

from collections.abc import Callable

from .request import OocRequest, check_matmul_request
from .run import GramProgress, GramResult, run_request

__all__ = ["matmul_hdf5"]


def matmul_hdf5(sc, a, b, c, *, tile: int | None = None, slab: int | None = None,
                overwrite: bool = False, resume: bool = False,
                progress: Callable[[GramProgress], None] | None = None,
                on_plan: Callable | None = None, request: OocRequest | None = None,
                progress_interval: float = 5.0, cores: int | None = None) -> GramResult:
    """Compute ``C = A @ B`` from HDF5 into HDF5, out of core.

    Parameters
    ----------
    sc : pyspark.SparkContext or None
        The context to run the tasks on; its task slots and ``spark.task.cpus`` set how many
        tasks run at once and with how many BLAS threads. None computes the tiles in this
        process instead, one at a time with ``cores`` BLAS threads, reading the next slabs
        while BLAS runs: no JVM, no worker processes (for files on this machine).
    a, b : source, Operand, (path, dataset[, transposed]), "zarr:URL", ZarrLocation
        Or ``(zarr, transposed)`` for a Zarr array read transposed.
        The operands, float64 or float32, opened read-only by the tasks; a source
        (:class:`~blockmatrix.sources.HDF5Dataset` or :class:`~blockmatrix.sources.ZarrArray`,
        a ``from_hdf5`` / ``from_zarr`` matrix's) is refused if its data changed since it
        was opened, a Zarr array if its metadata changed since the request was checked.
    c : (str, str), str or ZarrLocation
        ``(path, dataset)`` of C (the file may be A's or B's), or a Zarr array,
        ``"zarr:URL"`` or a :class:`~blockmatrix.io.zarr_store.ZarrLocation`: the tasks then
        write their tiles into it in parallel, published when complete.
    tile : int, optional
        Rows and columns of a tile of C (default: balanced over the task slots within the
        default task memory, :func:`~blockmatrix.ooc.tiles.balanced_product_tile`; or the
        interrupted run's).
    slab : int, optional
        Elements of the inner dimension read per step (default
        :data:`~blockmatrix.ooc.tiles.DEFAULT_SLAB`, or the interrupted run's).
    overwrite : bool
        Replace an existing C.
    resume : bool
        Continue an interrupted run: its finished tiles are not computed again.
    progress : callable, optional
        Called with a :class:`~blockmatrix.ooc.run.GramProgress` when a tile finishes and every
        ``progress_interval`` seconds.
    on_plan : callable, optional
        Called with the :class:`~blockmatrix.ooc.tiles.ProductPlan` before any task starts.
    request : OocRequest, optional
        An already validated request (the other arguments but ``sc`` are then ignored).
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
        Any refusal of :func:`~blockmatrix.ooc.request.check_matmul_request`, another job
        holding the output's lock, or an input that changed or cannot be read in a task (one
        line); nothing is written then.

    Examples
    --------
    >>> from blockmatrix.ooc import matmul_hdf5                   # doctest: +SKIP
    >>> matmul_hdf5(sc, ("a.h5", "/A"), ("b.h5", "/B"), ("c.h5", "/C"))  # doctest: +SKIP
    """
    if request is None:
        from .request import zarr_location

        try:
            c_path, c_dataset = (c, None) if zarr_location(c) is not None else c
        except (TypeError, ValueError):
            from ..errors import InvalidParameterError

            raise InvalidParameterError(
                f"c must be a (path, dataset) location or a Zarr array, got {c!r}: pass e.g. "
                f"('c.h5', '/C') or 'zarr:s3://bucket/c.zarr'") from None
        request = check_matmul_request(a, b, c_path, c_dataset, tile, slab, resume, overwrite)
    return run_request(sc, request, progress, on_plan, progress_interval, cores)
