//! Focused interaction tests: a few cores wired by the synchronous
//! [`cluster::Cluster`], each test driving one Raft feature to an exact,
//! asserted outcome.

mod cluster;

use cluster::{config, entries_with_terms, entry, Cluster};
use kvstore_raft::{
    CompactError, Config, Entry, EntryKind, HardState, Message, MessageBody, ProgressState,
    ProposeError, RaftCore, RaftError, ReadIndexError, ReadState, Role, SnapshotMetadata,
    TransferError, TERM_MAX,
};

fn restored(
    id: u64,
    size: u64,
    term: u64,
    terms: &[u64],
    configure: impl Fn(&mut Config),
) -> RaftCore {
    let mut node_config = config(id, size);
    configure(&mut node_config);
    let hard_state = HardState {
        term,
        vote: None,
        commit: 1.min(terms.len() as u64),
    };
    RaftCore::new(node_config, hard_state, None, entries_with_terms(terms)).unwrap()
}

// ----- Ready contract ---------------------------------------------------------

#[test]
fn single_node_commits_only_after_persisting() {
    let mut node = RaftCore::new(config(1, 1), HardState::default(), None, vec![]).unwrap();
    node.campaign();
    assert_eq!(node.role(), Role::Leader);
    let ready = node.ready();
    assert_eq!(ready.soft_state.as_ref().unwrap().role, Role::Leader);
    assert_eq!(
        ready.soft_state.as_ref().unwrap().reason,
        "won election (single voter)"
    );
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        })
    );
    assert_eq!(ready.entries.len(), 1);
    assert_eq!(ready.entries[0].kind, EntryKind::Empty);
    assert!(ready.must_sync);
    assert!(ready.committed_entries.is_empty(), "not durable yet");
    assert!(
        !node.has_ready(),
        "nothing new while a Ready is outstanding"
    );
    node.advance();
    // Now our own durable copy is a majority.
    assert_eq!(node.commit_index(), 1);
    let ready = node.ready();
    assert_eq!(ready.committed_entries.len(), 1);
    assert_eq!(ready.hard_state.unwrap().commit, 1);
    assert!(!ready.must_sync, "a commit-only change needs no fsync");
    node.advance();
    assert_eq!(node.applied_index(), 1);

    assert_eq!(node.propose(b"x".to_vec()), Ok((2, 1)));
    let ready = node.ready();
    assert_eq!(
        ready.entries,
        vec![Entry {
            index: 2,
            term: 1,
            kind: EntryKind::Normal,
            data: b"x".to_vec().into()
        }]
    );
    assert!(ready.committed_entries.is_empty());
    node.advance();
    let ready = node.ready();
    assert_eq!(ready.committed_entries[0].data, b"x".to_vec());
    node.advance();
    assert!(!node.has_ready());
}

#[test]
fn a_background_write_counts_toward_commit_only_once_reported_durable() {
    let mut node = RaftCore::new(config(1, 1), HardState::default(), None, vec![]).unwrap();
    node.campaign();
    let ready = node.ready();
    node.advance(); // The election's term and vote are written first.
    assert_eq!(ready.entries.len(), 1);
    node.ready();
    node.advance();
    assert_eq!(node.applied_index(), 1);

    // Two Readys handed out while the first write still runs.
    assert_eq!(node.propose(b"a".to_vec()), Ok((2, 1)));
    let first = node.ready();
    assert_eq!(first.entries.len(), 1);
    node.advance_unpersisted();
    assert_eq!(node.commit_index(), 1, "our copy is not durable yet");
    assert_eq!(node.propose(b"b".to_vec()), Ok((3, 1)));
    let second = node.ready();
    assert_eq!(
        second.entries[0].index, 3,
        "entry 2 is not handed out again"
    );
    node.advance_unpersisted();
    assert!(!node.has_ready());

    // A report for another term (entries replaced meanwhile) is ignored.
    node.on_persisted(2, 7);
    assert_eq!(node.commit_index(), 1);
    // The first write completes: entry 2 commits and is handed out alone.
    node.on_persisted(2, 1);
    assert_eq!(node.commit_index(), 2);
    let ready = node.ready();
    assert_eq!(ready.committed_entries.len(), 1);
    assert_eq!(ready.committed_entries[0].data, b"a".to_vec());
    node.advance_unpersisted();
    node.on_persisted(3, 1);
    let ready = node.ready();
    assert_eq!(ready.committed_entries[0].data, b"b".to_vec());
    node.advance();
    assert_eq!(node.applied_index(), 3);
    assert_eq!(node.persisted_index(), 3);
}

#[test]
#[should_panic(expected = "ready() called before advance()")]
fn ready_twice_without_advance_panics() {
    let mut node = RaftCore::new(config(1, 1), HardState::default(), None, vec![]).unwrap();
    node.campaign();
    let _first = node.ready();
    let _second = node.ready();
}

#[test]
fn follower_acknowledges_in_the_ready_that_persists_the_entries() {
    let mut follower = RaftCore::new(config(2, 3), HardState::default(), None, vec![]).unwrap();
    follower.step(Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![entry(1, 1), entry(2, 1)],
            leader_commit: 0,
        },
    });
    let ready = follower.ready();
    assert_eq!(ready.entries.len(), 2, "entries to persist");
    assert_eq!(ready.hard_state.unwrap().term, 1);
    assert_eq!(ready.soft_state.unwrap().leader_id, Some(1));
    assert_eq!(
        ready.messages,
        vec![Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::AppendEntriesResponse {
                success: true,
                index: 2,
                reject_hint_index: 0,
                reject_hint_term: 0
            }
        }],
        "the ack travels with the entries it acknowledges"
    );
    follower.advance();
    assert_eq!(follower.persisted_index(), 2);
}

