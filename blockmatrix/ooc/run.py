"""The driver of a run: the tiles computed in the background, the driver streaming them out.

:class:`OocRun` (``GramRun``) runs Y = X X^T and C = A @ B alike: in a background thread it
computes the missing tiles (:func:`~blockmatrix.ooc.kernels.compute_tile`), either as one Spark
job of one task per tile or, with no SparkContext (``runner="local"``), one tile after another
in this process with every core on BLAS and the next slabs read while BLAS runs. Meanwhile it
watches the work folder: it hands each finished tile to the single writer when the output file
is new, and reports progress. When the job is over it writes the remaining
tiles (all of them when the output file exists, since an input may live in it and must not be
opened for writing while tasks read it) and puts the output in place. :func:`run_request` is
the whole run of a checked request: lock, plan, state, run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np

from ..errors import (
    InputChangedError,
    InvalidInputError,
    OutputNotWritableError,
    task_error_line,
)
from ..io import hdf5
from ..session import usable_cores
from .kernels import compute_tile, warn_if_blas_unpinned
from .request import (
    ZARR_REQUEST_ATTR,
    OocRequest,
    _plain,
    operand_stamp,
    output_chunks,
    plan_request,
    start_state,
    write_state,
)
from .tiles import GramPlan, Operand, ProductPlan, check_positive
from .workdir import STAGED_OUTPUT, finished_tiles, output_lock, running_flops
from .writer import YWriter, link_into_place

__all__ = ["GramProgress", "GramResult", "GramRun", "OocRun", "ZarrOocRun", "run_request",
           "spark_slots"]

#: Seconds the driver waits for the job between two looks at the work folder.
WATCH_INTERVAL = 0.5


@dataclass(frozen=True)
class GramProgress:
    """A progress report: tiles finished, work done in this run, rate and time left."""

    tiles_done: int
    tiles_total: int
    flops_done: float
    flops_todo: float
    elapsed: float

    @property
    def rate(self) -> float:
        """Floating-point operations per second in this run so far."""
        return self.flops_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None before any work is measured)."""
        if self.rate <= 0:
            return None
        return max(0.0, (self.flops_todo - self.flops_done) / self.rate)

    def __str__(self) -> str:
        """One line: ``tiles 1/3 done (48% of the work), 81.2 GFLOP/s, ETA 26 s``."""
        share = 100.0 * self.flops_done / self.flops_todo if self.flops_todo else 100.0
        eta = "?" if self.eta is None else f"{self.eta:.0f} s"
        return (f"tiles {self.tiles_done}/{self.tiles_total} done ({share:.0f}% of the work), "
                f"{self.rate / 1e9:.1f} GFLOP/s, elapsed {self.elapsed:.0f} s, ETA {eta}")


@dataclass
class GramResult:
    """What a run did and measured.

    Attributes
    ----------
    plan : GramPlan or ProductPlan
    output : str
        ``FILE::/dataset`` of the output.
    computed : list of (int, int)
        Tiles computed by this run.
    reused : list of (int, int)
        Tiles taken from an interrupted run.
    seconds : float
        Wall time of the run (from the start of the tasks to Y complete).
    compute_seconds : float
        Wall time of the tiles' computation (the Spark job, or the run in this process).
    write_seconds : float
        Wall time of the final write of Y after the Spark job.
    task_stats : list of dict
        Per task: seconds reading and computing, bytes read, flops, worker pid.
    """

    plan: GramPlan | ProductPlan
    output: str
    computed: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    seconds: float = 0.0
    compute_seconds: float = 0.0
    write_seconds: float = 0.0
    task_stats: list = field(default_factory=list)
    complete: bool = False
    note: str = ""

    @property
    def _computed_by(self) -> str:
        return "tiles computed in this process in" if self.plan.in_process else "Spark job"

    @property
    def gflops(self) -> float:
        """GFLOP/s of this run's tiles over its whole wall time."""
        flops = sum(s["flops"] for s in self.task_stats)
        return flops / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        """A short summary of the run."""
        if self.complete:
            return self.note
        read = sum(s["read_s"] for s in self.task_stats)
        comp = sum(s["compute_s"] for s in self.task_stats)
        return (f"wrote {self.output} in {self.seconds:.2f} s ({self.gflops:.1f} GFLOP/s): "
                f"tiles computed {len(self.computed)}, reused {len(self.reused)}, total "
                f"{len(self.plan.tiles)}; {self._computed_by} {self.compute_seconds:.2f} s, "
                f"final write "
                f"{self.write_seconds:.2f} s; task time reading {read:.1f} s, BLAS {comp:.1f} s")

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {"output": self.output, "computed": self.computed, "reused": self.reused,
                "seconds": self.seconds, "compute_seconds": self.compute_seconds,
                "write_seconds": self.write_seconds, "gflops": self.gflops,
                "predicted_total_bytes": self.plan.total_bytes,
                "tiles": len(self.plan.tiles), "tile": self.plan.tile, "slab": self.plan.slab,
                "task_stats": self.task_stats}


