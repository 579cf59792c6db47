"""``auto``: plan every strategy, run the one predicted to finish first within the budget.

Cost model (predicted seconds, from the plans alone; the rates are the reference machine's,
fitted to the dense and long-inner rows of ``jobs/benchmark.py`` as the README's
"Performance" section shows, where they predict the measured times within about 15%):

- every stage costs :data:`STAGE_SECONDS` (scheduling, starting the tasks' Python pipelines);
  a plan has one stage more than it has shuffles, and ``broadcast`` one more for its collect;
  every shuffle costs :data:`SHUFFLE_SECONDS` more (its files, fetches and Python workers on
  both sides), however few bytes it moves;
- a shuffle's predicted bytes move at :data:`SHUFFLE_BYTES_PER_CORE_S` per core: pickled by
  a Python worker, written and read back by the JVM, unpickled by another worker;
- a broadcast operand moves at :data:`BROADCAST_BYTES_PER_S`, once, through the driver
  (collected, pickled to a file, read by each worker);
- compute takes ``max(busiest task, all products / cores)`` seconds
  (:attr:`MultiplyPlan.max_task_compute_seconds`, :attr:`~MultiplyPlan.compute_seconds`), so a
  plan whose work sits in fewer tasks than there are cores pays for the idle ones.

``cores`` is :attr:`MultiplyOptions.num_cores` (``multiply`` passes Spark's
``defaultParallelism``). When the result has fewer partitions than there are cores and no
``num_mid_splits`` was asked for, ``inner`` is also planned with the inner dimension striped
over enough sub-reducers to occupy every core (Spark's ``numMidDimSplits``).

A plan *fits* when its largest task memory is within ``memory_budget_bytes`` (and, for
``broadcast``, when the broadcast operand is). Among the plans that fit, the least predicted
time wins; ties go to fewer shuffles, then to the registry order ``inner, broadcast, outer,
pasa``. When none fits, the plan with the smallest task memory is taken and the reason says
so. The chosen plan keeps its strategy's name (``C.plan.strategy``), its ``reason`` says why,
and ``details["candidates"]`` holds every candidate's predicted time and bytes moved; the
choice is also logged (logger ``blockmatrix.strategies.auto``, level INFO).
"""

from __future__ import annotations

import dataclasses
import logging

from ..planner import BlockLayout, MultiplyPlan, check_multiplicable, format_bytes
from .base import MultiplyOptions

log = logging.getLogger(__name__)

#: Candidates, in tie-break order.
CANDIDATES = ("inner", "broadcast", "outer", "pasa")

#: Fixed cost of one stage, seconds.
STAGE_SECONDS = 0.1
#: Fixed cost of one shuffle on top of its stages, seconds.
SHUFFLE_SECONDS = 0.15
#: Shuffle throughput per core (Python pickling, JVM shuffle write and read, unpickling).
SHUFFLE_BYTES_PER_CORE_S = 60e6
#: Broadcast throughput (through the driver, serial).
BROADCAST_BYTES_PER_S = 90e6


def broadcast_bytes(plan: MultiplyPlan) -> int:
    """Bytes a plan broadcasts (0 unless it is a ``broadcast`` plan)."""
    return plan.details.get("broadcast_bytes", 0) if plan.strategy == "broadcast" else 0


def cost_bytes(plan: MultiplyPlan) -> int:
    """Predicted bytes moved by a plan: its shuffles plus its broadcast operand."""
    return plan.shuffle_bytes + broadcast_bytes(plan)


def predicted_seconds(plan: MultiplyPlan, cores: int) -> float:
    """Predicted wall time of a plan on ``cores`` task slots (see the module's cost model).

    >>> from blockmatrix.planner import BlockLayout
    >>> from blockmatrix.strategies import MultiplyOptions, get_strategy
    >>> lay = BlockLayout((2048, 2048), 1024, 1024, {(i, j): 8 << 20 for i in range(2)
    ...                                              for j in range(2)})
    >>> inner = get_strategy("inner").plan(lay, lay, MultiplyOptions(num_partitions=4))
    >>> round(predicted_seconds(inner, 2), 2)  # 2 stages, 1 shuffle, 128 MiB, 17 GFLOP
    1.68
    """
    cores = max(1, cores)
    stages = plan.num_shuffles + 1 + (1 if broadcast_bytes(plan) else 0)
    return (stages * STAGE_SECONDS + plan.num_shuffles * SHUFFLE_SECONDS
            + plan.shuffle_bytes / (SHUFFLE_BYTES_PER_CORE_S * cores)
            + broadcast_bytes(plan) / BROADCAST_BYTES_PER_S
            + max(plan.max_task_compute_seconds, plan.compute_seconds / cores))


def fits(plan: MultiplyPlan, budget: int) -> bool:
    """Whether a plan's largest task (and broadcast operand) stays within ``budget`` bytes."""
    if plan.strategy == "broadcast" and not plan.details["fits_budget"]:
        return False
    return plan.max_task_memory_bytes <= budget


def candidate_plans(left: BlockLayout, right: BlockLayout, options: MultiplyOptions,
                    planned: dict[str, MultiplyPlan] | None = None) -> dict[str, MultiplyPlan]:
    """The plan of every candidate strategy, keyed by a label.

    Labels are the strategy names, plus ``"inner, s mid splits"`` when the result has fewer
    partitions than ``options.cores`` and ``options.num_mid_splits`` is 1. Plans already made
    with the same operands and options (``planned``, by strategy name) are reused.
    """
    from .registry import get_strategy

    planned = planned or {}
    plans = {name: planned[name] if name in planned
             else get_strategy(name).plan(left, right, options) for name in CANDIDATES}
    tasks = plans["inner"].details["grid"].num_partitions
    if options.num_mid_splits == 1 and tasks < options.cores:
        s = -(-options.cores // tasks)
        plans[f"inner, {s} mid splits"] = get_strategy("inner").plan(
            left, right, dataclasses.replace(options, num_mid_splits=s))
    return plans


def choose(plans: dict[str, MultiplyPlan], budget: int, cores: int = 1) -> tuple[str, str]:
    """``(label, reason)`` of the plan ``auto`` picks among ``plans`` (labels as given)."""
    order = {name: n for n, name in enumerate(CANDIDATES)}

    def rank(label):
        p = plans[label]
        return predicted_seconds(p, cores), p.num_shuffles, order.get(p.strategy, len(order))

    def summary(label):
        p = plans[label]
        return (f"{predicted_seconds(p, cores):.2f} s: {format_bytes(cost_bytes(p))} moved, "
                f"{p.num_shuffles} shuffle(s), busiest task {p.max_task_compute_seconds:.2f} s "
                f"of compute")

    fitting = [n for n in plans if fits(plans[n], budget)]
    refused = [n for n in plans if n not in fitting]
    if fitting:
        best = min(fitting, key=rank)
        others = sorted((n for n in fitting if n != best), key=rank)
        reason = (f"{best}: least predicted time ({summary(best)}) on {cores} core(s) among "
                  f"plans within the {format_bytes(budget)} task memory budget")
        if others:
            reason += "; next " + ", ".join(
                f"{n} {predicted_seconds(plans[n], cores):.2f} s" for n in others)
        if refused:
            reason += "; over budget: " + ", ".join(
                f"{n} ({format_bytes(plans[n].max_task_memory_bytes)} per task"
                + (f", broadcast {format_bytes(broadcast_bytes(plans[n]))}"
                   if plans[n].strategy == "broadcast" else "") + ")" for n in refused)
        return best, reason
    best = min(plans, key=lambda n: (plans[n].max_task_memory_bytes, rank(n)))
    return best, (f"{best}: no plan fits the {format_bytes(budget)} task memory budget; "
                  f"{best} needs the least per task "
                  f"({format_bytes(plans[best].max_task_memory_bytes)}): raise "
                  f"memory_budget_bytes or use smaller blocks")


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> MultiplyPlan:
    """Plan every candidate and return the chosen one, its ``reason`` filled in."""
    check_multiplicable(left, right)
    plans = candidate_plans(left, right, options)
    label, reason = choose(plans, options.budget_bytes, options.cores)
    log.info("auto multiply strategy: %s", reason)
    chosen = plans[label]
    details = dict(chosen.details)
    details["chosen_by"] = "auto"
    details["candidates"] = {
        n: {"predicted_seconds": predicted_seconds(p, options.cores),
            "cost_bytes": cost_bytes(p), "shuffles": p.num_shuffles,
            "max_task_memory_bytes": p.max_task_memory_bytes,
            "fits": fits(p, options.budget_bytes)}
        for n, p in plans.items()}
    return dataclasses.replace(chosen, details=details, reason=reason)


def execute(plan: MultiplyPlan, left, right, options: MultiplyOptions):
    """Run the chosen plan with its own strategy."""
    from .registry import get_strategy

    return get_strategy(plan.strategy).execute(plan, left, right, options)
