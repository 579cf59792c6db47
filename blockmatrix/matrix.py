"""``BlockMatrix``: an immutable distributed matrix of numpy / scipy.sparse CSR blocks.

A BlockMatrix is an RDD of ``((i, j), block)`` plus the matrix shape and the block shape. Block
``(i, j)`` covers rows ``i * rows_per_block ...`` and columns ``j * cols_per_block ...``; edge
blocks may be smaller; absent blocks are zero. Constructing one never runs a Spark job:
expensive checks live in :meth:`BlockMatrix.validate`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import weakref
from collections import Counter
from functools import partial

import numpy as np
import scipy.sparse as sp

from . import blocks as bk
from ._checks import check_int, is_integer
from .errors import (
    BlockSizeMismatchError,
    BlockTypeError,
    InvalidBlockError,
    InvalidParameterError,
    ShapeMismatchError,
    raised_from_tasks,
)
from .held import Held, collecting, release_later, release_pending
from .interop import mllib, tables
from .io import hdf5, zarr_store
from .layout import (
    BlockLayout,
    KeyCollect,
    block_extent,
    blocks_along,
    check_multiplicable,
    shape_only,
    split_evenly,
)
from .memory import COLLECT, STREAM, MemoryConf, check_matrix_exit, check_plan
from .partitioner import GridPartitioner
from .plan import MultiplyOptions, MultiplyPlan, check_blocks_fit
from .sources import DriverArray, HDF5Dataset, ZarrArray, file_stamp
from .sparkconf import multiply_defaults
from .strategies import get_strategy

Key = tuple[int, int]


def _block_size(value, name: str) -> int:
    return check_int(value, name, fix="choose a block size >= 1, e.g. 1024")


def _num_slices(sc, num_partitions: int | None, num_items: int) -> int:
    """Partitions for ``num_items`` blocks, at most one per block and at least one.

    The request defaults to ``sc.defaultParallelism``.
    """
    n = check_int(num_partitions or sc.defaultParallelism, "num_partitions")
    return max(1, min(n, num_items))


def _check_shape(shape) -> tuple[int, int]:
    try:
        rows, cols = shape
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"shape must be a pair (rows, cols), got {shape!r}") from None
    for name, n in (("shape[0]", rows), ("shape[1]", cols)):
        check_int(n, name, minimum=0)
    return int(rows), int(cols)


class BlockMatrix:
    """A distributed matrix stored as numpy / scipy.sparse CSR blocks in an RDD.

    Parameters
    ----------
    blocks : pyspark.RDD
        RDD of ``((i, j), block)`` with ``block`` a 2-D ndarray or CSR matrix.
    shape : (int, int)
        Rows and columns of the matrix.
    rows_per_block, cols_per_block : int
        Block shape; blocks on the last block row / column may be smaller.
    layout : BlockLayout, optional
        The block keys and sizes when already known (saves a Spark job when planning).

    Notes
    -----
    Use the ``from_*`` constructors rather than this one. Nothing is computed here; call
    :meth:`validate` to check the blocks against the claimed shape.
    """

    def __init__(self, blocks, shape, rows_per_block: int, cols_per_block: int, *,
                 layout: BlockLayout | None = None, plan: MultiplyPlan | None = None,
                 source: tuple[str, str] | None = None,
                 input_files: frozenset[str] = frozenset(), dtype=None):
        self._blocks = blocks
        self._shape = _check_shape(shape)
        self._rows_per_block = _block_size(rows_per_block, "rows_per_block")
        self._cols_per_block = _block_size(cols_per_block, "cols_per_block")
        self._layout = layout
        self._plan = plan
        self._transpose_of: BlockMatrix | None = None
        self._gram_source: tuple[str, str] | None = None  # X of an X @ X.T read from HDF5
        self._ooc_sources: tuple | None = None  # (A, B) file sources of an ooc product
        # auto's options, for a product of two files that to_hdf5 may still send file to file
        self._auto_options: MultiplyOptions | None = None
        self._dtype = np.dtype(dtype) if dtype is not None else (
            layout.dtype if layout is not None else None)
        self._source = source
        self._input_files = frozenset(input_files) | ({source[0]} if source else set())
        # A product's broadcasts and persisted intermediates (released when it is garbage
        # collected), and the matrices its blocks are computed from, kept alive because its
        # lineage needs what they hold.
        self._held: Held | None = None
        self._parents: tuple[BlockMatrix, ...] = ()

    # ------------------------------------------------------------------ properties
    @property
    def blocks(self):
        """The RDD of ``((i, j), block)``.

        A product's RDD is valid while the product, or a matrix computed from it, lives: the
        broadcasts it uses are destroyed when they are garbage collected.
        """
        return self._blocks

    def _hold(self, held: Held) -> None:
        """Keep ``held`` with this product; garbage collection releases it."""
        if held:
            self._held = held
            # Garbage collection queues the release; the next product or exit carries it out.
            weakref.finalize(self, release_later, held).atexit = False

    def _derived_from(self, *parents: BlockMatrix) -> BlockMatrix:
        """Keep ``parents`` alive while this matrix lives (its lineage needs what they hold)."""
        self._parents = tuple(p for p in parents if p._held is not None or p._parents)
        return self

    def _release_after_exit(self) -> None:
        """An exit has read every block: unpersist the product's intermediates."""
        if self._held is not None:
            self._held.release_intermediates()

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        return self._shape

    @property
    def rows_per_block(self) -> int:
        """Rows of a full block."""
        return self._rows_per_block

    @property
    def cols_per_block(self) -> int:
        """Columns of a full block."""
        return self._cols_per_block

    @property
    def num_row_blocks(self) -> int:
        """Number of block rows."""
        return blocks_along(self._shape[0], self._rows_per_block)

    @property
    def num_col_blocks(self) -> int:
        """Number of block columns."""
        return blocks_along(self._shape[1], self._cols_per_block)

    @property
    def dtype(self) -> np.dtype:
        """Element type of the blocks (one small job when not known from construction)."""
        if self._dtype is None:
            self._dtype = self.layout().dtype
        return self._dtype

    @property
    def plan(self) -> MultiplyPlan | None:
        """The plan that produced this matrix, when it is a product."""
        return self._plan

    @property
    def source(self) -> tuple[str, str] | None:
        """``(path, dataset)`` when the blocks are read unchanged from an HDF5 dataset."""
        return self._source

    @property
    def input_files(self) -> frozenset[str]:
        """Absolute paths of the files this matrix's blocks are computed from."""
        return self._input_files

    def __repr__(self) -> str:
        return (f"BlockMatrix(shape={self._shape}, block=({self._rows_per_block}, "
                f"{self._cols_per_block}), grid={self.num_row_blocks}x{self.num_col_blocks})")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_blocks(cls, rdd, shape, rows_per_block: int, cols_per_block: int) -> BlockMatrix:
        """Wrap an RDD of ``((i, j), block)``; no job runs (see :meth:`validate`)."""
        return cls(rdd, shape, rows_per_block, cols_per_block)

    @classmethod
    def from_numpy(cls, sc, a, rows_per_block: int, cols_per_block: int,
                   num_partitions: int | None = None) -> BlockMatrix:
        """Distribute a dense array or any scipy.sparse matrix held by the driver.

        Sparse input gives CSR blocks, dense input dense blocks; all-zero blocks are not stored.
        The matrix keeps a reference to ``a`` (its layout's
        :class:`~blockmatrix.sources.DriverArray`), so that a strategy can broadcast it from
        the driver instead of collecting its blocks back: do not modify ``a`` in place while
        the matrix is in use.

        Parameters
        ----------
        sc : pyspark.SparkContext
        a : array_like or scipy.sparse matrix
            A 2-D matrix of real numbers.
        rows_per_block, cols_per_block : int
            Block shape.
        num_partitions : int, optional
            Partitions of the blocks RDD; default ``sc.defaultParallelism``.
        """
        rpb = _block_size(rows_per_block, "rows_per_block")
        cpb = _block_size(cols_per_block, "cols_per_block")
        if sp.issparse(a):
            a = bk.check_block(a, "matrix a")
        else:
            a = bk.check_block(np.asarray(a), "matrix a")
        rows, cols = a.shape
        items = []
        for i in range(blocks_along(rows, rpb)):
            for j in range(blocks_along(cols, cpb)):
                block = a[i * rpb:(i + 1) * rpb, j * cpb:(j + 1) * cpb]
                block = block.tocsr() if sp.issparse(block) else np.ascontiguousarray(block)
                if not bk.is_all_zero(block):
                    items.append(((i, j), block))
        n = _num_slices(sc, num_partitions, len(items))
        rdd, key_partitions = _parallelize_placed(sc, items, n, key_of=_item_key)
        layout = BlockLayout((rows, cols), rpb, cpb, {k: bk.nbytes(b) for k, b in items},
                             a.dtype, n, key_partitions, DriverArray(a))
        return cls(rdd, (rows, cols), rpb, cpb, layout=layout)

    @classmethod
    def from_hdf5(cls, sc, path: str, dataset: str, rows_per_block: int, cols_per_block: int,
                  num_partitions: int | None = None) -> BlockMatrix:
        """Read a 2-D HDF5 dataset block by block: each task reads its own blocks.

        The driver reads metadata only. Every block is stored (no zero test, which would
        read the file twice); the file is opened read-only.

        Raises
        ------
        InputNotFoundError
            The file or the dataset does not exist.
        InvalidInputError
            Not HDF5, not a dataset, not 2-D, or not real numbers.
        """
        rpb = _block_size(rows_per_block, "rows_per_block")
        cpb = _block_size(cols_per_block, "cols_per_block")
        shape, dtype, _ = hdf5.inspect_input(path, dataset, param="input")
        path = os.path.abspath(path)
        source = HDF5Dataset(path, dataset, shape, np.dtype(dtype), file_stamp(path))
        rdd, layout = _read_by_tasks(
            sc, source, rpb, cpb, num_partitions,
            partial(hdf5.read_blocks, path=path, dataset=dataset, rows_per_block=rpb,
                    cols_per_block=cpb))
        return cls(rdd, shape, rpb, cpb, layout=layout, source=(path, dataset))

    @classmethod
    def from_zarr(cls, sc, url: str, rows_per_block: int, cols_per_block: int,
                  num_partitions: int | None = None) -> BlockMatrix:
        """Read a 2-D Zarr (format 3) array block by block: each task reads its own blocks.

        ``url`` is a local path (a folder every executor sees) or a URL fsspec knows, e.g.
        ``s3://bucket/x.zarr``; storage options and credentials come from the environment and
        the storage client's config files on the driver and on every executor (see
        :mod:`blockmatrix.io.zarr_store`). The driver reads metadata only; every block is
        stored (no zero test). Needs the ``zarr`` extra (``pip install 'blockmatrix[zarr]'``).

        The matrix's source is a :class:`~blockmatrix.sources.ZarrArray`: ``inner`` and
        ``broadcast`` read its blocks from the array in the tasks that need them, as they do
        for :meth:`from_hdf5`.

        Raises
        ------
        MissingDependencyError
            zarr or fsspec (or the URL's file system package) is not installed.
        InvalidParameterError
            A malformed URL, or one with credentials in it.
        InputNotFoundError
            No Zarr array at ``url``.
        InvalidInputError
            Zarr format 2, a group, not 2-D, not real numbers, or marked incomplete.
        """
        rpb = _block_size(rows_per_block, "rows_per_block")
        cpb = _block_size(cols_per_block, "cols_per_block")
        location = zarr_store.parse_url(url, param="url")
        shape, dtype, _ = zarr_store.inspect_input(location, param="url")
        source = ZarrArray(location.url, shape, np.dtype(dtype),
                           zarr_store.metadata_stamp(location))
        rdd, layout = _read_by_tasks(
            sc, source, rpb, cpb, num_partitions,
            partial(zarr_store.read_blocks, url=location.url, rows_per_block=rpb,
                    cols_per_block=cpb))
        return cls(rdd, shape, rpb, cpb, layout=layout, input_files=frozenset({location.url}))

    @classmethod
    def from_mllib(cls, m, rows_per_block: int = 1024, cols_per_block: int = 1024,
                   num_partitions: int | None = None) -> BlockMatrix:
        """Convert one of MLlib's distributed matrices (``pyspark.mllib.linalg.distributed``).

        A ``BlockMatrix`` keeps its blocks (sparse blocks become CSR, dense ones ndarrays; no
        job runs when it knows its dimensions; the block sizes given here are ignored). A
        ``CoordinateMatrix`` goes through :meth:`from_coordinates`, an ``IndexedRowMatrix``
        through :meth:`from_rows` (its sparse vectors stay sparse), with the MLlib matrix's
        dimensions as the shape: one aggregate job checks the entries, one shuffle builds the
        blocks. Duplicate entries of a ``CoordinateMatrix`` are refused, not summed.
        """
        kind = tables.mllib_kind(m)
        if kind == "block":
            return cls(mllib.from_mllib(m), (m.numRows(), m.numCols()), m.rowsPerBlock,
                       m.colsPerBlock)
        if kind == "coordinate":
            return cls.from_coordinates(m.entries, shape=(m.numRows(), m.numCols()),
                                        rows_per_block=rows_per_block,
                                        cols_per_block=cols_per_block,
                                        num_partitions=num_partitions)
        if kind == "indexed_row":
            return cls.from_rows(tables.indexed_rows_frame(m), index="i", vector="features",
                                 shape=(m.numRows(), m.numCols()),
                                 rows_per_block=rows_per_block, cols_per_block=cols_per_block,
                                 num_partitions=num_partitions)
        raise TypeError(
            f"m is a {type(m).__name__}, not an MLlib BlockMatrix, CoordinateMatrix or "
            f"IndexedRowMatrix: for a RowMatrix, give its rows an index (IndexedRowMatrix)")

    @classmethod
    def from_coordinates(cls, data, row: str = "i", col: str = "j", value: str = "v",
                         shape=None, rows_per_block: int = 1024, cols_per_block: int = 1024,
                         num_partitions: int | None = None) -> BlockMatrix:
        """Build a matrix from a table of entries ``(i, j, v)``, on the executors.

        Parameters
        ----------
        data : pyspark.sql.DataFrame or pyspark.RDD
            A DataFrame (e.g. ``spark.read.parquet(path)``) with integer columns ``row`` and
            ``col`` and a numeric or boolean column ``value``; or an RDD of ``(i, j, v)``
            tuples or MLlib ``MatrixEntry``. Absent entries are zero.
        row, col, value : str
            Column names (for an RDD, the names the messages use).
        shape : (int, int), optional
            Default: the shape the table records (:meth:`to_coordinates` writes it in the
            value column's metadata, which Parquet keeps), else one past the largest row and
            column index.
        rows_per_block, cols_per_block : int
            Block shape.
        num_partitions : int, optional
            Suggested partitions of the blocks (default: the table's, at least
            ``sc.defaultParallelism``); the blocks are grid-partitioned.

        Notes
        -----
        Runs **one aggregate job** to check the table (null counts, smallest and largest
        indices, the number of distinct ``(i, j)``, which shuffles the index pairs); the
        driver receives one row of counts. The blocks are built lazily by one shuffle of
        per-block pieces: CSR where under a quarter of a block is stored
        (:data:`blockmatrix.interop.tables.DENSE_FILL`), dense otherwise; all-zero blocks are
        not stored. Values keep their type (int32 stays int32, decimals become float64).

        Raises
        ------
        MissingColumnError, ColumnTypeError, InvalidTableError
            Before any block is built, naming the column: a column absent or of the wrong type
            (indices must be integers), nulls, negative indices, indices outside ``shape``,
            duplicate ``(i, j)``.
        """
        rpb = _block_size(rows_per_block, "rows_per_block")
        cpb = _block_size(cols_per_block, "cols_per_block")
        blocks, shape, dtype = tables.coordinates_to_blocks(data, row, col, value, shape, rpb,
                                                            cpb, num_partitions)
        return cls(blocks, shape, rpb, cpb, dtype=dtype)

    @classmethod
    def from_rows(cls, df, index: str = "i", vector: str = "features", shape=None,
                  rows_per_block: int = 1024, cols_per_block: int = 1024,
                  num_partitions: int | None = None) -> BlockMatrix:
        """Build a matrix from a table of rows ``(index, vector)``, on the executors.

        Parameters
        ----------
        df : pyspark.sql.DataFrame
            An integer column ``index`` and a column ``vector`` of ``pyspark.ml`` (or
            ``pyspark.mllib``) vectors, dense or sparse, or of arrays of numbers, all of one
            length. Rows absent from the table are zero.
        shape : (int, int), optional
            Default: the shape the table records (:meth:`to_rows` writes it), else one past
            the largest index, by the vectors' length.
        rows_per_block, cols_per_block, num_partitions
            As in :meth:`from_coordinates`.

        Notes
        -----
        As :meth:`from_coordinates`: one aggregate job checks the table (a Python UDF reads
        the length of Vector values, which Spark SQL cannot), one shuffle builds the blocks.
        Sparse vectors travel as their stored values and give CSR blocks unless a block is a
        quarter full; ml vectors give float64 blocks, arrays keep their element type.

        Raises
        ------
        MissingColumnError, ColumnTypeError, InvalidTableError
            Before any block is built, naming the column: absent or wrong type, nulls (also
            inside arrays), negative, out-of-range or duplicate indices, vectors of different
            lengths.
        """
        rpb = _block_size(rows_per_block, "rows_per_block")
        cpb = _block_size(cols_per_block, "cols_per_block")
        blocks, shape, dtype = tables.rows_to_blocks(df, index, vector, shape, rpb, cpb,
                                                     num_partitions)
        return cls(blocks, shape, rpb, cpb, dtype=dtype)

    # ------------------------------------------------------------------ exits
    def _driver_array(self):
        """The array the driver holds with this matrix's values, or None.

        Set for ``from_numpy``/``from_scipy`` and ``driver`` products (and their transposes):
        their blocks are slices of it.
        """
        layout = self._layout
        if layout is None or layout.source_kind != "driver":
            return None
        source = layout.source
        return source.array.T if source.transposed else source.array

    def to_numpy(self) -> np.ndarray:
        """Collect into a dense ndarray on the driver (absent blocks are zero).

        Refused before any job (:class:`~blockmatrix.errors.InsufficientMemoryError`) when
        the driver is not configured to hold it (:mod:`blockmatrix.memory`). A matrix whose
        values the driver holds already (``from_numpy``, a ``driver`` product) is copied from
        there, with no job.
        """
        release_pending()
        held_array = self._driver_array()
        if held_array is not None:
            dense = held_array.toarray() if sp.issparse(held_array) else held_array
            return np.array(dense, dtype=self._layout.dtype, order="C")
        self._check_exit_memory(COLLECT)
        items = self._blocks.collect()
        self._release_after_exit()
        if items:
            dtype = np.result_type(*(b.dtype for _, b in items))
        else:  # no stored block (an all-zero product): the dtype known from construction
            dtype = self._dtype if self._dtype is not None else np.float64
        out = np.zeros(self._shape, dtype=dtype)
        for (i, j), block in items:
            rows, cols = self._slices(i, j)
            out[rows, cols] += bk.to_dense(block)
        return out

    def to_scipy(self) -> sp.csr_matrix:
        """Collect into a scipy.sparse CSR matrix on the driver (checked as :meth:`to_numpy`)."""
        release_pending()
        held_array = self._driver_array()
        if held_array is not None:
            return sp.csr_matrix(held_array, dtype=self._layout.dtype, copy=True)
        self._check_exit_memory(COLLECT)
        items = self._blocks.collect()
        self._release_after_exit()
        parts = []
        for (i, j), block in items:
            coo = sp.coo_matrix(block)
            parts.append((coo.row + i * self._rows_per_block,
                          coo.col + j * self._cols_per_block, coo.data))
        dtype = np.result_type(*(b.dtype for _, b in items)) if items else np.float64
        if not parts:
            return sp.csr_matrix(self._shape, dtype=dtype)
        rows, cols, data = (np.concatenate(p) for p in zip(*parts, strict=True))
        return sp.csr_matrix((data.astype(dtype, copy=False), (rows, cols)), shape=self._shape)

    def to_hdf5(self, path: str, dataset: str, overwrite: bool = False) -> int:
        """Write into ``path::dataset``, streaming partitions to one writer on the driver.

        The driver holds one partition at a time. An existing dataset is replaced only with
        ``overwrite=True``; the check, and that of the free space, runs before any job. The
        output is staged and published in one step once complete
        (:func:`blockmatrix.io.hdf5.write_output`): a killed write never leaves a dataset
        that looks complete, and the next write cleans what it left.

        ``X @ X.T`` of a floating-point X read by :meth:`from_hdf5` is recognised: it is
        computed by :func:`blockmatrix.ooc.gram_hdf5` straight from X's file (tiles on or
        above the diagonal, symmetric rank-k updates, memory bounded by the tile and slab
        sizes, not by X), and may be written into X's own file.

        A product of two HDF5 operands goes file to file (:func:`blockmatrix.ooc.matmul_hdf5`)
        when its strategy is ``ooc``, and when ``auto`` planned it and, asked again knowing
        that C goes to a file (:func:`blockmatrix.strategies.auto.plan_to_file`: every other
        plan pays C's trip to this writer), picks ``ooc``; :attr:`plan` then is ooc's, and its
        reason says why.

        The largest partition passes through the driver's JVM heap: a product whose
        partitions would not fit it is refused before any job
        (:class:`~blockmatrix.errors.InsufficientMemoryError`, naming the setting to raise or
        the ``num_partitions`` that fits; :mod:`blockmatrix.memory`).

        Returns
        -------
        int
            Number of blocks (for ``X @ X.T``, tiles) written.
        """
        if self._gram_source is not None:
            from .ooc import gram_hdf5

            result = gram_hdf5(self._blocks.context, *self._gram_source, path, dataset,
                               overwrite=overwrite)
            return len(result.computed) + len(result.reused)
        if self._ooc_sources is None and self._auto_options is not None:
            self._replan_for_a_file()
        if self._ooc_sources is not None:
            from .ooc import matmul_hdf5

            result = matmul_hdf5(self._blocks.context, *self._ooc_sources, (path, dataset),
                                 overwrite=overwrite)
            return len(result.computed) + len(result.reused)
        hdf5.check_output(path, dataset, overwrite=overwrite)
        hdf5.check_output_space(path, dataset, self._shape, self.dtype)  # before any job
        self._check_exit_memory(STREAM)
        producer = "blockmatrix BlockMatrix.to_hdf5" + (
            f" of a product (strategy {self._plan.strategy})" if self._plan is not None else "")
        # Staged beside the output, published when complete (hdf5.write_output): the file is
        # opened only after every block arrived, so it may be a file the tasks read.
        with self._computed_in_parallel() as blocks:
            return hdf5.write_output(path, dataset, self._shape, self.dtype,
                                     blocks.toLocalIterator(), self._rows_per_block,
                                     self._cols_per_block, overwrite=overwrite,
                                     producer=producer)

    def _replan_for_a_file(self) -> None:
        """Ask auto again, now that C goes to a file: ooc's tasks write file to file.

        When ooc wins, the product becomes ooc's (its plan, with the reason, and its blocks:
        none of the first plan's was computed by a write, and a later ``to_numpy`` reads
        what the plan says).
        """
        from .strategies.auto import plan_to_file

        options, self._auto_options = self._auto_options, None
        plan = plan_to_file(self._plan.left, self._plan.right, options)
        if plan.strategy != "ooc":
            return
        blocks = get_strategy("ooc").execute(plan, self._blocks, self._blocks, options)
        self._blocks, self._plan = blocks, plan
        self._layout = plan.result_layout(blocks.getNumPartitions())
        self._ooc_sources = (plan.left.source, plan.right.source)

    def to_zarr(self, url: str, overwrite: bool = False, chunks=None) -> int:
        """Write into a Zarr (format 3) array: the tasks write their blocks in parallel.

        The array is staged beside ``url`` and published once every task has written its
        blocks (:func:`blockmatrix.io.zarr_store.staged_output`): by a rename on a local file
        system; on object storage by copying the chunks and writing ``zarr.json`` last. A
        killed write never leaves an array at ``url``; the next write removes its staging
        array. Absent blocks stay zero (the fill value, not stored). The array records its
        shape, dtype and producer in its attributes. Needs the ``zarr`` extra.

        Parameters
        ----------
        url : str
            A local path or a URL fsspec knows (``s3://bucket/c.zarr``); credentials from the
            environment or the storage client's config, on the driver and every executor.
        overwrite : bool
            Replace an existing array (it stays readable until the new one is published).
        chunks : (int, int), optional
            Chunk shape; must divide the block shape, so that each task writes whole chunks
            no other task touches (refused otherwise). Default: the block shape, cut to the
            matrix.

        Returns
        -------
        int
            Number of blocks written.

        Raises
        ------
        OutputExistsError, OutputNotWritableError, InvalidInputError, InsufficientSpaceError
            Before any job: an array there without ``overwrite``, no writable folder or no
            bucket, something that is not an array there, too little local free space.
        InvalidParameterError
            ``chunks`` malformed or not dividing the block shape.
        InvalidBlockError
            Two blocks with one index (nothing is published).

        Notes
        -----
        A product of two file-backed operands (HDF5 or Zarr) whose strategy is ``ooc`` (or
        that ``auto``, asked again knowing C goes to a file, gives to ``ooc``) goes file to
        file, as with :meth:`to_hdf5` (:func:`blockmatrix.ooc.matmul_hdf5`), when ``chunks``
        is not given: the tasks write C's tiles into the array, chunked so that each tile is
        whole chunks; ``X @ X.T`` of a :meth:`from_hdf5` X likewise
        (:func:`~blockmatrix.ooc.gram_hdf5`).
        """
        if chunks is None and self._ooc_sources is None and self._auto_options is not None:
            self._replan_for_a_file()
        if chunks is None and (self._gram_source or self._ooc_sources) is not None:
            from .ooc import gram_hdf5, matmul_hdf5

            target = zarr_store.parse_url(url, param="url")
            result = (gram_hdf5(self._blocks.context, *self._gram_source, target, None,
                                overwrite=overwrite) if self._gram_source is not None else
                      matmul_hdf5(self._blocks.context, *self._ooc_sources, target,
                                  overwrite=overwrite))
            return len(result.computed) + len(result.reused)
        location = zarr_store.check_output(url, overwrite=overwrite, param="url")
        chunk_shape = zarr_store.output_chunks(chunks, self._rows_per_block,
                                               self._cols_per_block, self._shape)
        dtype = self.dtype
        zarr_store.check_output_space(location, self._shape, dtype, param="url")
        producer = "blockmatrix BlockMatrix.to_zarr" + (
            f" of a product (strategy {self._plan.strategy})" if self._plan is not None else "")
        release_pending()
        with zarr_store.staged_output(location, self._shape, dtype, chunk_shape,
                                      overwrite=overwrite, producer=producer,
                                      param="url") as staged:
            with raised_from_tasks():
                records = self._blocks.mapPartitions(partial(
                    zarr_store.write_blocks, url=staged.staging_url, shape=self._shape,
                    rows_per_block=self._rows_per_block,
                    cols_per_block=self._cols_per_block)).collect()
            self._release_after_exit()
            written = zarr_store.check_written(records, "to_zarr")
            staged.publish()
        return written

    def _check_exit_memory(self, exit_kind: str) -> None:
        """Refuse an exit the driver's configured memory cannot take, before any job."""
        check_matrix_exit(self._plan, self._layout, exit_kind,
                          MemoryConf.of(self._blocks.context))

    @contextlib.contextmanager
    def _computed_in_parallel(self):
        """The blocks, computed by all tasks at once and persisted while the block is open.

        ``toLocalIterator`` runs one partition at a time; computing first keeps every core
        busy, and the single writer then streams the persisted partitions one by one.
        """
        from pyspark import StorageLevel

        release_pending()
        if self._blocks.getStorageLevel() != StorageLevel.NONE:
            yield self._blocks
            self._release_after_exit()
            return
        blocks = self._blocks.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            blocks.count()
            yield blocks
        finally:
            blocks.unpersist()
        self._release_after_exit()

    def to_mllib(self, kind: str = "block"):
        """Convert to one of MLlib's distributed matrices (float64 values).

        Parameters
        ----------
        kind : {"block", "coordinate", "indexed_row"}
            ``"block"``: a ``BlockMatrix`` whose block values travel to the JVM as buffers, not
            as lists of floats (:func:`blockmatrix.interop.mllib.to_mllib`).
            ``"coordinate"``: a ``CoordinateMatrix`` of the non-zero entries
            (:meth:`to_coordinates`). ``"indexed_row"``: an ``IndexedRowMatrix`` of the rows
            holding a non-zero (:meth:`to_rows`; one shuffle when used).

        No job runs until the MLlib matrix is used.
        """
        if kind == "block":
            return mllib.to_mllib(self._blocks, self._rows_per_block, self._cols_per_block,
                                  self._shape)
        if kind == "coordinate":
            return tables.to_coordinate_matrix(self.to_coordinates(), self._shape)
        if kind == "indexed_row":
            return tables.to_indexed_row_matrix(self.to_rows(), self._shape)
        raise InvalidParameterError(
            f"kind must be 'block', 'coordinate' or 'indexed_row' (MLlib's BlockMatrix, "
            f"CoordinateMatrix, IndexedRowMatrix), got {kind!r}")

    def to_coordinates(self, row: str = "i", col: str = "j", value: str = "v"):
        """The non-zero entries as a DataFrame ``(row, col, value)``, written by the tasks.

        Indices are ``long``; ``value`` has the blocks' type (float64: ``double``, float32:
        ``float``, integers their width, bool ``boolean``); the value column's metadata
        records the shape, so :meth:`from_coordinates` reads back trailing all-zero rows and
        columns. No shuffle, and no job until the DataFrame is used (but the dtype, when
        unknown, costs one small job), e.g. ``m.to_coordinates().write.parquet(path)``.
        """
        return tables.blocks_to_coordinates(self._blocks, self._shape, self._rows_per_block,
                                            self._cols_per_block, self.dtype, row, col, value)

    def to_rows(self, index: str = "i", vector: str = "features", as_array: bool = False,
                num_partitions: int | None = None):
        """The rows as a DataFrame ``(index, vector)``; one shuffle when used.

        ``vector`` holds ``pyspark.ml`` vectors of doubles, sparse where under a quarter of
        the row is non-zero, dense otherwise; with ``as_array`` arrays of doubles. Rows
        without a non-zero are left out (as in MLlib's ``toIndexedRowMatrix``);
        :meth:`from_rows` with the shape reads them back as zero.
        """
        return tables.blocks_to_rows(self._blocks, self._shape, self._rows_per_block,
                                     self._cols_per_block, index, vector, as_array,
                                     num_partitions)

    # ------------------------------------------------------------------ planning info
    def layout(self) -> BlockLayout:
        """Block keys, block byte sizes and dtype; runs one small job the first time if unknown.

        The job sends the driver, per partition, arrays of the block keys and byte sizes
        (:func:`_describe_partition`), never a block's values; its size is on the layout
        (:attr:`BlockLayout.key_collect`) and in the plan's and ``explain_multiply``'s
        printouts. Duplicate block indices are counted once with their sizes summed.
        """
        if self._layout is None:
            parts = self._blocks.mapPartitions(_describe_partition).collect()
            sizes: Counter = Counter()
            for rows, cols, nbytes, _, error, _ in parts:
                if error:
                    raise (BlockTypeError(f"block {error[0]}: {error[1]}") if error[1]
                           else _bad_key(error[0]))
                sizes.update(_summed(rows, cols, nbytes))
            dtypes = {np.dtype(d) for part in parts for d in part[3]}
            dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float64)
            collect = KeyCollect(keys=sum(len(p[0]) for p in parts),
                                 collected_bytes=sum(p[5] for p in parts),
                                 partitions=len(parts))
            self._layout = BlockLayout(self._shape, self._rows_per_block, self._cols_per_block,
                                       dict(sizes), dtype, self._blocks.getNumPartitions(),
                                       key_collect=collect)
        return self._layout

    def _shape_only_layout(self) -> BlockLayout:
        return shape_only(self._shape, self._rows_per_block, self._cols_per_block)

    def _slices(self, i: int, j: int) -> tuple[slice, slice]:
        return hdf5.block_slices(i, j, self._shape, self._rows_per_block, self._cols_per_block)

    # ------------------------------------------------------------------ checks
    def validate(self) -> BlockMatrix:
        """Check every block against the claimed shape; one Spark job. Returns self.

        Checks what Spark's ``validate`` does (dimensions within the claimed shape, no
        duplicate indices, interior blocks exactly ``rows_per_block x cols_per_block``, edge
        blocks no larger) and more: indices that are negative or out of range, blocks that are
        not 2-D real ndarrays / sparse matrices, and edge blocks of exactly the remaining size.

        Raises
        ------
        InvalidBlockError
            A block index or shape is wrong, or an index is duplicated.
        BlockTypeError
            A block is not a 2-D real ndarray or scipy.sparse matrix.
        """
        described = self._blocks.map(_describe_block).collect()
        for key, is_index, shape, _, _, error in described:
            if not is_index:
                raise _bad_key(key)
            if error:
                raise BlockTypeError(f"block {key}: {error}")
            self._check_block_shape(key, shape)
        counts = Counter(d[0] for d in described)
        duplicates = sorted(k for k, c in counts.items() if c > 1)
        if duplicates:
            raise InvalidBlockError(
                f"found {counts[duplicates[0]]} blocks with the index {duplicates[0]} "
                f"({len(duplicates)} duplicated indices in all): remove blocks with duplicate "
                f"indices, or sum them first with rdd.reduceByKey")
        return self

    def _check_block_shape(self, key: Key, shape: tuple[int, int]) -> None:
        i, j = key
        nrb, ncb = self.num_row_blocks, self.num_col_blocks
        if not (0 <= i < nrb and 0 <= j < ncb):
            raise InvalidBlockError(
                f"block index ({i}, {j}) is outside the {nrb}x{ncb} block grid of a "
                f"{self._shape[0]}x{self._shape[1]} matrix in {self._rows_per_block}x"
                f"{self._cols_per_block} blocks: fix the index or the claimed shape")
        expected = (block_extent(i, self._shape[0], self._rows_per_block),
                    block_extent(j, self._shape[1], self._cols_per_block))
        if tuple(shape) != expected:
            edge = " (an edge block: it covers the rest of the matrix)" if (
                i == nrb - 1 or j == ncb - 1) else ""
            raise InvalidBlockError(
                f"block ({i}, {j}) has shape {tuple(shape)}, expected {expected}{edge}: blocks "
                f"must be rows_per_block x cols_per_block ({self._rows_per_block}x"
                f"{self._cols_per_block}) except on the bottom and right edges; re-block the "
                f"matrix, e.g. with BlockMatrix.from_numpy")

    # ------------------------------------------------------------------ algebra
    def transpose(self) -> BlockMatrix:
        """The transpose (blocks transposed in their own format)."""
        layout = self._layout.transpose() if self._layout is not None else None
        transposed = BlockMatrix(self._blocks.map(_transpose_item),
                                 (self._shape[1], self._shape[0]), self._cols_per_block,
                                 self._rows_per_block, layout=layout,
                                 input_files=self._input_files, dtype=self._dtype)
        transposed._transpose_of = self
        return transposed._derived_from(self)

    @property
    def T(self) -> BlockMatrix:  # noqa: N802  (numpy's name)
        """The transpose."""
        return self.transpose()

    def add(self, other: BlockMatrix) -> BlockMatrix:
        """``self + other``: same shape and block shape required.

        Duplicate block indices in an operand are rejected when the sum is computed: the Spark
        job fails with the :class:`InvalidBlockError` message (run :meth:`validate` first to
        get the error itself).
        """
        return self._elementwise(other, "add", negate=False)

    def subtract(self, other: BlockMatrix) -> BlockMatrix:
        """``self - other``: same shape and block shape required; duplicates are rejected."""
        return self._elementwise(other, "subtract", negate=True)

    __add__ = add
    __sub__ = subtract

    def _elementwise(self, other: BlockMatrix, op: str, negate: bool) -> BlockMatrix:
        _check_operand(other, op)
        if self._shape != other._shape:
            raise ShapeMismatchError(
                f"cannot {op} a {self._shape[0]}x{self._shape[1]} matrix and a "
                f"{other._shape[0]}x{other._shape[1]} one: A.shape ({self._shape}) != B.shape "
                f"({other._shape})")
        mine = (self._rows_per_block, self._cols_per_block)
        theirs = (other._rows_per_block, other._cols_per_block)
        if mine != theirs:
            raise BlockSizeMismatchError(
                f"cannot {op} matrices with different block shapes: A blocks {mine} != B "
                f"blocks {theirs}; re-block one operand to match the other")
        parts = max(self._blocks.getNumPartitions(), other._blocks.getNumPartitions())
        grid = GridPartitioner.from_suggested(max(self.num_row_blocks, 1),
                                              max(self.num_col_blocks, 1), parts)
        tagged = self._blocks.map(partial(_tag, side=0)).union(
            other._blocks.map(partial(_tag, side=1)))
        summed = tagged.groupByKey(grid.num_partitions, grid).mapValues(
            partial(_combine_pair, negate=negate))
        return BlockMatrix(summed, self._shape, self._rows_per_block, self._cols_per_block,
                           input_files=self._input_files | other._input_files
                           )._derived_from(self, other)

    def multiply(self, other: BlockMatrix, strategy: str = "inner", *,
                 num_partitions: int | None = None, num_mid_splits: int = 1,
                 task_buffer_bytes: int | None = None,
                 memory_budget_bytes: int | None = None,
                 by_reference: bool = False) -> BlockMatrix:
        """``self @ other`` with a registered strategy.

        Parameters
        ----------
        other : BlockMatrix
            Right operand; ``other.rows_per_block`` must equal ``self.cols_per_block``.
        strategy : str
            A name from :data:`blockmatrix.strategies.STRATEGIES`; ``"inner"`` is Spark's
            one-shuffle inner product.
        num_partitions : int, optional
            Suggested number of result partitions (default: the larger operand's).
        num_mid_splits : int
            Sub-reducers the inner dimension is striped over (Spark's numMidDimSplits).
        task_buffer_bytes : int, optional
            Bytes of input blocks a task buffers before spilling to local disk; default
            ``spark.python.worker.memory``.
        memory_budget_bytes : int, optional
            Memory a task may use for its data (what ``broadcast`` may broadcast, what ``auto``
            requires of a plan); default a quarter of the executor memory
            (:func:`blockmatrix.sparkconf.default_memory_budget`).
        by_reference : bool
            ``inner``: shuffle the blocks that live only in Spark by reference
            (:mod:`blockmatrix.spilled`: each written once to a file every task reads, only
            references through Spark's shuffle; the same destinations and partitioner). Needs
            a local master, or ``spark.blockmatrix.referenceDir`` on shared storage. ``auto``
            weighs it by itself wherever it is possible.

        Returns
        -------
        BlockMatrix
            The product; its :attr:`plan` holds the plan that was run.

        Raises
        ------
        ShapeMismatchError, BlockSizeMismatchError, InvalidParameterError, UnknownStrategyError
            Before any Spark job runs.
        """
        _check_operand(other, "multiply")
        check_multiplicable(self._shape_only_layout(), other._shape_only_layout())
        conf = self._blocks.context.getConf()
        options = MultiplyOptions.merged(
            multiply_defaults(self._blocks.context, conf),
            {"num_partitions": num_partitions, "num_mid_splits": num_mid_splits,
             "task_buffer_bytes": task_buffer_bytes, "memory_budget_bytes": memory_budget_bytes,
             "by_reference": by_reference})
        chosen = get_strategy(strategy)
        release_pending()
        plan = chosen.plan(self.layout(), other.layout(), options)
        plan.check_runnable()
        check_plan(plan, MemoryConf.from_conf(conf))
        if plan.strategy != "ooc":  # ooc reads tiles from the files, never whole blocks
            check_blocks_fit(plan.left, plan.right, options.budget_bytes)
        with collecting() as held:
            blocks = chosen.execute(plan, self._blocks, other._blocks, options)
        result = BlockMatrix(blocks, plan.result_shape, self._rows_per_block,
                             other._cols_per_block, plan=plan,
                             layout=plan.result_layout(blocks.getNumPartitions()),
                             input_files=self._input_files | other._input_files,
                             dtype=np.result_type(plan.left.dtype, plan.right.dtype))
        # Its broadcasts and persisted intermediates go when it is garbage collected; until
        # then it keeps the operands its blocks are computed from (not one it collected).
        result._hold(held)
        result._derived_from(*(operand for operand, used in zip(
            (self, other), plan.lineage_operands, strict=True) if used))
        if other._transpose_of is self and self._source is not None and \
                np.dtype(self.dtype).kind == "f":
            # X @ X.T of an HDF5 dataset: to_hdf5 takes the out-of-core gram path.
            result._gram_source = self._source
        elif plan.strategy == "ooc":
            # Both operands are HDF5 files: to_hdf5 goes file to file (matmul_hdf5).
            result._ooc_sources = (plan.left.source, plan.right.source)
        elif strategy == "auto" and plan.left.source_kind == plan.right.source_kind == "file":
            # auto did not know C goes to a file: to_hdf5 asks again (auto.plan_to_file).
            result._auto_options = options
        return result

    def explain_multiply(self, other: BlockMatrix, strategy: str | None = None, **options):
        """Plans of ``self @ other`` for every strategy (or one), from block keys and sizes.

        See :func:`blockmatrix.explain.explain_multiply`; ``print`` the report for a table.
        """
        from .explain import explain_multiply

        return explain_multiply(self, other, strategy=strategy, **options)

    def __matmul__(self, other: BlockMatrix) -> BlockMatrix:
        return self.multiply(other)

    # ------------------------------------------------------------------ caching
    def persist(self, storage_level=None) -> BlockMatrix:
        """Persist the blocks (default ``MEMORY_AND_DISK``) and return self."""
        from pyspark import StorageLevel

        self._blocks.persist(storage_level or StorageLevel.MEMORY_AND_DISK)
        return self

    def cache(self) -> BlockMatrix:
        """Persist the blocks with the default level and return self."""
        return self.persist()

    def unpersist(self) -> BlockMatrix:
        """Drop the persisted blocks and return self."""
        self._blocks.unpersist()
        return self


# ---------------------------------------------------------------------- helpers


def _check_operand(other, op: str) -> None:
    if not isinstance(other, BlockMatrix):
        raise TypeError(f"can only {op} a BlockMatrix with another BlockMatrix, "
                        f"not {type(other).__name__}: wrap it with BlockMatrix.from_numpy")


def _read_by_tasks(sc, source, rows_per_block: int, cols_per_block: int,
                   num_partitions: int | None, read_blocks):
    """``(blocks RDD, layout)`` of a file-backed matrix: every block stored, read by the tasks.

    The block keys are parallelized row-major (their partitions recorded in the layout, with
    ``source``); ``read_blocks`` reads a partition's keys (executor side).
    """
    shape, dtype = tuple(source.shape), source.dtype
    shell = shape_only(shape, rows_per_block, cols_per_block, dtype)
    keys = [(i, j) for i in range(shell.num_row_blocks) for j in range(shell.num_col_blocks)]
    n = _num_slices(sc, num_partitions, len(keys))
    keys_rdd, key_partitions = _parallelize_placed(sc, keys, n, key_of=_same)
    layout = BlockLayout(shape, rows_per_block, cols_per_block,
                         {k: shell.dense_nbytes(*k) for k in keys}, dtype, n, key_partitions,
                         source)
    return keys_rdd.mapPartitions(read_blocks), layout


