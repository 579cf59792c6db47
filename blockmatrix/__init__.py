"""blockmatrix: block-matrix multiplication on Apache Spark with numpy and scipy.sparse blocks.

>>> from blockmatrix import BlockMatrix, GridPartitioner
"""

from .errors import BlockMatrixError, PerformanceWarning
from .explain import explain_multiply, explain_product
from .layout import BlockLayout
from .matrix import BlockMatrix
from .partitioner import GridPartitioner
from .plan import MultiplyOptions, MultiplyPlan
from .planner import simulate_multiply
from .strategies import STRATEGIES

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
    "explain_multiply",
    "explain_product",
    "simulate_multiply",
]
