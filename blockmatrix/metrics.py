"""What Spark itself measured for a block of code: stages, tasks, shuffle bytes, wall time.

Figures are read from Spark's own status store through its monitoring REST API (the driver's UI
server, ``spark.ui.enabled``, which is on by default); nothing is estimated here. Jobs started
inside :func:`record` are tagged with a private job group, so concurrent work of other threads
is not counted.

Examples
--------
>>> with record(sc) as m:                                # doctest: +SKIP
...     C = (A @ B).persist(); C.blocks.count()
>>> m.shuffle_stages, m.shuffle_write_bytes              # doctest: +SKIP
(1, 2886350)
>>> print(m)                                             # doctest: +SKIP

Notes
-----
PySpark writes each shuffle record as a pickled *batch* of Python records, so Spark's record
counts are batches; byte counts are exact (after ``spark.shuffle.compress``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import BlockMatrixError
from .units import format_bytes

_FINAL_STAGE_STATES = {"COMPLETE", "SKIPPED", "FAILED"}


class MetricsUnavailableError(BlockMatrixError, RuntimeError):
    """Spark's status store cannot be read (the UI server is disabled)."""


@dataclass(frozen=True)
class StageMetrics:
    """One stage attempt as Spark's status store reports it."""

    stage_id: int
    attempt_id: int
    name: str
    status: str
    num_tasks: int
    shuffle_write_bytes: int
    shuffle_write_records: int
    shuffle_read_bytes: int
    shuffle_read_records: int
    executor_run_time_ms: int
    memory_bytes_spilled: int
    disk_bytes_spilled: int

    @property
    def writes_shuffle(self) -> bool:
        """Whether this stage is the map side of a shuffle that actually ran."""
        return self.status != "SKIPPED" and self.shuffle_write_records > 0

    @classmethod
    def from_rest(cls, d: dict) -> StageMetrics:
        """Build from one element of ``/api/v1/applications/{app}/stages``."""
        return cls(d["stageId"], d.get("attemptId", 0), d.get("name", ""), d.get("status", ""),
                   d.get("numTasks", 0), d.get("shuffleWriteBytes", 0),
                   d.get("shuffleWriteRecords", 0), d.get("shuffleReadBytes", 0),
                   d.get("shuffleReadRecords", 0), d.get("executorRunTime", 0),
                   d.get("memoryBytesSpilled", 0), d.get("diskBytesSpilled", 0))


@dataclass
class SparkMetrics:
    """Stages and jobs Spark ran inside a :func:`record` block, and its wall time."""

    label: str = ""
    job_ids: list[int] = field(default_factory=list)
    stages: list[StageMetrics] = field(default_factory=list)
    wall_time_s: float = 0.0
    file_read_bytes: int = 0

    @property
    def ran_stages(self) -> list[StageMetrics]:
        """Stages that ran (not skipped)."""
        return [s for s in self.stages if s.status != "SKIPPED"]

    @property
    def shuffle_stages(self) -> int:
        """Number of shuffle map stages that ran, i.e. shuffles paid."""
        return sum(s.writes_shuffle for s in self.stages)

    @property
    def shuffle_write_bytes(self) -> int:
        """Bytes written by all shuffles."""
        return sum(s.shuffle_write_bytes for s in self.ran_stages)

    @property
    def shuffle_read_bytes(self) -> int:
        """Bytes read by all shuffles."""
        return sum(s.shuffle_read_bytes for s in self.ran_stages)

    @property
    def shuffle_write_records(self) -> int:
        """Records (PySpark batches) written by all shuffles."""
        return sum(s.shuffle_write_records for s in self.ran_stages)

    @property
    def num_tasks(self) -> int:
        """Tasks of the stages that ran."""
        return sum(s.num_tasks for s in self.ran_stages)

    @property
    def spilled_bytes(self) -> int:
        """Bytes Spark's JVM spilled to disk."""
        return sum(s.disk_bytes_spilled for s in self.ran_stages)

    def as_dict(self) -> dict:
        """Summary figures as plain numbers (for JSON and tables)."""
        return {"label": self.label, "jobs": len(self.job_ids), "stages": len(self.ran_stages),
                "shuffle_stages": self.shuffle_stages, "tasks": self.num_tasks,
                "shuffle_write_bytes": self.shuffle_write_bytes,
                "shuffle_read_bytes": self.shuffle_read_bytes,
                "shuffle_write_records": self.shuffle_write_records,
                "file_read_bytes": self.file_read_bytes,
                "wall_time_s": round(self.wall_time_s, 3)}

    def __str__(self) -> str:
        head = f"{self.label or 'spark'}: {len(self.job_ids)} job(s), " \
               f"{len(self.ran_stages)} stage(s), {self.shuffle_stages} shuffle(s), " \
               f"{self.num_tasks} task(s), {format_bytes(self.file_read_bytes)} read from " \
               f"files by tasks, wall {self.wall_time_s:.2f} s"
        rows = [head, f"  {'stage':>5} {'tasks':>5} {'shuffle write':>14} {'shuffle read':>14}"
                      f"  name"]
        for s in sorted(self.stages, key=lambda s: s.stage_id):
            rows.append(f"  {s.stage_id:>5} {s.num_tasks:>5} "
                        f"{format_bytes(s.shuffle_write_bytes):>14} "
                        f"{format_bytes(s.shuffle_read_bytes):>14}  {s.name}"
                        + (" (skipped)" if s.status == "SKIPPED" else ""))
        return "\n".join(rows)


