"""``?gemm`` and ``?syrk`` with ``beta = 1`` that release the GIL while BLAS runs.

scipy's :mod:`scipy.linalg.blas` wrappers hold the GIL for the whole call: measured here, a
thread reading the next slab from HDF5 (or writing a finished tile) made no progress while a
3000^3 ``dgemm`` ran beside it. An out-of-core run in one process overlaps its reads and
writes with BLAS only if BLAS lets go of the GIL, so these functions call the same BLAS
routines (scipy's :mod:`scipy.linalg.cython_blas`, whose C function pointers scipy publishes in
``__pyx_capi__``) through :mod:`ctypes`, which releases the GIL for the duration of a foreign
call. The arguments are checked here, since BLAS itself cannot report a bad one.

Arrays are Fortran-ordered, as BLAS wants them: ``c`` is updated in place, never copied.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

__all__ = ["gemm", "syrk"]

#: The one-letter arguments, kept alive for the module's life (BLAS reads them by address).
_LETTERS = {letter: ctypes.create_string_buffer(letter) for letter in (b"N", b"T", b"U")}


@functools.cache
def _routine(name: str, n_scalars: int):
    """The BLAS routine ``name`` of scipy's cython_blas as a ctypes function (GIL released).

    Every argument of a Fortran BLAS routine is a pointer: ``n_scalars`` is how many there
    are, all passed as ``void *`` (characters, integers, scalars and arrays alike).
    """
    from scipy.linalg import cython_blas

    capsule = cython_blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * n_scalars))(address)


_CTYPES = {np.dtype(np.float64): ("d", ctypes.c_double),
           np.dtype(np.float32): ("s", ctypes.c_float)}


def _prefix(c: np.ndarray) -> tuple[str, type]:
    try:
        return _CTYPES[c.dtype]
    except KeyError:
        raise TypeError(f"BLAS here takes float64 or float32 arrays, got {c.dtype}") from None


def _check(name: str, arr: np.ndarray, dtype: np.dtype, shape: tuple[int, int]) -> None:
    if arr.dtype != dtype or not arr.flags.f_contiguous or arr.shape != shape:
        raise ValueError(f"{name} must be a Fortran-ordered {dtype} array of shape {shape}, got "
                         f"{arr.dtype} {arr.shape} (Fortran-ordered: {arr.flags.f_contiguous})")


def _ld(arr: np.ndarray) -> ctypes.c_int:
    """The leading dimension of a Fortran-ordered array (at least 1, as BLAS requires)."""
    return ctypes.c_int(max(1, arr.shape[0]))


def _ref(value) -> int:
    """The address of a ctypes scalar (every Fortran BLAS argument is passed by reference)."""
    return ctypes.addressof(value)


def _letter(flag: bool, yes: bytes, no: bytes = b"N") -> int:
    return ctypes.addressof(_LETTERS[yes if flag else no])


def gemm(alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray, trans_a: int = 0,
         trans_b: int = 0) -> np.ndarray:
    """``c = alpha op(a) op(b) + c`` in place, the GIL released; returns ``c``.

    >>> a = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    >>> c = np.ones((2, 2), order="F")
    >>> gemm(1.0, a, a, c, trans_b=1) is c
    True
    >>> c
    array([[ 6., 15.],
           [15., 51.]])
    """
    letter, scalar = _prefix(c)
    m, n = c.shape
    depth = a.shape[0] if trans_a else a.shape[1]
    _check("a", a, c.dtype, (depth, m) if trans_a else (m, depth))
    _check("b", b, c.dtype, (n, depth) if trans_b else (depth, n))
    _check("c", c, c.dtype, (m, n))
    if m == 0 or n == 0:
        return c
    alpha_, beta_ = scalar(alpha), scalar(1.0)
    m_, n_, k_ = ctypes.c_int(m), ctypes.c_int(n), ctypes.c_int(depth)
    lda, ldb, ldc = _ld(a), _ld(b), _ld(c)
    _routine(f"{letter}gemm", 13)(
        _letter(trans_a, b"T"), _letter(trans_b, b"T"), _ref(m_), _ref(n_),
        _ref(k_), _ref(alpha_), a.ctypes.data, _ref(lda), b.ctypes.data, _ref(ldb),
        _ref(beta_), c.ctypes.data, _ref(ldc))
    return c


def syrk(alpha: float, a: np.ndarray, c: np.ndarray, trans: int = 0) -> np.ndarray:
    """``c = alpha op(a) op(a)^T + c`` on ``c``'s upper triangle, in place, GIL released.

    ``op(a)`` is ``a`` (``trans=0``) or ``a^T``; the lower triangle of ``c`` is not touched.

    >>> a = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    >>> c = np.zeros((2, 2), order="F")
    >>> syrk(1.0, a, c)
    array([[ 5., 14.],
           [ 0., 50.]])
    """
    letter, scalar = _prefix(c)
    n = c.shape[0]
    depth = a.shape[0] if trans else a.shape[1]
    _check("a", a, c.dtype, (depth, n) if trans else (n, depth))
    _check("c", c, c.dtype, (n, n))
    if n == 0:
        return c
    alpha_, beta_ = scalar(alpha), scalar(1.0)
    n_, k_ = ctypes.c_int(n), ctypes.c_int(depth)
    lda, ldc = _ld(a), _ld(c)
    _routine(f"{letter}syrk", 10)(
        _letter(True, b"U"), _letter(trans, b"T"), _ref(n_), _ref(k_), _ref(alpha_),
        a.ctypes.data, _ref(lda), _ref(beta_), c.ctypes.data, _ref(ldc))
    return c
