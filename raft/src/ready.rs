//! The hand-off to the driver: [`Ready`] batches everything the core wants
//! done, [`RaftCore::advance`] acknowledges it.
//!
//! Contract, per `Ready`, in this order:
//! 1. Persist: if `snapshot` is set, replace the WAL with it (drop every
//!    entry, record the snapshot metadata and the received snapshot bytes);
//!    then write `entries`, first truncating the WAL from `entries[0].index`
//!    on; then write `hard_state` if set. Make it durable (fsync) when
//!    `must_sync`. Entries and hard state must become durable together, or
//!    entries first.
//! 2. Send `messages` (only now: they may acknowledge what step 1 stored).
//! 3. Restore the state machine from the snapshot bytes if `snapshot` is
//!    set, then apply `committed_entries` in order (skip the data of
//!    `EntryKind::Empty` entries but count them as applied).
//! 4. Answer reads in `read_states` once applied index >= their index.
//! 5. Call [`RaftCore::advance`]. Only then may `ready()` be called again;
//!    `tick`, `step`, `propose` etc. are allowed in between.
//!
//! Background writes (etcd-raft's asynchronous storage writes, for a
//! leader): a leader whose `Ready` changes neither term nor vote and
//! carries no snapshot may send `messages` and apply `committed_entries`
//! BEFORE step 1 completes, and acknowledge with
//! [`RaftCore::advance_unpersisted`] instead of `advance`. Writes must
//! complete in the order the `Ready`s were handed out; as each one becomes
//! durable the driver reports its last entry with
//! [`RaftCore::on_persisted`]. Only then does the leader count its own copy
//! toward commit, and while writes are outstanding `committed_entries`
//! holds nothing beyond the durable prefix. A later `Ready` handled the
//! synchronous way (persist, then send) must wait for the earlier writes
//! too; its `advance` then marks everything durable.

use crate::raft_core::RaftCore;
use crate::types::{Entry, HardState, Index, Message, NodeId, Role, SnapshotMetadata, Term};

/// Role information that needs no persistence, reported when it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Current role.
    pub role: Role,
    /// Known leader of the current term.
    pub leader_id: Option<NodeId>,
    /// Current term.
    pub term: Term,
    /// The node lost its durable state and neither votes nor campaigns until
    /// it has caught up ([`crate::Config::catch_up_before_voting`]).
    pub catching_up: bool,
    /// Why the role or leader last changed, e.g. `"won election"` or
    /// `"check quorum: no majority heard from within an election timeout"`.
    pub reason: &'static str,
}

/// A confirmed linearizable read: answer read `context` once the state
/// machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The context given to [`RaftCore::read_index`].
    pub context: u64,
    /// Commit index at the time of the request.
    pub index: Index,
}

/// Everything the core asks of its driver since the previous `Ready`. See the
/// module documentation for the order in which to handle it. All fields may
/// be moved out freely; [`RaftCore::advance`] takes no argument.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// New role/leader/term, when any of them changed.
    pub soft_state: Option<SoftState>,
    /// Hard state to persist, when it changed.
    pub hard_state: Option<HardState>,
    /// Entries to append to the WAL; the WAL must first drop every entry at
    /// or after `entries[0].index` (a new leader may overwrite a suffix).
    pub entries: Vec<Entry>,
    /// A snapshot received from the leader: persist it (replacing the WAL)
    /// and restore the state machine from the bytes that came with it.
    pub snapshot: Option<SnapshotMetadata>,
    /// Messages to send after persisting.
    pub messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Confirmed reads.
    pub read_states: Vec<ReadState>,
    /// Whether persisting needs an fsync (entries, a snapshot, or a changed
    /// term or vote; a commit-only hard-state change does not).
    pub must_sync: bool,
}

impl Ready {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && self.snapshot.is_none()
            && self.messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
    }
}

/// What the last `Ready` handed out, to be acknowledged by `advance`.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    last_committed_index: Option<Index>,
    snapshot_index: Option<Index>,
}

/// What makes a soft state new: role, leader, term, catching up.
type SoftStateKey = (Role, Option<NodeId>, Term, bool);

/// Bookkeeping of what the driver has been handed.
#[derive(Clone, Debug)]
pub(crate) struct ReadyTracker {
    hard_state: HardState,
    soft_state: SoftStateKey,
    outstanding: Option<Outstanding>,
}

impl ReadyTracker {
    pub(crate) fn new(
        hard_state: HardState,
        role: Role,
        leader_id: Option<NodeId>,
        term: Term,
        catching_up: bool,
    ) -> Self {
        ReadyTracker {
            hard_state,
            soft_state: (role, leader_id, term, catching_up),
            outstanding: None,
        }
    }
}

