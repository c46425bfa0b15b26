# Benchmarks: `kvstore-cli bench` against a local 3-node cluster on loopback,
# and the same workloads against a local 3-member etcd 3.4 cluster.
# Benchmarks are not tests: nothing here fails on a slow number.

BENCH_DURATION   ?= 10s
BENCH_TOTAL      ?= 200000
BENCH_KEYSPACE   ?= 10000
BENCH_VALUE_SIZE ?= 256
BENCH_CLIENTS    ?= 64
BENCH_VIA        ?= all
# Where bench-compare keeps the result sets (JSON per workload and round).
BENCH_OUT        ?= $(TARGET_DIR)/bench
# bench-compare alternates kvstore and etcd this many times and reports
# medians: run-to-run spread on a shared VM is tens of percent.
BENCH_ROUNDS     ?= 3
# Only the workloads whose name matches this extended regex (e.g. ^put).
BENCH_ONLY       ?= .
BENCH_ENV = BENCH_DURATION=$(BENCH_DURATION) BENCH_TOTAL=$(BENCH_TOTAL) BENCH_KEYSPACE=$(BENCH_KEYSPACE) \
	BENCH_VALUE_SIZE=$(BENCH_VALUE_SIZE) BENCH_CLIENTS=$(BENCH_CLIENTS) BENCH_VIA=$(BENCH_VIA) \
	BENCH_ONLY='$(BENCH_ONLY)'

.PHONY: bench bench-etcd bench-compare bench-floor etcd-install

bench: ## Benchmark a local 3-node cluster on 127.0.0.1 (release build; ~1-2 min)
	$(CARGO) build --release --workspace --bins
	$(BENCH_ENV) scripts/bench-cluster.sh $(TARGET_DIR)/release

bench-etcd: etcd-install ## The same workloads against a local 3-member etcd 3.4 cluster
	$(CARGO) build --release -p kvstore-cli
	$(BENCH_ENV) BENCH_STORE=etcd scripts/bench-cluster.sh $(TARGET_DIR)/release

bench-compare: etcd-install ## kvstore and etcd, same workloads, alternating rounds, medians side by side (~2 min per round)
	$(CARGO) build --release --workspace --bins
	rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	@for round in $$(seq $(BENCH_ROUNDS)); do \
		echo "== round $$round of $(BENCH_ROUNDS): kvstore, then etcd" >&2; \
		$(BENCH_ENV) BENCH_RESULTS=$(BENCH_OUT)/kvstore-$$round scripts/bench-cluster.sh $(TARGET_DIR)/release || exit 1; \
		$(BENCH_ENV) BENCH_STORE=etcd BENCH_RESULTS=$(BENCH_OUT)/etcd-$$round scripts/bench-cluster.sh $(TARGET_DIR)/release || exit 1; \
	done
	@echo
	@scripts/bench-table.py \
		kvstore=$$(seq -s, -f '$(BENCH_OUT)/kvstore-%g' $(BENCH_ROUNDS)) \
		etcd=$$(seq -s, -f '$(BENCH_OUT)/etcd-%g' $(BENCH_ROUNDS)) | tee $(BENCH_OUT)/compare.md

# etcd from Debian (etcd-server 3.4, etcd-client for etcdctl); elsewhere put
# `etcd` and `etcdctl` on PATH.
# The single-client put latency target is 1.5x the floor of two fsyncs and
# two loopback round trips: this measures the floor's parts, a gRPC round
# trip, a single-node put and the three-node put (etcd's too when
# installed), minutes apart on this machine, and prints them against it.
bench-floor: ## Single-client put latency against its floor (2 fsyncs + 2 loopback round trips; ~30 s)
	$(CARGO) build --release --workspace --bins
	scripts/bench-floor.sh $(TARGET_DIR)/release

etcd-install:
	@if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null 2>&1 || \
		  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null; }; }; \
	else \
		echo "bench: install etcd 3.4 (etcd and etcdctl on PATH; Debian: apt-get install etcd-server etcd-client)" >&2; exit 1; \
	fi

# Profiling: perf (Debian linux-perf) + inferno (cargo install, into
# target/tools) on the leader while a bench workload runs.
PROFILE_ARGS ?= put --clients 64 --conns 3 --duration 10s
PROFILE_OUT  ?= $(TARGET_DIR)/profile
INFERNO_DIR  := $(TARGET_DIR)/tools/bin

.PHONY: profile

profile: ## Flamegraph of the leader under a bench workload (PROFILE_ARGS='get --clients 64 --conns 3 --duration 10s')
	$(CARGO) build --release --workspace --bins
	@command -v perf >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null 2>&1 || \
		  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }; }; } || \
		{ echo "profile: install perf (Debian: linux-perf)" >&2; exit 1; }
	@test -x $(INFERNO_DIR)/inferno-flamegraph || $(CARGO) install --quiet --locked --root $(TARGET_DIR)/tools inferno
	INFERNO_DIR=$(INFERNO_DIR) KVSTORE_CLI=$(TARGET_DIR)/release/kvstore-cli scripts/bench-cluster.sh $(TARGET_DIR)/release \
		scripts/profile-leader.sh $(PROFILE_OUT) $(PROFILE_ARGS)
