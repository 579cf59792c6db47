"""Bad input refused, through the library and through the CLI, with nothing written.

Every row runs in a private folder holding the same set of files (good and bad HDF5 inputs, an
existing output, a text file). The library rows expect a :mod:`blockmatrix.errors` type and a
message naming the problem and the fix; the CLI rows (``jobs/multiply.py`` as a subprocess)
expect exit code 2 and one stderr line doing the same. Every row checks that no file appeared
and that no file changed (SHA-256 of every file before and after).

NaN and inf policy: they are valid IEEE values, never rejected. Where both operands store the
blocks that meet (dense input, HDF5 input, which stores every block), a product propagates them
exactly as numpy does, NaN and inf positions included. An *absent* block (a missing block, an
all-zero block that ``from_numpy`` does not store) is a structural zero, as an implicit zero of
scipy.sparse is: it is never multiplied, so ``inf`` times an absent block contributes nothing
where numpy's dense ``inf * 0`` gives NaN. Both halves are tested below.

Unwritable outputs: the tests run as root, for whom ``chmod`` changes nothing, so an unwritable
output is a path whose parent is a regular file (``notes.txt/C.h5``) or a folder that does not
exist; ``/proc/C.h5`` (a folder root may "access" but where no file can be created) is an
expected failure for now: see :func:`test_output_on_a_pseudo_file_system_is_refused`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from cluster import FAST_START_JVM
from conftest import assert_eq
from jobrun import run_in_process, run_process

from blockmatrix import BlockMatrix, errors
from blockmatrix.errors import (
    BlockSizeMismatchError,
    BlockTypeError,
    ColumnTypeError,
    InputChangedError,
    InputNotFoundError,
    InsufficientMemoryError,
    InsufficientSpaceError,
    InvalidBlockError,
    InvalidInputError,
    InvalidParameterError,
    InvalidTableError,
    MissingColumnError,
    MissingDependencyError,
    OutputExistsError,
    OutputNotWritableError,
    ShapeMismatchError,
    UnknownStrategyError,
)
from blockmatrix.io import hdf5
from blockmatrix.ooc import check_gram_request, check_matmul_request
from blockmatrix.strategies import strategies_taking

REPO = Path(__file__).resolve().parent.parent
MULTIPLY = REPO / "jobs" / "multiply.py"
sys.path.insert(0, str(MULTIPLY.parent))

import multiply  # noqa: E402  (jobs/ is not a package)

RNG = np.random.default_rng(66)
A = RNG.standard_normal((30, 20))
B = RNG.standard_normal((20, 10))


# ---------------------------------------------------------------------- the files


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The files every row starts from."""
    d = tmp_path_factory.mktemp("bad-input-template")
    with h5py.File(d / "in.h5", "w") as f:
        f["A"] = A
        f["B"] = B
        f["B25"] = RNG.standard_normal((25, 10))
        f["Z"] = np.ones((20, 10), dtype=complex)
        f["S"] = np.full((20, 10), b"text")
        f["V"] = np.ones(20)
        f["BE"] = A.astype(">f8")  # big-endian: not this machine's byte order
        f["CMP"] = np.zeros((20, 10), dtype=[("re", "f8"), ("im", "f8")])
        f.create_group("G")
    with h5py.File(d / "out.h5", "w") as f:
        f["C"] = np.arange(9.0).reshape(3, 3)
    (d / "garbage.h5").write_bytes(bytes(range(256)) * 64)
    with h5py.File(d / "whole.h5", "w") as f:
        f["A"] = RNG.standard_normal((200, 200))
    whole = (d / "whole.h5").read_bytes()
    (d / "truncated.h5").write_bytes(whole[: len(whole) // 2])
    (d / "whole.h5").unlink()
    (d / "notes.txt").write_text("not HDF5\n")
    return d


@pytest.fixture
def folder(template, tmp_path) -> Path:
    """A private copy of the template files."""
    d = tmp_path / "files"
    shutil.copytree(template, d)
    # The input file under two other names (copytree would copy them as separate files).
    os.symlink("in.h5", d / "link.h5")
    os.link(d / "in.h5", d / "hard.h5")
    # A Parquet table as Spark writes one (a folder of part files), and a folder without any.
    (d / "tab.parquet").mkdir()
    (d / "tab.parquet" / "part-00000.parquet").write_bytes(b"PAR1")
    (d / "empty.parquet").mkdir()
    # A Zarr array and a Zarr group (the test extra installs zarr).
    zarr = pytest.importorskip("zarr")
    zarr.create_array(str(d / "a.zarr"), shape=(4, 20), chunks=(4, 10), dtype="f8")[...] = 1.0
    zarr.open_group(str(d / "g.zarr"), mode="w")
    return d


def snapshot(d: Path) -> dict[str, str]:
    """SHA-256 of every file below ``d``, by relative path."""
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def assert_untouched(d: Path, before: dict[str, str]) -> None:
    after = snapshot(d)
    assert sorted(after) == sorted(before), f"files appeared or vanished: {sorted(after)}"
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, f"files changed: {changed}"


# ---------------------------------------------------------------------- library rows


def dup_blocks(sc, d):
    rdd = sc.parallelize([((0, 0), np.ones((2, 2))), ((0, 0), np.ones((2, 2)))])
    return BlockMatrix.from_blocks(rdd, (2, 2), 2, 2)


def blocks(sc, items, shape, r, c):
    return BlockMatrix.from_blocks(sc.parallelize(items), shape, r, c)


def huge_sparse(sc):
    """A 10^6 x 10^6 matrix with one stored entry: 8 TB once written densely."""
    import scipy.sparse as sparse

    m = sparse.csr_matrix(([1.0], ([0], [0])), shape=(10**6, 10**6))
    return BlockMatrix.from_numpy(sc, m, 10**5, 10**5)


def table(sc, rows, columns):
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate().createDataFrame(rows, columns)


def touched_after_opening(sc, d):
    B = BlockMatrix.from_hdf5(sc, str(d / "in.h5"), "/B", 8, 8)
    os.utime(d / "in.h5", ns=(0, 1))  # a new modification time, the same bytes (and checksum)
    return BlockMatrix.from_numpy(sc, A, 8, 8) @ B


def without_zarr(call):
    """``call()`` as on a machine without the zarr extra (its import fails)."""
    saved = sys.modules.get("zarr")
    sys.modules["zarr"] = None  # import zarr raises ImportError
    try:
        return call()
    finally:
        if saved is None:
            del sys.modules["zarr"]
        else:
            sys.modules["zarr"] = saved


LIBRARY_ROWS = [
    ("product too large to collect on the driver",
     lambda sc, d: (BlockMatrix.from_numpy(sc, np.ones((10**5, 1)), 4000, 1)
                    @ BlockMatrix.from_numpy(sc, np.ones((1, 10**5)), 1, 4000)).to_numpy(),
     InsufficientMemoryError, r"to_numpy/to_scipy of this product \(collects 74\.5 GiB",
     "write it with to_hdf5"),
    ("zarr extra not installed",
     lambda sc, d: without_zarr(lambda: BlockMatrix.from_zarr(sc, str(d / "a.zarr"), 2, 2)),
     MissingDependencyError, "need the packages zarr", r"pip install 'blockmatrix\[zarr\]'"),
    ("inner dimensions differ",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8) @ BlockMatrix.from_numpy(sc, A, 8, 8),
     ShapeMismatchError, r"A\.shape\[1\] \(20\) != B\.shape\[0\] \(30\)", "transpose"),
    ("inner block sizes differ",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8) @ BlockMatrix.from_numpy(sc, B, 5, 5),
     BlockSizeMismatchError, r"A\.cols_per_block \(8\) != B\.rows_per_block \(5\)", "re-block"),
    ("complex dtype",
     lambda sc, d: BlockMatrix.from_numpy(sc, np.ones((4, 4), dtype=complex), 2, 2),
     BlockTypeError, "complex", "float"),
    ("string dtype",
     lambda sc, d: BlockMatrix.from_numpy(sc, np.full((4, 4), "x"), 2, 2),
     BlockTypeError, "<U1|str|dtype", "float"),
    ("duplicate block indices (validate)",
     lambda sc, d: dup_blocks(sc, d).validate(),
     InvalidBlockError, r"2 blocks with the index \(0, 0\)", "remove blocks with duplicate"),
    ("negative block index",
     lambda sc, d: blocks(sc, [((-1, 0), np.ones((2, 2)))], (4, 4), 2, 2).validate(),
     InvalidBlockError, r"\(-1, 0\) is outside the 2x2 block grid", "fix the index"),
    ("block index beyond the grid",
     lambda sc, d: blocks(sc, [((0, 5), np.ones((2, 2)))], (4, 4), 2, 2).validate(),
     InvalidBlockError, r"\(0, 5\) is outside", "fix the index or the claimed shape"),
    ("block of the wrong shape",
     lambda sc, d: blocks(sc, [((0, 0), np.ones((3, 2)))], (4, 4), 2, 2).validate(),
     InvalidBlockError, r"has shape \(3, 2\), expected \(2, 2\)", "re-block"),
    ("block that is not a matrix",
     lambda sc, d: blocks(sc, [((0, 0), "ab")], (4, 4), 2, 2).validate(),
     BlockTypeError, r"block \(0, 0\)", "ndarray|sparse"),
    ("negative block size",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, -3, 8),
     InvalidParameterError, r"rows_per_block must be a positive integer, got -3", ">= 1"),
    ("zero mid-dimension splits",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8).multiply(
         BlockMatrix.from_numpy(sc, B, 8, 8), num_mid_splits=0),
     InvalidParameterError, r"num_mid_splits must be a positive integer", "got 0"),
    ("unknown strategy",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8).multiply(
         BlockMatrix.from_numpy(sc, B, 8, 8), strategy="fastest"),
     UnknownStrategyError, "'fastest'", "inner"),
    ("input file missing",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "nope.h5"), "/A", 8, 8),
     InputNotFoundError, "nope.h5' does not exist", "check the path"),
    ("input file is garbage",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "garbage.h5"), "/A", 8, 8),
     InvalidInputError, "garbage.h5' cannot be read as HDF5", "give an HDF5 file"),
    ("input file is a truncated HDF5 file",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "truncated.h5"), "/A", 8, 8),
     InvalidInputError, "truncated.h5' cannot be read as HDF5", "give an HDF5 file"),
    ("input dataset missing",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "in.h5"), "/X", 8, 8),
     InputNotFoundError, "'/X' is not in", "check the dataset name"),
    ("input is a group",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "in.h5"), "/G", 8, 8),
     InvalidInputError, "is a group, not a dataset", "name a dataset"),
    ("input dataset is 1-D",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "in.h5"), "/V", 8, 8),
     InvalidInputError, "has 1 dimensions", "give a 2-D dataset"),
    ("input dataset is complex",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "in.h5"), "/Z", 8, 8),
     InvalidInputError, "not a real number type", "float64"),
    ("input file changed after opening", touched_after_opening,
     InputChangedError, "changed since BlockMatrix.from_hdf5 opened it", "open it again"),
    ("output dataset exists",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8).to_hdf5(str(d / "out.h5"), "/C"),
     OutputExistsError, "'/C' already exists", "overwrite=True"),
    ("output folder is a file",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8).to_hdf5(str(d / "notes.txt" / "C.h5"),
                                                               "/C"),
     OutputNotWritableError, "notes.txt' does not exist", "choose another path"),
    ("output file is not HDF5",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8).to_hdf5(str(d / "notes.txt"), "/C"),
     InvalidInputError, "exists but is not HDF5", "will not be overwritten"),
    ("input dataset is big-endian",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "in.h5"), "/BE", 8, 8),
     InvalidInputError, r"has dtype >f8 \(big-endian\), not this machine's byte order",
     r"astype\('<f8'\)"),
    ("input dataset is compound",
     lambda sc, d: BlockMatrix.from_hdf5(sc, str(d / "in.h5"), "/CMP", 8, 8),
     InvalidInputError, "not a real number type", "float64"),
    ("blocks beyond the memory budget",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8).multiply(
         BlockMatrix.from_numpy(sc, B, 8, 8), memory_budget_bytes=1000),
     InvalidParameterError, r"block sizes \(A 8x8, B 8x8\).*1536 bytes.*memory_budget_bytes "
     r"\(1000\)", r"blocks of at most 6x6, or raise memory_budget_bytes to at least 1536"),
    ("output is an input under a symbolic link (out of core)",
     lambda sc, d: check_matmul_request((str(d / "in.h5"), "/A"), (str(d / "in.h5"), "/B"),
                                        str(d / "link.h5"), "/A", overwrite=True),
     InvalidParameterError, r"link\.h5::/A\) is the input dataset A", "choose another output"),
    ("output is an input under a hard link (gram)",
     lambda sc, d: check_gram_request(str(d / "in.h5"), "/A", str(d / "hard.h5"), "/A",
                                      overwrite=True),
     InvalidParameterError, r"hard\.h5::/A\) is the input dataset X", "choose another output"),
    ("output folder too small",
     lambda sc, d: huge_sparse(sc).to_hdf5(str(d / "huge.h5"), "/C"),
     InsufficientSpaceError, r"output folder '.*files' has .* free and writing /C "
     r"\(1000000x1000000 float64\) needs 7,629,394.5 MiB", "choose another folder"),
    ("table column missing",
     lambda sc, d: BlockMatrix.from_coordinates(table(sc, [(0, 0, 1.0)], ["i", "j", "v"]),
                                                value="w"),
     MissingColumnError, "value='w' is not a column", "pass value= one of them"),
    ("table index column not integers",
     lambda sc, d: BlockMatrix.from_coordinates(sc.parallelize([(0.5, 0, 1.0)])),
     ColumnTypeError, r"field 0 \(row\).*not integers", "convert them"),
    ("table with a duplicate entry",
     lambda sc, d: BlockMatrix.from_coordinates(sc.parallelize([(0, 0, 1.0), (0, 0, 2.0)])),
     InvalidTableError, r"1 of 2 entries repeat an \(i, j\) pair", "sum them first"),
    ("operand is not a BlockMatrix",
     lambda sc, d: BlockMatrix.from_numpy(sc, A, 8, 8) @ B,
     TypeError, "not ndarray", "from_numpy"),
]


