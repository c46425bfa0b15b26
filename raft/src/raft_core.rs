//! [`RaftCore`]: roles, role transitions, ticks, the message gate and the
//! public API. Elections live in `election.rs`, the leader's replication in
//! `replication.rs`, the follower's handlers in `follower.rs`, linearizable
//! reads in `read_index.rs` and the driver hand-off in `ready.rs`.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::catch_up::CatchUp;
use crate::config::Config;
use crate::errors::{CompactError, ProposeError, RaftError, ReadIndexError, TransferError};
use crate::log::RaftLog;
use crate::progress::{PeerProgress, Progress};
use crate::read_index::ReadTracker;
use crate::ready::{ReadState, ReadyTracker, SoftState};
use crate::types::{
    Entry, EntryKind, HardState, Index, Message, MessageBody, NodeId, Role, SnapshotMetadata, Term,
    TERM_MAX,
};

/// Multiplier mixing the node id into the RNG seed (golden-ratio constant), so
/// nodes sharing `Config::seed` draw different election timeouts.
const SEED_MIX_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// A pure, deterministic Raft state machine (etcd-raft style): no I/O, no
/// clock, no threads. Drive it with [`RaftCore::tick`], [`RaftCore::step`] and
/// [`RaftCore::propose`]; collect its output with [`RaftCore::ready`] and
/// acknowledge it with [`RaftCore::advance`].
pub struct RaftCore {
    pub(crate) id: NodeId,
    /// Validated; `voters` sorted.
    pub(crate) config: Config,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) leader_id: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) role_change_reason: &'static str,
    pub(crate) log: RaftLog,
    /// Follower/candidate: ticks since the leader was last heard from (or the
    /// election started). Leader: ticks since the last check-quorum round.
    pub(crate) election_elapsed_ticks: u32,
    pub(crate) heartbeat_elapsed_ticks: u32,
    pub(crate) randomized_election_timeout_ticks: u32,
    rng: SmallRng,
    /// Campaign answers, `true` for granted (our own included).
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// Leader only: one entry per peer (not ourselves).
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Leader only: the voter leadership is being handed to.
    pub(crate) transfer_target: Option<NodeId>,
    pub(crate) reads: ReadTracker,
    /// Output, moved out by `ready()`.
    pub(crate) messages: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    /// A snapshot received from the leader, not yet handed to the driver.
    pub(crate) pending_snapshot: Option<SnapshotMetadata>,
    pub(crate) ready_tracker: ReadyTracker,
    pub(crate) catch_up: CatchUp,
    /// Cleared by the driver while this node cannot take writes (a full
    /// disk): it does not campaign, and steps down if it leads.
    pub(crate) may_lead: bool,
}

