"""blockmatrix: block-matrix multiplication on Apache Spark with numpy and scipy.sparse blocks.

>>> from blockmatrix import BlockMatrix, GridPartitioner
"""

from .errors import BlockMatrixError, PerformanceWarning
from .matrix import BlockMatrix
from .partitioner import GridPartitioner
from .planner import BlockLayout, MultiplyPlan, simulate_multiply
from .strategies import STRATEGIES, MultiplyOptions

__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "BlockLayout",
    "BlockMatrix",
    "BlockMatrixError",
    "GridPartitioner",
    "MultiplyOptions",
    "MultiplyPlan",
    "PerformanceWarning",
    "simulate_multiply",
]
