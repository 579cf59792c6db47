# The front door: `make demo` and `make test` do all the set-up on a fresh machine
# (Python 3.11 and Java 17 present, nothing else of ours).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-data

.PHONY: demo test lint bench-gram clean java

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
		--block-size 512 --master 'local[*]' --overwrite --verify

test: java $(STAMP)
	$(BIN)/python -m pytest -q --doctest-modules blockmatrix jobs/_support tests
	$(BIN)/ruff check blockmatrix jobs tests

bench-gram: java $(STAMP)
	mkdir -p bench-data
	$(BIN)/python jobs/bench_gram.py --rows 10000 --cols 40000 --data bench-data \
		--json bench-data/gram-10000x40000.json

lint: $(STAMP)
	$(BIN)/ruff check blockmatrix jobs tests

clean:
	rm -rf $(DEMO) bench-data build *.egg-info
