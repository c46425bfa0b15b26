//! Deterministic simulation of a kvstore-raft cluster.
//!
//! N cores run in one process over a simulated network (delay, drop,
//! duplicate, reorder, partitions of any shape including one-way links,
//! healing) and simulated disks (a `Ready` is written asynchronously; a crash
//! loses whatever was not yet durable, or in some seeds keeps a prefix of the
//! writes in flight (a torn write); a failed fsync crashes the node, as it
//! stops the server; a restart rebuilds the core from the durable hard
//! state, entries and snapshot; with [`SimOptions::wipes`], it may find the
//! disk empty and start with `Config::catch_up_before_voting`). In some seeds leaders write
//! in the background: they send, apply and advance before their write is
//! durable (`advance_unpersisted`, then `on_persisted`), as the server does. Proposals, reads,
//! compactions, leadership transfers and campaigns are injected at random.
//! Everything derives from one `u64` seed, so a seed replays exactly.
//!
//! After every tick the [`checker::Checker`] verifies election safety, vote
//! safety, log matching, leader completeness, state-machine safety, read
//! freshness and monotonic terms and commits; at the end all faults heal and
//! a proposal must commit on every node within a bound (liveness). Every
//! vote grant and every append or snapshot acknowledgement is checked, as it
//! leaves, against what its sender's disk holds ([`disk`]).

pub mod checker;
pub mod disk;
pub mod figure8;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};

use kvstore_raft::{
    Config, HardState, Index, Message, MessageBody, NodeId, RaftCore, Ready, Role,
    SnapshotMetadata, Term,
};
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use checker::{apply_to_state, Checker, Violation, ViolationKind, INITIAL_STATE_HASH};
use disk::{durability_claims, DurabilityClaim, Durable, WalWrite};
use figure8::Figure8;

/// Rounds of chaos, each followed by healing and a liveness check.
pub const ROUNDS: u64 = 6;
/// Ticks of random faults and load per round.
pub const CHAOS_TICKS_PER_ROUND: u64 = 1500;
/// After healing, a proposal must be applied everywhere within this many
/// election timeouts.
pub const LIVENESS_BOUND_ELECTION_TIMEOUTS: u64 = 30;
/// Liveness allowance per entry of backlog at healing time (one round trip
/// with disk delays, when flow control allows one entry per message).
pub const LIVENESS_TICKS_PER_BACKLOG_ENTRY: u64 = 4;
/// Messages on the wire beyond which a run stops (amplification guard: a
/// lying disk can make a leader re-send on every duplicated rejection).
pub const IN_FLIGHT_MESSAGES_MAX: usize = 100_000;
/// Mixed into the seed of the commit notice's own draws.
const NOTICE_RNG_SALT: u64 = 0x636f_6d6d_6974;
/// Mixed into the seed of the disk faults' own draws.
const DISK_RNG_SALT: u64 = 0x6469_736b;
/// Forced fsync error probability (per write) for
/// [`InjectedFault::FsyncErrorIgnored`].
const IGNORED_FSYNC_ERROR_PROBABILITY: f64 = 0.01;
/// Background writes take up to this many ticks more than the seed's disk
/// delay.
const BACKGROUND_WRITE_EXTRA_DELAY_TICKS_MAX: u64 = 6;
/// Iterations of the ready loop per node and tick (a bound, not a target).
const READY_ROUNDS_PER_TICK_MAX: usize = 8;

/// Seeds `s` with `s % SEED_CYCLE` equal to this run 2 voters (every
/// member is needed for a majority).
const TWO_VOTER_SEED_RESIDUE: u64 = 3;
/// Seeds `s` with `s % SEED_CYCLE` equal to this run 4 voters (a majority
/// of 3, tolerating one failure like 3 voters, with two even halves).
const FOUR_VOTER_SEED_RESIDUE: u64 = 7;
/// Period of the deterministic spread of cluster sizes over seeds.
const SEED_CYCLE: u64 = 10;

/// Voters of `seed`'s cluster: one seed in ten runs 2 voters, one in ten 4,
/// the rest the odd count drawn from the seed (3 or 5, as before even
/// sizes, so those seeds replay as they did).
fn cluster_size(seed: u64, odd_count: usize) -> usize {
    match seed % SEED_CYCLE {
        TWO_VOTER_SEED_RESIDUE => 2,
        FOUR_VOTER_SEED_RESIDUE => 4,
        _ => odd_count,
    }
}

/// A deliberately broken environment, to prove the checkers catch bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedFault {
    /// A correct disk.
    None,
    /// The disk lies about fsync: a restarted node has lost its whole
    /// durable state (term, vote, log, snapshot).
    AmnesiaOnRestart,
    /// The driver skips writing a hard state that changes only the vote
    /// (yet sends the grant).
    VoteOnlyHardStateDropped,
    /// The driver takes a failed fsync for a success: a prefix of the write
    /// is on disk, and it sends, applies and advances as if all were.
    FsyncErrorIgnored,
    /// Restarts may find an empty disk (as with [`SimOptions::wipes`]), and
    /// the node starts without `Config::catch_up_before_voting`.
    WipeWithoutCatchUp,
}

/// One simulation run.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// Everything derives from it.
    pub seed: u64,
    /// Print a trace of every event and message.
    pub verbose: bool,
    /// Environment bug to inject.
    pub fault: InjectedFault,
    /// Restarts may find an empty disk (a lost data directory); the node
    /// then starts with `Config::catch_up_before_voting`.
    pub wipes: bool,
}

