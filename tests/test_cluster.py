"""The jobs under spark-submit on a real standalone cluster (a master and two workers).

Executors run in their own JVMs with their own Python workers, so anything that only worked in
local mode (closures capturing driver state, files only the driver can see, packages only the
driver imports) fails here. Every result is compared with numpy.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from cluster import (  # noqa: F401  (standalone_cluster: a fixture)
    CONF_DIR,
    REPO,
    kill_tree,
    spark_submit,
    spark_submit_popen,
    standalone_cluster,
)
from conftest import assert_eq

from blockmatrix.strategies import strategies_taking

MULTIPLY = REPO / "jobs" / "multiply.py"
GRAM = REPO / "jobs" / "gram.py"


@pytest.fixture(scope="module")
def operands(tmp_path_factory):
    """A (300 x 200) and B (200 x 250) float64 in HDF5, with a zero block row in A."""
    folder = tmp_path_factory.mktemp("cluster-inputs")
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 250))
    a[64:128] = 0.0
    with h5py.File(folder / "in.h5", "w") as f:
        f["A"] = a
        f["B"] = b
    return folder, a, b


def read(path: Path, dataset: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[dataset][()]


def check_ran(result) -> None:
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])


EVERY_STRATEGY = """
import sys

import h5py
import numpy as np
from pyspark import SparkContext

from blockmatrix import BlockMatrix
from blockmatrix.strategies import strategies_taking

path = sys.argv[1]
sc = SparkContext.getOrCreate()
with h5py.File(path, "r") as f:
    expected = f["A"][()] @ f["B"][()]
A = BlockMatrix.from_hdf5(sc, path, "/A", 100, 100)
B = BlockMatrix.from_hdf5(sc, path, "/B", 100, 100)
for name in sorted(strategies_taking("file") + ["auto"]):
    product = A.multiply(B, strategy=name)
    got = product.to_numpy()
    error = float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max()))
    print(f"{name} ran {product.plan.strategy}: error {error:.1e}")
sc.stop()
"""


def test_every_strategy_in_one_application(standalone_cluster, operands, tmp_path):  # noqa: F811
    """Every registered strategy on operands the executors read from the file (one app)."""
    folder, _, _ = operands
    app = tmp_path / "every_strategy.py"
    app.write_text(EVERY_STRATEGY)
    result = spark_submit(standalone_cluster, app, f"{folder}/in.h5")
    check_ran(result)
    errors = {line.split()[0]: float(line.rsplit(" ", 1)[1])
              for line in result.stdout.splitlines() if ": error " in line}
    # Every strategy that takes file-backed operands (driver does not), and auto.
    assert set(errors) == set(strategies_taking("file")) | {"auto"}, result.stdout
    assert max(errors.values()) < 1e-12, errors


#: The job itself under spark-submit: through Spark and the driver's writer (inner), and file to
#: file (auto, which runs ooc); every strategy runs in test_every_strategy_in_one_application.
@pytest.mark.parametrize("strategy", ["auto", "inner"])
def test_multiply_job_on_the_cluster(standalone_cluster, operands, tmp_path, strategy):  # noqa: F811
    folder, a, b = operands
    out = tmp_path / "C.h5"
    result = spark_submit(standalone_cluster, MULTIPLY, f"{folder}/in.h5::/A",
                          f"{folder}/in.h5::/B", f"{out}::/C", "--block-size", 100,
                          "--strategy", strategy, "--verify")
    check_ran(result)
    assert f"master {standalone_cluster.url}" in result.stdout
    assert "verified against numpy" in result.stdout and "(OK" in result.stdout
    assert_eq(read(out, "/C"), a @ b)


WHERE_TASKS_RUN = """
import os
import time

from pyspark import SparkContext


def folder(_):
    time.sleep(0.5)  # tasks long enough that both executors get some
    return os.getcwd()  # the executor's folder, inside its worker's work folder


sc = SparkContext.getOrCreate()
for path in sorted(set(sc.parallelize(range(8), 8).map(folder).collect())):
    print("task ran in", path)
