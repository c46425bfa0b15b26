//! Criterion micro-benchmarks of the Raft core's CPU cost per entry: the pure
//! state machine (propose / step -> `Ready` -> advance) with no I/O, driven
//! the way `raft/tests/cluster` drives it but without its bookkeeping.
//! Persisting and applying are no-ops; messages move by value.
//!
//! - `raft_leader_commit/N`: the leader of a 3-node group proposes N entries
//!   of 256 bytes, hands out its `Ready`s, and steps one successful
//!   `AppendEntriesResponse` per `AppendEntries` it sent (the acks are
//!   synthesized, the followers do not run) until the entries are committed
//!   and handed out for applying. The leader's cost per entry.
//! - `raft_follower_append/64`: a follower steps one `AppendEntries` of 64
//!   entries (also committing the previous 64, as in steady-state
//!   pipelining) and handles the `Ready`s that follow. The follower's cost.
//! - `raft_group_commit/N`: all three cores, messages delivered in FIFO
//!   order, from N proposals until no core has anything left to do (every
//!   replica applied the entries). The whole group's cost per entry.
//!
//! Throughput is reported in entries per second.
//!
//! ```text
//! cargo bench -p kvstore-raft --bench step                              # all
//! cargo bench -p kvstore-raft --bench step -- raft_leader_commit        # a filter
//! cargo bench -p kvstore-raft --bench step -- --save-baseline before    # then
//! cargo bench -p kvstore-raft --bench step -- --baseline before         # compare
//! cargo bench -p kvstore-raft --bench step -- --test                    # smoke run
//! ```
//!
//! `make bench-micro` runs it with the WAL and apply benchmarks.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvstore_raft::{
    Config, Entry, EntryKind, HardState, Message, MessageBody, NodeId, RaftCore, Role,
};

/// Voters of the group; node 1 is made leader.
const VOTERS: [NodeId; 3] = [1, 2, 3];
const LEADER: NodeId = 1;
const FOLLOWER: NodeId = 2;
/// Bytes of every proposed command (the `make bench` default value size).
const PAYLOAD_BYTES: usize = 256;
/// Entries proposed per iteration of the leader and group benchmarks.
const PROPOSAL_COUNTS: [usize; 3] = [1, 16, 64];
/// Entries per `AppendEntries` in the follower benchmark
/// (`ENTRIES_PER_APPEND_MAX_DEFAULT`).
const APPEND_ENTRY_COUNT: usize = 64;
/// Once a core holds this many entries it is compacted (untimed), so memory
/// stays bounded however many iterations criterion runs.
const LOG_ENTRIES_MAX: usize = 16 * 1024;
/// Upper bound on message deliveries while electing the leader.
const ELECTION_DELIVERIES_MAX: usize = 1_000;

fn config(id: NodeId) -> Config {
    Config {
        seed: 1,
        ..Config::new(id, VOTERS.to_vec())
    }
}

/// Hands out every pending `Ready` of `node` as a driver with instant,
/// in-memory storage would: persist (nothing), queue the messages, apply
/// (nothing), advance.
fn drain_ready(node: &mut RaftCore, outbox: &mut VecDeque<Message>) {
    while node.has_ready() {
        let ready = node.ready();
        black_box((&ready.hard_state, &ready.entries, &ready.committed_entries));
        outbox.extend(ready.messages);
        node.advance();
    }
}

/// Compacts `node` up to what it applied once its log is long (untimed).
fn compact_if_long(node: &mut RaftCore) {
    if node.log_entries().len() >= LOG_ENTRIES_MAX {
        node.compact(node.applied_index()).expect("compact");
    }
}

fn payloads(count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|_| vec![0xab; PAYLOAD_BYTES]).collect()
}

/// Three cores and the wire between them.
struct Group {
    /// Indexed by `id - 1`.
    nodes: Vec<RaftCore>,
    wire: VecDeque<Message>,
}

impl Group {
    /// A fresh group in which node [`LEADER`] won the first election.
    fn elected() -> Self {
        let nodes = VOTERS
            .iter()
            .map(|id| RaftCore::new(config(*id), HardState::default(), None, vec![]).expect("node"))
            .collect();
        let mut group = Group {
            nodes,
            wire: VecDeque::new(),
        };
        group.node_mut(LEADER).campaign();
        let deliveries = group.run_until_quiet();
        assert!(deliveries < ELECTION_DELIVERIES_MAX);
        assert_eq!(group.node_mut(LEADER).role(), Role::Leader);
        group
    }