def _collect(rdd, description: str) -> list:
    """Run ``rdd``'s job from this thread under ``description``; return its results."""
    rdd.context.setJobDescription(description)  # local properties are per thread: set it here
    return rdd.collect()


class OocRun:
    """One run of Y = X X^T or C = A @ B: compute the missing tiles, write the output, clean up.

    Parameters
    ----------
    sc : pyspark.SparkContext or None
        The context the tasks run on; None computes the tiles in this process (the plan's
        runner is then ``"local"``).
    request : OocRequest
        The validated request; its output's lock must be held.
    plan : GramPlan or ProductPlan
        The plan, with the tiles an interrupted run finished.
    state : dict
        The run's resume state, its work folder ready
        (:func:`~blockmatrix.ooc.request.start_state`).
    progress : callable, optional
        Called with a :class:`GramProgress` when a tile finishes and every
        ``progress_interval`` seconds.
    progress_interval : float
        Seconds between progress reports.
    """

    def __init__(self, sc, request: OocRequest, plan: GramPlan | ProductPlan, state: dict,
                 progress: Callable[[GramProgress], None] | None = None,
                 progress_interval: float = 5.0):
        self.sc = sc
        self.request = request
        self.plan = plan
        self.state = state
        self.progress = progress
        self.progress_interval = progress_interval
        self.tiles = {(t.i, t.j): t for t in plan.tiles}
        self.staged_path = os.path.join(request.work_dir, STAGED_OUTPUT)
        self.writer: YWriter | None = None
        self.written: set[tuple[int, int]] = set()
        self._start = 0.0
        self._last_report = -math.inf
        self._reported_done = -1
        self._stop = threading.Event()  # asks a run in this process to stop after its slab

    def run(self) -> GramResult:
        """Compute, write and put Y in place; remove the work folder. Call once."""
        self._start = time.perf_counter()
        result = GramResult(plan=self.plan, output=self.request.output_location,
                            reused=sorted(self.plan.done))
        try:
            if not os.path.exists(self.request.output_path):
                # A new output file is written while the tasks run, then linked into place.
                self.writer = self._writer(self.staged_path, "w-")
            stats = self._compute()
            result.task_stats = sorted(stats, key=lambda s: (s["i"], s["j"]))
            result.computed = [(s["i"], s["j"]) for s in result.task_stats]
            result.compute_seconds = self._elapsed()
            self._finish()
        except OSError as exc:
            self._abandon_writer()
            if not hdf5.is_disk_full(exc, self.request.work_dir):
                raise
            raise self._disk_full() from None
        except BaseException:
            self._abandon_writer()
            raise
        result.seconds = self._elapsed()
        result.write_seconds = result.seconds - result.compute_seconds
        shutil.rmtree(self.request.work_dir, ignore_errors=True)
        return result

    def _writer(self, path: str, mode: str) -> YWriter:
        kind = "gram X X^T" if self.request.symmetric else "out-of-core matmul A @ B"
        return YWriter(path, self.request.output_dataset, self.plan.out_shape, self.plan.dtype,
                       mode, symmetric=self.plan.symmetric,
                       producer=f"blockmatrix {kind} of {self.request.input_location}",
                       request=self.request.request_json)

    def _disk_full(self):
        """The one-line error of a run that ran out of space beside its output."""
        return hdf5.disk_full(
            os.path.dirname(os.path.abspath(self.request.output_path)), space_needed(self.plan),
            f"{self.request.output_location} (finished tiles, kept for --resume, and the "
            f"output)", param="output and tile")

    def _elapsed(self) -> float:
        return time.perf_counter() - self._start

    def _operands(self) -> tuple[Operand, Operand]:
        """Left and right operands of every tile: X and X read transposed for X X^T."""
        ops = tuple(op if op.is_zarr else dataclasses.replace(op, path=os.path.abspath(op.path))
                    for op in self.request.operands)
        if self.request.symmetric:
            return ops[0], dataclasses.replace(ops[0], transposed=not ops[0].transposed)
        return ops

    def _task_arguments(self) -> dict:
        """The keyword arguments of every tile's :func:`compute_tile`."""
        return dict(operands=self._operands(), dtype=self.plan.dtype, slab=self.plan.slab,
                    threads=self.plan.threads_per_task, work_dir=self.request.work_dir,
                    cache_bytes=self.plan.dataset_cache_bytes)

    def _compute_tiles(self) -> list[dict]:
        """Compute the missing tiles (in the background thread); return their task stats."""
        todo = list(self.plan.todo)
        if self.sc is None:
            return self._compute_here(todo)
        compute = functools.partial(compute_tile, **self._task_arguments())
        description = f"{self.request.kind}: {len(todo)} tiles of {self.request.input_location}"
        return _collect(self.sc.parallelize(todo, len(todo)).map(compute), description)

    def _compute_here(self, todo) -> list[dict]:
        """The tiles one after another in this process, every core on each, reading ahead.

        Stops at the first tile that could not be computed (its error is in its stats), and
        after the current slab when :meth:`_cancel` is called.
        """
        compute = functools.partial(compute_tile, **self._task_arguments(), prefetch=True,
                                    stop=self._stop)
        stats = []
        for tile in todo:
            stats.append(compute(tile))
            if "error" in stats[-1]:
                break
        return stats

    def _cancel(self) -> None:
        """Stop the tiles' computation; the pool's shutdown then waits for its end."""
        if self.sc is None:
            self._stop.set()
        else:
            self.sc.cancelAllJobs()

    def _compute(self) -> list[dict]:
        """Compute the missing tiles while watching them; return their task stats."""
        if not self.plan.todo:
            return []
        self.request.check_inputs_unchanged()
        with futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ooc-job") as pool:
            job = pool.submit(self._compute_tiles)
            try:
                self._watch(job)
            except BaseException:
                if not job.done():
                    self._cancel()
                raise
            try:
                stats = job.result()
            except Exception as exc:  # Spark's error, with the task's traceback in its text
                self._explain_failure(exc)
                raise
        if any(s.get("disk_full") for s in stats):
            raise self._disk_full()
        unwritten = [s["error"] for s in stats if s.get("write_error")]
        if unwritten:
            raise OutputNotWritableError(f"{unwritten[0]} (nothing was published)")
        failed = [s["error"] for s in stats if "error" in s]
        if failed:
            self._explain_failure(None)
            raise InvalidInputError(f"{failed[0]} (nothing was written to "
                                    f"{self.request.output_location})")
        return stats

    def _explain_failure(self, exc: Exception | None) -> None:
        """Raise a one-line error when the job failed on its inputs (changed or unreadable)."""
        for op, stamp in zip(self.request.operands, self.state.get("input_stamps", []),
                             strict=False):
            try:
                now = operand_stamp(op)
            except OSError:
                now = None
            if _plain(now) != _plain(stamp):
                raise InputChangedError(
                    f"input {op.path} changed while the tasks read it (size, mtime {stamp} -> "
                    f"{now}): nothing was written to {self.request.output_location}; restore "
                    f"it and run again (finished tiles are kept for --resume only if it is "
                    f"unchanged)") from None
        message = task_error_line(exc) if exc is not None else None
        if message is not None:
            raise InvalidInputError(message) from None

    def _watch(self, job: futures.Future) -> None:
        """Until ``job`` ends: stream finished tiles to a streaming writer, report progress."""
        while True:
            futures.wait([job], timeout=WATCH_INTERVAL)
            ended = job.done()  # before looking at the folder, so the last look sees every tile
            done = finished_tiles(self.request.work_dir, self.plan.tiles, self.plan.dtype)
            if self.writer is not None:
                self._write(done - self.written)
            self._report(done)
            if ended:
                return

    def _write(self, keys) -> None:
        """Write the finished tiles ``keys`` into Y, in tile order."""
        for key in sorted(keys):
            tile = self.tiles[key]
            self.writer.write_tile(tile, os.path.join(self.request.work_dir, tile.name))
            self.written.add(key)

    def _report(self, done: set) -> None:
        """Report progress when a tile finished since the last report, or it is time."""
        now = time.perf_counter()
        if self.progress is None or (len(done) == self._reported_done
                                     and now - self._last_report < self.progress_interval):
            return
        k = self.plan.k
        flops = sum(self.tiles[key].flops(k) for key in done - self.plan.done)
        flops += running_flops(self.request.work_dir, self.plan.todo, k, done)
        self.progress(GramProgress(len(done), len(self.plan.tiles), flops,
                                   self.plan.todo_flops, now - self._start))
        self._last_report, self._reported_done = now, len(done)

    def _finish(self) -> None:
        """Write the tiles not yet written and put Y in place.

        The state is marked ``finalizing`` (Y is ours to rewrite on resume) before the output
        file is touched.
        """
        finished = finished_tiles(self.request.work_dir, self.plan.tiles, self.plan.dtype)
        missing = set(self.tiles) - finished
        if missing:
            raise RuntimeError(f"tiles {sorted(missing)} were not computed: run again with resume")
        self.state.update(phase="finalizing", y_ours=True)
        write_state(self.request.work_dir, self.state)
        staged = self.writer is not None
        if not staged:
            self.writer = self._writer(self.request.output_path, "a")
        self._write(set(self.tiles) - self.written)
        writer, self.writer = self.writer, None
        writer.close()
        if staged:
            link_into_place(self.staged_path, self.request.output_path)

    def _abandon_writer(self) -> None:
        """Close the writer, if open, leaving Y marked incomplete (never published)."""
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        staged = writer.file.filename == self.staged_path
        if staged and hdf5.is_disk_full(OSError(), self.request.work_dir):
            # HDF5 cannot close a file whose last flush fails (it retries at exit and may
            # crash): the staged file is the run's own and resume starts it again, so give
            # its blocks back first.
            os.truncate(self.staged_path, 0)
        try:
            writer.close(complete=False)
        except (OSError, RuntimeError):
            if not staged:
                raise


