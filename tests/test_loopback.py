"""An embedded local job listens on the loopback address alone, and its UI cannot kill jobs.

A real job runs in a subprocess (``blockmatrix.session.spark_context``, as jobs, tests and
notebooks start Spark): the test lists the sockets its whole process tree (the Python driver,
the JVM, the Python daemon and workers) listens on, while the job is alive.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parent.parent

#: A driver that runs Python tasks, reports what it knows, then waits until its stdin closes so
#: that the test can list its sockets. (Whether the UI refuses a kill is not tried through
#: HTTP: Spark 4's UI answers 403 to a kill request even with ``spark.ui.killEnabled true``.)
PROBE = r"""
import json, sys

from blockmatrix.session import spark_context

sc = spark_context("local[2]", app_name="loopback probe",
                   extra_conf={"spark.ui.showConsoleProgress": "false"})
sc.setLogLevel("ERROR")
result = sc.parallelize(range(4), 2).map(lambda x: x * x).collect()  # starts Python workers
conf = sc.getConf()
print(json.dumps({"ui": sc.uiWebUrl, "driver_port": int(conf.get("spark.driver.port")),
                  "kill_enabled": conf.get("spark.ui.killEnabled"), "result": result}),
      flush=True)
sys.stdin.read()
sc.stop()
"""


def is_loopback(address: str) -> bool:
    """127.0.0.1, ::1, or 127.0.0.1 as an IPv4-mapped IPv6 address (a JVM's tcp6 socket)."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip) in ("127.0.0.1", "::1")


def listening_sockets(root: psutil.Process) -> list[tuple[int, str, str, int]]:
    """``(pid, description, address, port)`` of every TCP socket the tree listens on."""
    found = []
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            what = " ".join(proc.cmdline()[:3])
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, what, conn.laddr.ip, conn.laddr.port))
    return found


def is_daemon(proc: psutil.Process) -> bool:
    """Whether ``proc`` is PySpark's Python daemon (the parent of the Python workers)."""
    try:
        return "pyspark.daemon" in proc.cmdline()
    except psutil.Error:
        return False


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the probe's session (driver, JVM, Python workers) if it is still running."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)
    proc.wait(timeout=30)


def test_an_embedded_job_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_LOCAL_IP", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    probe = subprocess.Popen([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = probe.stdout.readline()
        assert line, probe.stderr.read()[-3000:] if probe.poll() is not None else "no report"
        report = json.loads(line)
        tree = psutil.Process(probe.pid)
        sockets = listening_sockets(tree)
        daemons = [p for p in tree.children(recursive=True) if is_daemon(p)]
    finally:
        with contextlib.suppress(OSError):
            probe.stdin.close()
        try:
            probe.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_group(probe)
        kill_group(probe)
    assert report["kill_enabled"] == "false"
    assert report["result"] == [0, 1, 4, 9]
    # The listing saw the sockets that matter (the test would miss nothing by looking away).
    ports = {port for *_, port in sockets}
    assert urlsplit(report["ui"]).port in ports, (report, sockets)
    assert report["driver_port"] in ports, (report, sockets)
    assert daemons, "no Python daemon in the job's process tree: its workers were not checked"
    outside = [s for s in sockets if not is_loopback(s[2])]
    assert not outside, f"listening beyond the loopback address: {outside}"
