# Micro-benchmarks (criterion), in-process, no cluster: the WAL append path
# (wal/benches/append.rs), the Raft core's step loop (raft/benches/step.rs)
# and the state-machine apply path (server/benches/apply.rs). Each file's
# header says what it measures.
# Benchmarks are not tests: nothing here fails on a slow number.
# Included by the root Makefile (`-include mk/*.mk`).
#
# Compare two runs (criterion keeps results under $(TARGET_DIR)/criterion):
#   make bench-micro BENCH_MICRO_ARGS='--save-baseline before'
#   ... change something ...
#   make bench-micro BENCH_MICRO_ARGS='--baseline before'
# Compare runs made on an otherwise idle machine: a parallel build or cluster
# benchmark moves these numbers by tens of percent.
# One crate, a filter: make bench-micro BENCH_MICRO_PACKAGES='-p kvstore-raft' BENCH_MICRO_ARGS=raft_leader
# Smoke run, each benchmark once and unmeasured: make bench-micro BENCH_MICRO_ARGS=--test

CARGO                ?= cargo
BENCH_MICRO_PACKAGES ?= -p kvstore-wal -p kvstore-raft -p kvstore-server
# Arguments for criterion (after `--`): a name filter, --save-baseline NAME,
# --baseline NAME, --measurement-time SECONDS, ...
BENCH_MICRO_ARGS     ?=

.PHONY: bench-micro

# `--bench '*'`: bench targets only; the libraries' unit tests would reject
# criterion's arguments.
bench-micro: ## Criterion micro-benchmarks: WAL append, Raft step loop, apply (~3 min; BENCH_MICRO_ARGS='--baseline NAME')
	$(CARGO) bench $(BENCH_MICRO_PACKAGES) --bench '*' -- $(BENCH_MICRO_ARGS)