@pytest.mark.parametrize("name, call, error, problem, fix", LIBRARY_ROWS,
                         ids=[row[0] for row in LIBRARY_ROWS])
def test_library_refuses(sc, folder, name, call, error, problem, fix):
    before = snapshot(folder)
    with pytest.raises(error, match=problem) as caught:
        call(sc, folder)
    assert re.search(fix, str(caught.value)), (fix, str(caught.value))
    assert_untouched(folder, before)


def test_add_refuses_duplicate_blocks(sc, folder):
    """add/subtract reject duplicate indices when the sum is computed (in a task)."""
    before = snapshot(folder)
    left = dup_blocks(sc, folder)
    right = BlockMatrix.from_numpy(sc, np.ones((2, 2)), 2, 2)
    # The check runs on an executor: the error reaches the driver wrapped by Spark (a
    # Py4JJavaError), not as InvalidBlockError; its text names the problem and the fix.
    with pytest.raises(Exception, match="multiple blocks with the same index") as caught:
        (left + right).to_numpy()
    assert "remove blocks with duplicate indices" in str(caught.value)
    assert_untouched(folder, before)


# ---------------------------------------------------------------------- CLI rows


def run_job(folder: Path, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAVA_TOOL_OPTIONS=FAST_START_JVM)
    return run_process(MULTIPLY, *args, cwd=folder, env=env, timeout=timeout)


