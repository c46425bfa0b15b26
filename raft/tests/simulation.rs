//! Deterministic simulation of kvstore-raft clusters, plus tests proving the
//! safety checkers can fail.
//!
//! * `cargo test -p kvstore-raft --release --test simulation` runs seeds
//!   `0..1000` (clusters of 2 to 5 nodes, random faults; one seed in four
//!   also steered toward Figure 8, see `sim/figure8.rs`); a debug build runs
//!   `0..100` by default.
//! * `KVSTORE_SIM_SEEDS=N` runs N seeds, `KVSTORE_SIM_SEED_START=S` starts
//!   at seed S.
//! * `KVSTORE_SIM_SEED=S` replays seed S with a full trace (use
//!   `-- --nocapture`).
//! * `KVSTORE_SIM_WIPES=1`: restarts may also find an empty disk (the node
//!   then starts with `catch_up_before_voting`). Off in `simulation_seeds`
//!   by default; `wiped_nodes_with_catch_up_stay_safe` runs the fixed seeds
//!   with it.
//! * `KVSTORE_SIM_FAULT=NAME` runs the seeds with a deliberately broken
//!   driver or disk (names in `simulation_seeds`), to measure catch rates.

mod sim;

use std::time::Instant;

use kvstore_raft::{
    Config, Entry, EntryKind, HardState, Message, MessageBody, RaftCore, SnapshotMetadata,
};
use sim::checker::{Checker, ViolationKind};
use sim::disk::{DurabilityClaim, Durable};
use sim::{run_seed, InjectedFault, SimOptions, SimStats};

/// Seeds run by default in release builds.
const DEFAULT_SEED_COUNT: u64 = 1000;
/// Seeds run by default in debug builds (about 10x slower per seed).
const DEFAULT_SEED_COUNT_DEBUG: u64 = 100;
/// Seeds run with a lying disk to prove the checkers catch it.
const AMNESIA_SEED_COUNT: u64 = 200;
/// Seeds run with a driver that sends a vote before writing it.
const DROPPED_VOTE_SEED_COUNT: u64 = 100;
/// Seeds run with a driver that ignores failed fsyncs.
const IGNORED_FSYNC_SEED_COUNT: u64 = 100;
/// Seeds run with nodes that lose their disk and vote at once.
const WIPE_WITHOUT_CATCH_UP_SEED_COUNT: u64 = 100;

/// Seeds of a test proving a check can fail: `release_count` in release
/// builds, a quarter in debug builds (about 10x slower per seed).
fn proof_seed_count(release_count: u64) -> u64 {
    if cfg!(debug_assertions) {
        release_count / 4
    } else {
        release_count
    }
}

fn environment_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be an unsigned integer, got {value:?}")),
    )
}

fn replay_command(seed: u64) -> String {
    format!("KVSTORE_SIM_SEED={seed} cargo test -p kvstore-raft --release --test simulation -- --nocapture simulation_seeds")
}

/// Runs `seeds` on all cores; returns (seed, outcome) sorted by seed.
fn run_seeds(
    seeds: Vec<u64>,
    fault: InjectedFault,
    wipes: bool,
) -> Vec<(u64, Result<SimStats, sim::checker::Violation>)> {
    let thread_count = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1);
    let chunk_size = seeds.len().div_ceil(thread_count).max(1);
    let mut outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .chunks(chunk_size)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|seed| {
                            let options = SimOptions {
                                seed: *seed,
                                verbose: false,
                                fault,
                                wipes,
                            };
                            (*seed, run_seed(options))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("simulation thread"))
            .collect()
    });
    outcomes.sort_by_key(|(seed, _)| *seed);
    outcomes
}

