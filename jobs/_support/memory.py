"""Peak resident memory of a whole process tree, sampled in a background thread.

A Spark job's memory is spread over several processes: the Python driver, the JVM it started
and the Python workers the JVM forked. :class:`TreePeakRSS` sums the resident set size (RSS) of a
root process and all its descendants, many times a second, and keeps the largest sum. Summing RSS
counts pages shared between processes (forked workers, shared libraries) once per process, so the
figure is an upper bound of what the tree really occupies.

>>> import os
>>> with TreePeakRSS(os.getpid(), interval=0.01) as peak:
...     block = bytearray(50 << 20)
>>> peak.peak_bytes >= 50 << 20
True
"""

from __future__ import annotations

import os
import threading

import psutil

__all__ = ["TreePeakRSS", "tree_rss_by_process"]


def tree_rss_by_process(root: psutil.Process) -> dict[int, tuple[str, int]]:
    """RSS of ``root`` and each of its live descendants.

    Parameters
    ----------
    root : psutil.Process
        The top of the tree.

    Returns
    -------
    dict
        ``{pid: (short description, rss bytes)}``; processes that exit while being read are
        left out.
    """
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    found: dict[int, tuple[str, int]] = {}
    seen: dict[int, tuple[tuple[str, ...], int]] = {}
    for proc in members:
        try:
            cmd, rss, parent = tuple(proc.cmdline()), proc.memory_info().rss, proc.ppid()
            if seen.get(parent) == (cmd, rss):
                continue  # a vfork/posix_spawn child not yet exec'd shares its parent's pages
            seen[proc.pid] = (cmd, rss)
            found[proc.pid] = (_describe(proc), rss)
        except psutil.Error:
            continue
    return found


def _cpu_seconds(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def _describe(proc: psutil.Process) -> str:
    cmd = proc.cmdline()
    if not cmd:
        return proc.name()
    if "pyspark.daemon" in cmd:
        return "pyspark daemon/worker"
    if cmd[0].endswith("java"):
        return "java (JVM)"
    words = [os.path.basename(cmd[0])]
    if len(cmd) > 1:
        words.append("-c" if cmd[1] == "-c" else os.path.basename(cmd[1]))
    return " ".join(words)


def _kind(description: str) -> str:
    if description == "java (JVM)":
        return "jvm"
    if description == "pyspark daemon/worker":
        return "python workers"
    return "python"


class TreePeakRSS:
    """Context manager recording the peak summed RSS of a process tree.

    Parameters
    ----------
    pid : int, optional
        Root of the tree; defaults to the current process.
    interval : float
        Seconds between samples (default 0.05, i.e. 20 Hz).

    Attributes
    ----------
    peak_bytes : int
        Largest summed RSS seen so far.
    peak_processes : int
        Number of processes in the tree at the peak sample.
    peak_breakdown : list of (str, int)
        Description and RSS of each process at the peak sample, largest first.
    samples : int
        Number of samples taken.
    cpu_seconds : float
        CPU time used by the processes of the tree (see the property).

    Examples
    --------
    Where the CPU time went while the block ran, by kind of process:

    >>> import time
    >>> with TreePeakRSS(interval=0.01) as peak:
    ...     start = time.process_time()
    ...     while time.process_time() - start < 0.1:  # 0.1 s of CPU in this process
    ...         pass
    >>> peak.cpu_seconds_by_kind()["python"] >= 0.05  # this process; "jvm", "python workers"
    True
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05):
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self.peak_breakdown: list[tuple[str, int]] = []
        self.samples = 0
        self._cpu: dict[int, float] = {}
        self._cpu_start: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def cpu_seconds(self) -> float:
        """CPU time (user + system) used by the tree's processes, as last sampled.

        A process is counted up to its last sample, so each one that exits between samples
        loses at most one interval of CPU time.
        """
        return sum(self._cpu.values())

    def cpu_seconds_by_kind(self) -> dict[str, float]:
        """CPU time used *while sampling*, summed by kind of process.

        Kinds are ``"jvm"``, ``"python workers"`` (the ``pyspark.daemon`` and the workers it
        forks) and ``"python"`` (the driver and any other process). A process already running at
        the first sample is counted from that sample on; one that started later, from its start.
        """
        out: dict[str, float] = {}
        for pid, cpu in self._cpu.items():
            kind = self._kind[pid]
            out[kind] = out.get(kind, 0.0) + cpu - self._cpu_start[pid]
        return out

    def sample(self) -> int:
        """Take one sample now and return the tree's current summed RSS."""
        try:
            found = tree_rss_by_process(psutil.Process(self.pid))
        except psutil.Error:
            return 0
        rss = sum(r for _, r in found.values())
        for pid, (description, _) in found.items():
            cpu = _cpu_seconds(pid)
            if cpu is not None:
                self._cpu[pid] = max(cpu, self._cpu.get(pid, 0.0))
                if pid not in self._cpu_start:  # a process born after the first sample: 0
                    self._cpu_start[pid] = cpu if self.samples == 0 else 0.0
                    self._kind[pid] = _kind(description)
        self.samples += 1
        if rss > self.peak_bytes:
            self.peak_bytes, self.peak_processes = rss, len(found)
            self.peak_breakdown = sorted(found.values(), key=lambda item: -item[1])
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> TreePeakRSS:
        """Take the first sample now (the CPU baseline), then sample in a daemon thread."""
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tree-peak-rss", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (after one last sample) and return the peak in bytes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
        return self.peak_bytes

    def __enter__(self) -> TreePeakRSS:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
