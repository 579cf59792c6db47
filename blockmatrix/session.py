"""Creating a SparkContext for jobs, tests and notebooks.

Library code never creates a context: it takes the one its caller made. Jobs, tests and notebooks
call :func:`spark_context`, which reuses the context of ``spark-submit`` when there is one and
otherwise starts embedded local Spark configured from ``conf/`` (``spark-defaults.conf`` and the
quiet ``log4j2.properties``), with the Python workers running the driver's own interpreter.
``conf/`` is the source checkout's; an installed package carries the same two files as package
data (``setup.py`` builds them from the checkout's ``conf/`` into ``blockmatrix/conf/``).

An embedded local job listens on the loopback address alone: the driver, its block manager
and the Spark UI (which Spark binds to ``SPARK_LOCAL_IP``, or to every interface without it),
and the UI cannot kill jobs (``spark.ui.killEnabled false``). Set ``SPARK_LOCAL_IP`` (or pass
``spark.driver.bindAddress``) yourself to listen elsewhere.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

#: The address an embedded local job listens on.
LOOPBACK = "127.0.0.1"

#: The ``conf/`` folder of a source checkout (jobs, tests and notebooks live beside it).
REPO_CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

#: The same files shipped inside an installed package (absent in a checkout).
PACKAGED_CONF_DIR = Path(__file__).resolve().parent / "conf"


def default_conf_dir() -> Path:
    """The folder :func:`spark_context` reads its defaults from when given none.

    An installed package's own copy first (``site-packages/conf`` is no checkout), else the
    checkout's ``conf/``.
    """
    return PACKAGED_CONF_DIR if PACKAGED_CONF_DIR.is_dir() else REPO_CONF_DIR


def under_spark_submit() -> bool:
    """Whether this driver was started by ``spark-submit`` (its JVM is already running)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: ``local``, ``local[N]``, ``local[*]`` and ``local[N, maxFailures]`` (group 1: N or *).
LOCAL_MASTER = re.compile(r"local(?:\[\s*(\*|\d+)\s*(?:,\s*\d+\s*)?\])?")


def local_master_cores(master: str | None) -> int | None:
    """The cores of an embedded local master, or None for a cluster or under spark-submit.

    ``master`` as :func:`spark_context` takes it (None: ``local[*]``). Under spark-submit the
    master is spark-submit's, not this one: None.

    >>> [local_master_cores(m) for m in ("local", "local[3]", "local[2, 4]", "spark://h:7077")]
    [1, 3, 2, None]
    >>> local_master_cores(None) == local_master_cores("local[*]") == usable_cores()
    True
    """
    if under_spark_submit():
        return None
    match = LOCAL_MASTER.fullmatch((master or "local[*]").strip())
    if match is None:
        return None
    if match.group(1) is None:
        return 1
    return usable_cores() if match.group(1) == "*" else max(1, int(match.group(1)))


def read_properties(path: str | os.PathLike) -> dict[str, str]:
    r"""Read a Spark properties file (``key value`` or ``key=value`` lines, ``#`` comments).

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
    ...     _ = f.write("# comment\nspark.a   1\nspark.b=two words\n\n")
    >>> read_properties(f.name)
    {'spark.a': '1', 'spark.b': 'two words'}
    >>> os.unlink(f.name)
    """
    props: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        if "=" in line and (" " not in line or line.index("=") < line.index(" ")):
            key, _, value = line.partition("=")
        else:
            key, _, value = line.partition(" ")
        props[key.strip()] = value.strip()
    return props


def spark_context(master: str | None = None, app_name: str = "blockmatrix",
                  conf_dir: str | os.PathLike | None = None,
                  extra_conf: dict[str, str] | None = None):
    """Return the running SparkContext, or start embedded local Spark.

    Parameters
    ----------
    master : str, optional
        Spark master URL. Ignored under ``spark-submit`` (its ``--master`` wins); otherwise the
        default is ``local[*]``.
    app_name : str
        Application name shown in the Spark UI.
    conf_dir : path, optional
        Folder holding ``spark-defaults.conf`` and ``log4j2.properties``; defaults to
        :func:`default_conf_dir` (the installed package's copy, or the checkout's ``conf/``).
    extra_conf : dict, optional
        Properties that override the defaults file.

    Returns
    -------
    pyspark.SparkContext
    """
    from pyspark import SparkConf, SparkContext

    conf_path = Path(conf_dir) if conf_dir is not None else default_conf_dir()
    if under_spark_submit():
        conf = SparkConf()
    else:
        # Workers must import the same packages as the driver: run the driver's interpreter.
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        if conf_path.is_dir():
            # spark-submit (which launches the embedded JVM) reads log4j2.properties from here.
            os.environ.setdefault("SPARK_CONF_DIR", str(conf_path))
        conf = SparkConf()
        defaults = conf_path / "spark-defaults.conf"
        if defaults.is_file():
            for key, value in read_properties(defaults).items():
                # conf/log4j2.properties is relative to the checkout's top folder (as
                # spark-submit run there reads it); embedded, it is the file beside this one.
                conf.set(key, value.replace("=conf/", f"={conf_path.resolve()}/"))
        conf.setMaster(master or "local[*]")
        if conf.get("spark.master", "").startswith("local"):
            _listen_on_loopback(conf)
    conf.setIfMissing("spark.app.name", app_name)
    for key, value in (extra_conf or {}).items():
        conf.set(key, value)
    return SparkContext.getOrCreate(conf)


def _listen_on_loopback(conf) -> None:
    """Keep every socket of an embedded local job on 127.0.0.1 and the UI from killing jobs.

    The driver and the block manager follow ``spark.driver.bindAddress``; the UI ignores it
    and binds to ``SPARK_LOCAL_IP`` from the JVM's environment (every interface without it), so
    that variable is set before the JVM starts. Python workers and the Py4J gateway listen on
    the loopback address already.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    conf.setIfMissing("spark.driver.host", LOOPBACK)
    conf.setIfMissing("spark.driver.bindAddress", LOOPBACK)
    conf.setIfMissing("spark.ui.killEnabled", "false")
