# make test / make demo work on a fresh clone: both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lint docs clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch lying on this disk; users' installs stay unpinned (torch>=2.4).
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[inference,dev]"
	# compile the numba kernels into their on-disk cache once (tiny analyses through the API):
	# otherwise the first analysis, and each test worker of the first make test, spends 10-15 s
	$(BIN)/python -m refusalstats._precompile || echo "numba kernels not precompiled: the first analysis compiles them"
	$(BIN)/python -m compileall -q src  # bytecode too: each test worker compiled the package itself
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1) || echo "chromium not installable: the browser test will skip"
	# two workers on two cores: one BLAS/OpenMP thread each (OpenBLAS's own threads oversubscribe
	# the cores and spin; measured 40% less CPU on test_simulate/rates/logit at load 10).
	# Bytecode on: this machine sets PYTHONDONTWRITEBYTECODE, so every worker and every child
	# python recompiled the package and pytest re-rewrote every test module's asserts (~5 CPU s
	# a worker); with it the first run writes __pycache__ (90 -> 84 s wall) and later ones reuse it (79 s)
	# --dist loadgroup: a module's tests that share one of its module-scoped fixtures run on one
	# worker (tests/conftest.py marks them), so the drawn report and the hierarchical fits are
	# built once, not once per worker (idle 2 cores: 92-95 s -> 79 s)
	env -u PYTHONDONTWRITEBYTECODE OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
		$(BIN)/python -m pytest -q -n 2 --dist loadgroup --doctest-modules tests src/refusalstats

demo: $(STAMP)
	$(BIN)/refusalstats demo

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

# API reference from the docstrings + the method pages (Sphinx, numpydoc, MyST), warnings as errors
docs: $(STAMP)
	$(BIN)/pip install --quiet -e ".[docs]"
	$(BIN)/python -m sphinx -b html -W --keep-going -q docs docs/_build/html
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_docs.py  # offline: no network loads

lint: $(STAMP)
	$(BIN)/ruff check src inference tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