#[test]
fn restart_recovers_commit_and_reapplies_from_the_snapshot() {
    let snapshot = SnapshotMetadata { index: 3, term: 1 };
    let mut persisted = entries_with_terms(&[1, 1, 1, 1, 2, 2]);
    persisted.drain(..2); // a lazily truncated WAL still holding entry 3
    let hard_state = HardState {
        term: 2,
        vote: Some(1),
        commit: 5,
    };
    let mut node = RaftCore::new(config(1, 3), hard_state, Some(snapshot), persisted).unwrap();
    assert_eq!(node.first_index(), 4);
    assert_eq!(node.last_index(), 6);
    assert_eq!(node.commit_index(), 5);
    assert_eq!(node.applied_index(), 3, "applied restarts at the snapshot");
    assert_eq!(node.vote(), Some(1));
    let ready = node.ready();
    let applied: Vec<u64> = ready
        .committed_entries
        .iter()
        .map(|entry| entry.index)
        .collect();
    assert_eq!(applied, vec![4, 5]);
    assert!(
        ready.entries.is_empty(),
        "everything given was already durable"
    );
    assert!(ready.hard_state.is_none());
}

#[test]
fn invalid_persisted_state_is_rejected() {
    let gap = vec![entry(1, 1), entry(3, 1)];
    assert_eq!(
        RaftCore::new(
            config(1, 3),
            HardState {
                term: 1,
                vote: None,
                commit: 0
            },
            None,
            gap
        )
        .unwrap_err(),
        RaftError::NonContiguousEntries {
            expected: 2,
            found: 3
        }
    );
    assert_eq!(
        RaftCore::new(
            config(1, 3),
            HardState {
                term: 1,
                vote: None,
                commit: 5
            },
            None,
            entries_with_terms(&[1])
        )
        .unwrap_err(),
        RaftError::CommitBeyondLog {
            commit: 5,
            last_index: 1
        }
    );
    assert_eq!(
        RaftCore::new(
            config(1, 3),
            HardState {
                term: 1,
                vote: None,
                commit: 0
            },
            None,
            entries_with_terms(&[1, 2])
        )
        .unwrap_err(),
        RaftError::LogTermAboveHardState {
            log_term: 2,
            hard_state_term: 1
        }
    );
    assert_eq!(
        RaftCore::new(
            config(1, 3),
            HardState::default(),
            None,
            entries_with_terms(&[2, 1])
        )
        .unwrap_err(),
        RaftError::DecreasingEntryTerm {
            index: 2,
            entry_term: 1,
            previous_term: 2
        }
    );
    assert!(matches!(
        RaftCore::new(config(4, 3), HardState::default(), None, vec![]),
        Err(RaftError::Config(_))
    ));
}

// ----- Elections ----------------------------------------------------------------

#[test]
fn a_candidate_with_a_stale_log_loses() {
    // Node 1's log ends at term 1, the others' at term 2.
    let mut cluster = Cluster::from_nodes(vec![
        restored(1, 3, 2, &[1, 1, 1], |_| {}),
        restored(2, 3, 2, &[1, 2], |_| {}),
        restored(3, 3, 2, &[1, 2], |_| {}),
    ]);
    cluster.node_mut(1).campaign();
    cluster.stabilize();
    assert_ne!(cluster.node(1).role(), Role::Leader);
    assert_eq!(
        cluster.node(1).term(),
        2,
        "a failed pre-vote does not raise the term"
    );
    cluster.elect(2);
    cluster.stabilize();
    assert_eq!(cluster.node(1).log_entries(), cluster.node(2).log_entries());
}

#[test]
fn leader_lease_ignores_vote_requests_unless_transferring() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let request = |transfer| Message {
        from: 3,
        to: 2,
        term: 5,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: 100,
            last_log_term: 4,
            transfer,
        },
    };
    cluster.node_mut(2).step(request(false));
    assert_eq!(
        cluster.node(2).term(),
        1,
        "inside the lease: ignored, term unchanged"
    );
    assert!(!cluster.node(2).has_ready());
    cluster.node_mut(2).step(request(true));
    assert_eq!(cluster.node(2).term(), 5);
    assert_eq!(cluster.node(2).vote(), Some(3));
}

#[test]
fn pre_vote_keeps_a_rejoining_node_from_raising_the_term() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let term = cluster.node(1).term();
    cluster.isolate(3);
    // Far more than an election timeout: node 3 keeps pre-campaigning.
    cluster.tick_all(100);
    assert_eq!(
        cluster.node(3).term(),
        term,
        "pre-votes never raise the term"
    );
    assert_eq!(cluster.node(3).role(), Role::PreCandidate);
    cluster.heal();
    cluster.tick_all(30);
    assert_eq!(cluster.leader(), Some(1), "the leader was not disrupted");
    assert_eq!(cluster.node(1).term(), term);
    assert_eq!(cluster.node(3).role(), Role::Follower);
    assert_eq!(cluster.node(3).leader_id(), Some(1));
}

#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_term() {
    let mut cluster = Cluster::new(3, |config| {
        config.pre_vote = false;
        config.check_quorum = false;
    });
    cluster.elect(1);
    let term = cluster.node(1).term();
    cluster.isolate(3);
    cluster.tick_all(100);
    assert!(
        cluster.node(3).term() > term + 1,
        "each timeout raised the term"
    );
    cluster.heal();
    cluster.tick_all(30);
    assert!(
        cluster.node(1).term() > term,
        "the old leader had to step down"
    );
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(1);
    cluster.tick_node(1, 2 * kvstore_raft::DEFAULT_ELECTION_TICK);
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(
        cluster.node(1).soft_state().reason,
        "check quorum: no majority heard from within an election timeout"
    );
    assert_eq!(
        cluster.node_mut(1).propose(b"x".to_vec()),
        Err(ProposeError::NotLeader { leader_hint: None })
    );
}

#[test]
fn without_check_quorum_an_isolated_leader_stays() {
    let mut cluster = Cluster::new(3, |config| config.check_quorum = false);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.tick_node(1, 5 * kvstore_raft::DEFAULT_ELECTION_TICK);
    assert_eq!(cluster.node(1).role(), Role::Leader);
}

#[test]
fn a_deposed_leader_learns_the_new_term_from_an_answer() {
    let mut cluster = Cluster::new(3, |config| config.check_quorum = false);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.elect(2);
    assert_eq!(
        cluster.node(1).role(),
        Role::Leader,
        "still thinks it leads"
    );
    cluster.heal();
    // Its next heartbeat is answered with the new term.
    cluster.tick_node(1, 1);
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(cluster.node(1).term(), cluster.node(2).term());
}

// ----- Replication and commit -------------------------------------------------

#[test]
fn a_divergent_follower_suffix_is_overwritten() {
    // Node 3 holds an uncommitted suffix of term 2 that the others lack.
    let mut cluster = Cluster::from_nodes(vec![
        restored(1, 3, 3, &[1, 1, 3, 3, 3], |_| {}),
        restored(2, 3, 3, &[1, 1, 3], |_| {}),
        restored(3, 3, 3, &[1, 1, 2, 2, 2, 2, 2, 2], |_| {}),
    ]);
    cluster.elect(1);
    cluster.stabilize();
    let leader_log = cluster.node(1).log_entries().to_vec();
    assert_eq!(cluster.node(3).log_entries(), &leader_log[..]);
    assert_eq!(
        cluster.storage[&3].entries, leader_log,
        "the WAL was truncated and rewritten"
    );
    assert_eq!(cluster.node(3).commit_index(), cluster.node(1).last_index());
}

#[test]
fn fast_backtracking_skips_a_whole_term_per_round_trip() {
    let mut long_suffix = vec![1; 10];
    long_suffix.extend(vec![2; 50]);
    let mut leader_log = vec![1; 10];
    leader_log.extend(vec![3; 50]);
    let mut cluster = Cluster::from_nodes(vec![
        restored(1, 3, 3, &leader_log, |_| {}),
        restored(2, 3, 3, &leader_log, |_| {}),
        restored(3, 3, 3, &long_suffix, |_| {}),
    ]);
    cluster.elect(1);
    let rejections = cluster
        .delivered
        .iter()
        .filter(|message| {
            message.to == 1
                && matches!(
                    message.body,
                    MessageBody::AppendEntriesResponse { success: false, .. }
                )
        })
        .count();
    assert!(
        rejections <= 2,
        "{rejections} rejections: backtracking went entry by entry"
    );
    assert_eq!(cluster.node(3).log_entries(), cluster.node(1).log_entries());
}

/// Raft paper, Figure 8: a leader must not commit an entry of an earlier term
/// by counting replicas, only through an entry of its own term.
#[test]
fn figure_8_old_term_entry_is_not_committed_by_counting() {
    let one_entry_per_append = |config: &mut Config| {
        config.entries_per_append_max = 1;
        config.pre_vote = false;
    };
    // (c): S1 led term 2 and wrote (2, t2) to S2; S5 led term 3 and wrote
    // (2, t3) only locally. S1 is back and campaigns in term 4.
    let mut cluster = Cluster::from_nodes(vec![
        restored(1, 5, 3, &[1, 2], one_entry_per_append),
        restored(2, 5, 3, &[1, 2], one_entry_per_append),
        restored(3, 5, 3, &[1], one_entry_per_append),
        restored(4, 5, 3, &[1], one_entry_per_append),
        restored(5, 5, 3, &[1, 3], one_entry_per_append),
    ]);
    // S1 wins with S2, S3, S4 (S5's log is more up to date and refuses), but
    // only S2 and S3 hear from it afterwards, and S3 never gets entry 3.
    cluster.node_mut(1).campaign();
    let mut appends_to_s3 = 0;
    cluster.stabilize_filtered(|message| match &message.body {
        MessageBody::RequestVote { .. } | MessageBody::RequestVoteResponse { .. } => true,
        MessageBody::AppendEntries { entries, .. } if message.to == 3 => {
            // The first one is the probe S3 rejects (it lacks entry 2);
            // later ones carrying entry 3 are lost.
            appends_to_s3 += 1;
            appends_to_s3 == 1 || entries.iter().all(|entry| entry.index != 3)
        }
        MessageBody::AppendEntries { .. } => message.to == 2,
        _ => message.to == 1 && (message.from == 2 || message.from == 3),
    });
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), 4);
    assert_eq!(cluster.node(3).term_at(2), Some(2), "S3 now holds (2, t2)");
    // (2, t2) is on S1, S2, S3: a majority. It must not be committed.
    let progress = cluster.node(1).progress_of(3).unwrap();
    assert_eq!(progress.match_index, 2);
    assert_eq!(
        cluster.node(1).commit_index(),
        1,
        "old-term entry committed by counting"
    );
    // Had it been, S5 could still win term 5 (its last term 3 beats 2) and
    // overwrite it. Once entry (3, t4) reaches a majority, both commit.
    cluster.stabilize();
    cluster.tick_all(2);
    assert_eq!(cluster.node(1).commit_index(), 3);
    for id in 2..=5 {
        assert_eq!(
            cluster.node(id).log_entries(),
            cluster.node(1).log_entries()
        );
    }
}

