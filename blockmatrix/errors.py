"""Exception and warning types raised by blockmatrix.

Every error subclasses :class:`BlockMatrixError` and one of the builtin types a caller would
expect (``ValueError``, ``TypeError``, ``FileNotFoundError``, ``FileExistsError``,
``PermissionError``, ``OSError``), so ``except ValueError`` keeps working. Messages name the
parameter, show the offending values and say how to fix the problem.
"""

from __future__ import annotations


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


class InsufficientSpaceError(BlockMatrixError, OSError):
    """A folder the run writes in (output, tiles, spill) has less free space than it needs."""


class PerformanceWarning(UserWarning):
    """A computation will run but pays a cost the caller may not expect."""