impl RaftCore {
    /// Builds a node from its persisted state. A fresh node passes
    /// `HardState::default(), None, vec![]`.
    ///
    /// `entries` must be contiguous and follow the snapshot (entries at or
    /// below the snapshot index are skipped, so a lazily truncated WAL is
    /// fine). The commit index is `max(hard_state.commit, snapshot.index)`
    /// and the applied index restarts at the snapshot index: the driver
    /// restores its state machine from the snapshot and re-applies the
    /// committed entries the first `Ready`s hand out.
    pub fn new(
        config: Config,
        hard_state: HardState,
        snapshot: Option<SnapshotMetadata>,
        entries: Vec<Entry>,
    ) -> Result<Self, RaftError> {
        config.validate()?;
        let mut config = config;
        config.voters.sort_unstable();
        let snapshot = snapshot.unwrap_or_default();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|entry| entry.index > snapshot.index)
            .collect();
        let mut expected_index = snapshot.index + 1;
        let mut previous_term = snapshot.term;
        for entry in &entries {
            if entry.index != expected_index {
                return Err(RaftError::NonContiguousEntries {
                    expected: expected_index,
                    found: entry.index,
                });
            }
            if entry.term < previous_term {
                return Err(RaftError::DecreasingEntryTerm {
                    index: entry.index,
                    entry_term: entry.term,
                    previous_term,
                });
            }
            expected_index += 1;
            previous_term = entry.term;
        }
        if hard_state.term > TERM_MAX {
            return Err(RaftError::TermAboveMax {
                term: hard_state.term,
                limit: TERM_MAX,
            });
        }
        if previous_term > hard_state.term {
            return Err(RaftError::LogTermAboveHardState {
                log_term: previous_term,
                hard_state_term: hard_state.term,
            });
        }
        let last_index = expected_index - 1;
        if hard_state.commit > last_index {
            return Err(RaftError::CommitBeyondLog {
                commit: hard_state.commit,
                last_index,
            });
        }
        let log = RaftLog::restore_from_storage(snapshot, entries, hard_state.commit);
        let seed = config.seed ^ config.id.wrapping_mul(SEED_MIX_MULTIPLIER);
        let pending_read_requests_max = config.pending_read_requests_max;
        let mut node = RaftCore {
            id: config.id,
            config,
            term: hard_state.term,
            vote: hard_state.vote,
            leader_id: None,
            role: Role::Follower,
            role_change_reason: "started",
            log,
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: 0,
            rng: SmallRng::seed_from_u64(seed),
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            transfer_target: None,
            reads: ReadTracker::new(pending_read_requests_max),
            messages: Vec::new(),
            read_states: Vec::new(),
            pending_snapshot: None,
            ready_tracker: ReadyTracker::new(
                hard_state,
                Role::Follower,
                None,
                hard_state.term,
                false,
            ),
            catch_up: CatchUp::Done,
            may_lead: true,
        };
        node.reset_timers();
        if node.config.catch_up_before_voting {
            node.start_catch_up("started without the state it had: learning the cluster's term");
        }
        node.assert_invariants();
        Ok(node)
    }

    // ----- Introspection -------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Vote cast in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    /// The leader of the current term, if known (ourselves when leading).
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }

    /// Highest index known committed.
    pub fn commit_index(&self) -> Index {
        self.log.committed()
    }

    /// Highest index applied (acknowledged through [`RaftCore::advance`], or
    /// the snapshot index after a restart or snapshot install).
    pub fn applied_index(&self) -> Index {
        self.log.applied()
    }

    /// Highest index the driver has acknowledged as durable.
    pub fn persisted_index(&self) -> Index {
        self.log.persisted()
    }

    /// Index of the last entry (durable or not).
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// Term of the last entry (the snapshot term if the log is empty).
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// Index of the first entry held in memory (`snapshot index + 1`).
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }

    /// Term of the entry at `index`; `None` if compacted or beyond the log.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// Entries held in memory: `first_index()..=last_index()`.
    pub fn log_entries(&self) -> &[Entry] {
        self.log.entries()
    }

    /// The latest compaction or installed-snapshot point; `None` before any.
    pub fn snapshot_metadata(&self) -> Option<SnapshotMetadata> {
        let snapshot = self.log.snapshot();
        (snapshot.index > 0).then_some(snapshot)
    }

    /// Current hard state (possibly not yet persisted).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    /// Current soft state (role, leader, term, and why it last changed).
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader_id: self.leader_id,
            term: self.term,
            catching_up: self.is_catching_up(),
            reason: self.role_change_reason,
        }
    }

    /// All voters, sorted.
    pub fn voters(&self) -> &[NodeId] {
        &self.config.voters
    }

    /// The transfer target while a leadership transfer is in progress.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer_target
    }

    /// Leader only: each follower's match and next index (empty otherwise).
    pub fn follower_progress(&self) -> Vec<PeerProgress> {
        self.progress
            .iter()
            .map(|(id, progress)| progress.view(*id))
            .collect()
    }

    /// Leader only: the progress of `peer` (`None` if we do not lead or it
    /// is not a peer).
    pub fn progress_of(&self, peer: NodeId) -> Option<PeerProgress> {
        self.progress.get(&peer).map(|progress| progress.view(peer))
    }

    // ----- Inputs ----------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.tick_election(),
        }
        self.assert_invariants();
    }

    /// Starts an election now (pre-vote first when configured). A no-op on a
    /// leader. Peers inside their leader lease ignore it, as they would a
    /// timeout-driven election.
    pub fn campaign(&mut self) {
        self.start_election(false, "campaign requested");
        self.assert_invariants();
    }

    /// Whether this node may lead. While not (its storage cannot take
    /// writes, say), it does not campaign, TimeoutNow included, and a
    /// leader hands leadership to its most caught-up follower, stepping
    /// down if that has not happened within an election timeout. It still
    /// follows a leader and answers vote requests.
    pub fn set_may_lead(&mut self, may_lead: bool) {
        self.may_lead = may_lead;
        if !may_lead && self.role == Role::Leader && self.transfer_target.is_none() {
            let best_follower = self
                .progress
                .iter()
                .max_by_key(|(id, progress)| (progress.match_index, std::cmp::Reverse(**id)))
                .map(|(id, _)| *id);
            if let Some(target) = best_follower {
                self.transfer_leader(target)
                    .expect("a leader may transfer to a voter");
            }
        }
        self.assert_invariants();
    }

    /// Proposes a command. On success returns the `(index, term)` it was
    /// appended at; it is committed when a `Ready` hands out an entry with
    /// that index *and* term (a different term there means it was lost).
    pub fn propose(&mut self, data: impl Into<Bytes>) -> Result<(Index, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if self.transfer_target.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let pending = self.log.last_index() - self.log.committed();
        if pending >= self.config.pending_proposals_max as u64 {
            return Err(ProposeError::TooManyPending);
        }
        let index = self.log.last_index() + 1;
        let entry = Entry {
            index,
            term: self.term,
            kind: EntryKind::Normal,
            data: data.into(),
        };
        self.leader_append(entry);
        self.assert_invariants();
        Ok((index, self.term))
    }

    /// Starts a linearizable read. `context` identifies it: a later `Ready`
    /// carries `ReadState { context, index }` once this node has confirmed it
    /// still leads (a majority answered a heartbeat sent after this call) and
    /// has committed an entry of its term. The driver answers the read once
    /// its applied index reaches `index`. Requests pending when leadership
    /// is lost are dropped: fail them when `SoftState` shows another role.
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadIndexError> {
        self.read_index_batch(&[context])
    }

    /// Starts the linearizable reads `contexts` together: one heartbeat round
    /// confirms them all, so a driver that collects the reads arriving while
    /// it was busy pays one round (one heartbeat per follower) for the lot.
    /// Either every read is accepted or none is.
    pub fn read_index_batch(&mut self, contexts: &[u64]) -> Result<(), ReadIndexError> {
        let result = self.request_reads(contexts);
        self.assert_invariants();
        result
    }

    /// Hands leadership to `target`: proposals are refused from now on; once
    /// `target`'s log is caught up it receives `TimeoutNow` and campaigns
    /// (bypassing leader leases). Aborted after one election timeout. A
    /// transfer to ourselves cancels any transfer in progress.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if !self.config.voters.contains(&target) {
            return Err(TransferError::UnknownTarget { target });
        }
        if target == self.id {
            self.transfer_target = None;
            return Ok(());
        }
        if self.transfer_target == Some(target) {
            return Ok(());
        }
        self.transfer_target = Some(target);
        // The transfer times out one election timeout from now.
        self.election_elapsed_ticks = 0;
        if self.progress[&target].match_index == self.log.last_index() {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.send_append(target, true);
        }
        self.assert_invariants();
        Ok(())
    }

    /// The driver snapshotted its state machine at `index` (which must be
    /// applied): entries up to `index` are dropped and `(index, term)` becomes
    /// the snapshot point sent to followers that need older entries. The
    /// driver may drop the same WAL entries once its snapshot is durable.
    pub fn compact(&mut self, index: Index) -> Result<(), CompactError> {
        let snapshot_index = self.log.snapshot().index;
        if index <= snapshot_index {
            return Err(CompactError::AlreadyCompacted {
                index,
                snapshot_index,
            });
        }
        if index > self.log.applied() {
            return Err(CompactError::NotApplied {
                index,
                applied: self.log.applied(),
            });
        }
        self.log.compact(index);
        self.assert_invariants();
        Ok(())
    }

    /// Processes a message from a peer. Messages not addressed to us, from
    /// non-voters or from ourselves are ignored. Requests from an older term
    /// are answered with the matching response kind and our term (so a
    /// deposed leader or stale candidate learns it); other stale messages are
    /// dropped. Every request of our term gets exactly one response, except
    /// `TimeoutNow` (none) and a vote request dropped by the leader lease.
    pub fn step(&mut self, message: Message) {
        if message.to != self.id
            || message.from == self.id
            || !self.config.voters.contains(&message.from)
            || message.term > TERM_MAX
        {
            return;
        }
        // Term queries sit outside the term rules (see `catch_up.rs`).
        match message.body {
            MessageBody::TermQuery => {
                self.answer_term_query(message.from);
                self.assert_invariants();
                return;
            }
            MessageBody::TermAnswer => {
                self.record_term_answer(message.from, message.term);
                self.assert_invariants();
                return;
            }
            _ if self.is_learning_term() => return,
            _ => {}
        }
        if message.term > self.term {
            if let MessageBody::RequestVote { transfer, .. } = message.body {
                if !transfer && self.in_leader_lease() {
                    // Leader lease: a live leader exists; do not let a
                    // partitioned node's election disrupt it.
                    return;
                }
            }
            match message.body {
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(
                        message.term,
                        Some(message.from),
                        "leader of a higher term",
                    );
                }
                _ => self.become_follower(message.term, None, "message with a higher term"),
            }
        } else if message.term < self.term {
            self.answer_stale(&message);
            return;
        }
        match message.body {
            MessageBody::RequestVote { .. } => self.handle_request_vote(&message),
            _ => match self.role {
                Role::Leader => self.step_leader(message),
                Role::PreCandidate | Role::Candidate => self.step_candidate(message),
                Role::Follower => self.step_follower(message),
            },
        }
        self.assert_invariants();
    }

    // ----- Per-role step and tick -----------------------------------------

    fn step_leader(&mut self, message: Message) {
        match message.body {
            MessageBody::AppendEntriesResponse {
                success,
                index,
                reject_hint_index,
                reject_hint_term,
            } => self.handle_append_response(
                message.from,
                success,
                index,
                reject_hint_index,
                reject_hint_term,
            ),
            MessageBody::HeartbeatResponse {
                read_round,
                log_lost_after,
            } => self.handle_heartbeat_response(message.from, read_round, log_lost_after),
            // Index 0 only comes from a node answering a stale request.
            MessageBody::InstallSnapshotResponse { index } if index > 0 => {
                self.handle_append_response(message.from, true, index, 0, 0)
            }
            // Another leader in our term cannot exist; vote answers after
            // winning and follower-bound messages are stale.
            _ => {}
        }
    }

    fn step_candidate(&mut self, message: Message) {
        match message.body {
            MessageBody::RequestVoteResponse { .. } => self.handle_vote_response(&message),
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(
                    message.term,
                    Some(message.from),
                    "found the leader of our term",
                );
                self.step_follower(message);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, message: Message) {
        match message.body {
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.heard_from_leader(message.from);
                self.handle_append_entries(
                    message.from,
                    prev_log_index,
                    prev_log_term,
                    &entries,
                    leader_commit,
                );
                self.maybe_finish_catch_up();
            }
            MessageBody::Heartbeat {
                leader_commit,
                read_round,
            } => {
                self.heard_from_leader(message.from);
                self.handle_heartbeat(message.from, leader_commit, read_round);
                self.maybe_finish_catch_up();
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.heard_from_leader(message.from);
                self.handle_install_snapshot(message.from, snapshot);
                self.maybe_finish_catch_up();
            }
            MessageBody::TimeoutNow => {
                self.start_election(true, "leadership transferred to us (TimeoutNow)");
            }
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed_ticks = 0;
        if self.leader_id != Some(leader) {
            assert!(
                self.leader_id.is_none(),
                "two leaders in term {}",
                self.term
            );
            self.leader_id = Some(leader);
            self.role_change_reason = "learned the leader of our term";
        }
    }

    fn tick_election(&mut self) {
        if self.is_catching_up() {
            // Not a candidate until caught up; the leader's messages keep
            // the timer at zero anyway.
            self.election_elapsed_ticks = 0;
            self.send_term_queries();
            return;
        }
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.randomized_election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            self.start_election(false, "election timeout");
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.config.election_tick {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum {
                if !self.quorum_recently_active() {
                    self.become_follower(
                        self.term,
                        None,
                        "check quorum: no majority heard from within an election timeout",
                    );
                    return;
                }
                for progress in self.progress.values_mut() {
                    progress.recent_active = false;
                }
            }
            // A transfer that did not finish within an election timeout
            // failed. A leader that may not lead steps down instead (its
            // target may be down, or not voting): it will not campaign, so
            // the others elect one of them.
            self.transfer_target = None;
            if !self.may_lead {
                self.become_follower(
                    self.term,
                    None,
                    "may not lead (storage cannot take writes) and the handover failed: stepped down",
                );
                return;
            }
        }
        self.tick_snapshot_retries();
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_tick {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let active = 1 + self
            .progress
            .values()
            .filter(|progress| progress.recent_active)
            .count();
        active >= crate::quorum::majority(self.config.voters.len())
    }

    /// Whether a live leader was heard from within the base election timeout
    /// (check-quorum only). Such a node ignores higher-term vote requests.
    fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader_id.is_some()
            && self.election_elapsed_ticks < self.config.election_tick
    }

    /// Answers a request from an older term with the matching response kind
    /// carrying our term, so its sender steps down (and an RPC transport
    /// pairing requests with responses gets its answer). The bodies are
    /// no-ops for a receiver that is already in our term. `TimeoutNow` and
    /// stale responses get nothing.
    fn answer_stale(&mut self, message: &Message) {
        let answer = match message.body {
            MessageBody::AppendEntries { .. } => MessageBody::AppendEntriesResponse {
                success: false,
                index: 0,
                reject_hint_index: 0,
                reject_hint_term: 0,
            },
            MessageBody::Heartbeat { .. } => MessageBody::HeartbeatResponse {
                read_round: 0,
                log_lost_after: None,
            },
            MessageBody::InstallSnapshot { .. } => {
                MessageBody::InstallSnapshotResponse { index: 0 }
            }
            MessageBody::RequestVote { pre_vote, .. } => MessageBody::RequestVoteResponse {
                pre_vote,
                granted: false,
            },
            _ => return,
        };
        self.send(message.from, answer);
    }

    // ----- Role transitions -----------------------------------------------

    fn reset_timers(&mut self) {
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        let base = self.config.election_tick;
        self.randomized_election_timeout_ticks = self.rng.random_range(base..2 * base);
    }

    fn reset_role_state(&mut self, role: Role, leader_id: Option<NodeId>, reason: &'static str) {
        self.role = role;
        self.leader_id = leader_id;
        self.role_change_reason = reason;
        self.reset_timers();
        self.votes.clear();
        self.progress.clear();
        self.transfer_target = None;
        self.reads.clear();
    }

    /// Follows `leader_id` (if known) in `term`, which is not below ours. A
    /// new term clears the vote.
    pub(crate) fn become_follower(
        &mut self,
        term: Term,
        leader_id: Option<NodeId>,
        reason: &'static str,
    ) {
        assert!(term >= self.term, "term must never decrease");
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.reset_role_state(Role::Follower, leader_id, reason);
    }

    /// Starts a pre-vote round: term and vote unchanged.
    pub(crate) fn become_pre_candidate(&mut self, reason: &'static str) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        self.reset_role_state(Role::PreCandidate, None, reason);
    }

    /// Starts a real election in the next term, voting for ourselves.
    pub(crate) fn become_candidate(&mut self, reason: &'static str) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        self.term += 1;
        self.vote = Some(self.id);
        self.reset_role_state(Role::Candidate, None, reason);
    }

    /// Takes the lead: every follower is probed from our last index, and an
    /// empty entry of our term is appended so earlier entries can commit.
    pub(crate) fn become_leader(&mut self, reason: &'static str) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        assert_eq!(self.vote, Some(self.id), "a leader voted for itself");
        self.reset_role_state(Role::Leader, Some(self.id), reason);
        let next_index = self.log.last_index() + 1;
        for peer in self.peers() {
            self.progress.insert(
                peer,
                Progress::new(next_index, self.config.inflight_appends_max),
            );
        }
        let entry = Entry {
            index: next_index,
            term: self.term,
            kind: EntryKind::Empty,
            data: Bytes::new(),
        };
        self.leader_append(entry);
    }

    // ----- Helpers ---------------------------------------------------------

    /// Voters other than ourselves, sorted.
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        self.config
            .voters
            .iter()
            .copied()
            .filter(|voter| *voter != self.id)
            .collect()
    }

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        assert_ne!(to, self.id, "never message ourselves");
        self.messages.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    pub(crate) fn assert_invariants(&self) {
        self.log.assert_invariants();
        assert!(self.term <= TERM_MAX, "term above TERM_MAX");
        if self.is_catching_up() {
            assert!(
                matches!(self.role, Role::Follower),
                "a node catching up neither campaigns nor leads"
            );
        }
        assert!(
            self.log.last_term() <= self.term,
            "log term above current term"
        );
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader_id, Some(self.id));
                assert_eq!(self.vote, Some(self.id));
                assert_eq!(self.progress.len(), self.config.voters.len() - 1);
                for progress in self.progress.values() {
                    progress.assert_invariants();
                    assert!(progress.next_index <= self.log.last_index() + 1);
                }
            }
            Role::Candidate => {
                assert_eq!(self.vote, Some(self.id));
                assert!(self.leader_id.is_none());
            }
            Role::PreCandidate => assert!(self.leader_id.is_none()),
            Role::Follower => {}
        }
        if self.role != Role::Leader {
            assert!(self.progress.is_empty());
            assert!(self.transfer_target.is_none());
            assert!(self.reads.is_empty());
        }
    }
}

impl std::fmt::Debug for RaftCore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RaftCore")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("term", &self.term)
            .field("vote", &self.vote)
            .field("leader_id", &self.leader_id)
            .field("first_index", &self.log.first_index())
            .field("last_index", &self.log.last_index())
            .field("persisted", &self.log.persisted())
            .field("commit", &self.log.committed())
            .field("applied", &self.log.applied())
            .finish()
    }
}
