"""A real Spark standalone cluster for tests: one master and two workers on 127.0.0.1.

Nobody without the cluster's secret gets in: the daemons and every application run with
``spark.authenticate`` and a secret generated for the cluster (:mod:`secrets`), read from a
private properties file (mode 0600, not a command line ``ps`` shows) that
:func:`submit_command` passes to ``spark-submit`` too.

The daemons are the launcher classes shipped with pyspark (``spark-class
org.apache.spark.deploy.master.Master`` / ``...worker.Worker``), each started in its own
session (process group) on free ports, each worker with its own memory cap, core count and
work folder. :func:`start_cluster` waits until the master's JSON status lists every worker
ALIVE; :meth:`StandaloneCluster.stop` kills every process the daemons started (executor JVMs
and their Python daemons and workers included) and checks that none is left.

Test modules import the fixtures::

    from cluster import standalone_cluster  # noqa: F401  (a pytest fixture)

and submit applications with :func:`spark_submit` (blocking) or :func:`spark_submit_popen`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
VENV_BIN = Path(sys.executable).parent
#: JVM options for short test applications on a busy 2-core machine: the client compiler only
#: and the serial collector start a JVM about a third faster (measured: a trivial spark-submit
#: on the test cluster took 12 s instead of 19 s).
FAST_START_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
#: Security settings of the cluster besides its secret. RPC encryption (AES-GCM once the
#: peers have authenticated) costs little; I/O encryption of shuffle and spill files too, but
#: it is left to deployments that need it (see the README).
SECURITY_CONF = {"spark.authenticate": "true", "spark.network.crypto.enabled": "true"}


def _pyspark_bin() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "bin"


def spark_script(name: str) -> Path:
    """The path of a Spark launcher script (``spark-class``, ``spark-submit``).

    Parameters
    ----------
    name : str
        Script name.

    Returns
    -------
    pathlib.Path
        The virtual environment's copy when it exists, else the one inside the pyspark package.
    """
    candidate = VENV_BIN / name
    return candidate if candidate.is_file() else _pyspark_bin() / name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0).

    Returns
    -------
    int
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(base: Path) -> dict[str, str]:
    """Environment for the daemons and for ``spark-submit`` against the cluster.

    Parameters
    ----------
    base : pathlib.Path
        Private folder for Spark's logs, pid files and worker folders.

    Returns
    -------
    dict
        A copy of ``os.environ`` with the loopback address, no daemonizing, the driver's
        interpreter for Python workers and the checkout's ``conf/``.
    """
    env = dict(os.environ)
    env.update(
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_NO_DAEMONIZE="1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        SPARK_CONF_DIR=str(CONF_DIR),
        SPARK_LOG_DIR=str(base / "logs"),
        SPARK_PID_DIR=str(base / "pids"),
        SPARK_WORKER_DIR=str(base / "work"),
        PYTHONUNBUFFERED="1",
    )
    # Keep the daemons small: they only schedule; executors get their own JVMs.
    env.setdefault("SPARK_DAEMON_MEMORY", "256m")
    env.setdefault("SPARK_DAEMON_JAVA_OPTS", FAST_START_JVM)
    for name in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_HOME"):
        env.pop(name, None)
    return env


@dataclass
class Daemon:
    """One daemon JVM of the cluster.

    Attributes
    ----------
    name : str
        ``master``, ``worker-0``, ``worker-1``.
    proc : subprocess.Popen
        The JVM (``spark-class`` execs it, so this is the JVM itself).
    port, webui_port : int
        RPC and web UI ports.
    log : pathlib.Path
        File receiving the daemon's stdout and stderr.
    memory : str or None
        A worker's memory cap (``--memory``).
    work_dir : pathlib.Path or None
        A worker's work folder (executor folders, their stdout/stderr).
    """

    name: str
    proc: subprocess.Popen
    port: int
    webui_port: int
    log: Path
    memory: str | None = None
    work_dir: Path | None = None

    @property
    def pid(self) -> int:
        """Process id of the JVM."""
        return self.proc.pid


@dataclass
class StandaloneCluster:
    """A running standalone master with its workers.

    Attributes
    ----------
    master : Daemon
    workers : list of Daemon
    base : pathlib.Path
        The private folder holding logs and work folders.
    env : dict
        The environment the daemons run with; use it for ``spark-submit`` too.
    properties_file : pathlib.Path
        ``conf/spark-defaults.conf`` plus :data:`SECURITY_CONF` and the cluster's secret
        (readable by its owner only); the daemons and ``spark-submit`` read it.
    """

    master: Daemon
    workers: list[Daemon] = field(default_factory=list)
    base: Path = Path(".")
    env: dict = field(default_factory=dict)
    properties_file: Path = CONF_DIR / "spark-defaults.conf"
    _seen: set = field(default_factory=set)

    @property
    def url(self) -> str:
        """The master URL, ``spark://127.0.0.1:PORT``."""
        return f"spark://127.0.0.1:{self.master.port}"

    @property
    def daemons(self) -> list[Daemon]:
        """The master and the workers."""
        return [self.master, *self.workers]

    def state(self) -> dict:
        """The master's JSON status page (workers, applications, executors' states).

        Returns
        -------
        dict
        """
        url = f"http://127.0.0.1:{self.master.webui_port}/json/"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        """Number of workers the master lists as ALIVE (0 while the master starts)."""
        try:
            workers = self.state().get("workers", [])
        except OSError:
            return 0
        return sum(1 for w in workers if w.get("state") == "ALIVE")

    def wait_for_workers(self, count: int | None = None, timeout: float = 120) -> None:
        """Block until ``count`` workers (default all) are registered and ALIVE.

        Raises
        ------
        RuntimeError
            A daemon died or the workers did not register within ``timeout`` seconds; the
            message carries the end of the daemons' logs.
        """
        count = len(self.workers) if count is None else count
        deadline = time.monotonic() + timeout
        while self.alive_workers() < count:
            dead = [d.name for d in self.daemons if d.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"standalone cluster did not start ({', '.join(dead) or 'timeout'}):\n"
                    + self.log_tail())
            time.sleep(0.3)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of every daemon's log, for failure messages."""
        parts = []
        for d in self.daemons:
            text = d.log.read_text(errors="replace") if d.log.exists() else ""
            parts.append(f"--- {d.name} ---\n{text[-chars:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ processes
    def executor_processes(self) -> list[psutil.Process]:
        """Executor JVMs (``CoarseGrainedExecutorBackend``) the workers are running now."""
        found = []
        for worker in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(worker.pid).children():
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        if "CoarseGrainedExecutorBackend" in " ".join(child.cmdline()):
                            found.append(child)
        return found

    def python_daemons(self) -> list[psutil.Process]:
        """The ``pyspark.daemon`` processes started by the executors (one per executor)."""
        found = []
        for executor in self.executor_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in executor.children():
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        if "pyspark.daemon" in " ".join(child.cmdline()):
                            found.append(child)
        return found

    def python_workers(self) -> list[psutil.Process]:
        """Python worker processes: the children the daemons forked to run tasks."""
        found = []
        for daemon in self.python_daemons():
            with contextlib.suppress(psutil.NoSuchProcess):
                found.extend(daemon.children())
        return found

    def descendants(self) -> list[psutil.Process]:
        """Every live process the daemons started, at any depth (recorded for the teardown)."""
        procs = []
        for d in self.daemons:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(d.pid)
                procs.append(root)
                procs.extend(root.children(recursive=True))
        self._seen.update((p.pid, _create_time(p)) for p in procs)
        return procs

    def stop(self) -> None:
        """Kill every daemon's process group and every process they started; wait for all.

        Raises
        ------
        AssertionError
            A process started by the cluster is still alive afterwards.
        """
        procs = self.descendants()
        for d in self.daemons:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(d.pid, signal.SIGKILL)
        for p in procs:  # the Python daemons make their own process groups
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        for d in self.daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.proc.wait(timeout=30)
        psutil.wait_procs(procs, timeout=30)
        left = leftover(self._seen)
        assert not left, f"processes left behind by the cluster: {left}"


def _create_time(p: psutil.Process) -> float:
    try:
        return p.create_time()
    except psutil.NoSuchProcess:
        return 0.0


def leftover(seen) -> list[str]:
    """The processes of ``seen`` (pairs of pid and creation time) that are still alive.

    Parameters
    ----------
    seen : iterable of (int, float)

    Returns
    -------
    list of str
        ``"pid cmdline"`` of each survivor (zombies count as gone).
    """
    alive = []
    for pid, created in seen:
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) > 0.01 or p.status() == psutil.STATUS_ZOMBIE:
                continue
            alive.append(f"{pid} {' '.join(p.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            continue
    return alive


def write_secure_properties(path: Path, secret: str) -> Path:
    """``conf/spark-defaults.conf`` plus :data:`SECURITY_CONF` and ``secret``, mode 0600.

    Parameters
    ----------
    path : pathlib.Path
        The file to create.
    secret : str
        ``spark.authenticate.secret``.

    Returns
    -------
    pathlib.Path
    """
    lines = [(CONF_DIR / "spark-defaults.conf").read_text(encoding="utf-8"), ""]
    lines += [f"{key} {value}" for key, value in SECURITY_CONF.items()]
    lines.append(f"spark.authenticate.secret {secret}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _launch(name: str, args: list[str], env: dict, base: Path) -> tuple[subprocess.Popen, Path]:
    log = base / "logs" / f"{name}.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(spark_script("spark-class")), *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=base)
    return proc, log


def start_cluster(base: Path, worker_memory: tuple[str, ...] = ("1g", "1g"),
                  worker_cores: int = 1, timeout: float = 120) -> StandaloneCluster:
    """Start a master and one worker per entry of ``worker_memory``; wait until all are ALIVE.

    Parameters
    ----------
    base : pathlib.Path
        An empty private folder (logs, pid files, work folders go here).
    worker_memory : tuple of str
        Memory cap of each worker (``--memory``), e.g. ``("1g", "512m")``.
    worker_cores : int
        Cores of each worker (``--cores``).
    timeout : float
        Seconds to wait for the registration.

    Returns
    -------
    StandaloneCluster
        Stopped again (and everything it started killed) if the start fails.
    """
    base = Path(base)
    for sub in ("logs", "pids", "work"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    env = cluster_env(base)
    props = write_secure_properties(base / "spark-secure.conf", secrets.token_hex(32))
    port, webui = free_port(), free_port()
    proc, log = _launch("master", ["org.apache.spark.deploy.master.Master", "--host",
                                   "127.0.0.1", "--port", str(port), "--webui-port", str(webui),
                                   "--properties-file", str(props)],
                        env, base)
    cluster = StandaloneCluster(Daemon("master", proc, port, webui, log), base=base, env=env,
                                properties_file=props)
    try:
        for n, memory in enumerate(worker_memory):
            wport, wwebui = free_port(), free_port()
            work = base / "work" / f"worker-{n}"
            work.mkdir(parents=True, exist_ok=True)
            proc, log = _launch(
                f"worker-{n}",
                ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port",
                 str(wport), "--webui-port", str(wwebui), "--cores", str(worker_cores),
                 "--memory", memory, "--work-dir", str(work), "--properties-file",
                 str(props), cluster.url],
                env, base)
            cluster.workers.append(Daemon(f"worker-{n}", proc, wport, wwebui, log, memory, work))
        cluster.wait_for_workers(timeout=timeout)
    except BaseException:
        cluster.stop()
        raise
    cluster.descendants()
    return cluster


def submit_command(cluster: StandaloneCluster, script, *args, executor_memory: str = "512m",
                   conf: dict[str, str] | None = None,
                   spark_args: tuple[str, ...] = ()) -> list[str]:
    """The ``spark-submit`` command line running ``script`` on the cluster (client mode).

    Parameters
    ----------
    cluster : StandaloneCluster
    script : path
        The Python driver program.
    *args
        Arguments of the program.
    executor_memory : str
        ``spark.executor.memory``; must fit in a worker's ``--memory``.
    conf : dict, optional
        More ``--conf`` properties (they override ``conf/spark-defaults.conf``).
    spark_args : tuple of str
        More ``spark-submit`` options placed before the script (``--py-files ...``).

    Returns
    -------
    list of str
    """
    props = {
        "spark.executor.memory": executor_memory,
        "spark.driver.memory": "1g",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.task.maxFailures": "8",
        # The log4j2 path in spark-defaults.conf is relative to the checkout: make it absolute.
        "spark.driver.extraJavaOptions":
            f"-Dlog4j2.configurationFile={CONF_DIR / 'log4j2.properties'} {FAST_START_JVM}",
        "spark.executor.extraJavaOptions":
            f"-Dlog4j2.configurationFile={CONF_DIR / 'log4j2.properties'} {FAST_START_JVM}",
    }
    props.update(conf or {})
    cmd = [str(spark_script("spark-submit")), "--master", cluster.url,
           "--properties-file", str(cluster.properties_file)]
    for key, value in props.items():
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, *spark_args, str(script), *map(str, args)]


def spark_submit_popen(cluster: StandaloneCluster, script, *args, env: dict | None = None,
                       **options) -> subprocess.Popen:
    """Start ``spark-submit`` in its own session; output captured as text.

    Parameters
    ----------
    cluster : StandaloneCluster
    script : path
    *args
        Program arguments.
    env : dict, optional
        Environment (default the cluster's).
    **options
        Passed to :func:`submit_command`.

    Returns
    -------
    subprocess.Popen
        Stop it with :func:`kill_tree` if it must not finish.
    """
    return subprocess.Popen(submit_command(cluster, script, *args, **options),
                            env=env or cluster.env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def spark_submit(cluster: StandaloneCluster, script, *args, timeout: float = 300,
                 **options) -> subprocess.CompletedProcess:
    """Run ``spark-submit`` to completion (killed with its children after ``timeout``).

    Returns
    -------
    subprocess.CompletedProcess
        With ``stdout`` and ``stderr`` as text.
    """
    proc = spark_submit_popen(cluster, script, *args, **options)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        err += f"\n[killed after {timeout} s]"
    kill_tree(proc)  # the driver may leave a Python child behind on failure
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session=True``, its group and descendants.

    Parameters
    ----------
    proc : subprocess.Popen
    """
    procs = []
    if proc.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    # Reap the root with Popen (not psutil) so that its returncode stays the real one (-9).
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    psutil.wait_procs(procs, timeout=30)


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A master and two workers (1 GB, 1 core each) on 127.0.0.1 for a test module.

    Yields
    ------
    StandaloneCluster
        ``.url`` is the master URL; ``.workers[n].pid`` / ``.port``; ``.executor_processes()``
        and ``.python_workers()`` find the executor JVMs and Python workers. Everything is
        killed afterwards and the teardown asserts that no process is left.
    """
    cluster = start_cluster(tmp_path_factory.mktemp("spark-standalone"))
    try:
        yield cluster
    finally:
        cluster.stop()
