# `make demo` and `make test` each set up from nothing, then do their job.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml requirements-pinned.txt
	@echo "mtad setup: creating $(VENV) and installing requirements-pinned.txt and mtad (minutes the first time; pip is quiet meanwhile)"
	@start=$$(date +%s); set -e; \
	test -x $(BIN)/python || $(PY) -m venv $(VENV); \
	$(BIN)/python -m pip install -q -r requirements-pinned.txt; \
	$(BIN)/python -m pip install -q --no-deps -e .; \
	touch $(STAMP); \
	echo "mtad setup: done in $$(( $$(date +%s) - start )) s; run: . $(VENV)/bin/activate"

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/mtad demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/scan.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/model.py
	$(BIN)/python benchmarks/deploy.py
	$(BIN)/python benchmarks/serve_load.py

clean:
	rm -rf demo_out runs