def _parallelize_placed(sc, items: list, num_slices: int, key_of):
    """``sc.parallelize`` of ``items`` with one list per partition, and where each key went.

    Giving ``parallelize`` exactly one element per slice makes PySpark's batching irrelevant:
    partition ``p`` holds run ``p`` of :func:`~blockmatrix.layout.split_evenly`.
    """
    runs = split_evenly(items, num_slices)
    placed = {key_of(item): p for p, run in enumerate(runs) for item in run}
    return sc.parallelize(runs, num_slices).flatMap(_same), placed


# ---------------------------------------------------------------------- executor side


def _bad_key(key) -> InvalidBlockError:
    return InvalidBlockError(f"block key {key!r} is not a pair of integers (i, j): key blocks "
                             f"by (block_row, block_col)")


def _describe_partition(items):
    """One record per partition: key and size arrays, dtypes, first error, pickled size.

    Executor side. Arrays keep what the driver receives to about 24 bytes a block (a tuple
    per block costs several times that); the last field is the record's own pickled size
    (without it), what the layout reports as collected.
    """
    rows, cols, nbytes, dtypes, error = [], [], [], set(), None
    for item in items:
        key, key_ok, _, dtype, size, problem = _describe_block(item)
        if error is None and (problem or not key_ok):
            error = (key, problem)  # problem None: the key is not a pair of integers
        if not key_ok:
            continue
        rows.append(key[0])
        cols.append(key[1])
        nbytes.append(size)
        dtypes.add(dtype)
    record = (np.array(rows, np.int64), np.array(cols, np.int64), np.array(nbytes, np.int64),
              sorted(dtypes), error)
    yield record + (len(pickle.dumps(record, pickle.HIGHEST_PROTOCOL)),)


