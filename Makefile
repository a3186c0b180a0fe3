# Every target sets itself up: a virtual environment in .venv with the package and its tools.
# The supported range, tested: the lowest Airflow pyproject.toml claims (its latest patch) and
# the newest, each on the lowest and a recent Python. Each combination has its own venv.
# pyenv's interpreters when present (its shims fail for versions not selected), else PATH's.
PYTHON_LOW ?= $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python)),python3.10)
PYTHON_HIGH ?= $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python)),python3.12)
AIRFLOW_LOW ?= 3.1.8
AIRFLOW_HIGH ?= 3.3.2
MATRIX ?= $(PYTHON_LOW):$(AIRFLOW_LOW) $(PYTHON_HIGH):$(AIRFLOW_LOW) $(PYTHON_LOW):$(AIRFLOW_HIGH) \
	$(PYTHON_HIGH):$(AIRFLOW_HIGH)

# The main venv: the newest Airflow on the recent Python, or on python3 where that Python is
# missing (a fresh machine without pyenv still runs make demo).
PYTHON ?= $(if $(shell $(PYTHON_HIGH) -c "" 2>/dev/null && echo yes),$(PYTHON_HIGH),python3)
VENV ?= .venv
AIRFLOW_VERSION ?= $(AIRFLOW_HIGH)
BIN := $(VENV)/bin
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The stamp names the Python too: a venv built on another one is rebuilt.
STAMP := $(VENV)/.installed-py$(PY_VERSION)-af$(AIRFLOW_VERSION)
# Airflow 3.1's models/crypto.py sets an attribute on cryptography's MultiFernet, which
# cryptography 51 made a Rust class: every connection with a password fails to load
# ("The conn_id ... isn't defined"). Airflow 3.2 wraps it; 3.1 needs cryptography < 51.
AIRFLOW_PINS := $(if $(filter 3.1.%,$(AIRFLOW_VERSION)),"cryptography<51")

.PHONY: demo test lint bench venv clean suite compat test-matrix e2e-ui e2e e2e-celery

$(STAMP): pyproject.toml Makefile
	@if test -x $(BIN)/python && test "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$(PY_VERSION)"; then \
		echo "$(VENV) runs another Python than $(PY_VERSION): rebuilding it"; rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)" $(AIRFLOW_PINS) -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

## demo: run the main job against the simulators (embedded default, nothing to configure)
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## bench: run every benchmark scenario against simulators in their own process; writes
## bench/results/latest.json and latest.png (BENCH_ARGS="--quick" for a smoke run)
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## test: everything: lint and type-check, the whole suite on the newest Airflow and a recent
## Python (.venv), the whole suite again on the lowest supported Airflow and Python (compat), a
## real Airflow deployment (e2e) and the Sequence syncs view in a browser (e2e-ui)
test: lint suite compat e2e e2e-ui

## compat: the whole suite on the lowest supported Python and Airflow, in its own venv
## (.venv-py<version>-af<version>; PYTEST_ARGS to narrow it)
compat:
	@version="$$($(PYTHON_LOW) -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
		$(MAKE) --no-print-directory suite PYTHON="$(PYTHON_LOW)" AIRFLOW_VERSION="$(AIRFLOW_LOW)" \
		VENV=".venv-py$$version-af$(AIRFLOW_LOW)"

## suite: the whole test suite, without lint (PYTEST_ARGS to narrow it), in TEST_WORKERS
## processes (pytest-xdist; 0 runs it in this one). Most tests wait on HTTP, subprocesses and
## Airflow's task runner rather than compute, so more workers than cores still shortens it.
## Tests marked serial time requests against a rate limit's window: they run after, alone
## (pytest exits 5 when PYTEST_ARGS selects none of them).
TEST_WORKERS ?= 4
suite: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not serial" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m serial $(PYTEST_ARGS) || test $$? -eq 5

## test-matrix: lint once, then the whole suite on every Python x Airflow of MATRIX, each in
## its own venv (.venv-py<version>-af<version>, the main .venv for its own combination); stops
## at the first combination that fails
test-matrix: lint
	@set -e; for combo in $(MATRIX); do \
		python="$${combo%%:*}"; airflow="$${combo##*:}"; \
		version="$$($$python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
		venv=".venv-py$$version-af$$airflow"; \
		if [ "$$version:$$airflow" = "$(PY_VERSION):$(AIRFLOW_VERSION)" ]; then venv="$(VENV)"; fi; \
		echo "== Python $$version, Airflow $$airflow ($$venv)"; \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory suite PYTHON="$$python" AIRFLOW_VERSION="$$airflow" VENV="$$venv"; \
		echo "== Python $$version, Airflow $$airflow: passed in $$(( $$(date +%s) - start )) s"; \
	done

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
	$(BIN)/python -m pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)" $(AIRFLOW_PINS) -e ".[dev,e2e-celery]"
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .venv-py* .demo .e2e .pytest_cache .mypy_cache .ruff_cache
