# Three-node cluster for development: in docker compose (image built locally
# FROM scratch, nothing pulled) or as native processes. See docs/cluster.md.
# Included by the root Makefile (`-include mk/*.mk`).

CARGO             ?= cargo
IMAGE             ?= kvstore:local
# Compose: `docker compose` (v2 plugin) if present, else `docker-compose`
# (1.27+). Evaluated only by the targets that use it.
COMPOSE           ?= $(shell if docker compose version >/dev/null 2>&1; then echo 'docker compose'; \
                       elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; fi)
CLUSTER_PROJECT   ?= kvstore
CLUSTER_DATA      ?= $(CURDIR)/.cluster-data
CLUSTER_WAIT      ?= 60
# 1: strip debug info from the binaries copied into the image (~16 MB image);
# 0: keep the line tables for file:line backtraces (~70 MB).
IMAGE_STRIP       ?= 1
# Dashboard services of `make cluster`: started only when both images are
# already local (never pulled; `make observability-pull` pulls them).
PROMETHEUS_IMAGE  ?= prom/prometheus:v2.53.1
GRAFANA_IMAGE     ?= grafana/grafana:11.1.0

CLUSTER_IMAGE_DIR    := target/docker-image
CLUSTER_ENV = COMPOSE='$(COMPOSE)' COMPOSE_FILE_PATH='$(CURDIR)/docker/docker-compose.yml' \
	CLUSTER_PROJECT='$(CLUSTER_PROJECT)' KVSTORE_IMAGE='$(IMAGE)' \
	KVSTORE_CLUSTER_DATA='$(CLUSTER_DATA)' CLUSTER_CLI='$(CURDIR)/target/release/kvstore-cli' \
	CLUSTER_WAIT='$(CLUSTER_WAIT)' PROMETHEUS_IMAGE='$(PROMETHEUS_IMAGE)' GRAFANA_IMAGE='$(GRAFANA_IMAGE)'
CLUSTER_LOCAL_ENV = CLUSTER_LOCAL_DIR='$(CLUSTER_DATA)/local' \
	CLUSTER_SERVER='$(CURDIR)/target/release/kvstore-server' \
	CLUSTER_CLI='$(CURDIR)/target/release/kvstore-cli' CLUSTER_WAIT='$(CLUSTER_WAIT)'

.PHONY: image cluster-release cluster cluster-down cluster-clean cluster-status cluster-logs \
	cluster-local cluster-local-down cluster-local-clean cluster-compose-check

cluster-release:
	$(CARGO) build --release --workspace --bins

image: cluster-release ## Build the docker image (kvstore:local) FROM scratch (no registry needed)
	@STRIP='$(IMAGE_STRIP)' CLUSTER_IMAGE_DIR='$(CURDIR)/$(CLUSTER_IMAGE_DIR)' scripts/cluster-image.sh '$(IMAGE)'

cluster-compose-check:
	@test -n '$(COMPOSE)' || { echo "error: neither 'docker compose' nor 'docker-compose' found (set COMPOSE=...); 'make cluster-local' runs the cluster without docker" >&2; exit 1; }

cluster: cluster-compose-check image ## 3 nodes in docker compose (clients 127.0.0.1:50051-50053, status pages :9101-9103) + Prometheus/Grafana if their images are local
	@$(CLUSTER_ENV) scripts/cluster-docker.sh up

cluster-down: cluster-compose-check ## Stop the docker cluster, keep its data (.cluster-data/node-N)
	@$(CLUSTER_ENV) scripts/cluster-docker.sh down

cluster-clean: cluster-compose-check ## Stop the docker cluster, delete its data and network
	@$(CLUSTER_ENV) scripts/cluster-docker.sh clean

cluster-status: ## Status table of the running cluster (docker or local)
	@$(CLUSTER_ENV) scripts/cluster-docker.sh status

cluster-logs: cluster-compose-check ## Follow the docker cluster's logs
	@$(CLUSTER_ENV) scripts/cluster-docker.sh logs

cluster-local: cluster-release ## Start the same 3-node cluster as native processes (no docker)
	@$(CLUSTER_LOCAL_ENV) scripts/cluster-local.sh up

cluster-local-down: ## Stop the native cluster (SIGTERM, then SIGKILL), keep its data
	@$(CLUSTER_LOCAL_ENV) scripts/cluster-local.sh down

cluster-local-clean: ## Stop the native cluster and delete its data and logs
	@$(CLUSTER_LOCAL_ENV) scripts/cluster-local.sh clean
