# sendit notebooks — `make demo` and `make test` are the Quick start.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: help demo test test-fast lint typecheck bench system-deps notebooks-clean clean

help:
	@echo "make demo   - set up .venv, make sample batches, run the pipeline on them (no server needed)"
	@echo "make test   - install test extras and servers, run the whole test suite"
	@echo "make bench  - run the side-by-side benchmarks in benchmarks/"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed; run make PYTHON=python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml scripts/fetch_deid_data.py
	$(BIN)/pip install -q -e ".[test,bench]"
	$(BIN)/python scripts/fetch_deid_data.py $(VENV)/share/deid-data
	@touch $@

system-deps:
	bash scripts/install-system-deps.sh

demo: $(VENV)/.installed
	$(BIN)/python -m sendit_helpers.samples.synthetic $(DEMO)/batches --batches 2
	$(BIN)/sendit run $(DEMO)/batches --work $(DEMO)/work
	@echo
	@echo "Done. Look at:"
	@echo "  $(DEMO)/work/<batch>/phi/notebooks/   the executed notebooks (they show PHI; they stay on site)"
	@echo "  $(DEMO)/work/<batch>/phi/disposition.csv   what became of every input file"
	@echo "  $(DEMO)/work/<batch>/release/          what may leave the site"
	@echo "  $(DEMO)/work/storage/                  the embedded local store (images + index.sqlite)"
	@echo "Open the notebooks interactively with: $(BIN)/jupyter lab notebooks/"

test: $(VENV)/.installed-test system-deps
	$(BIN)/python -m pytest -p no:cacheprovider

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -p no:cacheprovider -m "not servers and not browser"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check sendit_helpers tests benchmarks scripts
	$(BIN)/mypy

bench: $(VENV)/.installed-test system-deps
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache
