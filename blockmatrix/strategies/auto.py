"""``auto``: plan every strategy, run the cheapest one that fits the memory budget.

Cost model (bytes moved, from the plans alone):

- a shuffle costs its predicted bytes (written once, read once: the same factor for all);
- a broadcast costs the broadcast operand's bytes twice (collected to the driver, then sent to
  the executors, where torrent broadcast shares it), plus the shuffle of partial sums when a
  block row of the larger operand is split over partitions.

A plan *fits* when its largest task memory is within ``memory_budget_bytes`` (and, for
``broadcast``, when the broadcast operand is). Among the plans that fit, the least cost wins;
ties go to fewer shuffles, then to the registry order ``inner, broadcast, outer, pasa``. When
none fits, the plan with the smallest task memory is taken and the reason says so. The chosen
plan keeps its strategy's name (``C.plan.strategy``), its ``reason`` says why, and
``details["candidates"]`` holds every candidate's cost; the choice is also logged (logger
``blockmatrix.strategies.auto``, level INFO).
"""

from __future__ import annotations

import dataclasses
import logging

from ..planner import BlockLayout, MultiplyPlan, check_multiplicable, format_bytes
from .base import MultiplyOptions

log = logging.getLogger(__name__)

#: Candidates, in tie-break order.
CANDIDATES = ("inner", "broadcast", "outer", "pasa")


def cost_bytes(plan: MultiplyPlan) -> int:
    """Predicted bytes moved by a plan (shuffles, plus twice a broadcast operand)."""
    return plan.shuffle_bytes + 2 * plan.details.get("broadcast_bytes", 0) \
        if plan.strategy == "broadcast" else plan.shuffle_bytes


def fits(plan: MultiplyPlan, budget: int) -> bool:
    """Whether a plan's largest task (and broadcast operand) stays within ``budget`` bytes."""
    if plan.strategy == "broadcast" and not plan.details["fits_budget"]:
        return False
    return plan.max_task_memory_bytes <= budget


def candidate_plans(left: BlockLayout, right: BlockLayout,
                    options: MultiplyOptions) -> dict[str, MultiplyPlan]:
    """The plan of every candidate strategy."""
    from . import get_strategy

    return {name: get_strategy(name).plan(left, right, options) for name in CANDIDATES}


def choose(plans: dict[str, MultiplyPlan], budget: int) -> tuple[str, str]:
    """``(name, reason)`` of the plan ``auto`` picks among ``plans``."""
    order = {name: n for n, name in enumerate(CANDIDATES)}

    def rank(name):
        p = plans[name]
        return cost_bytes(p), p.num_shuffles, order.get(name, len(order))

    fitting = [n for n in plans if fits(plans[n], budget)]
    refused = [n for n in plans if n not in fitting]
    if fitting:
        best = min(fitting, key=rank)
        others = sorted((n for n in fitting if n != best), key=rank)
        reason = (f"{best}: least predicted data movement "
                  f"({format_bytes(cost_bytes(plans[best]))}, {plans[best].num_shuffles} "
                  f"shuffle(s)) among plans within the {format_bytes(budget)} task memory budget")
        if others:
            reason += "; next " + ", ".join(
                f"{n} {format_bytes(cost_bytes(plans[n]))}" for n in others)
        if refused:
            reason += "; over budget: " + ", ".join(
                f"{n} ({format_bytes(plans[n].max_task_memory_bytes)} per task"
                + (f", broadcast {format_bytes(plans[n].details['broadcast_bytes'])}"
                   if n == "broadcast" else "") + ")" for n in refused)
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
    name, reason = choose(plans, options.budget_bytes)
    log.info("auto multiply strategy: %s", reason)
    chosen = plans[name]
    details = dict(chosen.details)
    details["chosen_by"] = "auto"
    details["candidates"] = {n: {"cost_bytes": cost_bytes(p), "shuffles": p.num_shuffles,
                                 "max_task_memory_bytes": p.max_task_memory_bytes,
                                 "fits": fits(p, options.budget_bytes)}
                             for n, p in plans.items()}
    return dataclasses.replace(chosen, details=details, reason=reason)


def execute(plan: MultiplyPlan, left, right, options: MultiplyOptions):
    """Run the chosen plan with its own strategy."""
    from . import get_strategy

    return get_strategy(plan.strategy).execute(plan, left, right, options)