#[test]
fn simulation_seeds() {
    let fault = match std::env::var("KVSTORE_SIM_FAULT").as_deref() {
        Ok("amnesia") => InjectedFault::AmnesiaOnRestart,
        Ok("vote-dropped") => InjectedFault::VoteOnlyHardStateDropped,
        Ok("fsync-ignored") => InjectedFault::FsyncErrorIgnored,
        Ok("wipe-without-catch-up") => InjectedFault::WipeWithoutCatchUp,
        Ok(other) => panic!(
            "unknown KVSTORE_SIM_FAULT {other:?} (known: amnesia, vote-dropped, fsync-ignored, wipe-without-catch-up)"
        ),
        Err(_) => InjectedFault::None,
    };
    let wipes = environment_number("KVSTORE_SIM_WIPES").is_some_and(|value| value > 0);
    if let Some(seed) = environment_number("KVSTORE_SIM_SEED") {
        let options = SimOptions {
            seed,
            verbose: std::env::var("KVSTORE_SIM_QUIET").is_err(),
            fault,
            wipes,
        };
        match run_seed(options) {
            Ok(stats) => println!("seed {seed} passed: {stats:?}"),
            Err(violation) => panic!("seed {seed} failed: {violation}"),
        }
        return;
    }
    let default_count = if cfg!(debug_assertions) {
        DEFAULT_SEED_COUNT_DEBUG
    } else {
        DEFAULT_SEED_COUNT
    };
    let count = environment_number("KVSTORE_SIM_SEEDS").unwrap_or(default_count);
    let start = environment_number("KVSTORE_SIM_SEED_START").unwrap_or(0);
    let started = Instant::now();
    let outcomes = run_seeds((start..start + count).collect(), fault, wipes);
    let elapsed = started.elapsed();
    let mut failures = Vec::new();
    let mut totals = SimStats::default();
    let mut worst_liveness_ticks = 0;
    let mut seeds_by_size: std::collections::BTreeMap<usize, u64> = Default::default();
    for (seed, outcome) in &outcomes {
        match outcome {
            Ok(stats) => {
                totals.leader_terms += stats.leader_terms;
                totals.applied_index += stats.applied_index;
                totals.reads_confirmed += stats.reads_confirmed;
                totals.snapshots_installed += stats.snapshots_installed;
                totals.crashes += stats.crashes;
                totals.messages_delivered += stats.messages_delivered;
                totals.commit_notices += stats.commit_notices;
                totals.figure8_episodes += stats.figure8_episodes;
                totals.figure8_windows += stats.figure8_windows;
                totals.torn_writes += stats.torn_writes;
                totals.fsync_failures += stats.fsync_failures;
                totals.wipes += stats.wipes;
                worst_liveness_ticks = worst_liveness_ticks.max(stats.liveness_ticks);
                *seeds_by_size.entry(stats.node_count).or_default() += 1;
            }
            Err(violation) => failures.push(format!(
                "seed {seed}: {violation}\n  replay: {}",
                replay_command(*seed)
            )),
        }
    }
    println!(
        "simulated seeds {start}..{} (passed, by cluster size: {seeds_by_size:?}) in {:.1?}: {} leader terms, {} entries applied, {} reads, {} snapshots installed, {} crashes ({} with a torn write, {} after a failed fsync, {} restarts with an empty disk), {} messages, {} commit notices, {} figure-8 episodes ({} reached their window); slowest recovery {} ticks",
        start + count,
        elapsed,
        totals.leader_terms,
        totals.applied_index,
        totals.reads_confirmed,
        totals.snapshots_installed,
        totals.crashes,
        totals.torn_writes,
        totals.fsync_failures,
        totals.wipes,
        totals.messages_delivered,
        totals.commit_notices,
        totals.figure8_episodes,
        totals.figure8_windows,
        worst_liveness_ticks
    );
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Two seeds in three fire the driver's commit notice (at 0.2 or 1 per
    // tick): so many seeds without one means the simulation lost it.
    assert!(
        count < 20 || totals.commit_notices > 0,
        "no seed fired the driver's commit notice"
    );
    // One seed in four steers toward Figure 8, and most of those reach its
    // window several times: none means the steering broke.
    assert!(
        count < 20 || totals.figure8_windows > 0,
        "no figure-8 episode reached its window"
    );
}