def _summed(rows: np.ndarray, cols: np.ndarray, nbytes: np.ndarray) -> Counter:
    """``{(i, j): bytes}`` of one partition, duplicates summed."""
    out: Counter = Counter()
    for i, j, n in zip(rows.tolist(), cols.tolist(), nbytes.tolist(), strict=True):
        out[(i, j)] += n
    return out


def _describe_block(item):
    """``(key, key_ok, shape, dtype, nbytes, error)`` of one block (executor side)."""
    key, block = item
    key_ok = (isinstance(key, tuple) and len(key) == 2
              and all(is_integer(x) for x in key))
    try:
        block = bk.check_block(block)
    except BlockTypeError as exc:
        return key, key_ok, None, "float64", 0, str(exc)
    return key, key_ok, tuple(block.shape), block.dtype.str, bk.nbytes(block), None


def _transpose_item(item):
    (i, j), block = item
    return (j, i), bk.transpose(block)


def _tag(item, side: int):
    key, block = item
    return key, (side, block)


def _combine_pair(tagged, negate: bool):
    left = [b for side, b in tagged if side == 0]
    right = [b for side, b in tagged if side == 1]
    if len(left) > 1 or len(right) > 1:
        raise InvalidBlockError(
            "there are multiple blocks with the same index in an operand of add/subtract: "
            "remove blocks with duplicate indices (see BlockMatrix.validate)")
    if negate and right:
        right = [bk.negate(right[0])]
    if left and right:
        return bk.add(left[0], right[0])
    return (left or right)[0]


def _same(x):
    return x


def _item_key(item):
    return item[0]