sc.stop()
"""


def test_the_cluster_ran_executors_on_both_workers(standalone_cluster, tmp_path):  # noqa: F811
    """An application gets an executor from each worker (separate JVMs), and both run tasks."""
    app = tmp_path / "where_tasks_run.py"
    app.write_text(WHERE_TASKS_RUN)
    # Both workers' cores (one each), and no task before both executors have registered.
    result = spark_submit(standalone_cluster, app, conf={
        "spark.app.name": "where tasks run", "spark.cores.max": "2",
        "spark.scheduler.minRegisteredResourcesRatio": "1.0"})
    check_ran(result)
    folders = [Path(line.split(" ", 3)[3]).resolve() for line in result.stdout.splitlines()
               if line.startswith("task ran in ")]
    work_dirs = {worker.work_dir.resolve() for worker in standalone_cluster.workers}
    used = {work for work in work_dirs for folder in folders if work in folder.parents}
    assert used == work_dirs, (folders, work_dirs)
    apps = [app for app in standalone_cluster.state().get("completedapps", [])
            if app.get("name") == "where tasks run"]
    assert [app.get("state") for app in apps] == ["FINISHED"], apps


def test_gram_job_on_the_cluster(standalone_cluster, tmp_path):  # noqa: F811
    rng = np.random.default_rng(7)
    x = rng.standard_normal((150, 700))
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["X"] = x
    result = spark_submit(standalone_cluster, GRAM, f"{path}::/X", f"{path}::/Y",
                          "--tile", 64, "--slab", 128)
    check_ran(result)
    assert_eq(read(path, "/Y"), x @ x.T)
    np.testing.assert_array_equal(read(path, "/X"), x)


# ---------------------------------------------------------------------- --py-files


def make_bare_python(folder: Path) -> Path:
    """A virtual environment that sees the main one's packages except ``blockmatrix``.

    Its ``.pth`` line puts the main ``site-packages`` on ``sys.path`` as a plain folder, so
    numpy, h5py and pyspark import, but the ``.pth`` files inside it (the editable install's
    finder among them) are not run: ``import blockmatrix`` fails unless the package arrives
    some other way, e.g. through ``--py-files``.
    """
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(folder)],
                   check=True, capture_output=True)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "main_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def zip_package(target: Path) -> Path:
    """``blockmatrix/`` as a zip for ``--py-files`` (Python sources only)."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for source in sorted((REPO / "blockmatrix").rglob("*.py")):
            z.write(source, source.relative_to(REPO).as_posix())
    return target


def test_py_files_ship_the_package_to_executors(standalone_cluster, operands, tmp_path):  # noqa: F811
    folder, a, b = operands
    if any(Path(p, "blockmatrix").is_dir()
           for p in standalone_cluster.env.get("PYTHONPATH", "").split(":") if p):
        pytest.skip("PYTHONPATH of the cluster's workers already holds a blockmatrix package")
    python = make_bare_python(tmp_path / "bare-venv")
    env = {k: v for k, v in standalone_cluster.env.items() if k != "PYTHONPATH"}
    probe = subprocess.run([str(python), "-c", "import numpy, h5py, pyspark, blockmatrix"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'blockmatrix'" in probe.stderr, probe
    package = zip_package(tmp_path / "blockmatrix.zip")
    out = tmp_path / "C.h5"
    result = spark_submit(standalone_cluster, MULTIPLY, f"{folder}/in.h5::/A",
                          f"{folder}/in.h5::/B", f"{out}::/C", "--block-size", 100, "--verify",
                          env=env, spark_args=("--py-files", str(package)),
                          conf={"spark.pyspark.python": str(python),
                                "spark.pyspark.driver.python": str(python)})
    check_ran(result)
    assert "(OK" in result.stdout
    assert_eq(read(out, "/C"), a @ b)


# ---------------------------------------------------------------------- authentication

APP_WITHOUT_SECRET = """
from pyspark import SparkContext

sc = SparkContext.getOrCreate()  # waits until the master has registered the application
print("registered", flush=True)
sc.stop()
"""

#: What the driver logs when the master drops its connection (the master refuses any RPC
#: that does not start with the authentication handshake).
REFUSED = "Failed to connect to master"


def test_a_client_without_the_secret_is_refused(standalone_cluster, tmp_path):  # noqa: F811
    """An application submitted without the cluster's secret never registers.

    Every other test of the module submits with the secret and runs: they are the control.
    """
    app = tmp_path / "app_without_secret.py"
    app.write_text(APP_WITHOUT_SECRET)
    outsider = dataclasses.replace(standalone_cluster,
                                   properties_file=CONF_DIR / "spark-defaults.conf")
    proc = spark_submit_popen(outsider, app, conf={"spark.app.name": "no secret"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    try:
        while (time.monotonic() < deadline and proc.poll() is None
               and not any(REFUSED in line for line in lines)):
            time.sleep(0.5)
    finally:
        kill_tree(proc)
    out = proc.stdout.read()
    assert any(REFUSED in line for line in lines), "".join(lines)[-4000:]
    assert "registered" not in out
    state = standalone_cluster.state()
    names = [app.get("name") for key in ("activeapps", "completedapps")
             for app in state.get(key, [])]
    assert "no secret" not in names, names
    # ... because it did not authenticate (not because the master was away).
    assert "Expected SaslMessage" in standalone_cluster.master.log.read_text(errors="replace")