GOOD = ("in.h5::/A", "in.h5::/B", "new.h5::/C")


def job(a=GOOD[0], b=GOOD[1], c=GOOD[2], *options):
    return [a, b, c, *(options or ("--block-size", "8"))]


CLI_ROWS = [
    ("negative block size", job(*GOOD, "--block-size", "-3"),
     "-3 is not positive", "give an integer >= 1"),
    ("block size not a number", job(*GOOD, "--block-size", "abc"),
     "'abc' is not an integer", "--help"),
    ("block size missing", job(*GOOD, "--master", "local[1]"),
     "required: --block-size", "--help"),
    ("zero mid-dimension splits", job(*GOOD, "--block-size", "8", "--num-mid-splits", "0"),
     "--num-mid-splits: 0 is not positive", "give an integer >= 1"),
    ("zero partitions", job(*GOOD, "--block-size", "8", "--num-partitions", "0"),
     "--num-partitions: 0 is not positive", "give an integer >= 1"),
    ("unknown strategy", job(*GOOD, "--block-size", "8", "--strategy", "fastest"),
     "invalid choice: 'fastest'", "choose from"),
    ("zero tile", job(*GOOD, "--block-size", "8", "--tile", "0"),
     "--tile: 0 is not positive", "give an integer >= 1"),
    ("zero slab", job(*GOOD, "--block-size", "8", "--slab", "0"),
     "--slab: 0 is not positive", "give an integer >= 1"),
    ("unknown progress display", job(*GOOD, "--block-size", "8", "--progress", "bars"),
     "invalid choice: 'bars'", "choose from"),
    ("unknown runner", job(*GOOD, "--block-size", "8", "--runner", "threads"),
     "invalid choice: 'threads'", "choose from"),
    ("runner local on a cluster master",
     job(*GOOD, "--block-size", "8", "--runner", "local", "--master", "spark://127.0.0.1:1"),
     "--runner local computes the tiles in this process, and --master spark://127.0.0.1:1 is a "
     "cluster", "--master 'local[*]'"),
    ("runner for a Spark strategy", job(*GOOD, "--block-size", "8", "--runner", "local",
                                        "--strategy", "inner"),
     "--runner apply to the out-of-core strategy only", "drop --runner"),
    ("location without ::", job("in.h5:/A"),
     "A ('in.h5:/A') is not of the form FILE.h5::/dataset", "e.g. 'data.h5::/X'"),
    ("location without a dataset", job("in.h5::"),
     "A ('in.h5::') is not of the form", "give the file and the dataset"),
    ("location of no known kind", job("in.h5"),
     "A ('in.h5') is not of the form FILE.h5::/dataset, zarr:URL or parquet:PATH",
     "e.g. 'zarr:in.h5'"),
    ("zarr location without a URL", job("zarr:"),
     "A must be the path or URL of a Zarr array, got ''", "e.g. 'data/x.zarr'"),
    ("zarr input missing", job("zarr:nope.zarr"), "nope.zarr does not exist", "check the path"),
    ("zarr input is a group", job("zarr:g.zarr"), "is a Zarr group, not an array",
     "name the array inside it"),
    ("zarr output exists", job(c="zarr:a.zarr"), "a.zarr is already a Zarr array",
     "--overwrite"),
    ("zarr output would replace an input",
     job("zarr:a.zarr", GOOD[1], "zarr:a.zarr", "--block-size", "8", "--overwrite"),
     "is the input array A (zarr:", "choose another output path"),
    ("parquet location without a path", job("parquet:"),
     "A ('parquet:') is not of the form parquet:PATH", "e.g. 'parquet:data/a.parquet'"),
    ("parquet input missing", job("parquet:nope.parquet"),
     "Parquet table 'nope.parquet' does not exist", "check the path"),
    ("parquet input without part files", job("parquet:empty.parquet"),
     "holds no .parquet part files", "df.write.parquet"),
    ("parquet output exists", job(c="parquet:tab.parquet"),
     "'tab.parquet' already exists", "--overwrite"),
    ("parquet output would replace an input",
     job("parquet:tab.parquet", GOOD[1], "parquet:tab.parquet", "--block-size", "8",
         "--overwrite"),
     "is the input table A (parquet:tab.parquet)", "choose another output path"),
    ("resume with a parquet operand",
     job("parquet:tab.parquet", GOOD[1], GOOD[2], "--block-size", "8", "--resume"),
     "operands in HDF5 files or Zarr arrays; here auto, A parquet", "run without --resume"),
    ("input file missing", job("nope.h5::/A"),
     "'nope.h5' does not exist", "check the path"),
    ("input file is garbage", job("garbage.h5::/A"),
     "cannot be read as HDF5", "give an HDF5 file"),
    ("input file is a truncated HDF5 file", job("in.h5::/A", "truncated.h5::/A"),
     "truncated.h5' cannot be read as HDF5", "give an HDF5 file"),
    ("input dataset missing", job("in.h5::/X"),
     "'/X' is not in 'in.h5'", "check the dataset name"),
    ("input is a group", job("in.h5::/G"), "is a group, not a dataset", "name a dataset"),
    ("input dataset is 1-D", job("in.h5::/V"), "has 1 dimensions", "give a 2-D dataset"),
    ("input dataset is complex", job("in.h5::/Z", "in.h5::/Z"),
     "not a real number type", "store it as float64"),
    ("input dataset holds strings", job("in.h5::/S", "in.h5::/S"),
     "not a real number type", "store it as float64"),
    ("inner dimensions differ", job("in.h5::/A", "in.h5::/A"),
     r"A.shape[1] (20) != B.shape[0] (30)", "A B is undefined"),
    ("inner dimensions differ, other operand", job("in.h5::/A", "in.h5::/B25"),
     r"A.shape[1] (20) != B.shape[0] (25)", "A B is undefined"),
    ("output dataset exists", job(c="out.h5::/C"),
     "'/C' already exists in 'out.h5'", "--overwrite"),
    ("output would replace an input", job(*GOOD[:2], "in.h5::/A", "--block-size", "8",
                                          "--overwrite"),
     "is the input dataset A", "choose another output dataset"),
    ("output is an input under a symbolic link", job(*GOOD[:2], "link.h5::/B", "--block-size",
                                                     "8", "--overwrite"),
     "is the input dataset B (in.h5::/B)", "choose another output dataset"),
    ("output is an input under a hard link, inner",
     job(*GOOD[:2], "hard.h5::/A", "--block-size", "8", "--overwrite", "--strategy", "inner"),
     "is the input dataset A (in.h5::/A)", "choose another output dataset"),
    ("input dataset is big-endian", job("in.h5::/BE"),
     "has dtype >f8 (big-endian), not this machine's byte order", "astype('<f8')"),
    ("input dataset is compound", job("in.h5::/CMP", "in.h5::/CMP"),
     "not a real number type", "store it as float64"),
    ("output folder is a file", job(c="notes.txt/C.h5::/C"),
     "'notes.txt' does not exist", "choose another path"),
    ("output folder missing", job(c="no/such/folder/C.h5::/C"),
     "'no/such/folder' does not exist", "create it"),
    ("output file is not HDF5", job(c="notes.txt::/C"),
     "exists but is not HDF5", "remove it or choose another file"),
]


