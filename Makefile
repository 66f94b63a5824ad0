# The two commands of the README, and what they stand on.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test unit demo bench lint clean

install: $(STAMP)

# Pinned versions from requirements.lock, then the project itself (editable, no deps, so
# nothing unpinned sneaks in). Re-runs only when the lock or pyproject changes.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

test: install lint
	$(BIN)/python -m pytest tests

unit: install
	$(BIN)/python -m pytest tests/unit

demo: install
	$(BIN)/orchestrator demo

bench: install
	$(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check --quiet .
	$(BIN)/mypy orchestrator tasks api db cli downstream benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