impl RaftCore {
    fn soft_state_key(&self) -> SoftStateKey {
        (self.role, self.leader_id, self.term, self.is_catching_up())
    }

    /// Whether [`RaftCore::ready`] would return a non-empty `Ready`. Always
    /// false while a `Ready` is outstanding (not yet advanced).
    pub fn has_ready(&self) -> bool {
        if self.ready_tracker.outstanding.is_some() {
            return false;
        }
        self.soft_state_key() != self.ready_tracker.soft_state
            || self.hard_state() != self.ready_tracker.hard_state
            || !self.log.unstable_entries().is_empty()
            || self.pending_snapshot.is_some()
            || !self.messages.is_empty()
            || self.log.has_next_committed_entries()
            || !self.read_states.is_empty()
    }

    /// Takes everything pending. Panics if the previous `Ready` was not
    /// acknowledged with [`RaftCore::advance`].
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.ready_tracker.outstanding.is_none(),
            "ready() called before advance() acknowledged the previous Ready"
        );
        self.send_pending_appends();
        let hard_state = self.hard_state();
        let previous_hard_state = self.ready_tracker.hard_state;
        // Before this Ready's entries count as handed out: with no background
        // write outstanding, committed entries may include them (they are
        // persisted before they are applied).
        let committed_entries = self
            .log
            .next_committed_entries(self.config.committed_entries_per_ready_max);
        let entries = self.log.unstable_entries().to_vec();
        if let Some(last) = entries.last() {
            self.log.persisting_to(last.index);
        }
        let snapshot = self.pending_snapshot.take();
        let must_sync = !entries.is_empty()
            || snapshot.is_some()
            || hard_state.term != previous_hard_state.term
            || hard_state.vote != previous_hard_state.vote;
        let soft_state_key = self.soft_state_key();
        let soft_state =
            (soft_state_key != self.ready_tracker.soft_state).then(|| self.soft_state());
        let ready = Ready {
            soft_state,
            hard_state: (hard_state != previous_hard_state).then_some(hard_state),
            entries,
            snapshot,
            messages: std::mem::take(&mut self.messages),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            must_sync,
        };
        self.ready_tracker.hard_state = hard_state;
        self.ready_tracker.soft_state = soft_state_key;
        self.ready_tracker.outstanding = Some(Outstanding {
            last_committed_index: ready.committed_entries.last().map(|entry| entry.index),
            snapshot_index: ready.snapshot.map(|snapshot| snapshot.index),
        });
        ready
    }

    /// Acknowledges the last `Ready`: its entries, hard state and snapshot are
    /// durable, its messages sent and its committed entries applied. A leader
    /// now counts its own persisted entries toward commit, so `has_ready`
    /// may turn true again (new committed entries, appends with the new
    /// commit index): loop until it is false.
    pub fn advance(&mut self) {
        let outstanding = self
            .ready_tracker
            .outstanding
            .take()
            .expect("advance() called without an outstanding Ready");
        self.log.persisting_done();
        if let Some(index) = outstanding.snapshot_index {
            self.log.snapshot_applied(index);
        }
        if let Some(index) = outstanding.last_committed_index {
            // Entries handed out before a snapshot that covers them: the
            // snapshot's acknowledgement already moved applied past them.
            if index > self.log.applied() {
                self.log.applied_to(index);
            }
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.on_commit_advanced();
        }
        self.assert_invariants();
    }

    /// Acknowledges the last `Ready` like [`RaftCore::advance`], except that
    /// its entries and hard state are still being written in the
    /// background (see the module documentation): they count as durable
    /// only once [`RaftCore::on_persisted`] reports them.
    ///
    /// Panics if the `Ready` handed out entries to apply that were not
    /// durable yet (it must then be persisted before anything is applied).
    pub fn advance_unpersisted(&mut self) {
        let outstanding = self
            .ready_tracker
            .outstanding
            .take()
            .expect("advance_unpersisted() called without an outstanding Ready");
        assert!(
            outstanding.snapshot_index.is_none(),
            "a Ready with a snapshot must be persisted before it is acknowledged"
        );
        if let Some(index) = outstanding.last_committed_index {
            assert!(
                index <= self.log.persisted(),
                "entries up to {index} were handed out for applying but only {} are durable",
                self.log.persisted()
            );
            if index > self.log.applied() {
                self.log.applied_to(index);
            }
        }
        self.assert_invariants();
    }

    /// A background write became durable: every entry up to `index`, the
    /// last one having `term`. A leader now counts them toward commit.
    /// Reports of entries truncated meanwhile are ignored.
    pub fn on_persisted(&mut self, index: Index, term: Term) {
        if self.log.persisted_to(index, term) && self.role == Role::Leader && self.maybe_commit() {
            self.on_commit_advanced();
        }
        self.assert_invariants();
    }
}