/// Counters of a finished run.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimStats {
    /// Voters in the cluster.
    pub node_count: usize,
    /// Distinct leaders (terms with a leader).
    pub leader_terms: u64,
    /// Highest index applied anywhere.
    pub applied_index: Index,
    /// Reads confirmed.
    pub reads_confirmed: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Crashes.
    pub crashes: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Commit notices the simulated driver sent.
    pub commit_notices: u64,
    /// Ticks until liveness was reached after healing.
    pub liveness_ticks: u64,
    /// Figure-8 episodes started ([`figure8`]).
    pub figure8_episodes: u64,
    /// Figure-8 episodes that reached the moment where only entries of an
    /// earlier term were on a majority.
    pub figure8_windows: u64,
    /// Crashes that left part of a write on disk, part lost.
    pub torn_writes: u64,
    /// Failed fsyncs (each one crashed and restarted its node).
    pub fsync_failures: u64,
    /// Restarts with an empty disk (data directory lost).
    pub wipes: u64,
}

/// Per-seed randomized environment.
#[derive(Clone, Copy, Debug)]
struct Environment {
    drop_probability: f64,
    duplicate_probability: f64,
    extra_delay_ticks_max: u64,
    /// Deliver messages due in the same tick in random order (else FIFO).
    reorder: bool,
    disk_delay_ticks_max: u64,
    tick_skip_probability: f64,
    propose_probability: f64,
    crash_probability: f64,
    /// Per tick: crash whichever node currently leads.
    leader_crash_probability: f64,
    partition_probability: f64,
    heal_probability: f64,
    compact_probability: f64,
    read_probability: f64,
    transfer_probability: f64,
    campaign_probability: f64,
    /// Leaders hand eligible `Ready`s to the disk in the background.
    background_writes: bool,
    /// Per tick, per leader owing a follower a commit index: the driver's
    /// commit notice fires (`RaftCore::send_commit`). 0: the commit only
    /// travels with appends and heartbeats.
    commit_notice_probability: f64,
    /// A crash keeps a random prefix of the records of the writes in
    /// flight (else it loses them all).
    torn_writes: bool,
    /// Per completed write that needs an fsync: the fsync fails.
    fsync_error_probability: f64,
    /// Per restart: the node's data directory is gone, it restarts empty
    /// with `Config::catch_up_before_voting` (one such node at a time, in
    /// clusters of 3 or more).
    wipe_probability: f64,
}

/// A `Ready` handed to the disk, whose messages wait for the write.
struct PendingWrite {
    ready: Ready,
    /// What each of its messages claims is durable (see [`disk`]).
    claims: Vec<Option<DurabilityClaim>>,
    /// Tick at which the write completes.
    complete_at: u64,
}

#[derive(Clone, Copy, Debug)]
struct StateMachine {
    applied_index: Index,
    hash: u64,
}

struct SimNode {
    id: NodeId,
    config: Config,
    core: Option<RaftCore>,
    durable: Durable,
    /// A `Ready` being written.
    writing: Option<PendingWrite>,
    /// Writes of `Ready`s already sent, applied and advanced (a leader's
    /// background writes), completing in order at the given ticks.
    background: VecDeque<(WalWrite, u64)>,
    /// Term and vote of the last hard state handed to the disk.
    handed_term_vote: (Term, Option<NodeId>),
    state: StateMachine,
    restart_at: u64,
    /// Reads requested in this life: context -> commit floor.
    pending_reads: BTreeMap<u64, Index>,
    /// Term in which this node was last seen leading (completeness checked once).
    leader_checked_term: Option<Term>,
    /// Restarted with an empty disk and not caught up yet.
    lost_state: bool,
}

struct InFlight {
    deliver_at: u64,
    message: Message,
}

/// The whole simulated world.
pub struct World {
    rng: SmallRng,
    /// Draws for the commit notice alone, so that adding it left the rest
    /// of each seed's draws as they were.
    notice_rng: SmallRng,
    /// Draws for disk faults alone, likewise.
    disk_rng: SmallRng,
    options: SimOptions,
    /// The environment during chaos (healing replaces `environment`).
    chaos_environment: Environment,
    environment: Environment,
    now: u64,
    nodes: Vec<SimNode>,
    network: Vec<InFlight>,
    /// Group per node: messages only flow within a group.
    groups: BTreeMap<NodeId, u8>,
    /// One-way cuts `(from, to)`.
    cut_links: BTreeSet<(NodeId, NodeId)>,
    checker: Checker,
    /// State hash of every snapshot taken anywhere, keyed by its metadata.
    snapshot_states: BTreeMap<SnapshotMetadata, u64>,
    next_payload: u64,
    next_read_context: u64,
    election_tick: u32,
    stats: SimStats,
    /// Steering toward Figure 8, in some seeds.
    figure8: Option<Figure8>,
}

