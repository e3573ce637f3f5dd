# Two commands do everything on a fresh machine:  make run  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9

.PHONY: setup run monitor-demo test test-fast test-slow lint format lab notebooks clean-runs
.PHONY: docs docs-parameters

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	# --compile-bytecode: without .pyc files every kernel recompiles pandas/sklearn/mlflow
	# on import (10 s per stage where PYTHONDONTWRITEBYTECODE is set).
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode \
		--constraint constraints.txt --editable '.[test,kfp,aws,docs]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies

run: setup  ## the default churn experiment, end to end: pipeline, then the monitoring loop
	$(BIN)/mlfolio run parameters/churn.yaml
	$(BIN)/python tools/monitor_demo.py parameters/churn.yaml

monitor-demo: setup  ## serve the champion with a prediction log, send drifted traffic, monitor
	$(BIN)/python tools/monitor_demo.py parameters/churn.yaml

TEST_WORKERS ?= 2

# `make test` is the two tiers in order: the slow one starts only once the fast one passed.
test: test-fast test-slow  ## the whole test suite, on TEST_WORKERS processes (one module stays on one)

test-fast: setup  ## unit tests (no end-to-end runs, no servers to start)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" --durations=15

test-slow: setup  ## the end-to-end runs and the tests against started servers
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m slow --durations=15

lint: setup  ## ruff lint and format check, the import floor plan (CI runs it before the tests)
	$(BIN)/ruff check lib tests benchmarks tools
	$(BIN)/ruff format --check lib tests benchmarks tools
	$(BIN)/lint-imports

# NO_MKDOCS_2_WARNING hides mkdocs-material's banner about its end of life (May 2027),
# which is not a build warning; --strict still fails on every real one.
docs: setup  ## the manual: docs/ built by MkDocs into site/ (fails on any warning)
	$(BIN)/python tools/gen_parameters_doc.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-parameters: setup  ## regenerate docs/parameters-reference.md from the config models
	$(BIN)/python tools/gen_parameters_doc.py

format: setup
	$(BIN)/ruff format lib tests benchmarks tools

# jupyter refuses to start as root ("Running as root is not recommended") without this.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: setup  ## JupyterLab on the stage notebooks (--allow-root when run as root)
	$(BIN)/jupyter lab $(ALLOW_ROOT) notebooks/

notebooks: setup  ## regenerate notebooks/ from tools/build_notebooks.py (no outputs)
	$(BIN)/python tools/build_notebooks.py

clean-runs:
	rm -rf runs/*/ mlflow.db mlartifacts
