"""``python jobs/plan.py ...``: the checkout's way to run :mod:`blockmatrix.cli.plan`.

Installed, the same job is the console script ``blockmatrix-plan``. Usage and flags:
``python jobs/plan.py --help``.
"""

import sys

from blockmatrix.cli.plan import *  # noqa: F403 (tests and the benchmark use its names)
from blockmatrix.cli.plan import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