#: The run of Y = X X^T (the symmetric case of :class:`OocRun`).
GramRun = OocRun


class ZarrOocRun(OocRun):
    """A run whose output is a Zarr array: the tasks write their tiles into it themselves.

    Each task writes its tile (for X X^T also the mirrored one) straight into the staging
    array (:func:`~blockmatrix.io.zarr_store.staged_output`), whole chunks no other task
    writes, then its done mark (:class:`~blockmatrix.ooc.zarrwork.ZarrWork`). The driver
    writes nothing but the resume state, which records the tiles as their marks appear, and
    publishes the array once every tile is in it. A killed run leaves the staging array and
    the marks, from which ``resume=True`` continues; nothing that looks like an array is at
    the target before the publication.
    """

    def __init__(self, *args, staged, **kwargs):
        super().__init__(*args, **kwargs)
        self.staged = staged
        self.work = self.request.zarr_work

    def run(self) -> GramResult:
        """Compute the missing tiles into the staging array and publish it. Call once."""
        self._start = time.perf_counter()
        result = GramResult(plan=self.plan, output=self.request.output_location,
                            reused=sorted(self.plan.done))
        stats = self._compute()
        result.task_stats = sorted(stats, key=lambda s: (s["i"], s["j"]))
        result.computed = [(s["i"], s["j"]) for s in result.task_stats]
        result.compute_seconds = self._elapsed()
        self._finish()
        result.seconds = self._elapsed()
        result.write_seconds = result.seconds - result.compute_seconds
        self.work.remove()
        return result

    def _task_arguments(self) -> dict:
        """Every tile's arguments: its task writes the tile into the staging array."""
        return {**super()._task_arguments(), "work_dir": self.work.local_dir,
                "zarr_output": self.staged.staging_url, "zarr_marks": self.work.url,
                "symmetric": self.plan.symmetric}

    def _watch(self, job: futures.Future) -> None:
        """Until ``job`` ends: record the tiles whose marks appeared, report progress."""
        while True:
            futures.wait([job], timeout=WATCH_INTERVAL)
            ended = job.done()
            done = self.work.finished(self.plan.tiles) | set(self.plan.done)
            self._record(done)
            self._report(done)
            if ended:
                return

    def _record(self, done: set) -> None:
        """Write the finished tiles into the resume state when new ones appeared."""
        recorded = {tuple(t) for t in self.state.get("tiles_done", [])}
        if done - recorded:
            self.state["tiles_done"] = sorted([list(t) for t in done | recorded])
            self.work.write_state(self.state)

    def _report(self, done: set) -> None:
        if self.work.local_dir is not None:
            super()._report(done)
            return
        # No progress notes on object storage: the finished tiles' work only.
        now = time.perf_counter()
        if self.progress is None or (len(done) == self._reported_done
                                     and now - self._last_report < self.progress_interval):
            return
        flops = sum(self.tiles[key].flops(self.plan.k) for key in done - self.plan.done)
        self.progress(GramProgress(len(done), len(self.plan.tiles), flops,
                                   self.plan.todo_flops, now - self._start))
        self._last_report, self._reported_done = now, len(done)

    def _finish(self) -> None:
        """Check that every tile is in the staging array, then publish it."""
        done = self.work.finished(self.plan.tiles) | set(self.plan.done)
        self._record(done)
        missing = set(self.tiles) - done
        if missing:
            raise RuntimeError(f"tiles {sorted(missing)} were not computed: run again with resume")
        self.staged.extra_attributes = {ZARR_REQUEST_ATTR: self.request.request_json}
        self.staged.publish()