impl World {
    /// Builds a random cluster (2 to 5 voters, random limits and features).
    pub fn new(options: SimOptions) -> Self {
        let mut rng = SmallRng::seed_from_u64(options.seed);
        let mut notice_rng = SmallRng::seed_from_u64(options.seed ^ NOTICE_RNG_SALT);
        let mut disk_rng = SmallRng::seed_from_u64(options.seed ^ DISK_RNG_SALT);
        let odd_count = if rng.random_bool(0.5) { 3 } else { 5 };
        let node_count = cluster_size(options.seed, odd_count);
        let voters: Vec<NodeId> = (1..=node_count as NodeId).collect();
        let election_tick = rng.random_range(6..=15u32);
        let heartbeat_tick = rng.random_range(1..=2u32);
        let check_quorum = rng.random_bool(0.75);
        let pre_vote = rng.random_bool(0.75);
        let entries_per_append_max = rng.random_range(1..=8usize);
        let bytes_per_append_max = *[8usize, 64, 1 << 20].choose(&mut rng).expect("choice");
        let inflight_appends_max = rng.random_range(1..=4usize);
        let pending_proposals_max = *[4usize, 16, 256].choose(&mut rng).expect("choice");
        let committed_entries_per_ready_max = *[1usize, 3, 4096].choose(&mut rng).expect("choice");
        let config_seed = rng.random::<u64>();
        let environment = Environment {
            drop_probability: *[0.0, 0.02, 0.1, 0.25].choose(&mut rng).expect("choice"),
            duplicate_probability: *[0.0, 0.05, 0.2].choose(&mut rng).expect("choice"),
            extra_delay_ticks_max: rng.random_range(0..=4u64),
            reorder: true,
            disk_delay_ticks_max: rng.random_range(0..=2u64),
            tick_skip_probability: *[0.0, 0.05, 0.2].choose(&mut rng).expect("choice"),
            propose_probability: *[0.1, 0.3, 0.8].choose(&mut rng).expect("choice"),
            crash_probability: *[0.0, 0.003, 0.01].choose(&mut rng).expect("choice"),
            leader_crash_probability: *[0.0, 0.005, 0.02].choose(&mut rng).expect("choice"),
            partition_probability: *[0.0, 0.005, 0.02].choose(&mut rng).expect("choice"),
            heal_probability: 0.02,
            compact_probability: *[0.0, 0.01, 0.05].choose(&mut rng).expect("choice"),
            read_probability: 0.05,
            transfer_probability: *[0.0, 0.005].choose(&mut rng).expect("choice"),
            campaign_probability: 0.002,
            background_writes: rng.random_bool(0.5),
            commit_notice_probability: *[0.0, 0.2, 1.0].choose(&mut notice_rng).expect("choice"),
            torn_writes: disk_rng.random_bool(0.5),
            fsync_error_probability: *[0.0, 0.0005, 0.002].choose(&mut disk_rng).expect("choice"),
            wipe_probability: *[0.0, 0.05, 0.2].choose(&mut disk_rng).expect("choice"),
        };
        let environment = if options.wipes || options.fault == InjectedFault::WipeWithoutCatchUp {
            environment
        } else {
            Environment {
                wipe_probability: 0.0,
                ..environment
            }
        };
        let environment = match options.fault {
            InjectedFault::AmnesiaOnRestart => Environment {
                crash_probability: 0.03,
                ..environment
            },
            InjectedFault::FsyncErrorIgnored => Environment {
                fsync_error_probability: IGNORED_FSYNC_ERROR_PROBABILITY,
                ..environment
            },
            InjectedFault::None
            | InjectedFault::VoteOnlyHardStateDropped
            | InjectedFault::WipeWithoutCatchUp => environment,
        };
        let mut nodes = Vec::new();
        for id in &voters {
            let config = Config {
                election_tick,
                heartbeat_tick,
                seed: config_seed,
                check_quorum,
                pre_vote,
                entries_per_append_max,
                bytes_per_append_max,
                inflight_appends_max,
                pending_proposals_max,
                committed_entries_per_ready_max,
                snapshot_retry_tick: 2 * election_tick,
                ..Config::new(*id, voters.clone())
            };
            let core = RaftCore::new(config.clone(), HardState::default(), None, vec![])
                .expect("valid initial state");
            nodes.push(SimNode {
                id: *id,
                config,
                core: Some(core),
                durable: Durable::default(),
                writing: None,
                background: VecDeque::new(),
                handed_term_vote: (0, None),
                state: StateMachine {
                    applied_index: 0,
                    hash: INITIAL_STATE_HASH,
                },
                restart_at: 0,
                pending_reads: BTreeMap::new(),
                leader_checked_term: None,
                lost_state: false,
            });
        }
        let world = World {
            rng,
            notice_rng,
            disk_rng,
            options,
            chaos_environment: environment,
            environment,
            now: 0,
            groups: voters.iter().map(|id| (*id, 0)).collect(),
            nodes,
            network: Vec::new(),
            cut_links: BTreeSet::new(),
            checker: Checker::new(),
            snapshot_states: BTreeMap::new(),
            next_payload: 0,
            next_read_context: 0,
            election_tick,
            figure8: Figure8::for_seed(options.seed, node_count),
            stats: SimStats {
                node_count,
                ..SimStats::default()
            },
        };
        world.trace(|| {
            format!(
                "cluster: {node_count} nodes, election_tick {election_tick}, heartbeat_tick {heartbeat_tick}, check_quorum {check_quorum}, pre_vote {pre_vote}, entries/append {entries_per_append_max}, bytes/append {bytes_per_append_max}, inflight {inflight_appends_max}, pending {pending_proposals_max}, committed/ready {committed_entries_per_ready_max}; {:?}",
                world.environment
            )
        });
        world
    }

    fn trace(&self, line: impl FnOnce() -> String) {
        if self.options.verbose {
            println!("[t={:>5}] {}", self.now, line());
        }
    }

    /// Runs chaos, then heals everything and checks liveness.
    pub fn run(&mut self) -> Result<SimStats, Violation> {
        for round in 0..ROUNDS {
            self.environment = self.chaos_environment;
            self.trace(|| format!("round {round}: chaos for {CHAOS_TICKS_PER_ROUND} ticks"));
            for _ in 0..CHAOS_TICKS_PER_ROUND {
                self.steer_figure8();
                self.inject_random_events()?;
                self.step_world()?;
            }
            self.heal_everything();
            let ticks = self.check_liveness()?;
            self.stats.liveness_ticks = self.stats.liveness_ticks.max(ticks);
        }
        self.stats.applied_index = self.checker.highest_applied_index();
        Ok(self.stats)
    }

