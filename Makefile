# Two commands do everything on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export MLOPS_HOME ?= $(CURDIR)/.mlops
export DAGSTER_HOME ?= $(MLOPS_HOME)/dagster
export SAGEMAKER_SUPPRESS_V2_WARNING := 1
UI_PORT ?= 3000

.PHONY: install run test ui lint clean-home endpoint-stop approve promote monitor

# (Re)install when the dependency files change; constraints.txt pins every package, uv too.
# pip brings uv, which installs the pinned set with parallel downloads (about 1 min; pip took 3).
# Then the bytecode, as pip does: where PYTHONDONTWRITEBYTECODE is set, nothing else writes the
# .pyc files, and every process would compile dagster, pandas... again (10 s more per import);
# scripts/compile_bytecode.py skips the packages' tests and what nothing here imports.
$(STAMP): pyproject.toml setup.py constraints.txt scripts/compile_bytecode.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e '.[dev]'
	$(BIN)/python scripts/compile_bytecode.py
	@touch $@

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: config/dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp config/dagster.yaml $@

run: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster asset materialize -m mlops_dagster --select '*' -c config/run_logging.yaml
	@$(BIN)/python -m mlops_dagster.report

# The tests run on TEST_WORKERS processes (pytest-xdist); each test has its own MLOPS_HOME and
# most wait on subprocesses, so a few more workers than cores pays. TEST_WORKERS=0 runs them in one.
# loadgroup: each test goes to the next free worker, longest first (tests/conftest.py), and an
# xdist_group's tests share one worker and so its module-scoped fixture.
TEST_WORKERS ?= 3

test: install
	@scripts/ensure_chromium.sh || echo "chromium unavailable: the browser test will be skipped"
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

ui: install $(DAGSTER_HOME)/dagster.yaml
	@echo "Dagster UI: http://127.0.0.1:$(UI_PORT)"
	$(BIN)/dagster dev -h 127.0.0.1 -p $(UI_PORT) -w workspace.yaml

# Stop the local endpoints (dev, staging, prod); on aws this deletes the endpoints.
endpoint-stop: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster job execute -m mlops_dagster -j stop_endpoints

# Approve a registered model version for staging and prod: make approve VERSION=3 [COMMENT="why"]
# What a user types is data: make neither expands it (`value`, and no export of the raw
# variables, which would expand `$(shell ...)`) nor pastes it into the recipe's shell line;
# mlops_dagster.approve reads it from the environment and builds the run config as a dict.
unexport VERSION COMMENT STATUS
approve: export APPROVE_VERSION := $(value VERSION)
approve: export APPROVE_COMMENT := $(value COMMENT)
approve: export APPROVE_STATUS := $(value STATUS)
approve: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m mlops_dagster.approve

# Deploy the latest Approved model to staging, then (smoke test passed) to prod; no retraining.
promote: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster asset materialize -m mlops_dagster --select staging_endpoint,prod_endpoint -c config/run_logging.yaml
	@$(BIN)/python -m mlops_dagster.report

# The loop after deployment (after `make run`): requests like the training data, then shifted ones,
# to the dev endpoint; the monitoring group judges each window, the drift check fails on the second,
# an alert goes to $(MLOPS_HOME)/alerts.jsonl and the drift trigger requests retraining.
# RETRAIN=1 also runs the retraining the drift trigger requests (only its emptiness is read).
unexport RETRAIN
monitor: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m mlops_dagster.monitoring.demo $(if $(value RETRAIN),--retrain)

lint: install
	$(BIN)/ruff check mlops_dagster training tests bench

# Removes the local object store, SageMaker state and Dagster history.
clean-home:
	rm -rf $(MLOPS_HOME)
