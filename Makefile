# Thin named targets; everything installs into .venv from pyproject.toml first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config/tensorwall.yaml

.PHONY: install run demo test lint typecheck bench fake-upstream clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/tensorwall-proxy serve --config $(CONFIG)

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check tensorwall_proxy tests scripts

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python scripts/bench.py

fake-upstream: install
	$(BIN)/python scripts/fake_upstream.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
