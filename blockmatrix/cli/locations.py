"""Where a job's matrices are: ``FILE.h5::/dataset``, ``zarr:URL`` or ``parquet:PATH``.

A location is checked before Spark starts (:meth:`inspect`, :meth:`check_output`), read into a
:class:`~blockmatrix.BlockMatrix` and written from one. The out-of-core engine works on HDF5
and Zarr locations (:meth:`ooc_pair`, :meth:`ooc_operand`); the jobs take their Spark path for
Parquet.

- ``FILE.h5::/dataset``: a 2-D dataset, read by the tasks block by block
  (:meth:`~blockmatrix.BlockMatrix.from_hdf5`), written atomically by ``to_hdf5``.
- ``zarr:URL``: a 2-D Zarr (format 3) array, a local folder or a URL fsspec knows
  (``zarr:s3://bucket/a.zarr``; credentials from the environment or the storage client's
  configuration), read by the tasks block by block
  (:meth:`~blockmatrix.BlockMatrix.from_zarr`), written by the tasks in parallel and
  published when complete (``to_zarr``). Needs the ``zarr`` extra.
- ``parquet:PATH``: a table of coordinates ``(i, j, v)`` or of rows ``(i, vector)``, as
  ``to_coordinates`` / ``to_rows`` write them; its columns and values are checked when it is
  read (one aggregate job, after Spark starts, before anything is written), its shape is the
  one the table records or one past its largest indices. Outputs are coordinate tables,
  published when complete (:func:`blockmatrix.io.parquet.write_published`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import (
    InvalidInputError,
    InvalidParameterError,
    MissingColumnError,
    ShapeMismatchError,
)
from ..io import hdf5, parquet, zarr_store
from ..io.lock import lock_path_of, output_lock

#: What a ``zarr:`` location starts with.
ZARR_PREFIX = "zarr:"


def parse(spec: str, param: str):
    """The location ``spec`` names: an HDF5, Zarr or Parquet location."""
    if spec.startswith(parquet.PREFIX):
        return ParquetLocation(parquet.parse_location(spec, param))
    if spec.startswith(ZARR_PREFIX):
        return ZarrArrayLocation(zarr_store.parse_url(spec[len(ZARR_PREFIX):], param))
    if hdf5.LOCATION_SEPARATOR not in spec:
        raise InvalidParameterError(
            f"{param} ({spec!r}) is not of the form FILE.h5::/dataset, zarr:URL or "
            f"parquet:PATH: give the file and the dataset, e.g. 'data.h5::/X', or say which "
            f"kind of location it is, e.g. 'zarr:{spec}'")
    return HDF5Location(*hdf5.parse_location(spec, param))


def probe_lock(path: str, job: str) -> None:
    """Refuse now, before Spark, if another job holds the output's lock (the writer takes it)."""
    with output_lock(lock_path_of(path), path, job=job):
        pass


@dataclass(frozen=True)
class HDF5Location:
    """A dataset in an HDF5 file."""

    path: str
    dataset: str

    kind = "hdf5"

    def __str__(self) -> str:
        return f"{self.path}::{self.dataset}"

    def inspect(self, param: str) -> tuple[tuple[int, int], np.dtype]:
        """Shape and dtype, read from the file's metadata (refused in one line if unreadable)."""
        shape, dtype, _ = hdf5.inspect_input(self.path, self.dataset, param)
        return shape, dtype

    def same_as(self, other) -> bool:
        """Whether ``other`` is this very dataset (the same file under any name)."""
        return (isinstance(other, HDF5Location) and self.dataset == other.dataset
                and os.path.exists(self.path) and os.path.exists(other.path)
                and os.path.samefile(self.path, other.path))

    def describe_input(self, name: str) -> str:
        """How a refusal names this location as the input ``name``."""
        return f"the input dataset {name} ({self})"

    def ooc_pair(self) -> tuple[str, str]:
        """``(path, dataset)``: how the out-of-core engine takes this location."""
        return self.path, self.dataset

    ooc_operand = ooc_pair

    def check_output(self, shape, dtype, overwrite: bool, param: str, job: str) -> None:
        """The output can be written: absent (or ``overwrite``), room for it, no other writer."""
        hdf5.check_output(self.path, self.dataset, overwrite=overwrite, param=param)
        if shape is not None:  # else to_hdf5 checks the space once the shape is known
            hdf5.check_output_space(self.path, self.dataset, shape, dtype)
        probe_lock(self.path, job)

    def read(self, sc, rows_per_block: int, cols_per_block: int):
        """The matrix, read by the tasks block by block."""
        from ..matrix import BlockMatrix

        return BlockMatrix.from_hdf5(sc, self.path, self.dataset, rows_per_block,
                                     cols_per_block)

    def write(self, matrix, overwrite: bool) -> str:
        """Write ``matrix`` here; what was written, for the job's report."""
        return f"{matrix.to_hdf5(self.path, self.dataset, overwrite=overwrite)} blocks"

    def load(self, sc) -> np.ndarray:
        """The whole matrix on the driver (for ``--verify``)."""
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[self.dataset][()]