    /// After healing: a leader must be elected and a proposal applied on
    /// every node within the bound. Returns the ticks it took.
    fn check_liveness(&mut self) -> Result<u64, Violation> {
        // Liveness bound: elections and snapshot retries, plus the time to
        // replicate the backlog at worst one entry per round trip.
        let backlog = self
            .nodes
            .iter()
            .filter_map(|node| node.core.as_ref().map(RaftCore::last_index))
            .max()
            .unwrap_or(0)
            .saturating_sub(
                self.nodes
                    .iter()
                    .map(|node| node.state.applied_index)
                    .min()
                    .unwrap_or(0),
            );
        let bound = LIVENESS_BOUND_ELECTION_TIMEOUTS * u64::from(self.election_tick)
            + LIVENESS_TICKS_PER_BACKLOG_ENTRY * backlog;
        // Marker proposals (index, term), made on each new leader until one
        // is applied on every node.
        let mut markers: Vec<(Index, Term)> = Vec::new();
        for elapsed in 0..bound {
            self.step_world()?;
            let reached = markers.iter().any(|(index, term)| {
                self.checker
                    .applied_at(*index)
                    .is_some_and(|(applied_term, _)| applied_term == *term)
                    && self
                        .nodes
                        .iter()
                        .all(|node| node.state.applied_index >= *index)
            });
            if reached {
                self.trace(|| format!("liveness reached after {elapsed} ticks"));
                return Ok(elapsed);
            }
            let last_marker_term = markers.last().map_or(0, |(_, term)| *term);
            let data = format!("liveness-{}", self.now).into_bytes();
            for node in &mut self.nodes {
                let Some(core) = node.core.as_mut() else {
                    continue;
                };
                if core.role() == Role::Leader && core.term() > last_marker_term {
                    if let Ok((index, term)) = core.propose(data.clone()) {
                        markers.push((index, term));
                    }
                }
            }
        }
        let summary: Vec<String> = self
            .nodes
            .iter()
            .map(|node| match &node.core {
                Some(core) => format!("{core:?} state_applied={}", node.state.applied_index),
                None => format!("node {} down", node.id),
            })
            .collect();
        Err(Violation {
            kind: ViolationKind::Liveness,
            detail: format!(
                "no proposal applied on every node within {bound} ticks after healing (markers {markers:?}); nodes: {summary:?}"
            ),
        })
    }

    // ----- Fault and load injection -----------------------------------------

    fn inject_random_events(&mut self) -> Result<(), Violation> {
        let environment = self.environment;
        // A figure-8 episode owns the network and the crashes.
        let steering = self.figure8.as_ref().is_some_and(Figure8::is_active);
        if self.rng.random_bool(environment.propose_probability) {
            self.propose_somewhere();
        }
        if self.rng.random_bool(environment.read_probability) {
            self.read_somewhere();
        }
        if self.rng.random_bool(environment.crash_probability) && !steering {
            if let Some(position) = self.random_live_node() {
                self.crash(position)?;
            }
        }
        if self.rng.random_bool(environment.leader_crash_probability) && !steering {
            if let Some(position) = self.random_leader() {
                self.crash(position)?;
            }
        }
        let now = self.now;
        let restarts: Vec<usize> = (0..self.nodes.len())
            .filter(|position| {
                self.nodes[*position].core.is_none() && self.nodes[*position].restart_at <= now
            })
            .collect();
        for position in restarts {
            self.restart(position);
        }
        if self.rng.random_bool(environment.partition_probability) && !steering {
            self.random_partition();
        }
        if self.rng.random_bool(environment.heal_probability) && !steering {
            self.trace(|| "network healed".to_string());
            self.heal_network();
        }
        if self.rng.random_bool(environment.compact_probability) {
            self.compact_random_node();
        }
        if self.rng.random_bool(environment.transfer_probability) {
            self.transfer_somewhere();
        }
        if self.rng.random_bool(environment.campaign_probability) {
            let position = self.rng.random_range(0..self.nodes.len());
            if let Some(core) = self.nodes[position].core.as_mut() {
                core.campaign();
                let id = core.id();
                self.trace(|| format!("n{id} campaign()"));
            }
        }
        Ok(())
    }

