# The two commands of the README, and what they stand on.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test unit demo bench lint clean

install: $(STAMP)

# Pinned versions from requirements-dev.lock (which includes requirements.lock, the runtime:
# a developer's .venv holds both, the image only the runtime), then the project itself
# (editable, no deps, so nothing unpinned sneaks in). Re-runs only when a lock or pyproject
# changes.
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: set PYTHON=python3.11 (found " + sys.version.split()[0] + ")")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

test: install lint
	$(BIN)/python -m pytest tests

unit: install
	$(BIN)/python -m pytest tests/unit

demo: install
	$(BIN)/orchestrator demo

bench: install
	QUICK=$(QUICK) $(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check --quiet .
	$(BIN)/mypy orchestrator tasks api db cli downstream benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
