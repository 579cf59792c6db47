"""The command-line jobs as library entry points.

Each module has ``main(argv) -> int`` (raises :class:`blockmatrix.errors.BlockMatrixError` on bad
input) and ``cli(argv) -> int`` (the same with a refusal as one stderr line and exit code 2).
``setup.py`` installs them as console scripts (``blockmatrix-multiply``, ``blockmatrix-gram``,
``blockmatrix-plan``, ``blockmatrix-make-sample``); ``jobs/multiply.py`` etc. in a checkout are
thin scripts over the same functions. Spark starts from the packaged defaults
(:func:`blockmatrix.session.spark_context`), so none of them needs the checkout.
"""
