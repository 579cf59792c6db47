"""The lock that keeps a second writer off an output file (one writer per output).

Every writer of an HDF5 output (``BlockMatrix.to_hdf5``, the out-of-core engine, the jobs)
holds :func:`output_lock` on the file's lock, ``.NAME.gram-lock`` beside it, for the whole
write; the jobs take it before Spark starts, so a second job on the same output is refused at
once. HDF5 allows one writer per file, so the lock is per file, not per dataset.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import OutputNotWritableError

__all__ = ["lock_path_of", "output_lock"]


def lock_path_of(output_path: str | os.PathLike) -> str:
    """The lock file of an output file, beside it.

    >>> lock_path_of("/data/x.h5")
    '/data/.x.h5.gram-lock'
    """
    folder, base = os.path.split(os.path.abspath(output_path))
    return os.path.join(folder, f".{base}.gram-lock")


@contextlib.contextmanager
def output_lock(lock_path: str, output_path: str, job: str = "gram") -> Iterator[None]:
    """Hold an exclusive lock for the output file, or refuse at once.

    The lock is a :class:`filelock.FileLock` (``flock`` on Unix) on ``lock_path``, which holds
    the owner's pid for the refusal message. A killed job's lock is released by the kernel, so
    a stale lock file never blocks. The file is removed on release, before the lock is let go:
    a job that opened the file meanwhile then finds it unlinked when it gets the lock, and
    filelock does not count that as holding it.

    ``job`` names the kind of job in the refusal ("another gram job").

    Raises
    ------
    OutputNotWritableError
        Another job holds the lock.
    """
    # on_acquired also rules out filelock's fallback to a lock-free "soft" marker where the
    # file system has no flock: two jobs on one output must never both proceed.
    lock = FileLock(lock_path, mode=0o644, blocking=False, on_acquired=_write_owner)
    try:
        lock.acquire()
    except Timeout:
        raise OutputNotWritableError(
            f"output file {output_path!r} is being written by another {job} job"
            f"{_lock_owner(lock_path)}: wait for it to finish, or choose another output "
            f"file") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        lock.release()


def _write_owner(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())


def _lock_owner(lock_path: str) -> str:
    try:
        pid = Path(lock_path).read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
