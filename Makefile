# `make run`: install, start Azurite and the app locally. `make test`: install, run every test.
# Each install step says what it installs and roughly how long it takes, and runs only when its
# requirements changed. Ports: make run PORT=7072 AZURITE_BLOB_PORT=10010 AZURITE_QUEUE_PORT=10011 AZURITE_TABLE_PORT=10012
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 7071
AZURITE_BLOB_PORT ?= 10000
AZURITE_QUEUE_PORT ?= 10001
AZURITE_TABLE_PORT ?= 10002
AZURITE_DIR := .azurite
# `step "what" command...`: say what is installed, run it, say how long it took.
STEP = step() { echo "==> $$1"; shift; started=$$(date +%s); "$$@" || exit 1; echo "    done in $$(( $$(date +%s) - started )) s"; }; step

.PHONY: install run test bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make: Python 3.11 or later is needed; $(PYTHON) is " + sys.version.split()[0] + " (set PYTHON=python3.11)")'
	@$(STEP) "Creating the virtualenv $(VENV)/ with $(PYTHON) (a few seconds)" $(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
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
	@$(BIN)/python -m leads.local_run --port $(PORT) --location $(AZURITE_DIR) \
		--blob-port $(AZURITE_BLOB_PORT) --queue-port $(AZURITE_QUEUE_PORT) --table-port $(AZURITE_TABLE_PORT)

test: install .venv-checkov/.installed
	@echo "==> Running every test (they start Azurite on free ports themselves; a few minutes)"
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-checkov node_modules $(AZURITE_DIR) .pytest_cache .hypothesis
