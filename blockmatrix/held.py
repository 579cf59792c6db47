"""What a product holds besides its operands: broadcasts, persisted intermediates, folders.

A strategy's ``execute`` creates its broadcasts with :func:`broadcast` and persists its
intermediates with :func:`persist` instead of calling Spark directly. ``BlockMatrix.multiply``
runs ``execute`` inside :func:`collecting`, which gathers them into a :class:`Held` that the
product keeps. Once an exit has read all its blocks the intermediates are unpersisted (Spark
recomputes them if asked to); everything (broadcasts destroyed, intermediates unpersisted)
goes when the product is garbage collected, and with it every matrix computed from it, whose
lineage needs its broadcasts. A broadcast is not destroyed earlier: a product's blocks, even
persisted or collected, may be computed again (a later use, a lost partition, a product that
takes it as an operand), and that needs its broadcasts. The folders of blocks shuffled by
reference (:func:`folder`, :mod:`blockmatrix.spilled`) go with the broadcasts, for the same
reason, and so do the in-memory files a local master's tasks read the driver's arrays from
(:func:`memory_file`). Outside :func:`collecting` (a strategy's ``execute`` called directly)
these functions are Spark's own calls, and nothing is tracked.

Releases that garbage collection asks for are queued and carried out by the next call of
:func:`release_pending` (every product and every exit calls it): a finalizer runs wherever
the collector happens to run, which is no place for a call into the JVM.

>>> held = Held()
>>> held.released, bool(held)
(False, False)
>>> held.release(); held.released
True
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import threading

__all__ = ["Held", "broadcast", "collecting", "folder", "memory_file", "persist",
           "release_later", "release_pending"]

_current: contextvars.ContextVar[Held | None] = contextvars.ContextVar("held", default=None)
_pending: list[Held] = []
_pending_lock = threading.Lock()

#: Whether this platform has in-memory files (:func:`memory_file`): Linux.
MEMORY_FILES = hasattr(os, "memfd_create")


class Held:
    """Broadcasts and persisted RDDs one product's blocks depend on, and their release.

    Attributes
    ----------
    broadcasts : list of pyspark.Broadcast
    intermediates : list of pyspark.RDD
        Persisted by the strategy; not the product's own blocks.
    folders : list of str
        Folders of blocks the product's tasks wrote (:func:`folder`), removed on release.
    descriptors : list of int
        In-memory files the product's tasks read (:func:`memory_file`), closed on release.
    released : bool
        Whether :meth:`release` ran.
    """

    def __init__(self):
        self.broadcasts: list = []
        self.intermediates: list = []
        self.folders: list[str] = []
        self.descriptors: list[int] = []
        self.released = False

    def __bool__(self) -> bool:
        return bool(self.broadcasts or self.intermediates or self.folders or self.descriptors)

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return (f"Held({len(self.broadcasts)} broadcasts, {len(self.intermediates)} "
                f"intermediates, {state})")

    def release_intermediates(self) -> None:
        """Unpersist the intermediates (always safe: Spark recomputes them if asked to)."""
        for rdd in self.intermediates:
            with contextlib.suppress(Exception):  # a stopped context has nothing to free
                rdd.unpersist(blocking=False)
        self.intermediates.clear()

    def release(self) -> None:
        """Destroy the broadcasts and unpersist the intermediates; idempotent.

        A stopped SparkContext has freed them already: errors from it are ignored.
        """
        self.release_intermediates()
        for shared in self.broadcasts:
            with contextlib.suppress(Exception):  # a stopped context: the JVM is gone
                shared.destroy(blocking=False)
        self.broadcasts.clear()
        for path in self.folders:
            shutil.rmtree(path, ignore_errors=True)
        self.folders.clear()
        for fd in self.descriptors:
            with contextlib.suppress(OSError):  # closed already
                os.close(fd)
        self.descriptors.clear()
        self.released = True


@contextlib.contextmanager
def collecting():
    """Gather the broadcasts and intermediates created inside the block into a :class:`Held`.

    Yields
    ------
    Held
    """
    held = Held()
    token = _current.set(held)
    try:
        yield held
    finally:
        _current.reset(token)


def broadcast(sc, value):
    """``sc.broadcast(value)``, recorded in the :class:`Held` being collected (if any).

    Parameters
    ----------
    sc : pyspark.SparkContext
    value : object

    Returns
    -------
    pyspark.Broadcast
    """
    shared = sc.broadcast(value)
    held = _current.get()
    if held is not None:
        held.broadcasts.append(shared)
    return shared


def persist(rdd, storage_level=None):
    """``rdd.persist(storage_level)`` (default ``MEMORY_AND_DISK``), recorded as intermediate.

    Parameters
    ----------
    rdd : pyspark.RDD
    storage_level : pyspark.StorageLevel, optional

    Returns
    -------
    pyspark.RDD
    """
    from pyspark import StorageLevel

    rdd = rdd.persist(storage_level or StorageLevel.MEMORY_AND_DISK)
    held = _current.get()
    if held is not None:
        held.intermediates.append(rdd)
    return rdd


def folder(parent: str) -> str:
    """A new folder under ``parent`` for blocks a product's tasks write, recorded as held.

    The :class:`Held` being collected (if any) removes it with the product's broadcasts.

    Parameters
    ----------
    parent : str
        Where to create it: a folder every task can read (:mod:`blockmatrix.spilled`).

    Returns
    -------
    str
    """
    from .spilled import new_folder

    path = new_folder(parent)
    held = _current.get()
    if held is not None:
        held.folders.append(path)
    return path


def memory_file(nbytes: int) -> int | None:
    """A new anonymous in-memory file of ``nbytes`` zero bytes: its descriptor, or None.

    Linux's ``memfd_create``: the file lives in memory, not on a disk (no write-back, no size
    limit of ``/dev/shm``), and goes when its last descriptor and mapping do, so a killed
    driver leaves nothing behind. The tasks of a local master, on this machine, open it as
    ``/proc/<pid>/fd/<fd>`` (:func:`blockmatrix.spilled.memory_file_path`). The
    :class:`Held` being collected (if any) closes the descriptor with the product's
    broadcasts; outside one it stays open as long as the process, as a folder of
    :func:`folder` stays on disk.

    Parameters
    ----------
    nbytes : int
        Its size, > 0.

    Returns
    -------
    int or None
        None where the platform has no ``memfd_create`` or the file could not be made.
    """
    if nbytes <= 0 or not MEMORY_FILES:
        return None
    fd = os.memfd_create("blockmatrix-driver-array", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
    except OSError:
        os.close(fd)
        return None
    held = _current.get()
    if held is not None:
        held.descriptors.append(fd)
    return fd


def release_later(held: Held) -> None:
    """Queue ``held`` for :func:`release_pending` (what a product's finalizer does)."""
    with _pending_lock:
        _pending.append(held)


def release_pending() -> int:
    """Release everything queued by :func:`release_later`; returns how many were released."""
    with _pending_lock:
        queued = _pending[:]
        _pending.clear()
    for held in queued:
        held.release()
    return len(queued)
