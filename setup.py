"""Packaging for blockmatrix: block-matrix multiplication on Apache Spark."""

from setuptools import find_packages, setup

setup(
    name="blockmatrix",
    version="0.1.0",
    description=(
        "Block-matrix multiplication on Apache Spark with numpy and scipy.sparse blocks: "
        "Spark's one-shuffle inner product, alternative strategies with predicted and measured "
        "shuffle volume, and an out-of-core X X^T from HDF5."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The checkout's conf/ (read there by spark-submit, the Makefile and the tests) is also the
    # package's data: built into blockmatrix/conf/ so an installed package starts Spark with the
    # same defaults and quiet logging (blockmatrix.session.default_conf_dir). One copy, no link.
    packages=find_packages(include=["blockmatrix", "blockmatrix.*"]) + ["blockmatrix.conf"],
    package_dir={"blockmatrix.conf": "conf"},
    package_data={"blockmatrix.conf": ["spark-defaults.conf", "log4j2.properties"]},
    entry_points={
        "console_scripts": [
            "blockmatrix-multiply = blockmatrix.cli.multiply:cli",
            "blockmatrix-gram = blockmatrix.cli.gram:cli",
            "blockmatrix-plan = blockmatrix.cli.plan:cli",
            "blockmatrix-make-sample = blockmatrix.cli.make_sample:cli",
        ],
    },
    install_requires=[
        "pyspark>=3.5",
        "numpy>=1.24",
        "scipy>=1.10",
        "h5py>=3.8",
        "filelock>=3.12",
    ],
    extras_require={
        # Out of core (Y = X X^T): BLAS threads pinned per task; without it a
        # PerformanceWarning says the threads are unpinned.
        "ooc": ["threadpoolctl>=3.1"],
        # The benchmark jobs (jobs/benchmark.py, bench_gram.py, transport.py): process-tree
        # memory and CPU sampling.
        "bench": ["psutil>=5.9"],
        # Zarr (format 3) input and output, on local folders and object storage through
        # fsspec: BlockMatrix.from_zarr / to_zarr (blockmatrix.io.zarr_store). s3fs is the
        # file system of s3:// URLs; other fsspec protocols need their own package (gcsfs,
        # adlfs).
        "zarr": ["zarr>=3", "fsspec>=2023.6", "s3fs>=2023.6"],
        "test": [
            "threadpoolctl>=3.1",
            "psutil>=5.9",
            "pytest>=7",
            "hypothesis>=6",
            "ruff>=0.5",
            # tests/test_wheel.py builds a wheel offline (no build isolation): setuptools < 70.1
            # needs it for bdist_wheel.
            "wheel>=0.40",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6",
            "matplotlib>=3.7",
            "dask[array]>=2024.1",
            "zarr>=3",
            "fsspec>=2023.6",
            "s3fs>=2023.6",
            # tests/test_zarr.py: a real S3-protocol server on loopback (moto's server mode).
            "moto[server]>=5",
        ],
    },
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Mathematics",
    ],
)
