"""What-if planning of ``A @ B`` for a cluster you do not have: no data, no Spark.

Usage::

    python jobs/plan.py --a 262144x262144 --b 262144x262144 --block 2048 --cores 512
        --task-memory 8g [--density D] [--strategy S] [--seed N] [--partitions N]
        [--network-rate BYTES_PER_CORE_S] [--disk-rate BYTES_PER_CORE_S]
        [--flops-rate FLOPS_PER_CORE_S] [--max-block-products N]

Prints :func:`blockmatrix.explain.explain_product`'s report: every strategy's shuffles, task
memory, predicted seconds at the stated rates (defaults: :mod:`blockmatrix.cost`'s), the
communication lower bound and each plan's ratio to it. Bad sizes print one line on stderr and
exit with code 2.
"""

from __future__ import annotations

import argparse
import time

from blockmatrix.cli.common import OneLineArgumentParser, positive_int, program, run
from blockmatrix.explain import DEFAULT_MAX_BLOCK_PRODUCTS, explain_product, parse_shape
from blockmatrix.units import parse_memory

PROG = "plan.py"


def shape(text: str) -> tuple[int, int]:
    """An argparse type: ``ROWSxCOLS``."""
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def memory(text: str) -> int:
    """An argparse type: a positive memory size (``8g``, ``512m``, bytes)."""
    try:
        value = parse_memory(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 8g") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive memory size")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive")
    return value


def parser() -> OneLineArgumentParser:
    """The command line."""
    p = OneLineArgumentParser(prog=program(PROG), description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=shape, required=True, help="shape of A, ROWSxCOLS")
    p.add_argument("--b", type=shape, required=True, help="shape of B, ROWSxCOLS")
    p.add_argument("--block", type=positive_int, required=True, help="rows = columns of a block")
    p.add_argument("--cores", type=positive_int, required=True, help="tasks run at once")
    p.add_argument("--task-memory", type=memory, required=True,
                   help="memory of a task for its data (8g, 512m)")
    p.add_argument("--density", type=positive_float, default=1.0,
                   help="share of blocks stored (block-sparse, seeded); default 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the block pattern")
    p.add_argument("--strategy", help="plan only this strategy")
    p.add_argument("--partitions", type=positive_int, help="result partitions (default cores)")
    p.add_argument("--network-rate", type=positive_float,
                   help="shuffle bytes per core-second")
    p.add_argument("--disk-rate", type=positive_float, help="file read bytes per core-second")
    p.add_argument("--flops-rate", type=positive_float, help="dense flops per core-second")
    p.add_argument("--max-block-products", type=positive_int,
                   default=DEFAULT_MAX_BLOCK_PRODUCTS,
                   help="above this many block triples only linear planners run")
    return p


def main(argv=None) -> int:
    """Parse, plan, print; 0 on success."""
    args = parser().parse_args(argv)
    rates = {name: value for name, value in (
        ("network_bytes_per_core_s", args.network_rate),
        ("disk_bytes_per_core_s", args.disk_rate),
        ("dense_flops_per_core_s", args.flops_rate)) if value is not None}
    started = time.perf_counter()
    report = explain_product(args.a, args.b, args.block, cores=args.cores,
                             task_memory=args.task_memory, density=args.density, seed=args.seed,
                             strategy=args.strategy, num_partitions=args.partitions,
                             max_block_products=args.max_block_products, **rates)
    print(report)
    print(f"planned in {time.perf_counter() - started:.2f} s, no data, no Spark")
    return 0


def cli(argv=None) -> int:
    """The command line: ``main(argv)`` with refusals as one stderr line and exit code 2."""
    return run(main, argv, program(PROG))
