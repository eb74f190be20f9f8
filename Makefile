# The two set-up commands: `make run` (the daily job on embedded defaults) and `make test`.
# Each builds .venv on first use; nothing has to be installed by hand.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU wheel lies on this machine's disk; installing it first stops pip resolving a CUDA build.
TORCH_VERSION ?= 2.13.0

# Dagster's instance config (dagster.yaml) lives at the repo root.
export DAGSTER_HOME ?= $(CURDIR)
export TQDM_DISABLE := 1
export PYTHONUNBUFFERED := 1
# platformdirs (via pgserver) warns on every start without a private runtime folder.
export XDG_RUNTIME_DIR ?= $(CURDIR)/.xdg-runtime
$(shell mkdir -p -m 700 $(XDG_RUNTIME_DIR))

.PHONY: install run dev test migrate clean-db browser serve

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Migrates, sets the instance's gpu pool limit, materialises the latest daily window and prints a summary.
run: install
	$(BIN)/forecasting-pipeline with-db -- $(BIN)/forecasting-pipeline run --cadence 1d

# Dagster UI (and daemon, for schedules and backfills) on the same instance and database as `make run`.
dev: install
	$(BIN)/forecasting-pipeline with-db -- sh -c '$(BIN)/forecasting-pipeline migrate && $(BIN)/forecasting-pipeline setup-instance && $(BIN)/dagster dev -h 127.0.0.1 -p 3000'

# The forecast service: one process that keeps Chronos-2 loaded, answers on-demand forecasts at
# http://127.0.0.1:8201 (docs at /docs) and is the model server of every run whose environment sets
# CHRONOS2_SERVER to its socket (e.g. `CHRONOS2_SERVER=$PWD/.chronos2.sock make dev`).
serve: install
	$(BIN)/forecasting-pipeline with-db -- sh -c '$(BIN)/forecasting-pipeline migrate && exec $(BIN)/forecasting-pipeline serve'


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

test: install browser
	$(BIN)/forecasting-pipeline with-db -- $(BIN)/python -m pytest -q $(PYTEST_ARGS)

migrate: install
	$(BIN)/forecasting-pipeline with-db -- $(BIN)/forecasting-pipeline migrate