#[test]
fn flow_control_caps_entries_bytes_and_inflight_messages() {
    let mut cluster = Cluster::new(3, |config| {
        config.entries_per_append_max = 2;
        config.bytes_per_append_max = 10;
        config.inflight_appends_max = 3;
    });
    cluster.elect(1);
    cluster.tick_all(1);
    assert_eq!(
        cluster.node(1).progress_of(2).unwrap().state,
        ProgressState::Replicate
    );
    // Nothing is delivered: pipelining stops at three messages per
    // follower, each of two 4-byte entries (a third would exceed 10 bytes
    // and 2 entries); two entries wait.
    for _ in 0..8 {
        cluster.propose(1, b"abcd");
    }
    cluster.process_ready(1);
    assert_eq!(
        Cluster::append_entry_counts(&cluster.on_wire(1, 2)),
        vec![2, 2, 2]
    );
    assert_eq!(cluster.node(1).progress_of(2).unwrap().inflight_appends, 3);
    // One acknowledgement frees one slot; the next message carries the two
    // that waited.
    let first = cluster
        .wire
        .iter()
        .position(|message| message.to == 2)
        .unwrap();
    let message = cluster.wire.remove(first).unwrap();
    cluster.wire.retain(|message| message.to != 2);
    cluster.node_mut(2).step(message);
    cluster.process_ready(2);
    let response = cluster
        .wire
        .iter()
        .position(|message| message.from == 2)
        .unwrap();
    let response = cluster.wire.remove(response).unwrap();
    cluster.node_mut(1).step(response);
    cluster.process_ready(1);
    assert_eq!(
        Cluster::append_entry_counts(&cluster.on_wire(1, 2)),
        vec![2]
    );
    // A single entry above the byte limit still goes out, alone.
    cluster.stabilize();
    cluster.tick_all(3);
    cluster.propose(1, &[7u8; 100]);
    cluster.propose(1, b"small");
    cluster.process_ready(1);
    let sizes = Cluster::append_entry_counts(&cluster.on_wire(1, 3));
    assert_eq!(sizes, vec![1, 1]);
    cluster.stabilize();
    assert_eq!(cluster.node(3).last_index(), cluster.node(1).last_index());
}

#[test]
fn proposals_between_two_readies_travel_in_one_append_per_follower() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.tick_all(1);
    for index in 0..5 {
        cluster.propose(1, format!("write-{index}").as_bytes());
    }
    cluster.process_ready(1);
    for follower in [2, 3] {
        assert_eq!(
            Cluster::append_entry_counts(&cluster.on_wire(1, follower)),
            vec![5]
        );
    }
    let acknowledgements_before = cluster.delivered_count("AppendEntriesResponse");
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), cluster.node(1).last_index());
    assert_eq!(
        cluster.delivered_count("AppendEntriesResponse") - acknowledgements_before,
        2,
        "one acknowledgement from each follower for the five"
    );
}

#[test]
fn a_probing_follower_gets_one_message_at_a_time() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.node_mut(1).campaign();
    // Deliver only the election.
    cluster.deliver_matching(|message| {
        matches!(
            message.body,
            MessageBody::RequestVote { .. } | MessageBody::RequestVoteResponse { .. }
        )
    });
    assert_eq!(cluster.node(1).role(), Role::Leader);
    cluster.process_ready(1);
    assert_eq!(cluster.on_wire(1, 2).len(), 1, "one probe");
    for _ in 0..5 {
        cluster.propose(1, b"x");
    }
    cluster.process_ready(1);
    assert_eq!(
        cluster.on_wire(1, 2).len(),
        1,
        "paused until the probe is answered"
    );
    assert_eq!(
        cluster.node(1).progress_of(2).unwrap().state,
        ProgressState::Probe
    );
    cluster.stabilize();
    assert_eq!(cluster.node(2).last_index(), 6);
}

#[test]
fn proposals_are_refused_beyond_the_pending_limit() {
    let mut cluster = Cluster::new(3, |config| config.pending_proposals_max = 3);
    cluster.elect(1);
    assert_eq!(
        cluster.node_mut(2).propose(b"x".to_vec()),
        Err(ProposeError::NotLeader {
            leader_hint: Some(1)
        })
    );
    cluster.isolate(1);
    for _ in 0..3 {
        cluster.propose(1, b"x");
    }
    assert_eq!(
        cluster.node_mut(1).propose(b"x".to_vec()),
        Err(ProposeError::TooManyPending)
    );
    cluster.heal();
    cluster.tick_all(1);
    assert_eq!(cluster.node(1).commit_index(), cluster.node(1).last_index());
    assert!(cluster.node_mut(1).propose(b"x".to_vec()).is_ok());
}

