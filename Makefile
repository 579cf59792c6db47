# The front door: `make demo` and `make test` do all the set-up on a fresh machine
# (Python 3.11 and Java 17 present, nothing else of ours).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-data

# A second environment on the oldest supported pyspark line, for the Spark-marked core.
VENV35   ?= .venv35
STAMP35  := $(VENV35)/.installed-stamp
PYSPARK35 := pyspark>=3.5,<3.6
# The core on pyspark 3.5 (a few minutes): each strategy against numpy (a ragged, a sparse x
# sparse and a dense x sparse case each), the shuffle counts, gram, HDF5 in and out, the MLlib
# and table conversions (the pyspark APIs most likely to differ), the library's and the jobs'
# refusals (with the zarr extra: the refusal table has Zarr rows).
SPARK35_TESTS := tests/test_multiply.py tests/test_strategies.py tests/test_gram.py \
	tests/test_matrix.py tests/test_interop.py tests/test_tables.py tests/test_bad_input.py \
	tests/test_job_multiply.py
SPARK35_K := (test_product_equals_numpy and (ragged or sparse-sparse or dense-sparse)) \
	or test_same_result_as_mllib or test_integer_and_bool_blocks or test_known_shuffle_counts \
	or test_gram or hdf5 or mllib or test_interop or test_tables or refuse or test_job_multiply

.PHONY: demo test test-main test-spark35 lint bench-gram clean java

java:
	@command -v java >/dev/null 2>&1 || { echo "Spark needs Java 17 and 'java' is not on PATH: install it (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless) or put \$$JAVA_HOME/bin on PATH." >&2; exit 1; }

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: java $(STAMP)
	mkdir -p $(DEMO)
	$(BIN)/python jobs/make_sample.py $(DEMO)/A.h5::/A --rows 3000 --cols 2000 --seed 1 --overwrite
	$(BIN)/python jobs/make_sample.py $(DEMO)/B.h5::/B --rows 2000 --cols 2500 --seed 2 --overwrite
	$(BIN)/python jobs/multiply.py $(DEMO)/A.h5::/A $(DEMO)/B.h5::/B $(DEMO)/C.h5::/C \
		--block-size 512 --master 'local[*]' --runner spark --overwrite --verify

# The whole suite on the newest pyspark, then the core on pyspark 3.5; each part's time is
# printed at its end.
test: test-main test-spark35

test-main: java $(STAMP)
	@start=$$(date +%s); status=0; \
	$(BIN)/python -m pytest -q --doctest-modules blockmatrix jobs/_support tests || status=$$?; \
	echo "main suite (pyspark $$($(BIN)/python -c 'import pyspark; print(pyspark.__version__)')):" \
		"$$(( $$(date +%s) - start )) s"; exit $$status
	$(BIN)/ruff check blockmatrix jobs tests

$(STAMP35): setup.py
	$(PYTHON) -m venv $(VENV35)
	$(VENV35)/bin/python -m pip install --quiet --upgrade pip
	$(VENV35)/bin/python -m pip install --quiet -e '.[zarr]' '$(PYSPARK35)' 'pytest>=7' 'hypothesis>=6' \
		'threadpoolctl>=3.1' 'psutil>=5.9'
	touch $(STAMP35)

test-spark35: java $(STAMP35)
	@start=$$(date +%s); status=0; \
	$(VENV35)/bin/python -m pytest -q -m "not slow" -k "$(SPARK35_K)" $(SPARK35_TESTS) \
		|| status=$$?; \
	echo "core on pyspark $$($(VENV35)/bin/python -c 'import pyspark; print(pyspark.__version__)'):" \
		"$$(( $$(date +%s) - start )) s"; exit $$status

bench-gram: java $(STAMP)
	mkdir -p bench-data
	$(BIN)/python jobs/bench_gram.py --rows 10000 --cols 40000 --data bench-data \
		--json bench-data/gram-10000x40000.json

lint: $(STAMP)
	$(BIN)/ruff check blockmatrix jobs tests

clean:
	rm -rf $(DEMO) bench-data build *.egg-info $(VENV35)
