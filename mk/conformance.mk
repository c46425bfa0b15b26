# Conformance suite: YAML fault scenarios (scenarios/) run against clusters of
# the locally built image in docker, histories checked for linearizability,
# outcomes snapshot-tested with insta. See conformance/README.md.
# Included by the root Makefile (`-include mk/*.mk`).

CARGO             ?= cargo
IMAGE             ?= kvstore:local
PYTHON            ?= python3
VENV              ?= .venv
CONFORMANCE_BIN   := $(abspath $(TARGET_DIR)/release/kvstore-conformance)
CONFORMANCE_OUT   ?= conformance/out
# Scenario names for conformance-run (empty: all of scenarios/).
SCENARIOS         ?=
# Self-check depth for conformance-faults: quick (the pairs `make conformance`
# runs: stale-reads, stale-compare, watch-resume-late, lease-early-expiry) or
# full (every fault against every scenario meant to catch it).
FAULTS            ?= full
PYTHON_CLIENT_DIR := clients/python
PYTHON_GENERATED  := $(PYTHON_CLIENT_DIR)/generated
PYTHON_TOOLS      := $(VENV)/.grpcio-tools-installed

CONFORMANCE_ENV = CONFORMANCE_BIN='$(CONFORMANCE_BIN)' CONFORMANCE_OUT='$(CONFORMANCE_OUT)' \
	KVSTORE_CONFORMANCE_IMAGE='$(IMAGE)' CARGO='$(CARGO)' VENV='$(VENV)'

.PHONY: conformance conformance-run conformance-snapshots conformance-faults conformance-clients \
	conformance-cleanup python-client

conformance: image python-client tools ## Conformance suite: every scenario in docker + snapshots + fault self-checks + Python/grpcurl clients
	@$(CONFORMANCE_ENV) scripts/conformance.sh

conformance-run: image ## Run scenarios only, no snapshot check (SCENARIOS="leader-kill ...")
	@$(CONFORMANCE_ENV) scripts/conformance-cleanup.sh
	$(CONFORMANCE_BIN) run --image '$(IMAGE)' --out '$(CONFORMANCE_OUT)' $(SCENARIOS)

conformance-snapshots: ## Compare the last run's outcomes (conformance/out) with the insta snapshots
	KVSTORE_CONFORMANCE_OUT='$(CURDIR)/$(CONFORMANCE_OUT)' $(CARGO) test -p kvstore-conformance --test outcomes -- --ignored

conformance-faults: image ## Prove the suite catches bugs: nodes with a deliberate fault must fail their scenarios (FAULTS=quick|full)
	@$(CONFORMANCE_ENV) scripts/conformance-faults.sh '$(FAULTS)'

conformance-clients: image python-client tools ## Python client (generated from proto/) and grpcurl (both ports) against a fresh docker cluster
	@$(CONFORMANCE_ENV) scripts/conformance-clients.sh

conformance-cleanup: ## Remove containers and networks left by interrupted conformance runs
	@$(CONFORMANCE_ENV) scripts/conformance-cleanup.sh

python-client: $(PYTHON_TOOLS) ## Generate the Python client from proto/ into clients/python/generated (grpcio-tools in .venv)
	rm -rf '$(PYTHON_GENERATED)'
	mkdir -p '$(PYTHON_GENERATED)'
	$(VENV)/bin/python -m grpc_tools.protoc -I proto \
		--python_out='$(PYTHON_GENERATED)' --pyi_out='$(PYTHON_GENERATED)' --grpc_python_out='$(PYTHON_GENERATED)' \
		proto/kvstore/v1/kv.proto proto/kvstore/raft/v1/raft.proto

$(PYTHON_TOOLS): $(PYTHON_CLIENT_DIR)/requirements.txt
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(PYTHON_CLIENT_DIR)/requirements.txt
	touch $@