@pytest.mark.parametrize("name, args, problem, fix", CLI_ROWS, ids=[row[0] for row in CLI_ROWS])
def test_cli_refuses(folder, name, args, problem, fix):
    before = snapshot(folder)
    # In this process: every row is refused before Spark starts (the test has no Java).
    result = run_in_process(MULTIPLY, *args, cwd=folder)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("multiply.py: error: "), lines[0]
    assert problem in lines[0] and fix in lines[0], lines[0]
    assert result.stdout == ""
    assert_untouched(folder, before)


#: Flags of jobs/multiply.py whose bad values only Spark finds, once it starts: a bad master URL
#: ends in PySpark's traceback, not in a one-line refusal, so the table has no row for it yet.
REFUSED_BY_SPARK_ONLY = {"--master"}


@pytest.mark.parametrize("row", [CLI_ROWS[0], CLI_ROWS[-1]], ids=lambda row: row[0])
def test_cli_refuses_as_a_process(folder, row):
    """As a shell sees it: exit code 2, one stderr line, nothing on stdout, nothing written."""
    _, args, problem, fix = row
    before = snapshot(folder)
    result = run_job(folder, *args)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
    assert result.stderr.count("\n") == 1 and problem in result.stderr and fix in result.stderr
    assert result.stdout == ""
    assert_untouched(folder, before)