def run_zarr_request(sc, request: OocRequest, plan, progress, progress_interval) -> GramResult:
    """Run a checked request whose output is Zarr, its lock held and its plan made.

    The staging array of an interrupted run is kept when resuming (its tiles are in it); when
    it is gone or does not match, every tile is computed again.
    """
    from ..io import zarr_store

    chunks = output_chunks(request, plan)
    if request.state is not None:
        chunks = tuple(request.state.get("chunks", chunks))
        probe = zarr_store.StagedOutput(request.output_zarr, plan.out_shape, plan.dtype, chunks)
        if not probe.staging_matches():
            plan = dataclasses.replace(plan, done=frozenset())
            request = dataclasses.replace(request, state=None)
    state = start_state(request, plan)
    kind = "gram X X^T" if request.symmetric else "out-of-core matmul A @ B"
    with zarr_store.staged_output(
            request.output_zarr, plan.out_shape, plan.dtype, chunks,
            overwrite=request.overwrite, producer=f"blockmatrix {kind} of "
            f"{request.input_location}", job="gram" if request.symmetric else
            "out-of-core multiply", param="output", resume=True, take_lock=False) as staged:
        return ZarrOocRun(sc, request, plan, state, progress, progress_interval,
                          staged=staged).run()


def space_needed(plan) -> int:
    """Bytes a run still writes beside its output: its tiles to compute and the output.

    Both are on disk at once at the end: the tiles are removed only once the output is in
    place (a new output is staged in the work folder, an existing file's output in a staging
    dataset beside the old one).
    """
    itemsize = np.dtype(plan.dtype).itemsize
    tiles = sum(t.rows * t.cols for t in plan.todo) * itemsize
    rows, cols = plan.out_shape
    return int(tiles + rows * cols * itemsize)