#[test]
fn same_seed_replays_identically() {
    let options = SimOptions {
        seed: 7,
        verbose: false,
        fault: InjectedFault::None,
        wipes: true,
    };
    let first = format!("{:?}", run_seed(options));
    let second = format!("{:?}", run_seed(options));
    assert_eq!(first, second);
}

/// End to end: a disk that loses everything on restart (while the checkers
/// are told nothing) must be caught by a cluster-wide safety checker, not by
/// luck of a panic, in some seeds.
#[test]
fn lying_disk_is_caught_by_the_checkers() {
    let outcomes = run_seeds(
        (0..AMNESIA_SEED_COUNT).collect(),
        InjectedFault::AmnesiaOnRestart,
        false,
    );
    let mut caught: std::collections::BTreeMap<ViolationKind, Vec<u64>> = Default::default();
    for (seed, outcome) in &outcomes {
        if let Err(violation) = outcome {
            if violation.kind.is_consensus() {
                caught.entry(violation.kind).or_default().push(*seed);
            }
        }
    }
    for (kind, seeds) in &caught {
        println!(
            "lying disk: {kind:?} caught in {} seeds (first: {:?})",
            seeds.len(),
            &seeds[..seeds.len().min(5)]
        );
    }
    assert!(
        caught.contains_key(&ViolationKind::ElectionSafety),
        "no two leaders in a term despite nodes forgetting their votes: {caught:?}"
    );
    assert!(
        caught.contains_key(&ViolationKind::LeaderCompleteness)
            || caught.contains_key(&ViolationKind::StateMachineSafety),
        "no lost committed entry noticed despite nodes forgetting their logs: {caught:?}"
    );
}

/// End to end: a driver that sends a vote grant without writing the vote
/// (a hard state whose only change is the vote) is caught by the
/// durability check, in most seeds and not by luck.
#[test]
fn unpersisted_vote_is_caught_by_the_durability_check() {
    let seed_count = proof_seed_count(DROPPED_VOTE_SEED_COUNT);
    let outcomes = run_seeds(
        (0..seed_count).collect(),
        InjectedFault::VoteOnlyHardStateDropped,
        false,
    );
    let caught: Vec<u64> = outcomes
        .iter()
        .filter(|(_, outcome)| {
            matches!(outcome, Err(violation) if violation.kind == ViolationKind::Durability)
        })
        .map(|(seed, _)| *seed)
        .collect();
    println!(
        "vote not written: caught in {} of {seed_count} seeds (first: {:?})",
        caught.len(),
        &caught[..caught.len().min(5)]
    );
    assert!(
        caught.len() as u64 * 2 > seed_count,
        "a grant sent before its vote was durable went unnoticed in most seeds"
    );
}

/// End to end: a driver that takes a failed fsync for a success (part of
/// the write on disk, all of it acknowledged) is caught, in most seeds.
#[test]
fn ignored_fsync_error_is_caught() {
    let outcomes = run_seeds(
        (0..IGNORED_FSYNC_SEED_COUNT).collect(),
        InjectedFault::FsyncErrorIgnored,
        false,
    );
    let mut caught: std::collections::BTreeMap<ViolationKind, u64> = Default::default();
    for (_, outcome) in &outcomes {
        if let Err(violation) = outcome {
            *caught.entry(violation.kind).or_default() += 1;
        }
    }
    let total: u64 = caught.values().sum();
    println!(
        "fsync error ignored: caught in {total} of {IGNORED_FSYNC_SEED_COUNT} seeds: {caught:?}"
    );
    assert!(
        caught.get(&ViolationKind::Durability).copied().unwrap_or(0) * 2 > IGNORED_FSYNC_SEED_COUNT,
        "acknowledgements of writes whose fsync failed went unnoticed in most seeds: {caught:?}"
    );
}