    fn random_live_node(&mut self) -> Option<usize> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|position| self.nodes[*position].core.is_some())
            .collect();
        live.choose(&mut self.rng).copied()
    }

    fn propose_somewhere(&mut self) {
        // Usually the (a) leader, sometimes anyone (exercises NotLeader).
        let target = match self.random_leader() {
            Some(leader) if self.rng.random_bool(0.9) => Some(leader),
            _ => self.random_live_node(),
        };
        let Some(position) = target else { return };
        self.next_payload += 1;
        let length = self.rng.random_range(0..24usize);
        let mut data = format!("p{}-", self.next_payload).into_bytes();
        data.resize(data.len() + length, b'x');
        let core = self.nodes[position].core.as_mut().expect("live");
        let result = core.propose(data);
        let id = core.id();
        let payload = self.next_payload;
        self.trace(|| format!("n{id} propose p{payload}: {result:?}"));
    }

    fn commit_floor(&self) -> Index {
        let live_commit = self
            .nodes
            .iter()
            .filter_map(|node| node.core.as_ref().map(RaftCore::commit_index))
            .max()
            .unwrap_or(0);
        live_commit.max(self.checker.highest_applied_index())
    }

    fn read_somewhere(&mut self) {
        let Some(position) = self.random_live_node() else {
            return;
        };
        // Like the driver, sometimes several reads share one request.
        let batch_size = self.rng.random_range(1..=3u64);
        let contexts: Vec<u64> = (1..=batch_size)
            .map(|offset| self.next_read_context + offset)
            .collect();
        self.next_read_context += batch_size;
        let floor = self.commit_floor();
        let node = &mut self.nodes[position];
        let core = node.core.as_mut().expect("live");
        let result = core.read_index_batch(&contexts);
        if result.is_ok() {
            for context in &contexts {
                node.pending_reads.insert(*context, floor);
            }
        }
        let id = node.id;
        self.trace(|| format!("n{id} read_index_batch({contexts:?}) floor {floor}: {result:?}"));
    }

    fn random_leader(&mut self) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|position| {
                self.nodes[*position]
                    .core
                    .as_ref()
                    .is_some_and(|core| core.role() == Role::Leader)
            })
            .collect();
        leaders.choose(&mut self.rng).copied()
    }

    fn crash(&mut self, position: usize) -> Result<(), Violation> {
        let downtime = self
            .rng
            .random_range(1..=(8 * u64::from(self.election_tick)));
        self.tear_writes(position, self.environment.torn_writes)?;
        self.go_down(position, downtime);
        Ok(())
    }

    /// The writes handed to `position`'s disk and not complete, in order.
    fn writes_in_flight(node: &SimNode) -> Vec<WalWrite> {
        let background = node.background.iter().map(|(write, _)| write.clone());
        let writing = node.writing.iter().map(|write| WalWrite {
            snapshot: write.ready.snapshot,
            hard_state: write.ready.hard_state,
            entries: write.ready.entries.clone(),
        });
        background.chain(writing).collect()
    }

    /// Power fails at `position` in the middle of its writes: if `torn`, a
    /// random prefix of their records reaches the disk; else none.
    fn tear_writes(&mut self, position: usize, torn: bool) -> Result<(), Violation> {
        let writes = Self::writes_in_flight(&self.nodes[position]);
        if !torn || writes.is_empty() {
            return Ok(());
        }
        let id = self.nodes[position].id;
        let torn = self.nodes[position]
            .durable
            .tear(&writes, &mut self.disk_rng);
        if torn.kept > 0 && torn.kept < torn.total {
            self.stats.torn_writes += 1;
        }
        self.trace(|| {
            format!(
                "n{id} torn write: {} of {} records reached the disk",
                torn.kept, torn.total
            )
        });
        for hard_state in torn.hard_states {
            self.checker
                .observe_durable_hard_state(id, hard_state.term, hard_state.vote)?;
        }
        Ok(())
    }

    /// The node stops; whatever was not durable is gone.
    fn go_down(&mut self, position: usize, downtime: u64) {
        let node = &mut self.nodes[position];
        node.core = None;
        node.writing = None;
        node.background.clear();
        node.pending_reads.clear();
        node.restart_at = self.now + downtime;
        self.stats.crashes += 1;
        let id = node.id;
        self.trace(|| format!("n{id} CRASH (unwritten Ready lost), down for {downtime} ticks"));
    }

    /// Whether the fsync of a completed write fails (only writes that need
    /// one can fail).
    fn fsync_fails(&mut self, must_sync: bool) -> bool {
        must_sync
            && self
                .disk_rng
                .random_bool(self.environment.fsync_error_probability)
    }

    /// A failed fsync is fatal, as in the server (it exits 70 and is
    /// restarted): part of the failed write and of any later one may be on
    /// disk; the node restarts from what is.
    fn fsync_failed(&mut self, position: usize) -> Result<(), Violation> {
        self.stats.fsync_failures += 1;
        let id = self.nodes[position].id;
        self.trace(|| format!("n{id} fsync FAILED: the process exits"));
        self.tear_writes(position, true)?;
        let downtime = self
            .disk_rng
            .random_range(1..=u64::from(self.election_tick));
        self.go_down(position, downtime);
        Ok(())
    }

    /// Whether `position` may lose its data directory now: the cluster has
    /// 3 voters or more (with 2, the other cannot elect a leader for it to
    /// catch up from) and no other node is catching up after a loss (two
    /// at once may be a majority).
    fn may_wipe(&self, position: usize) -> bool {
        self.nodes.len() >= 3
            && self
                .nodes
                .iter()
                .enumerate()
                .all(|(other, node)| other == position || !node.lost_state)
    }

    fn restart(&mut self, position: usize) {
        let id = self.nodes[position].id;
        if self.options.fault == InjectedFault::AmnesiaOnRestart {
            self.nodes[position].durable = Durable::default();
            self.checker.forget_durable_history(id);
        }
        let wipe =
            self.may_wipe(position) && self.disk_rng.random_bool(self.environment.wipe_probability);
        if wipe {
            // Its votes and acknowledgements are gone with it: only the
            // cluster-wide checks apply to what follows.
            self.nodes[position].durable = Durable::default();
            self.nodes[position].lost_state = true;
            self.checker.forget_durable_history(id);
            self.stats.wipes += 1;
            self.trace(|| format!("n{id} lost its data directory"));
        }
        let node = &mut self.nodes[position];
        let durable = node.durable.clone();
        let config = Config {
            catch_up_before_voting: node.lost_state
                && self.options.fault != InjectedFault::WipeWithoutCatchUp,
            ..node.config.clone()
        };
        let core = RaftCore::new(
            config,
            durable.hard_state,
            durable.snapshot,
            durable.entries,
        )
        .expect("durable state is valid");
        node.state = match durable.snapshot {
            Some(snapshot) => StateMachine {
                applied_index: snapshot.index,
                hash: self.snapshot_states[&snapshot],
            },
            None => StateMachine {
                applied_index: 0,
                hash: INITIAL_STATE_HASH,
            },
        };
        node.leader_checked_term = None;
        node.handed_term_vote = (durable.hard_state.term, durable.hard_state.vote);
        let id = node.id;
        let (term, commit) = (core.term(), core.commit_index());
        node.core = Some(core);
        self.trace(|| {
            format!(
                "n{id} RESTART from durable hard state {:?}, snapshot {:?}, {} entries",
                durable.hard_state,
                durable.snapshot,
                self.nodes[position].durable.entries.len()
            )
        });
        // A new life: its baseline is what was durable.
        self.checker
            .observe_term_and_commit(id, term, commit, true)
            .expect("restart baseline");
    }

    fn random_partition(&mut self) {
        let ids: Vec<NodeId> = self.nodes.iter().map(|node| node.id).collect();
        let shape = self.rng.random_range(0..5u32);
        match shape {
            0 | 4 => {
                // Isolate one node (shape 4: the leader, if any).
                let leader = if shape == 4 {
                    self.random_leader()
                } else {
                    None
                };
                let isolated = match leader {
                    Some(position) => self.nodes[position].id,
                    None => *ids.choose(&mut self.rng).expect("nodes"),
                };
                for id in &ids {
                    self.groups.insert(*id, u8::from(*id == isolated));
                }
            }
            1 | 2 => {
                // Random split into 2 or 3 groups.
                let group_count = if shape == 1 { 2 } else { 3 };
                for id in &ids {
                    let group = self.rng.random_range(0..group_count);
                    self.groups.insert(*id, group);
                }
            }
            _ => {
                // A few one-way link cuts.
                for _ in 0..self.rng.random_range(1..=3) {
                    let from = *ids.choose(&mut self.rng).expect("nodes");
                    let to = *ids.choose(&mut self.rng).expect("nodes");
                    if from != to {
                        self.cut_links.insert((from, to));
                    }
                }
            }
        }
        let groups = self.groups.clone();
        let cuts = self.cut_links.clone();
        self.trace(|| format!("partition: groups {groups:?}, one-way cuts {cuts:?}"));
    }

    fn heal_network(&mut self) {
        for group in self.groups.values_mut() {
            *group = 0;
        }
        self.cut_links.clear();
    }

    fn heal_everything(&mut self) {
        self.trace(|| "HEAL: network healed, crashed nodes restart, faults stop".to_string());
        self.figure8_reset();
        self.heal_network();
        for position in 0..self.nodes.len() {
            if self.nodes[position].core.is_none() {
                self.restart(position);
            }
        }
        self.environment = Environment {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            extra_delay_ticks_max: 0,
            reorder: false,
            disk_delay_ticks_max: self.environment.disk_delay_ticks_max.min(1),
            tick_skip_probability: 0.0,
            fsync_error_probability: 0.0,
            wipe_probability: 0.0,
            ..self.environment
        };
    }

    fn compact_random_node(&mut self) {
        let Some(position) = self.random_live_node() else {
            return;
        };
        let node = &mut self.nodes[position];
        let core = node.core.as_mut().expect("live");
        let index = core.applied_index();
        assert_eq!(index, node.state.applied_index, "harness applied tracking");
        if core.compact(index).is_err() {
            return;
        }
        let snapshot = core.snapshot_metadata().expect("just compacted");
        // The driver's snapshot is durable before the WAL is truncated.
        node.durable.snapshot = Some(snapshot);
        node.durable
            .entries
            .retain(|entry| entry.index > snapshot.index);
        let hash = node.state.hash;
        let id = node.id;
        if let Some(existing) = self.snapshot_states.insert(snapshot, hash) {
            assert_eq!(existing, hash, "two snapshots at {snapshot:?} differ");
        }
        self.trace(|| format!("n{id} compact to {snapshot:?}"));
    }

    fn transfer_somewhere(&mut self) {
        let Some(position) = self.random_live_node() else {
            return;
        };
        let target = self.rng.random_range(1..=self.nodes.len() as NodeId);
        let core = self.nodes[position].core.as_mut().expect("live");
        let result = core.transfer_leader(target);
        let id = core.id();
        self.trace(|| format!("n{id} transfer_leader({target}): {result:?}"));
    }

    // ----- One tick of the world --------------------------------------------

    fn link_open(&self, from: NodeId, to: NodeId) -> bool {
        self.groups[&from] == self.groups[&to] && !self.cut_links.contains(&(from, to))
    }

    fn step_world(&mut self) -> Result<(), Violation> {
        self.now += 1;
        self.deliver_due_messages();
        for position in 0..self.nodes.len() {
            let skip = self.rng.random_bool(self.environment.tick_skip_probability);
            if let Some(core) = self.nodes[position].core.as_mut() {
                if !skip {
                    core.tick();
                }
                // The driver's commit notice timer, at a random moment.
                if core.has_unsent_commit()
                    && self
                        .notice_rng
                        .random_bool(self.environment.commit_notice_probability)
                {
                    core.send_commit();
                    self.stats.commit_notices += 1;
                }
            }
        }
        for position in 0..self.nodes.len() {
            self.drive_ready(position)?;
        }
        if self.network.len() > IN_FLIGHT_MESSAGES_MAX {
            return Err(Violation {
                kind: ViolationKind::MessageStorm,
                detail: format!("{} messages in flight", self.network.len()),
            });
        }
        self.check_nodes()
    }

    fn deliver_due_messages(&mut self) {
        let now = self.now;
        let (mut due, pending): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|in_flight| in_flight.deliver_at <= now);
        self.network = pending;
        if self.environment.reorder {
            due.shuffle(&mut self.rng);
        }
        for in_flight in due {
            let message = in_flight.message;
            // Partitions also cut messages already on the wire.
            if !self.link_open(message.from, message.to) {
                continue;
            }
            let position = (message.to - 1) as usize;
            let Some(core) = self.nodes[position].core.as_mut() else {
                continue;
            };
            self.stats.messages_delivered += 1;
            if self.options.verbose {
                println!("[t={:>5}] deliver {}", now, describe(&message));
            }
            core.step(message);
        }
    }

    fn send(&mut self, message: Message) {
        if !self.link_open(message.from, message.to)
            || self.rng.random_bool(self.environment.drop_probability)
        {
            return;
        }
        if let MessageBody::InstallSnapshot { snapshot } = &message.body {
            // The driver ships the snapshot bytes along: they must exist.
            assert!(
                self.snapshot_states.contains_key(snapshot),
                "snapshot {snapshot:?} sent but never taken"
            );
        }
        let copies = if self.rng.random_bool(self.environment.duplicate_probability) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self
                .rng
                .random_range(0..=self.environment.extra_delay_ticks_max);
            self.network.push(InFlight {
                deliver_at: self.now + delay,
                message: message.clone(),
            });
        }
    }

    /// Takes `Ready`s and completes disk writes whose time has come.
    fn drive_ready(&mut self, position: usize) -> Result<(), Violation> {
        for _ in 0..READY_ROUNDS_PER_TICK_MAX {
            self.complete_background_writes(position)?;
            let node = &mut self.nodes[position];
            let Some(core) = node.core.as_mut() else {
                return Ok(());
            };
            match &node.writing {
                Some(write) if write.complete_at <= self.now => {
                    let must_sync = write.ready.must_sync;
                    let ignored = self.options.fault == InjectedFault::FsyncErrorIgnored;
                    match self.fsync_fails(must_sync) {
                        true if !ignored => {
                            self.fsync_failed(position)?;
                            return Ok(());
                        }
                        failed => self.complete_write(position, failed)?,
                    }
                }
                Some(_) => return Ok(()),
                None if core.has_ready() => {
                    let ready = core.ready();
                    let claims = durability_claims(&ready, core);
                    let id = node.id;
                    for entry in &ready.entries {
                        let previous_term = core.term_at(entry.index - 1);
                        self.checker.observe_entry(id, entry, previous_term)?;
                    }
                    let term_or_vote_changes = ready.hard_state.is_some_and(|hard_state| {
                        (hard_state.term, hard_state.vote) != node.handed_term_vote
                    });
                    if let Some(hard_state) = ready.hard_state {
                        node.handed_term_vote = (hard_state.term, hard_state.vote);
                    }
                    let in_background = self.environment.background_writes
                        && core.role() == Role::Leader
                        && ready.snapshot.is_none()
                        && !term_or_vote_changes;
                    // Writes complete in order: never before an earlier one.
                    let earliest = node.background.back().map_or(0, |(_, at)| *at);
                    // A background write may take longer than a round trip
                    // to a follower: the leader then hears a majority before
                    // its own copy is durable, the case it must not count.
                    let delay_max = if in_background {
                        self.environment.disk_delay_ticks_max
                            + BACKGROUND_WRITE_EXTRA_DELAY_TICKS_MAX
                    } else {
                        self.environment.disk_delay_ticks_max
                    };
                    let delay = self.rng.random_range(0..=delay_max);
                    let complete_at = (self.now + delay).max(earliest);
                    if in_background {
                        self.start_background_write(position, ready, claims, complete_at)?;
                    } else {
                        self.nodes[position].writing = Some(PendingWrite {
                            ready,
                            claims,
                            complete_at,
                        });
                    }
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// A leader's `Ready` whose write runs in the background: queue the
    /// write, then send, apply and advance at once.
    fn start_background_write(
        &mut self,
        position: usize,
        mut ready: Ready,
        claims: Vec<Option<DurabilityClaim>>,
        complete_at: u64,
    ) -> Result<(), Violation> {
        let write = WalWrite {
            snapshot: None,
            hard_state: ready.hard_state,
            entries: std::mem::take(&mut ready.entries),
        };
        let id = self.nodes[position].id;
        self.trace(|| {
            format!(
                "n{id} writes {} entries in the background until t={complete_at}",
                write.entries.len()
            )
        });
        self.nodes[position]
            .background
            .push_back((write, complete_at));
        self.send_apply_and_read(position, ready, &claims)?;
        let node = &mut self.nodes[position];
        let core = node.core.as_mut().expect("live");
        core.advance_unpersisted();
        assert_eq!(core.applied_index(), node.state.applied_index);
        Ok(())
    }

    /// Background writes whose time has come become durable, in order, and
    /// are reported to the core.
    fn complete_background_writes(&mut self, position: usize) -> Result<(), Violation> {
        loop {
            let node = &mut self.nodes[position];
            if node.core.is_none() {
                return Ok(());
            }
            match node.background.front() {
                Some((_, complete_at)) if *complete_at <= self.now => {}
                _ => return Ok(()),
            }
            let id = node.id;
            let must_sync = node
                .background
                .front()
                .is_some_and(|(write, _)| !write.entries.is_empty());
            let failed = self.fsync_fails(must_sync);
            if failed && self.options.fault != InjectedFault::FsyncErrorIgnored {
                return self.fsync_failed(position);
            }
            let node = &mut self.nodes[position];
            let (write, _) = node.background.pop_front().expect("checked");
            if failed {
                // Taken for a success: whatever part reached the disk.
                let torn = node
                    .durable
                    .tear(std::slice::from_ref(&write), &mut self.disk_rng);
                for hard_state in torn.hard_states {
                    self.checker.observe_durable_hard_state(
                        id,
                        hard_state.term,
                        hard_state.vote,
                    )?;
                }
            } else {
                node.durable.persist(None, write.hard_state, &write.entries);
                if let Some(hard_state) = write.hard_state {
                    self.checker.observe_durable_hard_state(
                        id,
                        hard_state.term,
                        hard_state.vote,
                    )?;
                }
            }
            if let Some(last) = write.entries.last() {
                let node = &mut self.nodes[position];
                node.core
                    .as_mut()
                    .expect("live")
                    .on_persisted(last.index, last.term);
            }
        }
    }

    /// Steps 2 to 4 of a `Ready`: send its messages, restore its snapshot and
    /// apply its committed entries, answer its reads.
    fn send_apply_and_read(
        &mut self,
        position: usize,
        ready: Ready,
        claims: &[Option<DurabilityClaim>],
    ) -> Result<(), Violation> {
        let id = self.nodes[position].id;
        // 2. Send, each message only if what it acknowledges is durable.
        for (message, claim) in ready.messages.into_iter().zip(claims) {
            if let Some(claim) = claim {
                self.nodes[position]
                    .durable
                    .check_claim(id, &message, *claim)?;
            }
            self.send(message);
        }
        // 3. Restore the snapshot, then apply.
        if let Some(snapshot) = ready.snapshot {
            let hash = self.snapshot_states[&snapshot];
            self.nodes[position].state = StateMachine {
                applied_index: snapshot.index,
                hash,
            };
            self.stats.snapshots_installed += 1;
            self.trace(|| format!("n{id} installed snapshot {snapshot:?}"));
        }
        for entry in &ready.committed_entries {
            let state = self.nodes[position].state;
            if entry.index != state.applied_index + 1 {
                return Err(Violation {
                    kind: ViolationKind::StateMachineSafety,
                    detail: format!(
                        "node {id} applied index {} right after {}",
                        entry.index, state.applied_index
                    ),
                });
            }
            self.checker.observe_applied(id, entry)?;
            self.nodes[position].state = StateMachine {
                applied_index: entry.index,
                hash: apply_to_state(state.hash, entry),
            };
        }
        // 4. Reads.
        for read_state in &ready.read_states {
            let floor = self.nodes[position]
                .pending_reads
                .remove(&read_state.context)
                .expect("a read state answers a pending request");
            self.checker
                .check_read(id, read_state.context, floor, read_state.index)?;
            self.stats.reads_confirmed += 1;
        }
        Ok(())
    }

    /// The disk write finished: the Ready is durable; send, apply, advance.
    /// `fsync_failed`: it is not, but the driver (deliberately broken, see
    /// [`InjectedFault::FsyncErrorIgnored`]) goes on as if it were.
    fn complete_write(&mut self, position: usize, fsync_failed: bool) -> Result<(), Violation> {
        // 1. Persist, after every earlier background write (their ticks are
        // never later than this write's).
        self.complete_background_writes(position)?;
        if self.nodes[position].core.is_none() {
            // One of them failed its fsync: the node is down.
            return Ok(());
        }
        assert!(
            self.nodes[position].background.is_empty(),
            "background writes complete before a later write"
        );
        let PendingWrite { ready, claims, .. } =
            self.nodes[position].writing.take().expect("a write");
        let id = self.nodes[position].id;
        if let Some(soft_state) = &ready.soft_state {
            self.trace(|| {
                format!(
                    "n{id} is {} in term {} (leader {:?}): {}",
                    soft_state.role, soft_state.term, soft_state.leader_id, soft_state.reason
                )
            });
        }
        let durable = &mut self.nodes[position].durable;
        let hard_state = ready.hard_state.filter(|hard_state| {
            let vote_only_change = hard_state.term == durable.hard_state.term
                && hard_state.vote != durable.hard_state.vote;
            !(self.options.fault == InjectedFault::VoteOnlyHardStateDropped && vote_only_change)
        });
        let durable_hard_states = if fsync_failed {
            let write = WalWrite {
                snapshot: ready.snapshot,
                hard_state,
                entries: ready.entries.clone(),
            };
            durable.tear(&[write], &mut self.disk_rng).hard_states
        } else {
            durable.persist(ready.snapshot, hard_state, &ready.entries);
            hard_state.into_iter().collect()
        };
        for hard_state in durable_hard_states {
            self.checker
                .observe_durable_hard_state(id, hard_state.term, hard_state.vote)?;
        }
        // 2.-4. Send, restore and apply, reads.
        self.send_apply_and_read(position, ready, &claims)?;
        // 5. Advance.
        let node = &mut self.nodes[position];
        let core = node.core.as_mut().expect("live");
        core.advance();
        assert_eq!(
            core.applied_index(),
            node.state.applied_index,
            "core and state machine agree on the applied index"
        );
        Ok(())
    }

    fn check_nodes(&mut self) -> Result<(), Violation> {
        for position in 0..self.nodes.len() {
            let node = &mut self.nodes[position];
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            let (id, term, commit) = (core.id(), core.term(), core.commit_index());
            if node.lost_state && !core.is_catching_up() {
                node.lost_state = false;
            }
            self.checker
                .observe_term_and_commit(id, term, commit, false)?;
            if core.role() == Role::Leader {
                self.checker.observe_leader(term, id)?;
                if node.leader_checked_term != Some(term) {
                    node.leader_checked_term = Some(term);
                    self.stats.leader_terms += 1;
                    self.checker.check_leader_completeness(core)?;
                }
            }
        }
        Ok(())
    }
}

/// One-line description of a message for traces.
pub fn describe(message: &Message) -> String {
    let detail = match &message.body {
        MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            transfer,
            ..
        } => format!("last ({last_log_index}, t{last_log_term}) transfer {transfer}"),
        MessageBody::RequestVoteResponse { granted, .. } => format!("granted {granted}"),
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => format!(
            "prev ({prev_log_index}, t{prev_log_term}) entries {} commit {leader_commit}",
            entries.len()
        ),
        MessageBody::AppendEntriesResponse {
            success,
            index,
            reject_hint_index,
            reject_hint_term,
        } => format!(
            "success {success} index {index} hint ({reject_hint_index}, t{reject_hint_term})"
        ),
        MessageBody::Heartbeat {
            leader_commit,
            read_round,
        } => format!("commit {leader_commit} round {read_round}"),
        MessageBody::HeartbeatResponse {
            read_round,
            log_lost_after: None,
        } => format!("round {read_round}"),
        MessageBody::HeartbeatResponse {
            read_round,
            log_lost_after: Some(last_index),
        } => format!("round {read_round} log lost after {last_index}"),
        MessageBody::InstallSnapshot { snapshot } => format!("{snapshot:?}"),
        MessageBody::InstallSnapshotResponse { index } => format!("index {index}"),
        MessageBody::TimeoutNow | MessageBody::TermQuery | MessageBody::TermAnswer => String::new(),
    };
    format!(
        "n{} -> n{} t{} {} {}",
        message.from,
        message.to,
        message.term,
        message.body.kind_name(),
        detail
    )
}

/// Runs one seed, turning panics into [`ViolationKind::Panic`].
pub fn run_seed(options: SimOptions) -> Result<SimStats, Violation> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut world = World::new(options);
        world.run()
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| {
                    payload
                        .downcast_ref::<&str>()
                        .map(|text| (*text).to_string())
                })
                .unwrap_or_else(|| "non-string panic".to_string());
            Err(Violation {
                kind: ViolationKind::Panic,
                detail,
            })
        }
    }
}