    fn node_mut(&mut self, id: NodeId) -> &mut RaftCore {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Handles `Ready`s and delivers messages until every core is idle;
    /// returns the number of messages delivered.
    fn run_until_quiet(&mut self) -> usize {
        let mut deliveries = 0;
        loop {
            for node in &mut self.nodes {
                drain_ready(node, &mut self.wire);
            }
            let Some(message) = self.wire.pop_front() else {
                return deliveries;
            };
            deliveries += 1;
            let to = message.to;
            self.node_mut(to).step(message);
        }
    }

    /// Proposes `count` entries at the leader and runs the group until idle;
    /// returns the time that took (compaction excluded).
    fn commit_next(&mut self, count: usize) -> Duration {
        let payloads = payloads(count);
        let started = Instant::now();
        let leader = self.node_mut(LEADER);
        for payload in payloads {
            leader.propose(payload).expect("propose");
        }
        let target = leader.last_index();
        self.run_until_quiet();
        let elapsed = started.elapsed();
        for node in &mut self.nodes {
            assert_eq!(node.applied_index(), target, "every replica applied");
            compact_if_long(node);
        }
        elapsed
    }
}

/// The leader alone; its followers' answers are synthesized.
struct Leader {
    node: RaftCore,
    outbox: VecDeque<Message>,
}

impl Leader {
    fn elected() -> Self {
        let mut group = Group::elected();
        Leader {
            node: group.nodes.swap_remove((LEADER - 1) as usize),
            outbox: VecDeque::new(),
        }
    }

    /// Proposes `count` entries and acknowledges every append until the
    /// leader is idle; returns the time that took (compaction excluded).
    fn commit_next(&mut self, count: usize) -> Duration {
        let payloads = payloads(count);
        let started = Instant::now();
        for payload in payloads {
            self.node.propose(payload).expect("propose");
        }
        let target = self.node.last_index();
        loop {
            drain_ready(&mut self.node, &mut self.outbox);
            if self.outbox.is_empty() {
                break;
            }
            while let Some(message) = self.outbox.pop_front() {
                if let MessageBody::AppendEntries {
                    prev_log_index,
                    entries,
                    ..
                } = message.body
                {
                    self.node.step(Message {
                        from: message.to,
                        to: LEADER,
                        term: message.term,
                        body: MessageBody::AppendEntriesResponse {
                            success: true,
                            index: prev_log_index + entries.len() as u64,
                            reject_hint_index: 0,
                            reject_hint_term: 0,
                        },
                    });
                }
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(self.node.applied_index(), target, "leader applied");
        compact_if_long(&mut self.node);
        elapsed
    }
}

/// A follower of [`LEADER`] fed `AppendEntries` built here.
struct Follower {
    node: RaftCore,
    outbox: VecDeque<Message>,
}

impl Follower {
    fn new() -> Self {
        let mut group = Group::elected();
        Follower {
            node: group.nodes.swap_remove((FOLLOWER - 1) as usize),
            outbox: VecDeque::new(),
        }
    }

    /// Steps an `AppendEntries` of `count` entries that also commits
    /// everything before them, and handles the `Ready`s; returns the time
    /// that took (building the message and compaction excluded).
    fn append_next(&mut self, count: usize) -> Duration {
        let term = self.node.term();
        let prev_log_index = self.node.last_index();
        let entries = payloads(count)
            .into_iter()
            .enumerate()
            .map(|(offset, data)| Entry {
                index: prev_log_index + 1 + offset as u64,
                term,
                kind: EntryKind::Normal,
                data: data.into(),
            })
            .collect();
        let message = Message {
            from: LEADER,
            to: FOLLOWER,
            term,
            body: MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term: self.node.last_term(),
                entries,
                leader_commit: prev_log_index,
            },
        };
        let started = Instant::now();
        self.node.step(message);
        drain_ready(&mut self.node, &mut self.outbox);
        let elapsed = started.elapsed();
        assert_eq!(self.outbox.len(), 1, "one AppendEntriesResponse");
        self.outbox.clear();
        assert_eq!(
            self.node.applied_index(),
            prev_log_index,
            "follower applied"
        );
        compact_if_long(&mut self.node);
        elapsed
    }
}

fn leader_commit(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("raft_leader_commit");
    for count in PROPOSAL_COUNTS {
        group.throughput(Throughput::Elements(count as u64));
        // One core for all samples (criterion calls the closure per sample).
        let mut leader = Leader::elected();
        group.bench_function(BenchmarkId::from_parameter(count), |bencher| {
            bencher
                .iter_custom(|iterations| (0..iterations).map(|_| leader.commit_next(count)).sum());
        });
    }
    group.finish();
}

fn follower_append(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("raft_follower_append");
    group.throughput(Throughput::Elements(APPEND_ENTRY_COUNT as u64));
    let mut follower = Follower::new();
    group.bench_function(BenchmarkId::from_parameter(APPEND_ENTRY_COUNT), |bencher| {
        bencher.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| follower.append_next(APPEND_ENTRY_COUNT))
                .sum()
        });
    });
    group.finish();
}

fn group_commit(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("raft_group_commit");
    for count in PROPOSAL_COUNTS {
        group.throughput(Throughput::Elements(count as u64));
        let mut raft_group = Group::elected();
        group.bench_function(BenchmarkId::from_parameter(count), |bencher| {
            bencher.iter_custom(|iterations| {
                (0..iterations).map(|_| raft_group.commit_next(count)).sum()
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = kvstore_devkit::criterion::cpu();
    targets = leader_commit, follower_append, group_commit
}
criterion_main!(benches);
