"""The one check of integer parameters, shared by every module that takes sizes or counts.

Python ints and numpy integers are accepted alike (a size read from an HDF5 shape or computed
with numpy is an ``np.int64``); ``bool`` is refused although it subclasses ``int``. The message
names the parameter, shows the value and, where the caller says so, what the value means and
how to fix it.

>>> check_int(np.int64(4), "tile")
4
>>> check_int(None, "num_cores", allow_none="Spark's defaultParallelism") is None
True
>>> check_int(0, "splits", meaning="1 = no split")
Traceback (most recent call last):
...
blockmatrix.errors.InvalidParameterError: splits must be a positive integer (1 = no split), got 0
>>> check_int(-1, "task_buffer_bytes", minimum=0)
Traceback (most recent call last):
...
blockmatrix.errors.InvalidParameterError: task_buffer_bytes must be a non-negative integer, got -1
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from .errors import InvalidParameterError

_KIND = {0: "non-negative integer", 1: "positive integer"}


def is_integer(value) -> bool:
    """Whether ``value`` is a Python or numpy integer (``bool`` is not).

    >>> is_integer(3), is_integer(np.int32(3)), is_integer(True), is_integer(3.0)
    (True, True, False, False)
    """
    return isinstance(value, (Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(value, name: str, *, minimum: int = 1, allow_none: str | None = None,
              meaning: str = "", fix: str = "") -> int | None:
    """Return ``value`` as an ``int``, or raise :class:`InvalidParameterError`.

    Parameters
    ----------
    value
        The value given.
    name : str
        The parameter's name, as the caller spells it.
    minimum : int
        The least value allowed (1: positive, 0: non-negative).
    allow_none : str, optional
        When given, None is accepted (and returned) and this says what None means.
    meaning : str
        What the value means, shown in parentheses.
    fix : str
        How to fix a bad value, shown after the value.
    """
    if value is None and allow_none is not None:
        return None
    if is_integer(value) and value >= minimum:
        return int(value)
    kind = _KIND.get(minimum, f"integer >= {minimum}")
    extra = [part for part in (meaning, f"or None: {allow_none}" if allow_none else "") if part]
    message = f"{name} must be a {kind}" + (f" ({'; '.join(extra)})" if extra else "")
    message += f", got {value!r}" + (f": {fix}" if fix else "")
    raise InvalidParameterError(message)
