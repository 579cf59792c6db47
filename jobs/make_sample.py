"""``python jobs/make_sample.py ...``: the checkout's way to run :mod:`blockmatrix.cli.make_sample`.

Installed, the same job is the console script ``blockmatrix-make-sample``. Usage and flags:
``python jobs/make_sample.py --help``.
"""

import sys

from blockmatrix.cli.make_sample import *  # noqa: F403 (tests and the benchmark use its names)
from blockmatrix.cli.make_sample import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
