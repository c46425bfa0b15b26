# Benchmarks: `kvstore-cli bench` against a local 3-node cluster on loopback.
# Benchmarks are not tests: nothing here fails on a slow number.

BENCH_DURATION   ?= 10s
BENCH_TOTAL      ?= 200000
BENCH_KEYSPACE   ?= 10000
BENCH_VALUE_SIZE ?= 256
BENCH_CLIENTS    ?= 64
BENCH_VIA        ?= all

.PHONY: bench

bench: ## Benchmark a local 3-node cluster on 127.0.0.1 (release build; ~1-2 min)
	$(CARGO) build --release --workspace --bins
	BENCH_DURATION=$(BENCH_DURATION) BENCH_TOTAL=$(BENCH_TOTAL) BENCH_KEYSPACE=$(BENCH_KEYSPACE) \
	BENCH_VALUE_SIZE=$(BENCH_VALUE_SIZE) BENCH_CLIENTS=$(BENCH_CLIENTS) BENCH_VIA=$(BENCH_VIA) \
		scripts/bench-cluster.sh target/release