/// End to end: nodes that restart with an empty disk and vote at once (no
/// `catch_up_before_voting`) break cluster-wide safety in some seeds: the
/// scenario can fail, so its passing with the flag means something.
#[test]
fn wiped_node_voting_at_once_is_caught() {
    let seed_count = proof_seed_count(WIPE_WITHOUT_CATCH_UP_SEED_COUNT);
    let outcomes = run_seeds(
        (0..seed_count).collect(),
        InjectedFault::WipeWithoutCatchUp,
        true,
    );
    let mut caught: std::collections::BTreeMap<ViolationKind, u64> = Default::default();
    for (_, outcome) in &outcomes {
        if let Err(violation) = outcome {
            *caught.entry(violation.kind).or_default() += 1;
        }
    }
    println!(
        "wiped nodes voting at once: caught in {} of {seed_count} seeds: {caught:?}",
        caught.values().sum::<u64>()
    );
    assert!(
        caught.keys().any(|kind| kind.is_consensus()),
        "no safety violation although wiped nodes voted at once: {caught:?}"
    );
}

/// Nodes that restart with an empty disk and `catch_up_before_voting` keep
/// the cluster safe over the fixed seeds. Before the catch-up learned the
/// cluster's term from its peers (see `raft/src/catch_up.rs`), seeds 281
/// and 682 failed: catching up to the first commit index heard could end
/// below entries the node had acknowledged, and a wiped node back at term 0
/// acknowledged a deposed leader's heartbeats, which confirmed a stale read.
/// `KVSTORE_SIM_WIPES=1 make sim SEEDS=1000` runs other seeds.
#[test]
fn wiped_nodes_with_catch_up_stay_safe() {
    let outcomes = run_seeds((0..DEFAULT_SEED_COUNT).collect(), InjectedFault::None, true);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|(seed, outcome)| {
            outcome.as_ref().err().map(|violation| {
                format!(
                    "seed {seed}: {violation}\n  replay: KVSTORE_SIM_WIPES=1 {}",
                    replay_command(*seed)
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: data.to_vec().into(),
    }
}

#[test]
fn checker_reports_two_leaders_in_one_term() {
    let mut checker = Checker::new();
    assert!(checker.observe_leader(3, 1).is_ok());
    assert!(
        checker.observe_leader(3, 1).is_ok(),
        "the same leader again is fine"
    );
    assert!(checker.observe_leader(4, 2).is_ok());
    let violation = checker.observe_leader(3, 2).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::ElectionSafety);
}

#[test]
fn checker_reports_a_second_vote_in_one_term() {
    let mut checker = Checker::new();
    assert!(checker.observe_durable_hard_state(1, 2, Some(2)).is_ok());
    assert!(checker.observe_durable_hard_state(1, 2, Some(2)).is_ok());
    let violation = checker
        .observe_durable_hard_state(1, 2, Some(3))
        .unwrap_err();
    assert_eq!(violation.kind, ViolationKind::VoteSafety);
    let violation = checker.observe_durable_hard_state(1, 1, None).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::MonotonicTerm);
}

#[test]
fn checker_reports_log_matching_breaks() {
    let mut checker = Checker::new();
    assert!(checker
        .observe_entry(1, &entry(5, 2, b"a"), Some(1))
        .is_ok());
    assert!(checker
        .observe_entry(2, &entry(5, 2, b"a"), Some(1))
        .is_ok());
    let different_data = checker.observe_entry(3, &entry(5, 2, b"b"), Some(1));
    assert_eq!(different_data.unwrap_err().kind, ViolationKind::LogMatching);
    let different_prefix = checker.observe_entry(3, &entry(5, 2, b"a"), Some(2));
    assert_eq!(
        different_prefix.unwrap_err().kind,
        ViolationKind::LogMatching
    );
}

#[test]
fn checker_reports_divergent_state_machines() {
    let mut checker = Checker::new();
    assert!(checker.observe_applied(1, &entry(1, 1, b"x")).is_ok());
    assert!(checker.observe_applied(2, &entry(1, 1, b"x")).is_ok());
    let violation = checker.observe_applied(3, &entry(1, 1, b"y")).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::StateMachineSafety);
    let violation = checker.observe_applied(3, &entry(1, 2, b"x")).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::StateMachineSafety);
}