#[test]
fn a_commit_travels_with_the_next_append_or_heartbeat_or_when_the_driver_asks() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.tick_all(1);
    assert!(!cluster.node(1).has_unsent_commit());
    let followers_commit = |cluster: &Cluster| -> Vec<u64> {
        [2, 3]
            .iter()
            .map(|id| cluster.node(*id).commit_index())
            .collect()
    };

    // Committed on the leader; no empty append followed with the news.
    let (first, _) = cluster.propose(1, b"a");
    let appends_before = cluster.delivered_count("AppendEntries");
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), first);
    assert_eq!(
        cluster.delivered_count("AppendEntries"),
        appends_before + 2,
        "one append per follower, with the entry"
    );
    assert_eq!(followers_commit(&cluster), vec![first - 1; 2]);
    assert!(cluster.node(1).has_unsent_commit());

    // The next write's append carries it.
    let (second, _) = cluster.propose(1, b"b");
    cluster.stabilize();
    assert_eq!(followers_commit(&cluster), vec![first; 2]);
    assert!(
        cluster.node(1).has_unsent_commit(),
        "now {second} is unsent"
    );

    // The driver asks: one empty append per follower.
    let appends_before = cluster.delivered_count("AppendEntries");
    cluster.node_mut(1).send_commit();
    cluster.stabilize();
    assert_eq!(cluster.delivered_count("AppendEntries"), appends_before + 2);
    assert_eq!(followers_commit(&cluster), vec![second; 2]);
    assert!(!cluster.node(1).has_unsent_commit());
    assert_eq!(cluster.applied[&2].last().unwrap().0, second);
    // Asked again with nothing unsent, it sends nothing.
    cluster.node_mut(1).send_commit();
    cluster.stabilize();
    assert_eq!(cluster.delivered_count("AppendEntries"), appends_before + 2);

    // A heartbeat carries it too.
    let (third, _) = cluster.propose(1, b"c");
    cluster.stabilize();
    assert!(cluster.node(1).has_unsent_commit());
    cluster.tick_node(1, 1);
    assert_eq!(followers_commit(&cluster), vec![third; 2]);
    assert!(!cluster.node(1).has_unsent_commit());

    // A follower that lags is not owed: it hears with its missing entries.
    cluster.isolate(3);
    let (fourth, _) = cluster.propose(1, b"d");
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), fourth);
    assert!(cluster.node(1).has_unsent_commit(), "node 2 is owed");
    cluster.node_mut(1).send_commit();
    cluster.stabilize();
    assert!(
        !cluster.node(1).has_unsent_commit(),
        "node 3 holds nothing committed that it was not sent"
    );
    assert_eq!(cluster.node(2).commit_index(), fourth);
    assert_eq!(cluster.node(3).commit_index(), third);
}

#[test]
fn a_follower_acknowledging_after_its_heartbeat_left_gets_the_commit_when_it_answers() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.tick_all(1);
    let (index, _) = cluster.propose(1, b"x");
    cluster.process_ready(1);
    let is_append = |message: &Message| matches!(message.body, MessageBody::AppendEntries { .. });
    let is_ack =
        |message: &Message| matches!(message.body, MessageBody::AppendEntriesResponse { .. });
    cluster.deliver_matching(|message| message.from == 1 && is_append(message));
    // Node 2's acknowledgement commits the entry; node 3's is late, so the
    // heartbeat of the next read round cannot tell node 3 of the commit.
    cluster.deliver_matching(|message| message.from == 2 && is_ack(message));
    assert_eq!(cluster.node(1).commit_index(), index);
    cluster.node_mut(1).tick();
    cluster.process_ready(1);
    cluster.deliver_matching(|message| message.from == 3 && is_ack(message));
    assert!(cluster.node(1).has_unsent_commit(), "node 3 is owed");
    cluster.deliver_matching(|message| {
        message.to == 3 && matches!(message.body, MessageBody::Heartbeat { .. })
    });
    assert_eq!(cluster.node(3).commit_index(), index - 1);
    // Its heartbeat answer brings it the commit index at once, not after
    // the driver's delay.
    cluster.deliver_matching(|message| {
        message.from == 3 && matches!(message.body, MessageBody::HeartbeatResponse { .. })
    });
    cluster.deliver_matching(|message| message.to == 3 && is_append(message));
    assert_eq!(cluster.node(3).commit_index(), index);
    assert!(!cluster.node(1).has_unsent_commit());
}

// ----- Leadership transfer ------------------------------------------------------

#[test]
fn leadership_transfer_to_an_up_to_date_follower() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.propose(1, b"before");
    cluster.stabilize();
    let term = cluster.node(1).term();
    assert_eq!(
        cluster.node_mut(1).transfer_leader(9),
        Err(TransferError::UnknownTarget { target: 9 })
    );
    assert_eq!(
        cluster.node_mut(2).transfer_leader(3),
        Err(TransferError::NotLeader {
            leader_hint: Some(1)
        })
    );
    cluster.node_mut(1).transfer_leader(2).unwrap();
    assert_eq!(
        cluster.node_mut(1).propose(b"during".to_vec()),
        Err(ProposeError::TransferInProgress)
    );
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(2));
    assert_eq!(cluster.node(2).term(), term + 1);
    assert_eq!(cluster.node(2).soft_state().reason, "won election");
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(cluster.node(1).leader_id(), Some(2));
    assert_eq!(cluster.delivered_count("TimeoutNow"), 1);
}

#[test]
fn leadership_transfer_waits_for_catch_up_and_aborts_after_a_timeout() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.cuts.insert((1, 3));
    cluster.propose(1, b"behind");
    cluster.stabilize();
    cluster.node_mut(1).transfer_leader(3).unwrap();
    cluster.stabilize();
    assert_eq!(
        cluster.delivered_count("TimeoutNow"),
        0,
        "target not caught up"
    );
    assert_eq!(cluster.node(1).transfer_target(), Some(3));
    cluster.tick_node(1, kvstore_raft::DEFAULT_ELECTION_TICK);
    assert_eq!(cluster.node(1).transfer_target(), None, "aborted");
    assert!(cluster.node_mut(1).propose(b"again".to_vec()).is_ok());
    // Catch-up path: heal, transfer again, the target is caught up first.
    cluster.heal();
    cluster.node_mut(1).transfer_leader(3).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(3));
    assert_eq!(cluster.node(3).last_index(), cluster.node(1).last_index());
}

