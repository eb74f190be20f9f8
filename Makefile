# The two set-up commands: `make run` (the daily job on embedded defaults) and `make test`.
# Each builds .venv on first use; nothing has to be installed by hand.

# Python 3.11 or 3.12 (pgserver, the embedded PostgreSQL, ships wheels up to 3.12): PYTHON when
# given, else the first of these that runs and is one of them. 3.11 comes first because this
# machine's disk holds the CPU torch wheel for 3.11; on 3.12 pip takes torch's PyPI wheel.
SUPPORTED_PYTHONS := 3.11 3.12
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	$$p -c 'import sys; sys.exit(f"{sys.version_info[0]}.{sys.version_info[1]}" not in "$(SUPPORTED_PYTHONS)".split())' \
	2>/dev/null && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel lies on this machine's disk; installing it first stops pip resolving a CUDA build.
TORCH_VERSION ?= 2.13.0
# The environment is rebuilt when the interpreter, torch or the project's dependencies change.
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)
STAMP := $(BIN)/.installed-py$(PYTHON_VERSION)-torch$(TORCH_VERSION)

# Dagster's instance config (dagster.yaml) lives at the repo root.
export DAGSTER_HOME ?= $(CURDIR)
# Where `make dev` serves the Dagster UI; the command line prints links to it.
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000
export DAGSTER_UI_URL ?= http://$(UI_HOST):$(UI_PORT)
# `make backfill`'s cadence unless CADENCE= says otherwise.
CADENCE ?= 1d
export TQDM_DISABLE := 1
# Dagster writes a backfill run's per-window events (planned and done materialisations) in batches
# instead of one database round trip each.
export DAGSTER_EVENT_BATCH_SIZE ?= 1000
export PYTHONUNBUFFERED := 1
# platformdirs (via pgserver) warns on every start without a private runtime folder.
export XDG_RUNTIME_DIR ?= $(CURDIR)/.xdg-runtime
$(shell mkdir -p -m 700 $(XDG_RUNTIME_DIR))

.PHONY: install run dev test migrate browser serve docs config-reference backfill status

$(STAMP): pyproject.toml setup.cfg
	@test -n "$(PYTHON_VERSION)" || { echo "make: no supported Python: looked for python3.11, python3.12 and python3 (3.11 or 3.12); set PYTHON=/path/to/python3.11"; exit 1; }
	@if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" != "$(PYTHON_VERSION)" ]; then \
		echo "make: .venv was built with another Python; rebuilding it with $(PYTHON) ($(PYTHON_VERSION))"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,docs]'
	rm -f $(BIN)/.installed*
	touch $@

install: $(STAMP)

# run, dev and serve share one rule for the checkpoint: on fully embedded defaults (no DATABASE_URL,
# no CHRONOS2_MODEL) a random-weight tiny one, announced loudly, so the whole path runs offline.
WITH_DB := $(BIN)/forecasting-pipeline with-db --demo-model-if-unset --

# Migrates, sets the instance's gpu pool limit, materialises the latest daily window and prints a summary.
run: install
	$(WITH_DB) $(BIN)/forecasting-pipeline run --cadence 1d

# Dagster UI (and daemon, for schedules and backfills) on the same instance and database as `make run`.
dev: install
	$(WITH_DB) sh -c '$(BIN)/forecasting-pipeline migrate && $(BIN)/forecasting-pipeline setup-instance && $(BIN)/dagster dev -h $(UI_HOST) -p $(UI_PORT)'

# A backfill of a cadence's chain and the ensemble over FROM..TO (window keys, inclusive), run by
# the daemon of a `make dev` running beside it; waits for the runs and prints what they did.
backfill: install
	@test -n "$(FROM)" -a -n "$(TO)" || { echo "make backfill FROM=<first window> TO=<last window> [CADENCE=1h|1d], e.g. FROM=2025-03-03 TO=2025-03-28"; exit 2; }
	$(BIN)/forecasting-pipeline with-db -- $(BIN)/forecasting-pipeline backfill --cadence $(CADENCE) --from $(FROM) --to $(TO) --with-ensemble

# Is it working: database, migrations, model, each cadence's newest window, the forecast service.
status: install
	$(WITH_DB) $(BIN)/forecasting-pipeline status

# The forecast service: one process that keeps Chronos-2 loaded, answers on-demand forecasts at
# http://127.0.0.1:8201 (docs at /docs) and is the model server of every run whose environment sets
# CHRONOS2_SERVER to its socket (e.g. `CHRONOS2_SERVER=$PWD/.chronos2.sock make dev`).
serve: install
	$(WITH_DB) sh -c '$(BIN)/forecasting-pipeline migrate && exec $(BIN)/forecasting-pipeline serve'


# Debian's chromium + chromium-driver for the real-browser test (a downloaded browser does not run
# here). Skipped when present; when apt cannot install them the target still succeeds and that
# test skips, saying why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "browser: not root and no sudo; the browser test will be skipped"; exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "browser: no apt-get; the browser test will be skipped"; exit 0; fi; \
	echo "browser: installing Debian's chromium and chromium-driver"; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
	|| { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	|| echo "browser: apt-get could not install chromium; the browser test will be skipped"

# The suite runs on TEST_WORKERS processes (pytest-xdist), a test module to each, so that a
# module's fixtures (a service, a database, a browser) are built once. Most tests wait on
# subprocesses, PostgreSQL or a browser, so two workers use two cores where one leaves one idle.
TEST_WORKERS ?= 2
test: install browser
	$(BIN)/forecasting-pipeline with-db -- $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

migrate: install
	$(BIN)/forecasting-pipeline with-db -- $(BIN)/forecasting-pipeline migrate

# The docs site, into build/site; --strict turns a broken link or anchor into a failure.
docs: install
	$(BIN)/mkdocs build --strict

# docs/configuration.md, written from the settings' declarations (a test keeps the two equal).
config-reference: install
	$(BIN)/forecasting-pipeline config-reference > docs/configuration.md

# The dashboard's screenshots in docs/images/, taken by its browser test in real Chromium.
.PHONY: screenshots
screenshots: install browser
	$(BIN)/forecasting-pipeline with-db -- $(BIN)/python -m pytest -q forecasting_pipeline_tests/test_dashboard.py
	mkdir -p docs/images
	cp test-artifacts/dashboard.png test-artifacts/dashboard-*-panel.png test-artifacts/dashboard-no-rows.png \
		test-artifacts/dashboard-empty.png docs/images/
