# `make run`: install, start Azurite and the app locally. `make test`: install, run every test.
# Each install step says what it installs and roughly how long it takes, and runs only when its
# requirements changed. Ports: make run PORT=7072 AZURITE_BLOB_PORT=10010 AZURITE_QUEUE_PORT=10011 AZURITE_TABLE_PORT=10012
# Azure runs the app on Python 3.12 (infra/app/api.bicep: functionAppConfig.runtime), so make uses
# python3.12 where it is on the path, else python3 (with a warning). PYTHON=... picks another.
DEPLOYED_PYTHON := 3.12
PYTHON ?= $(if $(shell command -v python$(DEPLOYED_PYTHON) 2>/dev/null),python$(DEPLOYED_PYTHON),python3)
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 7071
AZURITE_BLOB_PORT ?= 10000
AZURITE_QUEUE_PORT ?= 10001
AZURITE_TABLE_PORT ?= 10002
# The suite runs in two processes (pytest-xdist): most of a test is this process's CPU (the SDKs), so
# the second core does the other half; tests share nothing but the machine (each its own tables).
TEST_WORKERS ?= 2
AZURITE_DIR := .azurite
# `step "what" command...`: say what is installed, run it, say how long it took.
STEP = step() { echo "==> $$1"; shift; started=$$(date +%s); "$$@" || exit 1; echo "    done in $$(( $$(date +%s) - started )) s"; }; step

.PHONY: install run test bench clean

# The virtualenv is stamped with its Python's version: one made by another version (an older
# checkout's 3.11) is made again, since its packages were built for that version.
VENV_STAMP := $(VENV)/.python-$(PYTHON_VERSION)

$(VENV_STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "make: Python 3.12 (what Azure runs) is needed; $(PYTHON) is " + sys.version.split()[0] + " (install python3.12, or set PYTHON=python3.12)")'
	@if [ "$(PYTHON_VERSION)" != "$(DEPLOYED_PYTHON)" ]; then echo "==> Warning: Azure runs Python $(DEPLOYED_PYTHON) and $(PYTHON) is $(PYTHON_VERSION): what passes here may not pass there"; fi
	@if [ -e $(VENV) ] && [ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$(PYTHON_VERSION)" ]; then \
		echo "==> $(VENV)/ was made by another Python ($$($(BIN)/python --version 2>&1 || echo 'none that runs')): making it again with $(PYTHON) $(PYTHON_VERSION)"; \
		rm -rf $(VENV); fi
	@if [ ! -x $(BIN)/python ]; then $(STEP) "Creating the virtualenv $(VENV)/ with $(PYTHON) (Python $(PYTHON_VERSION); a few seconds)" $(PYTHON) -m venv $(VENV); fi
	@rm -f $(VENV)/.python-* && touch $@

$(VENV)/.installed: requirements.txt requirements-dev.txt $(VENV_STAMP)
	@$(STEP) "Installing the Python packages (requirements-dev.txt: the Azure SDKs, pydantic, pytest...) into $(VENV)/; a minute or two the first time" \
		$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

node_modules/.bin/azurite: package.json
	@command -v npm >/dev/null || { echo "make: npm (Node 20) is needed for Azurite, the storage emulator"; exit 1; }
	@$(STEP) "Installing Azurite, the Azure Storage emulator, from npm into node_modules/; under a minute the first time" \
		npm install --no-audit --no-fund --loglevel=error
	@touch $@

local.settings.json:
	@cp local.settings.sample.json local.settings.json
	@echo "==> Created local.settings.json from local.settings.sample.json: edit the copy, not the sample"

# checkov pins packages the app shares, so it gets a virtualenv of its own.
.venv-checkov/.installed: requirements-infra.txt
	@$(STEP) "Installing checkov (the template checks of tests/test_infra.py) into its own virtualenv .venv-checkov/; a minute or two the first time" \
		sh -c '$(PYTHON) -m venv .venv-checkov && .venv-checkov/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-infra.txt'
	@touch $@

install: $(VENV)/.installed node_modules/.bin/azurite

# Checks every port before it starts anything; Azurite keeps its data in .azurite/ (ignored by
# git), so leads survive a restart. Ctrl+C stops the app, then Azurite.
run: install local.settings.json
	@$(BIN)/python -m leads.local.local_run --port $(PORT) --location $(AZURITE_DIR) \
		--blob-port $(AZURITE_BLOB_PORT) --queue-port $(AZURITE_QUEUE_PORT) --table-port $(AZURITE_TABLE_PORT)

test: install .venv-checkov/.installed
	@echo "==> Running every test with $$($(BIN)/python --version) ($(VENV)/, from $(PYTHON); Azure runs $(DEPLOYED_PYTHON)), in $(TEST_WORKERS) processes; each starts an Azurite on free ports of its own; some ten minutes"
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-checkov node_modules $(AZURITE_DIR) .pytest_cache .hypothesis
