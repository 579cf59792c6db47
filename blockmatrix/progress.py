"""One progress line per finished stage of a Spark job, instead of Spark's console bar.

Spark's console progress bar redraws one line with carriage returns, which interleaves with a
job's own report (``[Stage 3:> (3 + 1) / 4] plan:``) and fills log files. The jobs turn it off
(``spark.ui.showConsoleProgress false``) and print, through :class:`StageProgress`, one line
each time a stage of theirs finishes: stages done, tasks, the work done so far as GFLOP/s when
the plan's flops are known, and an estimate of the time left, as the out-of-core jobs print
their tiles.

>>> print(progress_line(stages_done=1, stages_seen=2, tasks_done=4, tasks_total=8,
...                     elapsed=2.0, flops=4e9, work_done=0.5))
stage 1/2 done (tasks 4/8), 1.0 GFLOP/s, elapsed 2 s, ETA 2 s
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["StageProgress", "progress_line"]


def progress_line(stages_done: int, stages_seen: int, tasks_done: int, tasks_total: int,
                  elapsed: float, flops: float | None, work_done: float) -> str:
    """The line printed when a stage finishes.

    ``work_done`` is the fraction of the tasks seen so far that finished: the rate and the
    estimate assume the tasks still to come cost what the finished ones did.
    """
    rate = (f", {flops * work_done / elapsed / 1e9:.1f} GFLOP/s"
            if flops and elapsed > 0 else "")
    eta = (f"{elapsed * (1 - work_done) / work_done:.0f} s" if 0 < work_done else "?")
    return (f"stage {stages_done}/{stages_seen} done (tasks {tasks_done}/{tasks_total})"
            f"{rate}, elapsed {elapsed:.0f} s, ETA {eta}")


class StageProgress:
    """Print a line whenever a stage of the watched jobs finishes (a background poller).

    The jobs watched are those started inside the ``with`` block from the thread that entered
    it, in its job group (``SparkContext.setJobGroup``; none is a group too). Spark's status
    tracker keeps finished stages, so a stage shorter than the polling interval is reported all
    the same; a stage Spark skipped (its shuffle output already there) is not.

    Parameters
    ----------
    sc : pyspark.SparkContext
    flops : float, optional
        The work of the jobs being watched (a plan's ``flops``), for the GFLOP/s figure.
    emit : callable
        Called with each line (default ``print`` with flush).
    interval : float
        Seconds between polls of Spark's status tracker.
    """

    def __init__(self, sc, flops: float | None = None,
                 emit: Callable[[str], None] | None = None, interval: float = 0.5):
        self._sc = sc
        self._tracker = sc.statusTracker()
        self._flops = flops
        self._emit = emit or (lambda line: print(line, flush=True))
        self._interval = interval
        self._group: str | None = None
        self._jobs_before: set[int] = set()
        self._tasks: dict[int, tuple[int, int]] = {}  # stage id -> (tasks done, tasks)
        self._reported: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blockmatrix-progress",
                                        daemon=True)
        self._start = 0.0

    def __enter__(self) -> StageProgress:
        self._group = self._sc.getLocalProperty("spark.jobGroup.id")
        self._jobs_before = set(self._tracker.getJobIdsForGroup(self._group))
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the stage that finished last

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()

    def poll(self) -> None:
        """Report the stages of the watched jobs that finished since the last poll."""
        with self._lock:
            for stage_id, done, total in self._stages():
                self._tasks[stage_id] = (done, total)
                if done == total and stage_id not in self._reported:
                    self._reported.add(stage_id)
                    self._emit(self._line())

    def _stages(self):
        """``(stage id, tasks done, tasks)`` of every stage the watched jobs run."""
        jobs = set(self._tracker.getJobIdsForGroup(self._group)) - self._jobs_before
        for job_id in sorted(jobs):
            job = self._tracker.getJobInfo(job_id)
            if job is None:
                continue
            for stage_id in sorted(job.stageIds):
                stage = self._tracker.getStageInfo(stage_id)
                if stage is None or (job.status != "RUNNING" and stage.numCompletedTasks == 0
                                     and stage.numTasks > 0):
                    continue  # not started yet, or skipped by a finished job
                yield stage_id, stage.numCompletedTasks, stage.numTasks

    def _line(self) -> str:
        done = sum(d for d, _ in self._tasks.values())
        total = sum(t for _, t in self._tasks.values())
        return progress_line(len(self._reported), len(self._tasks), done, total,
                             time.perf_counter() - self._start, self._flops,
                             done / total if total else 0.0)