#[test]
fn checker_reports_a_leader_missing_a_committed_entry() {
    let mut checker = Checker::new();
    checker.observe_applied(2, &entry(1, 1, b"a")).unwrap();
    checker.observe_applied(2, &entry(2, 1, b"b")).unwrap();
    // A node whose log only has entry 1, pretending to lead.
    let config = Config::new(1, vec![1, 2, 3]);
    let hard_state = HardState {
        term: 2,
        vote: None,
        commit: 0,
    };
    let node = RaftCore::new(config, hard_state, None, vec![entry(1, 1, b"a")]).unwrap();
    let violation = checker.check_leader_completeness(&node).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::LeaderCompleteness);
    // With the entry of a different term at index 2, too.
    let config = Config::new(1, vec![1, 2, 3]);
    let node = RaftCore::new(
        config,
        hard_state,
        None,
        vec![entry(1, 1, b"a"), entry(2, 2, b"b")],
    )
    .unwrap();
    assert!(checker.check_leader_completeness(&node).is_err());
}

#[test]
fn disk_reports_acknowledgements_it_does_not_hold() {
    let mut disk = Durable::default();
    disk.persist(
        None,
        Some(HardState {
            term: 3,
            vote: None,
            commit: 0,
        }),
        &[entry(1, 1, b"a"), entry(2, 3, b"b")],
    );
    let grant = Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        },
    };
    let vote = DurabilityClaim::Vote {
        term: 3,
        candidate: 2,
    };
    let violation = disk.check_claim(1, &grant, vote).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::Durability);
    disk.persist(
        None,
        Some(HardState {
            term: 3,
            vote: Some(2),
            commit: 0,
        }),
        &[],
    );
    assert!(disk.check_claim(1, &grant, vote).is_ok());
    // A later durable term also keeps the node from voting again in term 3.
    let older_vote = DurabilityClaim::Vote {
        term: 2,
        candidate: 3,
    };
    assert!(disk.check_claim(1, &grant, older_vote).is_ok());

    let acknowledgement = Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntriesResponse {
            success: true,
            index: 2,
            reject_hint_index: 0,
            reject_hint_term: 0,
        },
    };
    let held = |index, term| DurabilityClaim::Log {
        index,
        term: Some(term),
    };
    assert!(disk.check_claim(1, &acknowledgement, held(2, 3)).is_ok());
    let beyond = disk.check_claim(1, &acknowledgement, held(3, 3));
    assert_eq!(beyond.unwrap_err().kind, ViolationKind::Durability);
    let other_term = disk.check_claim(1, &acknowledgement, held(2, 2));
    assert_eq!(other_term.unwrap_err().kind, ViolationKind::Durability);
    // Within a snapshot: held.
    disk.persist(Some(SnapshotMetadata { index: 5, term: 3 }), None, &[]);
    assert!(disk.check_claim(1, &acknowledgement, held(4, 1)).is_ok());
    assert!(disk.check_claim(1, &acknowledgement, held(5, 3)).is_ok());
}

#[test]
fn checker_reports_regressions_and_stale_reads() {
    let mut checker = Checker::new();
    checker.observe_term_and_commit(1, 3, 5, false).unwrap();
    let violation = checker.observe_term_and_commit(1, 2, 5, false).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::MonotonicTerm);
    checker.observe_term_and_commit(1, 3, 5, true).unwrap();
    let violation = checker.observe_term_and_commit(1, 3, 4, false).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::MonotonicCommit);
    assert!(checker.check_read(1, 9, 5, 5).is_ok());
    let violation = checker.check_read(1, 9, 5, 4).unwrap_err();
    assert_eq!(violation.kind, ViolationKind::StaleRead);
}