def spark_slots(sc) -> tuple[int, int]:
    """Task slots and BLAS threads per task of a SparkContext.

    Threads per task is ``spark.task.cpus`` (default 1) and slots are the default parallelism
    divided by it, so that tasks x threads = cores.
    """
    threads = max(1, int(sc.getConf().get("spark.task.cpus", "1")))
    return max(1, sc.defaultParallelism // threads), threads


def run_request(sc, request: OocRequest, progress: Callable[[GramProgress], None] | None = None,
                on_plan: Callable | None = None, progress_interval: float = 5.0,
                cores: int | None = None) -> GramResult:
    """Run a checked request: take the output's lock, plan, start the state, run, clean up.

    Parameters
    ----------
    sc : pyspark.SparkContext or None
        Its task slots and ``spark.task.cpus`` set the tasks at once and their BLAS threads.
        None computes the tiles in this process, one at a time on ``cores`` BLAS threads.
    request : OocRequest
        From :func:`~blockmatrix.ooc.request.check_gram_request` or
        :func:`~blockmatrix.ooc.request.check_matmul_request`.
    progress : callable, optional
        Called with a :class:`GramProgress` when a tile finishes and every
        ``progress_interval`` seconds.
    on_plan : callable, optional
        Called with the plan before any task starts.
    progress_interval : float
        Seconds between progress reports.
    cores : int, optional
        With ``sc`` None: BLAS threads (default :func:`usable_cores`).

    Returns
    -------
    GramResult
    """
    if sc is None:
        threads = usable_cores() if cores is None else check_positive(cores, "cores")
        slots, runner = 1, "local"
    else:
        (slots, threads), runner = spark_slots(sc), "spark"
    job = "gram" if request.symmetric else "out-of-core multiply"
    guard = (output_lock(request.lock_path, request.output_path, job=job)
             if request.lock_path else contextlib.nullcontext())
    with guard:
        plan = plan_request(request, slots, threads, runner)
        if request.complete:
            return GramResult(plan=plan, output=request.output_location, complete=True,
                              note=request.note)
        if on_plan is not None:
            on_plan(plan)
        warn_if_blas_unpinned(plan.threads_per_task)
        request.check_inputs_unchanged()
        if request.output_zarr is not None:
            return run_zarr_request(sc, request, plan, progress, progress_interval)
        hdf5.check_space(os.path.dirname(os.path.abspath(request.output_path)),
                         space_needed(plan), f"{request.output_location} (its tiles and the "
                         f"output)", param="output and tile")
        state = start_state(request, plan)
        return OocRun(sc, request, plan, state, progress, progress_interval).run()