// ----- Reads ----------------------------------------------------------------------

#[test]
fn read_index_waits_for_a_quorum_round_after_the_request() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.propose(1, b"v1");
    cluster.stabilize();
    let commit = cluster.node(1).commit_index();
    assert_eq!(
        cluster.node_mut(2).read_index(1),
        Err(ReadIndexError::NotLeader {
            leader_hint: Some(1)
        })
    );
    cluster.node_mut(1).read_index(42).unwrap();
    cluster.process_ready(1);
    assert!(cluster.read_states[&1].is_empty(), "no confirmation yet");
    // One follower's answer plus ourselves is a majority of three.
    cluster.stabilize_filtered(|message| message.from != 3 && message.to != 3);
    assert_eq!(
        cluster.read_states[&1],
        vec![ReadState {
            context: 42,
            index: commit
        }]
    );
}

#[test]
fn a_batch_of_reads_shares_one_heartbeat_round() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.propose(1, b"v1");
    cluster.stabilize();
    let commit = cluster.node(1).commit_index();
    cluster.node_mut(1).read_index_batch(&[10, 11, 12]).unwrap();
    cluster.process_ready(1);
    let heartbeats: Vec<&Message> = cluster
        .wire
        .iter()
        .filter(|message| matches!(message.body, MessageBody::Heartbeat { .. }))
        .collect();
    assert_eq!(
        heartbeats.len(),
        2,
        "one heartbeat per follower for three reads"
    );
    cluster.stabilize();
    let served: Vec<ReadState> = (10..=12)
        .map(|context| ReadState {
            context,
            index: commit,
        })
        .collect();
    assert_eq!(cluster.read_states[&1], served);
    // All or nothing: a batch past the pending limit is refused whole.
    let too_many: Vec<u64> = (0..=kvstore_raft::PENDING_READ_REQUESTS_MAX_DEFAULT as u64).collect();
    assert_eq!(
        cluster.node_mut(1).read_index_batch(&too_many),
        Err(ReadIndexError::TooManyPending)
    );
    assert_eq!(
        cluster.node_mut(2).read_index_batch(&[1, 2]),
        Err(ReadIndexError::NotLeader {
            leader_hint: Some(1)
        })
    );
}

#[test]
fn read_index_is_never_confirmed_by_a_partitioned_leader() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node_mut(1).read_index(7).unwrap();
    cluster.tick_node(1, 2 * kvstore_raft::DEFAULT_ELECTION_TICK);
    assert!(cluster.read_states[&1].is_empty());
    assert_eq!(
        cluster.node(1).role(),
        Role::Follower,
        "and the request died with the role"
    );
}

#[test]
fn read_index_waits_for_the_first_commit_of_the_term() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.node_mut(1).campaign();
    cluster.deliver_matching(|message| {
        matches!(
            message.body,
            MessageBody::RequestVote { .. } | MessageBody::RequestVoteResponse { .. }
        )
    });
    assert_eq!(cluster.node(1).role(), Role::Leader);
    cluster.node_mut(1).read_index(5).unwrap();
    cluster.process_ready(1);
    assert_eq!(cluster.node(1).commit_index(), 0);
    assert!(cluster.read_states[&1].is_empty());
    cluster.stabilize();
    assert_eq!(
        cluster.read_states[&1],
        vec![ReadState {
            context: 5,
            index: 1
        }]
    );
}

#[test]
fn single_node_reads_are_immediate() {
    let mut cluster = Cluster::new(1, |_| {});
    cluster.elect(1);
    cluster.node_mut(1).read_index(3).unwrap();
    cluster.process_ready(1);
    assert_eq!(
        cluster.read_states[&1],
        vec![ReadState {
            context: 3,
            index: 1
        }]
    );
}

// ----- Snapshots --------------------------------------------------------------------

#[test]
fn a_lagging_follower_gets_a_snapshot_after_compaction() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.isolate(3);
    for number in 0..20 {
        cluster.propose(1, format!("v{number}").as_bytes());
    }
    cluster.stabilize();
    let applied = cluster.node(1).applied_index();
    assert_eq!(applied, 21);
    assert_eq!(
        cluster.node_mut(1).compact(applied + 1),
        Err(CompactError::NotApplied { index: 22, applied })
    );
    cluster.node_mut(1).compact(applied).unwrap();
    assert_eq!(
        cluster.node_mut(1).compact(5),
        Err(CompactError::AlreadyCompacted {
            index: 5,
            snapshot_index: 21
        })
    );
    assert_eq!(cluster.node(1).first_index(), 22);
    let snapshot = cluster.node(1).snapshot_metadata().unwrap();
    cluster.propose(1, b"after");
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(cluster.snapshots_installed[&3], vec![snapshot]);
    assert_eq!(cluster.storage[&3].snapshot, Some(snapshot));
    assert_eq!(cluster.node(3).snapshot_metadata(), Some(snapshot));
    assert_eq!(cluster.node(3).last_index(), cluster.node(1).last_index());
    assert_eq!(
        cluster.node(3).applied_index(),
        cluster.node(1).last_index()
    );
    let progress = cluster.node(1).progress_of(3).unwrap();
    assert_eq!(progress.state, ProgressState::Replicate);
    assert_eq!(progress.match_index, cluster.node(1).last_index());
    // Entries after the snapshot were applied normally.
    assert_eq!(cluster.applied[&3], vec![(22, b"after".to_vec())]);
}