@contextmanager
def record(sc, label: str = "", timeout_s: float = 30.0):
    """Measure the Spark jobs run by this thread inside the ``with`` block.

    Parameters
    ----------
    sc : pyspark.SparkContext
    label : str
        Name shown in the summary.
    timeout_s : float
        How long to wait, on exit, for Spark's listener to publish the last stages.

    Yields
    ------
    SparkMetrics
        Filled in when the block exits.
    """
    metrics = SparkMetrics(label=label)
    group = f"blockmatrix-metrics-{uuid.uuid4().hex}"
    previous = sc.getLocalProperty("spark.jobGroup.id")
    previous_description = sc.getLocalProperty("spark.job.description")
    sc.setJobGroup(group, label or "blockmatrix.metrics.record", interruptOnCancel=False)
    read_before = file_read_counter(sc).value
    start = time.perf_counter()
    try:
        yield metrics
    finally:
        metrics.wall_time_s = time.perf_counter() - start
        metrics.file_read_bytes = file_read_counter(sc).value - read_before
        sc.setLocalProperty("spark.jobGroup.id", previous)
        sc.setLocalProperty("spark.job.description", previous_description)
    _collect(sc, group, metrics, timeout_s)


_FILE_READ_COUNTERS: dict = {}


def file_read_counter(sc):
    """The accumulator of bytes tasks read from operands' files (one per SparkContext).

    Strategies hand it to the tasks that read blocks in place (``FileReader``); Spark adds
    the tasks' counts when they finish, so :func:`record` reports them. Counts of retried
    tasks are added again (Spark's accumulators in transformations count every attempt).
    """
    key = id(sc)
    entry = _FILE_READ_COUNTERS.get(key)
    if entry is None or entry[0] is not sc:
        entry = _FILE_READ_COUNTERS[key] = (sc, sc.accumulator(0))
    return entry[1]


def _collect(sc, group: str, metrics: SparkMetrics, timeout_s: float) -> None:
    tracker = sc.statusTracker()
    metrics.job_ids = sorted(tracker.getJobIdsForGroup(group))
    stage_ids = set()
    for job_id in metrics.job_ids:
        info = tracker.getJobInfo(job_id)
        if info is not None:
            stage_ids.update(info.stageIds)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stages = [_latest_attempt(_get_stage(sc, stage_id, max(1.0, deadline -
                                                                   time.monotonic())))
                      for stage_id in sorted(stage_ids)]
        except (TimeoutError, urllib.error.URLError) as exc:
            # The UI server shares the driver's JVM: on a loaded machine it answers late.
            if time.monotonic() > deadline:
                raise MetricsUnavailableError(
                    f"Spark's UI ({sc.uiWebUrl}) did not answer within {timeout_s:g} s ({exc}): "
                    f"pass a longer timeout_s to blockmatrix.metrics.record") from exc
            time.sleep(0.5)
            continue
        if all(s is not None and s.status in _FINAL_STAGE_STATES for s in stages) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    metrics.stages = [s for s in stages if s is not None]


def _latest_attempt(attempts: list[dict]) -> StageMetrics | None:
    if not attempts:
        return None
    return StageMetrics.from_rest(max(attempts, key=lambda d: d.get("attemptId", 0)))


def _get_stage(sc, stage_id: int, timeout_s: float) -> list[dict]:
    base = sc.uiWebUrl
    if not base:
        raise MetricsUnavailableError(
            "Spark's UI server is off (spark.ui.enabled=false), so its measurements cannot be "
            "read: set spark.ui.enabled=true to use blockmatrix.metrics")
    url = f"{base}/api/v1/applications/{sc.applicationId}/stages/{stage_id}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def measure_multiply(A, B, strategy: str = "inner", label: str = "", **options):
    """Run ``A.multiply(B, strategy, **options)`` to completion and compare with its plan.

    The product is computed (``count``) inside :func:`record`, so the figures are Spark's own
    for the multiply alone.

    Returns
    -------
    C : BlockMatrix
        The product (not persisted).
    metrics : SparkMetrics
        What Spark measured.
    row : dict
        Plain numbers: the strategy run, predicted and measured shuffles and shuffle bytes,
        their ratio, the plan's largest task input / memory / output, tasks and wall time.
    """
    sc = A.blocks.context
    with record(sc, label or strategy) as metrics:
        C = A.multiply(B, strategy=strategy, **options)
        C.blocks.count()
    plan = C.plan
    predicted = plan.shuffle_bytes
    measured = metrics.shuffle_write_bytes
    row = {"label": label, "strategy": strategy, "ran": plan.strategy,
           "predicted_shuffles": plan.num_shuffles, "measured_shuffles": metrics.shuffle_stages,
           "predicted_shuffle_bytes": predicted, "measured_shuffle_bytes": measured,
           "measured_over_predicted": round(measured / predicted, 4) if predicted else
           (1.0 if measured == 0 else float("inf")),
           "predicted_records": plan.shuffle_records,
           "max_task_input_bytes": plan.max_task_input_bytes,
           "max_task_memory_bytes": plan.max_task_memory_bytes,
           "max_task_output_bytes": plan.max_task_output_bytes,
           "tasks": metrics.num_tasks, "wall_time_s": round(metrics.wall_time_s, 3)}
    return C, metrics, row
