# Every target sets itself up: a virtual environment in .venv with the package and its tools.
PYTHON ?= python3
VENV ?= .venv
AIRFLOW_VERSION ?= 3.3.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(AIRFLOW_VERSION)

.PHONY: demo test lint bench venv clean e2e-ui e2e e2e-celery

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)" -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## demo: run the main job against the simulators (embedded default, nothing to configure)
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## bench: run every benchmark scenario against simulators in their own process; writes
## bench/results/latest.json and latest.png (BENCH_ARGS="--quick" for a smoke run)
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## test: lint, type-check and run the whole test suite
test: lint
	$(BIN)/python -m pytest

## e2e-ui: the Sequence syncs view in Debian's Chromium (installed by scripts/chromium.sh when
## missing) against airflow api-server on the demo's state; saves docs/sequence-syncs.png
e2e-ui: $(STAMP)
	SEQUENCES_E2E_UI=1 $(BIN)/python -m pytest tests/test_ui_browser.py -v
## e2e: a real Airflow deployment on loopback (PostgreSQL, api-server, scheduler, dag-processor,
## triggerer, LocalExecutor) against the simulators; asserts and prints its figures
e2e: $(STAMP)
	bash scripts/e2e.sh local

## e2e-celery: the same checks with the CeleryExecutor, Redis and two Celery workers
e2e-celery: $(VENV)/.installed-e2e-celery
	bash scripts/e2e.sh celery

$(VENV)/.installed-e2e-celery: $(STAMP)
	$(BIN)/python -m pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)" -e ".[dev,e2e-celery]"
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .demo .e2e .pytest_cache .mypy_cache .ruff_cache