def test_every_error_type_and_every_valued_flag_has_a_row():
    """The table grows with the code: a new error type or a new flag needs its own row."""
    error_types = {obj for obj in vars(errors).values() if isinstance(obj, type)
                   and issubclass(obj, errors.BlockMatrixError)
                   and obj is not errors.BlockMatrixError}
    assert error_types - {row[2] for row in LIBRARY_ROWS} == set()
    # argparse keeps its arguments in _actions (it has no public list of them)
    valued = {action.option_strings[-1] for action in multiply.make_parser()._actions
              if action.option_strings and action.nargs != 0}
    refused = set()
    for _, args, problem, _ in CLI_ROWS:  # a row refuses a flag if it names the flag or value
        refused.update(flag for flag, value in zip(args, args[1:], strict=False)
                       if flag in valued and (flag in problem or value in problem))
    # (--master has a row, --runner local on a cluster master, that is no bad master URL)
    assert valued - refused - REFUSED_BY_SPARK_ONLY == set()


def test_output_on_a_pseudo_file_system_is_refused():
    """``/proc`` passes ``os.access(W_OK)`` for root, yet no file can be created there."""
    with pytest.raises(OutputNotWritableError, match="/proc"):
        hdf5.check_output("/proc/C.h5", "/C")
    assert not os.path.exists("/proc/C.h5")


