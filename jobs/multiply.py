"""``python jobs/multiply.py ...``: the checkout's way to run :mod:`blockmatrix.cli.multiply`.

Installed, the same job is the console script ``blockmatrix-multiply``. Usage and flags:
``python jobs/multiply.py --help``.
"""

import sys

from blockmatrix.cli.multiply import *  # noqa: F403 (tests and the benchmark use its names)
from blockmatrix.cli.multiply import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
