"""``python jobs/gram.py ...``: the checkout's way to run :mod:`blockmatrix.cli.gram`.

Installed, the same job is the console script ``blockmatrix-gram``. Usage and flags:
``python jobs/gram.py --help``.
"""

import sys

from blockmatrix.cli.gram import *  # noqa: F403 (tests and the benchmark use its names)
from blockmatrix.cli.gram import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
