"""Installed without the checkout: a wheel built from the repo runs the jobs in a fresh venv.

The wheel is built from a copy of the sources (``setup.py``, ``README.md``, ``blockmatrix/``,
``conf/``), so the test leaves no ``build/`` behind in the checkout and sees only what the
wheel ships. The new virtual environment has no pip and no system site-packages; a ``.pth``
line puts this interpreter's ``site-packages`` on its path as a plain folder (as
``tests/test_cluster.py``'s bare Python does), so pyspark, numpy and h5py import without a
download while the ``blockmatrix`` imported is the wheel's. The console scripts then run from a
folder outside the checkout, with ``PYTHONPATH`` and the ``SPARK_CONF_DIR`` this process set
removed: the quiet logging and the Spark defaults can only come from the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import h5py
import pytest
from conftest import assert_eq

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent

#: What the wheel is built from (everything setup.py reads).
SOURCES = ("setup.py", "README.md", "blockmatrix", "conf")

#: Variables of this test process that would point a child at the checkout.
CHECKOUT_VARIABLES = ("PYTHONPATH", "SPARK_CONF_DIR", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")


def clean_env() -> dict[str, str]:
    """This process's environment without what points at the checkout."""
    return {k: v for k, v in os.environ.items() if k not in CHECKOUT_VARIABLES}


def build_wheel(folder: Path) -> Path:
    """``pip wheel`` of a copy of the sources; the wheel's path."""
    source = folder / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    # No build isolation: the build uses this environment's setuptools and wheel, offline.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(folder / "dist"), str(source)],
                   check=True, capture_output=True, text=True)
    (wheel,) = (folder / "dist").glob("blockmatrix-*.whl")
    return wheel


def fresh_venv(folder: Path, wheel: Path) -> Path:
    """A new venv with ``wheel`` installed and this environment's packages on a ``.pth`` line."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(folder)],
                   check=True, capture_output=True)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # A plain folder on sys.path: the .pth files in it (the checkout's editable finder) do not run.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Without PYTHONPATH: pip would take the checkout's package for the wheel, installed already.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, env=clean_env())
    return folder / "bin"


def test_the_wheel_runs_the_jobs_with_packaged_defaults(tmp_path):
    bin_ = fresh_venv(tmp_path / "venv", build_wheel(tmp_path / "build"))
    work = tmp_path / "work"  # outside the checkout: no conf/ to find
    work.mkdir()
    env = clean_env()
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"

    def run(*args, timeout=300):
        return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                              env=env, cwd=work, timeout=timeout)

    probe = run(bin_ / "python", "-c", "import blockmatrix, blockmatrix.session as s; "
                "print(blockmatrix.__file__); print(s.default_conf_dir())")
    assert probe.returncode == 0, probe.stderr
    package_file, conf_dir = probe.stdout.split()
    assert Path(package_file).is_relative_to(tmp_path / "venv"), package_file
    assert Path(conf_dir).is_relative_to(tmp_path / "venv"), conf_dir
    assert {p.name for p in Path(conf_dir).iterdir()} >= {"spark-defaults.conf",
                                                          "log4j2.properties"}

    for name, rows, cols, seed in (("A", 150, 100, 1), ("B", 100, 90, 2)):
        made = run(bin_ / "blockmatrix-make-sample", f"{name}.h5::/{name}", "--rows", rows,
                   "--cols", cols, "--seed", seed)
        assert made.returncode == 0, made.stderr
    result = run(bin_ / "blockmatrix-multiply", "A.h5::/A", "B.h5::/B", "C.h5::/C",
                 "--block-size", 64, "--master", "local[2]", "--verify")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "verified against numpy" in result.stdout and "OK" in result.stdout, result.stdout
    # Without the packaged log4j2.properties Spark announces its own default profile and warns
    # about native Hadoop; the packaged one allows warnings only and silences that one.
    for noise in ("Using Spark's default log4j profile", "NativeCodeLoader", " INFO "):
        assert noise not in result.stderr, result.stderr[-3000:]
    with h5py.File(work / "A.h5", "r") as fa, h5py.File(work / "B.h5", "r") as fb, \
            h5py.File(work / "C.h5", "r") as fc:
        assert_eq(fc["C"][()], fa["A"][()] @ fb["B"][()])

    refused = run(bin_ / "blockmatrix-multiply", "A.h5::/A", "B.h5::/B", "D.h5::/D",
                  "--block-size", 0)
    assert refused.returncode == 2 and refused.stdout == "", refused
    assert len(refused.stderr.splitlines()) == 1 and "--block-size" in refused.stderr, refused
    assert refused.stderr.startswith("blockmatrix-multiply: error: "), refused.stderr
    assert not (work / "D.h5").exists()