@dataclass(frozen=True)
class ZarrArrayLocation:
    """A 2-D Zarr array, on a local file system or object storage."""

    location: zarr_store.ZarrLocation

    kind = "zarr"

    def __str__(self) -> str:
        return f"{ZARR_PREFIX}{self.location}"

    def inspect(self, param: str) -> tuple[tuple[int, int], np.dtype]:
        """Shape and dtype, read from the array's metadata (refused in one line if unusable)."""
        shape, dtype, _ = zarr_store.inspect_input(self.location, param)
        return shape, dtype

    def same_as(self, other) -> bool:
        """Whether ``other`` is this very array."""
        return isinstance(other, ZarrArrayLocation) and self.location == other.location

    def describe_input(self, name: str) -> str:
        """How a refusal names this location as the input ``name``."""
        return f"the input array {name} ({self})"

    def ooc_pair(self) -> tuple:
        """``(location, None)``: how the out-of-core engine takes it in a path's place."""
        return self.location, None

    def ooc_operand(self):
        """How the out-of-core engine takes it as an operand: the location itself."""
        return self.location

    def check_output(self, shape, dtype, overwrite: bool, param: str, job: str) -> None:
        """The output can be written: no array there (or ``overwrite``), room, no writer."""
        zarr_store.check_output(self.location, overwrite=overwrite, param=param)
        if shape is not None:
            zarr_store.check_output_space(self.location, shape, dtype, param=param)
        if self.location.local:  # object storage has no lock: one writer per target
            probe_lock(self.location.path, job)

    def read(self, sc, rows_per_block: int, cols_per_block: int):
        """The matrix, read by the tasks block by block."""
        from ..matrix import BlockMatrix

        return BlockMatrix.from_zarr(sc, self.location.url, rows_per_block, cols_per_block)

    def write(self, matrix, overwrite: bool) -> str:
        """Write ``matrix`` here, by the tasks in parallel; what was written."""
        return f"{matrix.to_zarr(self.location.url, overwrite=overwrite)} blocks"

    def load(self, sc) -> np.ndarray:
        """The whole matrix on the driver (for ``--verify``)."""
        return zarr_store.open_array(self.location.url)[...]


@dataclass(frozen=True)
class ParquetLocation:
    """A Parquet table of coordinates or rows (a Spark output folder, or one file)."""

    path: str

    kind = "parquet"

    def __str__(self) -> str:
        return f"{parquet.PREFIX}{self.path}"

    def inspect(self, param: str) -> None:
        """None: the shape is known only once Spark read the table (checked then)."""
        parquet.check_input(self.path, param)

    def same_as(self, other) -> bool:
        """Whether ``other`` is this very table."""
        return (isinstance(other, ParquetLocation) and os.path.exists(self.path)
                and os.path.exists(other.path) and os.path.samefile(self.path, other.path))

    def describe_input(self, name: str) -> str:
        """How a refusal names this location as the input ``name``."""
        return f"the input table {name} ({self})"

    def check_output(self, shape, dtype, overwrite: bool, param: str, job: str) -> None:
        """The output can be written: absent (or ``overwrite``), no other writer."""
        parquet.check_output(self.path, overwrite=overwrite, param=param)
        probe_lock(self.path, job)

    def read(self, sc, rows_per_block: int, cols_per_block: int):
        """The matrix the table holds: coordinates ``(i, j, v)`` or rows ``(i, vector)``."""
        from ..matrix import BlockMatrix

        df = self._frame(sc)
        columns = set(df.columns)
        if {"i", "j", "v"} <= columns:
            return BlockMatrix.from_coordinates(df, rows_per_block=rows_per_block,
                                                cols_per_block=cols_per_block)
        others = sorted(columns - {"i"})
        if "i" in columns and len(others) == 1:
            return BlockMatrix.from_rows(df, vector=others[0], rows_per_block=rows_per_block,
                                         cols_per_block=cols_per_block)
        raise MissingColumnError(
            f"{self} has the columns {df.columns}: a matrix table has the coordinates i, j, v "
            f"(BlockMatrix.to_coordinates) or the rows i and one vector column "
            f"(BlockMatrix.to_rows); rename its columns", column="i")

    def _frame(self, sc):
        """The table as a DataFrame: Spark reads the footers (a job) to find its schema."""
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import AnalysisException
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.getOrCreate()
        try:
            return spark.read.parquet(os.path.abspath(self.path))
        except Py4JJavaError as exc:  # e.g. a part file that is not Parquet: a failed job
            reason = str(exc.java_exception.toString())
        except AnalysisException as exc:
            reason = str(exc)
        first = reason.strip().splitlines()[0] if reason.strip() else "unreadable"
        raise InvalidInputError(
            f"{self} cannot be read as Parquet ({first}): give a table written by "
            f"df.write.parquet")

    def write(self, matrix, overwrite: bool) -> str:
        """Write ``matrix`` as a coordinate table, published when complete."""
        parquet.write_published(matrix.to_coordinates(), self.path, overwrite=overwrite)
        return "a table of coordinates (i, j, v)"

    def load(self, sc) -> np.ndarray:
        """The whole matrix on the driver (for ``--verify``)."""
        matrix = self.read(sc, 1024, 1024)
        return matrix.to_numpy()


#: The kinds of location the out-of-core engine reads and writes.
OUT_OF_CORE_KINDS = ("hdf5", "zarr")


def out_of_core(*locations_) -> bool:
    """Whether the out-of-core engine can take every one of these locations."""
    return all(loc.kind in OUT_OF_CORE_KINDS for loc in locations_)


def check_shapes(a_shape, b_shape) -> None:
    """Refuse ``A @ B`` when the inner dimensions differ."""
    if a_shape[1] != b_shape[0]:
        raise ShapeMismatchError(
            f"A.shape[1] ({a_shape[1]}) != B.shape[0] ({b_shape[0]}): A is "
            f"{a_shape[0]}x{a_shape[1]} and B is {b_shape[0]}x{b_shape[1]}, so A B is undefined")
