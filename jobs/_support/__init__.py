"""Plumbing the command-line jobs share, kept out of the ``blockmatrix`` package.

``cli`` gives one-line argument errors with exit code 2; ``memory`` samples the resident memory
and CPU time of the job's whole process tree (it needs ``psutil``, which the library does not).
Every job runs as ``python jobs/X.py`` or ``spark-submit jobs/X.py``, so Python puts ``jobs/`` on
``sys.path`` and ``from _support.cli import ...`` resolves; only the driver imports these
modules, so nothing here needs shipping to executors with ``--py-files``.
"""
