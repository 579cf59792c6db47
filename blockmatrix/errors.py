"""Exception and warning types raised by blockmatrix.

Every error subclasses :class:`BlockMatrixError` and one of the builtin types a caller would
expect (``ValueError``, ``TypeError``, ``FileNotFoundError``, ``FileExistsError``,
``PermissionError``, ``OSError``), so ``except ValueError`` keeps working. Messages name the
parameter, show the offending values and say how to fix the problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

#: Starts the one-line message of an error raised in a task that the driver shows as it is
#: (Spark wraps a task's exception in its own error text; the driver finds the line by it).
READ_ERROR_MARK = "blockmatrix-read-error: "

#: What the JVM and Python say when a write finds the disk full.
_DISK_FULL = "No space left on device"


class BlockMatrixError(Exception):
    """Base class of every error raised by blockmatrix."""


class InvalidParameterError(BlockMatrixError, ValueError):
    """A parameter has a value outside its domain (block size <= 0, num_mid_splits < 1, ...)."""


class ShapeMismatchError(BlockMatrixError, ValueError):
    """Operand shapes do not conform (inner dimensions of a product, shapes of a sum)."""


class BlockSizeMismatchError(BlockMatrixError, ValueError):
    """Operand block sizes do not conform (``A.cols_per_block != B.rows_per_block``)."""


class InvalidBlockError(BlockMatrixError, ValueError):
    """A stored block is inconsistent with its matrix: wrong shape, bad or duplicate index."""


class BlockTypeError(BlockMatrixError, TypeError):
    """A block is not a real-valued 2-D numpy array or scipy.sparse matrix."""


class UnknownStrategyError(BlockMatrixError, ValueError):
    """A multiplication strategy name that is not in the registry."""


class InputNotFoundError(BlockMatrixError, FileNotFoundError):
    """An input file or dataset does not exist."""


class InvalidInputError(BlockMatrixError, ValueError):
    """An input file exists but cannot be used (not HDF5, dataset not 2-D, wrong dtype)."""


class InputChangedError(BlockMatrixError, ValueError):
    """An input file changed (size or modification time) since a matrix was read from it."""


class OutputExistsError(BlockMatrixError, FileExistsError):
    """The requested output already exists and overwriting was not asked for."""


class OutputNotWritableError(BlockMatrixError, PermissionError):
    """The requested output location cannot be written."""


class MissingDependencyError(BlockMatrixError, ImportError):
    """An optional feature's packages are not installed (the message names the extra)."""


class InsufficientSpaceError(BlockMatrixError, OSError):
    """A folder the run writes in (output, tiles, spill) has less free space than it needs."""


class InsufficientMemoryError(BlockMatrixError, MemoryError):
    """The plan or its exit needs more memory than Spark is configured with.

    Raised before any job, with one line naming the setting to raise (``spark.driver.memory``,
    ``spark.driver.maxResultSize``, ...), the value needed and the value configured, and the
    alternative that needs no more memory (more partitions, ``to_hdf5`` instead of
    ``to_numpy``).
    """


class TaskReadError(RuntimeError):
    """A read of an operand failed in a task: its message, after the mark, is one line.

    Raised on executors (never by the driver): Spark carries it to the driver inside its own
    error, where :func:`raised_from_tasks` or :func:`task_error_line` finds the line again.
    """


def task_error_line(exc: BaseException) -> str | None:
    r"""The one-line message a task marked with :data:`READ_ERROR_MARK`, or None.

    >>> task_error_line(RuntimeError("Py4JJavaError ... blockmatrix-read-error: it broke\n at"))
    'it broke'
    >>> task_error_line(RuntimeError("something else")) is None
    True
    """
    text = str(exc)
    at = text.find(READ_ERROR_MARK)
    if at < 0:
        return None
    return text[at + len(READ_ERROR_MARK):].splitlines()[0].strip()


def unreadable_in_task(location: str, exc: BaseException) -> TaskReadError:
    """The marked one-line error of an operand's file that a task could not read."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return TaskReadError(
        f"{READ_ERROR_MARK}reading {location} failed in a task ({detail}): every executor "
        f"must read the operands' files at the same path (storage they all share), unchanged "
        f"while the job runs; check the path from the executors' machines, or load the "
        f"operand with from_numpy")


@contextmanager
def raised_from_tasks(spill_folder: str | None = None, need: str = "") -> Iterator[None]:
    """Turn what failed inside Spark's tasks into this module's one-line errors.

    A task's marked read error becomes :class:`InvalidInputError` with the task's line; a full
    disk (the JVM's or a worker's ``No space left on device``) becomes
    :class:`InsufficientSpaceError` naming ``spill_folder`` (Spark's local folder, where
    shuffle and spill files go) and ``need``, what the plan predicted it would take. Anything
    else passes through unchanged.

    >>> with raised_from_tasks("/tmp/spark", "512 MiB of shuffle files"):
    ...     raise RuntimeError("Job aborted ... java.io.IOException: No space left on device")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    blockmatrix.errors.InsufficientSpaceError: spill folder '/tmp/spark' ran out of space ...
    """
    try:
        yield
    except BlockMatrixError:
        raise
    except Exception as exc:
        line = task_error_line(exc)
        if line is not None:
            raise InvalidInputError(line) from None
        if _DISK_FULL in str(exc):
            raise InsufficientSpaceError(
                f"spill folder {spill_folder!r} ran out of space in a task"
                + (f" (the plan needs {need} there)" if need else "")
                + ": free space there, or point spark.local.dir (SPARK_LOCAL_DIRS) at a "
                  "folder with room, and run again") from None
        raise


class PerformanceWarning(UserWarning):
    """A computation will run but pays a cost the caller may not expect."""


class InvalidTableError(InvalidInputError):
    """A table (DataFrame, RDD of entries or rows) cannot be read as a matrix.

    Nulls, duplicate or out-of-range indices, vectors of different lengths. ``column`` names
    the column (for an RDD, the field) at fault.
    """

    def __init__(self, message: str, column: str | None = None):
        super().__init__(message)
        self.column = column


class MissingColumnError(InvalidTableError, KeyError):
    """A column the conversion needs is not in the table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ColumnTypeError(InvalidTableError, TypeError):
    """A column has a type the conversion cannot use (indices must be integers, values real)."""
