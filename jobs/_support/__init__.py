"""Plumbing the benchmark jobs share, kept out of the ``blockmatrix`` package.

``memory`` samples the resident memory and CPU time of the job's whole process tree (it needs
``psutil``, which the library does not); ``processes`` times child processes. The one-line
argument errors every job uses are in the package (:mod:`blockmatrix.cli.common`), as the
installed console scripts need them. Every job runs as ``python jobs/X.py`` or
``spark-submit jobs/X.py``, so Python puts ``jobs/`` on ``sys.path`` and
``from _support.memory import ...`` resolves; only the driver imports these modules, so nothing
here needs shipping to executors with ``--py-files``.
"""
