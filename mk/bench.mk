# Benchmarks: `kvstore-cli bench` against a local 3-node cluster on loopback,
# and the same workloads against a local 3-member etcd 3.4 cluster.
# Benchmarks are not tests: nothing here fails on a slow number.

BENCH_DURATION   ?= 10s
BENCH_TOTAL      ?= 200000
BENCH_KEYSPACE   ?= 10000
BENCH_VALUE_SIZE ?= 256
BENCH_CLIENTS    ?= 64
BENCH_VIA        ?= all
# Where bench-compare keeps both result sets (JSON per workload).
BENCH_OUT        ?= $(TARGET_DIR)/bench
BENCH_ENV = BENCH_DURATION=$(BENCH_DURATION) BENCH_TOTAL=$(BENCH_TOTAL) BENCH_KEYSPACE=$(BENCH_KEYSPACE) \
	BENCH_VALUE_SIZE=$(BENCH_VALUE_SIZE) BENCH_CLIENTS=$(BENCH_CLIENTS) BENCH_VIA=$(BENCH_VIA)

.PHONY: bench bench-etcd bench-compare etcd-install

bench: ## Benchmark a local 3-node cluster on 127.0.0.1 (release build; ~1-2 min)
	$(CARGO) build --release --workspace --bins
	$(BENCH_ENV) scripts/bench-cluster.sh $(TARGET_DIR)/release

bench-etcd: etcd-install ## The same workloads against a local 3-member etcd 3.4 cluster
	$(CARGO) build --release -p kvstore-cli
	$(BENCH_ENV) BENCH_STORE=etcd scripts/bench-cluster.sh $(TARGET_DIR)/release

bench-compare: etcd-install ## kvstore and etcd, same workloads, one side-by-side table (~3 min)
	$(CARGO) build --release --workspace --bins
	rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	$(BENCH_ENV) BENCH_RESULTS=$(BENCH_OUT)/kvstore scripts/bench-cluster.sh $(TARGET_DIR)/release
	$(BENCH_ENV) BENCH_STORE=etcd BENCH_RESULTS=$(BENCH_OUT)/etcd scripts/bench-cluster.sh $(TARGET_DIR)/release
	@echo
	@scripts/bench-table.py kvstore=$(BENCH_OUT)/kvstore etcd=$(BENCH_OUT)/etcd | tee $(BENCH_OUT)/compare.md

# etcd from Debian (etcd-server 3.4, etcd-client for etcdctl); elsewhere put
# `etcd` and `etcdctl` on PATH.
etcd-install:
	@if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null; \
	else \
		echo "bench: install etcd 3.4 (etcd and etcdctl on PATH; Debian: apt-get install etcd-server etcd-client)" >&2; exit 1; \
	fi