#[test]
fn a_snapshot_the_follower_already_covers_only_advances_commit() {
    let mut node = restored(2, 3, 2, &[1, 1, 2, 2], |_| {});
    node.step(Message {
        from: 1,
        to: 2,
        term: 2,
        body: MessageBody::InstallSnapshot {
            snapshot: SnapshotMetadata { index: 3, term: 2 },
        },
    });
    assert_eq!(node.commit_index(), 3);
    assert_eq!(node.last_index(), 4, "matching suffix kept");
    let ready = node.ready();
    assert!(ready.snapshot.is_none());
    // Applied restarted at 0 (no snapshot): entries 1..=3 come from the log.
    assert_eq!(
        ready.committed_entries.len(),
        3,
        "entries applied from the log"
    );
    assert_eq!(
        ready.messages[0].body,
        MessageBody::InstallSnapshotResponse { index: 3 }
    );
}

#[test]
fn stale_requests_get_a_matching_answer_with_our_term() {
    let mut node = restored(2, 3, 5, &[1, 1], |_| {});
    let requests = [
        MessageBody::AppendEntries {
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![],
            leader_commit: 1,
        },
        MessageBody::Heartbeat {
            leader_commit: 1,
            read_round: 3,
        },
        MessageBody::InstallSnapshot {
            snapshot: SnapshotMetadata { index: 2, term: 1 },
        },
        MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: 9,
            last_log_term: 3,
            transfer: false,
        },
        MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: 9,
            last_log_term: 3,
            transfer: false,
        },
        MessageBody::TimeoutNow,
    ];
    for body in requests {
        node.step(Message {
            from: 1,
            to: 2,
            term: 3,
            body,
        });
    }
    let ready = node.ready();
    let answers: Vec<(&str, u64)> = ready
        .messages
        .iter()
        .map(|message| (message.body.kind_name(), message.term))
        .collect();
    assert_eq!(
        answers,
        vec![
            ("AppendEntriesResponse", 5),
            ("HeartbeatResponse", 5),
            ("InstallSnapshotResponse", 5),
            ("RequestVoteResponse", 5),
            ("RequestPreVoteResponse", 5),
        ]
    );
    assert_eq!(node.term(), 5);
    assert_eq!(
        node.commit_index(),
        1,
        "nothing from the stale leader was taken"
    );
}

// ----- Lost state, hostile terms, storage that cannot write --------------------

fn heartbeat_round(cluster: &mut Cluster, leader: u64) {
    // One heartbeat interval: the leader's heartbeats and their answers.
    cluster.tick_node(leader, 1);
}

#[test]
fn a_follower_that_lost_its_log_catches_up_under_the_same_leader() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    for round in 0..5u8 {
        cluster.propose(1, &[round]);
    }
    cluster.stabilize();
    heartbeat_round(&mut cluster, 1);
    let commit = cluster.node(1).commit_index();
    assert_eq!(cluster.node(3).commit_index(), commit);
    // Node 3's data directory is wiped; the leader still believes it holds
    // everything up to `commit`.
    cluster.wipe(3, |_| {});
    cluster.propose(1, b"after the wipe");
    cluster.stabilize();
    // The heartbeat says node 3 holds entries it does not: it stops
    // following, learns the term from its peers, then catches up.
    heartbeat_round(&mut cluster, 1);
    assert!(cluster.node(3).is_catching_up());
    cluster.tick_all(3);
    let commit = cluster.node(1).commit_index();
    assert_eq!(cluster.leader(), Some(1), "the leader stays the same");
    assert_eq!(
        cluster.node(3).commit_index(),
        commit,
        "the wiped follower is caught up"
    );
    assert_eq!(cluster.node(3).last_index(), cluster.node(1).last_index());
    assert!(!cluster.node(3).lacks_committed_entries(), "it serves");
    // It votes again only after an election held without it: node 1 may
    // have committed entries on its acknowledgements from before the loss.
    assert!(cluster.node(3).is_catching_up());
    cluster.node_mut(1).transfer_leader(2).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(2));
    heartbeat_round(&mut cluster, 2);
    assert!(!cluster.node(3).is_catching_up(), "it votes again");
}

#[test]
fn a_node_that_lost_its_state_votes_only_once_caught_up() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.propose(1, b"x");
    cluster.stabilize();
    cluster.wipe(3, |config| config.catch_up_before_voting = true);
    assert!(cluster.node(3).is_catching_up());
    // Neither a timeout nor a transfer makes it campaign.
    cluster.isolate(3);
    cluster.tick_node(3, 100);
    assert_eq!(cluster.node(3).role(), Role::Follower);
    assert_eq!(cluster.node(3).term(), 0);
    cluster.heal();
    // A candidate asking for its vote is refused, pre-vote or not.
    cluster.isolate(1);
    let term = cluster.node(2).term();
    cluster.node_mut(2).campaign();
    cluster.stabilize();
    assert_ne!(cluster.node(2).role(), Role::Leader, "node 3 did not vote");
    assert_eq!(cluster.node(2).term(), term);
    assert_eq!(
        cluster.node(3).term(),
        0,
        "learning the term, it answers nobody"
    );
    cluster.heal();
    // It asks its peers their terms on every tick; with two answers it
    // moves to their term, then follows the leader until it holds a commit
    // of the leader's term.
    cluster.tick_all(3);
    assert_eq!(cluster.node(3).term(), cluster.node(1).term());
    assert_eq!(cluster.node(3).leader_id(), Some(1));
    assert!(!cluster.node(3).lacks_committed_entries());
    // Under the leader of the term it learned it still does not vote: a
    // candidate needs node 1, which hands over leadership to node 2.
    cluster.node_mut(1).transfer_leader(2).unwrap();
    cluster.stabilize();
    heartbeat_round(&mut cluster, 2);
    assert!(!cluster.node(3).is_catching_up());
    assert_eq!(
        cluster.node(3).commit_index(),
        cluster.node(1).commit_index()
    );
    cluster.isolate(2);
    cluster.tick_all(40);
    let leader = cluster.leader().expect("nodes 1 and 3 elect a leader");
    assert_ne!(leader, 2);
}