# ---------------------------------------------------------------------- NaN and inf


def with_non_finite(shape, seed):
    """Standard normal with one NaN, one inf and one -inf: a product with them has NaN rows and
    columns, infinite entries of both signs, and finite entries elsewhere."""
    x = np.random.default_rng(seed).standard_normal(shape)
    x[1, 2], x[3, 0], x[5, 4] = np.nan, np.inf, -np.inf
    return x


def assert_same_non_finite(got, expected) -> None:
    """NaN, inf and -inf exactly where numpy has them (each kind present); the rest close."""
    for kind in (np.isnan, np.isposinf, np.isneginf):
        assert kind(expected).any(), kind.__name__  # else the data tests nothing
        np.testing.assert_array_equal(kind(got), kind(expected), err_msg=kind.__name__)
    finite = np.isfinite(expected)
    assert finite.any()
    assert_eq(got[finite], expected[finite])


@pytest.mark.parametrize("strategy", sorted(strategies_taking("driver")))
def test_nan_and_inf_propagate_as_in_numpy(sc, strategy):
    a, b = with_non_finite((12, 10), 1), with_non_finite((10, 9), 2)
    with np.errstate(invalid="ignore"):
        expected = np.matmul(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy warns; no strategy does
        got = BlockMatrix.from_numpy(sc, a, 4, 4).multiply(
            BlockMatrix.from_numpy(sc, b, 4, 4), strategy=strategy).to_numpy()
    assert_same_non_finite(got, expected)


def test_absent_blocks_are_structural_zeros(sc):
    """inf meeting an all-zero block that is not stored contributes nothing (scipy.sparse)."""
    a = np.ones((4, 4))
    a[0, 2] = np.inf                     # in A's block (0, 1)
    b = np.ones((4, 4))
    b[2:, :2] = 0.0                      # B's block (1, 0): all zero, so not stored
    got = (BlockMatrix.from_numpy(sc, a, 2, 2) @ BlockMatrix.from_numpy(sc, b, 2, 2)).to_numpy()
    # numpy gives NaN at [0, :2] (inf * 0); the block product sums only stored block pairs.
    expected = a[:, :2] @ b[:2] + np.hstack([np.zeros((4, 2)), a[:, 2:] @ b[2:, 2:]])
    with np.errstate(invalid="ignore"):
        assert np.isnan(np.matmul(a, b)[0, :2]).all()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.spark
def test_nan_and_inf_through_the_job(tmp_path):
    a, b = with_non_finite((30, 20), 3), with_non_finite((20, 10), 4)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["A"] = a
        f["B"] = b
    result = run_job(tmp_path, "in.h5::/A", "in.h5::/B", "out.h5::/C", "--block-size", 8,
                     "--master", "local[1]", "--verify")
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    with h5py.File(tmp_path / "out.h5", "r") as f:
        got = f["C"][()]
    with np.errstate(invalid="ignore"):
        expected = np.matmul(a, b)
    assert_same_non_finite(got, expected)
