"""``auto``: plan every candidate strategy, run the one predicted to finish first within budget.

The candidates are the registered strategies that allow it (:func:`.registry.candidate_strategies`),
each with its default options plus the variants it offers (``inner`` offers its inner dimension
striped over idle cores when the result has fewer partitions than there are cores). Every plan
is ranked by its predicted seconds on :attr:`MultiplyOptions.cores` task slots
(:func:`blockmatrix.cost.predicted_seconds`, whose docstring states the cost model).

A plan *fits* when :meth:`~blockmatrix.plan.MultiplyPlan.fits` the memory budget (its largest
task and, for ``broadcast``, the operand it broadcasts). Among the plans that fit, the least
predicted time wins; ties go to fewer shuffles, then to the registry order. When none fits,
the plan with the smallest task memory is taken, the reason says so and a
:class:`~blockmatrix.errors.PerformanceWarning` is issued. The chosen plan keeps its own
strategy's name and type (``C.plan.strategy``); its ``reason`` says why and its
``candidates`` list every plan weighed. The choice is also logged (logger
``blockmatrix.strategies.auto``, level INFO).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable

from .. import cost
from ..errors import PerformanceWarning
from ..layout import BlockLayout, check_multiplicable
from ..plan import Candidate, MultiplyOptions, MultiplyPlan
from ..units import format_bytes
from .registry import STRATEGIES, Strategy, candidate_strategies, get_strategy, register

log = logging.getLogger(__name__)


def candidate_plans(left: BlockLayout, right: BlockLayout, options: MultiplyOptions,
                    planned: dict[str, MultiplyPlan] | None = None) -> dict[str, MultiplyPlan]:
    """The plan of every candidate, keyed by a label: the strategy's name, or its variant's.

    Plans already made with the same operands and options (``planned``, by strategy name) are
    reused.
    """
    planned = planned or {}
    plans: dict[str, MultiplyPlan] = {}
    for strategy in candidate_strategies():
        plans[strategy.name] = planned.get(strategy.name) or strategy.plan(left, right, options)
        if strategy.variants is not None:
            for label, variant in strategy.variants(left, right, options).items():
                plans[label] = strategy.plan(left, right, variant)
    return plans


def _summary(plan: MultiplyPlan, cores: int) -> str:
    return (f"{plan.predicted_seconds(cores):.2f} s: {format_bytes(plan.moved_bytes)} moved, "
            f"{plan.num_shuffles} shuffle(s), busiest task {plan.max_task_compute_seconds:.2f} s "
            f"of compute")


def _passed_over(label: str, plan: MultiplyPlan) -> str:
    if plan.unavailable:
        return f"{label} ({plan.unavailable})"
    broadcast = (f", broadcast {format_bytes(plan.broadcast_bytes)}"
                 if plan.broadcast_bytes else "")
    return f"{label} ({format_bytes(plan.max_task_memory_bytes)} per task{broadcast})"


def choose(plans: dict[str, MultiplyPlan], budget: int, cores: int = 1,
           exit_seconds: Callable[[MultiplyPlan], float] | None = None) -> tuple[str, str]:
    """``(label, reason)`` of the plan ``auto`` picks among ``plans`` (labels as given).

    ``exit_seconds``, when given, adds what it costs to bring a plan's product where it goes
    (:func:`plan_to_file`).
    """
    order = {name: n for n, name in enumerate(STRATEGIES)}

    def seconds(p: MultiplyPlan) -> float:
        return p.predicted_seconds(cores) + (exit_seconds(p) if exit_seconds else 0.0)

    def rank(label):
        p = plans[label]
        return seconds(p), p.num_shuffles, order.get(p.strategy, len(order))

    fitting = [n for n in plans if plans[n].fits(budget)]
    refused = [n for n in plans if n not in fitting]
    if fitting:
        best = min(fitting, key=rank)
        others = sorted((n for n in fitting if n != best), key=rank)
        reason = (f"{best}: least predicted time ({_summary(plans[best], cores)}) on {cores} "
                  f"core(s) among plans within the {format_bytes(budget)} task memory budget")
        if others:
            reason += "; next " + ", ".join(f"{n} {seconds(plans[n]):.2f} s" for n in others)
        over = [n for n in refused if not plans[n].unavailable]
        if over:
            reason += "; over budget: " + ", ".join(_passed_over(n, plans[n]) for n in over)
        if len(over) < len(refused):
            reason += "; not possible: " + ", ".join(
                _passed_over(n, plans[n]) for n in refused if plans[n].unavailable)
        return best, reason
    possible = [n for n in plans if not plans[n].unavailable] or list(plans)
    best = min(possible, key=lambda n: (plans[n].max_task_memory_bytes, rank(n)))
    return best, (f"{best}: no plan fits the {format_bytes(budget)} task memory budget; "
                  f"{best} needs the least per task "
                  f"({format_bytes(plans[best].max_task_memory_bytes)}): raise "
                  f"memory_budget_bytes or use smaller blocks")


def candidates_of(plans: dict[str, MultiplyPlan], options: MultiplyOptions) -> tuple:
    """What ``auto`` weighed, one :class:`~blockmatrix.plan.Candidate` per plan."""
    return tuple(Candidate(label, p.strategy, p.predicted_seconds(options.cores), p.moved_bytes,
                           p.num_shuffles, p.max_task_memory_bytes,
                           p.fits(options.budget_bytes))
                 for label, p in plans.items())


def plan(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> MultiplyPlan:
    """Plan every candidate and return the chosen one, its ``reason`` filled in."""
    check_multiplicable(left, right)
    plans = candidate_plans(left, right, options)
    label, reason = choose(plans, options.budget_bytes, options.cores)
    log.info("auto multiply strategy: %s", reason)
    if not plans[label].fits(options.budget_bytes):
        warnings.warn(f"auto: {reason}", PerformanceWarning, stacklevel=2)
    return dataclasses.replace(plans[label], reason=reason,
                               candidates=candidates_of(plans, options))


def plan_to_file(left: BlockLayout, right: BlockLayout, options: MultiplyOptions) -> MultiplyPlan:
    """The plan auto picks for a product written to a file (``to_hdf5``), its reason filled in.

    As :func:`plan`, but every plan except ``ooc``'s also pays the product's trip to the
    driver's single writer (:func:`blockmatrix.cost.driver_exit_seconds`): ``ooc``'s tasks
    write file to file. The reason says so.
    """
    plans = candidate_plans(left, right, options)

    def exit_seconds(p: MultiplyPlan) -> float:
        return 0.0 if p.strategy == "ooc" else cost.driver_exit_seconds(p)

    label, reason = choose(plans, options.budget_bytes, options.cores, exit_seconds)
    chosen = plans[label]
    if chosen.strategy == "ooc":
        reason += ("; written to a file: ooc goes file to file, every other plan pays C's trip "
                   "to the driver's writer")
    else:
        reason += (f"; written to a file: {label}'s time includes "
                   f"{exit_seconds(chosen):.2f} s of C's trip to the driver's writer")
    log.info("auto multiply strategy, written to a file: %s", reason)
    return dataclasses.replace(plans[label], reason=reason,
                               candidates=candidates_of(plans, options))


def execute(plan: MultiplyPlan, left, right, options: MultiplyOptions):
    """Run the chosen plan with its own strategy."""
    return get_strategy(plan.strategy).execute(plan, left, right, options)


STRATEGY = register(Strategy(
    name="auto", plan=plan, execute=execute, plan_type=MultiplyPlan,
    summary="the cheapest plan within the memory budget (says which and why)",
    auto_candidate=False, selector=True))
