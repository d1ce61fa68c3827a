# `make run`: install, start Azurite and the app locally. `make test`: install, run every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 7071
AZURITE_DIR := .azurite

.PHONY: install run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.bin/azurite: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

local.settings.json:
	cp local.settings.sample.json local.settings.json

# checkov pins packages the app shares, so it gets a virtualenv of its own.
.venv-checkov/.installed: requirements-infra.txt
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-infra.txt
	touch $@

install: $(VENV)/.installed node_modules/.bin/azurite

# Azurite keeps its data in .azurite/ (ignored by git), so leads survive a restart.
run: install local.settings.json
	@mkdir -p $(AZURITE_DIR)
	@node_modules/.bin/azurite --silent --disableTelemetry --skipApiVersionCheck --loose \
		--location $(AZURITE_DIR) & echo $$! > $(AZURITE_DIR)/pid; \
	trap 'kill $$(cat $(AZURITE_DIR)/pid) 2>/dev/null' EXIT INT TERM; \
	$(BIN)/python -c "from leads.azurite import wait_until_listening; wait_until_listening(10000, 10001, 10002)"; \
	echo; \
	echo "Send a test lead:"; \
	echo "  curl -s -X POST http://localhost:$(PORT)/api/leads -H 'Content-Type: application/json' -d @tests/fixtures/marketplace/https-documented-example.json"; \
	echo "Then: $(BIN)/python -m leads list"; \
	echo; \
	$(BIN)/python -m leads serve --port $(PORT)

test: install .venv-checkov/.installed
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-checkov node_modules $(AZURITE_DIR) .pytest_cache .hypothesis