#[test]
fn terms_near_the_top_of_u64_are_refused_and_never_wrap() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let term = cluster.node(2).term();
    for forged_term in [u64::MAX, TERM_MAX + 1] {
        cluster.node_mut(2).step(Message {
            from: 3,
            to: 2,
            term: forged_term,
            body: MessageBody::Heartbeat {
                leader_commit: 0,
                read_round: 0,
            },
        });
        assert_eq!(cluster.node(2).term(), term, "term {forged_term} dropped");
    }
    // A term at the limit is accepted, but no campaign goes past it.
    let mut node = restored(1, 3, TERM_MAX, &[1], |_| {});
    node.campaign();
    assert_eq!(node.role(), Role::Follower);
    assert_eq!(node.term(), TERM_MAX);
    assert_eq!(
        RaftCore::new(
            config(1, 3),
            HardState {
                term: TERM_MAX + 1,
                vote: None,
                commit: 0
            },
            None,
            vec![]
        )
        .unwrap_err(),
        RaftError::TermAboveMax {
            term: TERM_MAX + 1,
            limit: TERM_MAX
        }
    );
}

#[test]
fn a_node_that_may_not_lead_never_campaigns_and_a_leader_hands_over() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.node_mut(1).set_may_lead(false);
    cluster.node_mut(1).campaign();
    cluster.stabilize();
    assert_eq!(cluster.leader(), None);
    cluster.tick_node(1, 100);
    assert_eq!(cluster.node(1).role(), Role::Follower);
    cluster.node_mut(1).set_may_lead(true);
    cluster.elect(1);
    cluster.propose(1, b"x");
    cluster.stabilize();
    // Its storage fails while it leads: it hands leadership over.
    cluster.node_mut(1).set_may_lead(false);
    cluster.stabilize();
    let leader = cluster.leader().expect("a new leader");
    assert_ne!(leader, 1);
    assert_eq!(cluster.node(1).leader_id(), Some(leader));
}

#[test]
fn a_node_that_lost_its_state_learns_the_highest_term_and_does_not_vote_in_it() {
    // Node 3 voted for node 2 in term 5 and then lost its disk; node 1
    // still leads term 4, unaware. Node 3 must not follow the deposed node
    // 1, and must not vote again in term 5.
    let mut node = RaftCore::new(
        {
            let mut config = config(3, 3);
            config.catch_up_before_voting = true;
            config
        },
        HardState::default(),
        None,
        vec![],
    )
    .unwrap();
    let queries: Vec<u64> = node.ready().messages.iter().map(|m| m.to).collect();
    node.advance();
    assert_eq!(queries, vec![1, 2], "it asks every peer");
    // A heartbeat of the deposed leader is ignored while learning.
    node.step(Message {
        from: 1,
        to: 3,
        term: 4,
        body: MessageBody::Heartbeat {
            leader_commit: 0,
            read_round: 7,
        },
    });
    assert!(node.ready().messages.is_empty(), "nothing acknowledged");
    node.advance();
    for (from, term) in [(1, 4), (2, 5)] {
        node.step(Message {
            from,
            to: 3,
            term,
            body: MessageBody::TermAnswer,
        });
    }
    assert_eq!(node.term(), 5, "the highest answer");
    assert_eq!(node.vote(), None);
    assert!(node.is_catching_up());
    let vote_request = |candidate, term| Message {
        from: candidate,
        to: 3,
        term,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: 9,
            last_log_term: 4,
            transfer: false,
        },
    };
    node.step(vote_request(1, 5));
    let ready = node.ready();
    node.advance();
    assert!(
        ready.messages.iter().all(|m| m.body
            == MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: false
            }),
        "{ready:?}"
    );
    // The deposed leader's term is below ours now: it is told so.
    node.step(Message {
        from: 1,
        to: 3,
        term: 4,
        body: MessageBody::Heartbeat {
            leader_commit: 0,
            read_round: 8,
        },
    });
    let ready = node.ready();
    assert_eq!(ready.messages[0].term, 5);
}

#[test]
fn a_leader_that_may_not_lead_steps_down_when_its_handover_fails() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.propose(1, b"x");
    cluster.stabilize();
    // Node 2, the handover's target (lowest id among the most caught up),
    // is unreachable.
    cluster.isolate(2);
    cluster.node_mut(1).set_may_lead(false);
    assert_eq!(cluster.node(1).transfer_target(), Some(2));
    let election_tick = 10;
    cluster.tick_node(1, election_tick);
    assert_eq!(cluster.node(1).role(), Role::Follower, "stepped down");
    assert_eq!(
        cluster.node(1).soft_state().reason,
        "may not lead (storage cannot take writes) and the handover failed: stepped down"
    );
    // Node 3 campaigns and wins with node 1's vote; node 1 never campaigns.
    for _ in 0..60 {
        cluster.tick_node(3, 1);
        cluster.tick_node(1, 1);
    }
    assert_eq!(cluster.leader(), Some(3));
}
