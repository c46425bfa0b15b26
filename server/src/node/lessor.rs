//! The lessor: which leases exist (every node mirrors the applied lease
//! table) and, on the leader only, when each expires.
//!
//! Pure: no clock, no store, no tokio. The driver hands it the time, the
//! applied lease commands and its leadership; it answers with the leases
//! to revoke and the checkpoints to propose, which go through Raft like any
//! write, so every member deletes the same keys at the same revision
//! (`docs/design-23-watch-lease.md`). Keep-alives only move a deadline in
//! the leader's memory, as etcd's do. A new leader extends every deadline
//! by at least the election timeout (etcd's Promote), starting from the
//! last checkpointed remaining TTL when there is one, so a failover never
//! expires a lease early and a long lease does not restart its TTL.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::state_machine::lease::LeaseRecord;

/// How often the leader proposes checkpoints of remaining TTLs (etcd's
/// default checkpoint interval).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Most leases in one checkpoint entry (etcd's batch size).
pub const CHECKPOINT_BATCH_MAX: usize = 1_000;
/// Most revokes of expired leases proposed at once.
pub const REVOKES_IN_FLIGHT_MAX: usize = 16;
/// A revoke proposed and not applied after this long is proposed again
/// (the proposal may have been lost with a leadership change).
pub const REVOKE_RETRY: Duration = Duration::from_secs(5);

/// One lease as the lessor knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    /// Granted time to live.
    ttl: Duration,
    /// Remaining TTL at the last checkpoint applied (zero: none).
    checkpointed: Duration,
    /// When it expires (leader only).
    expiry: Option<Instant>,
    /// When the leader last proposed to correct its checkpoint (leader
    /// only; see [`Lessor::stale_checkpoints`]).
    correction_proposed: Option<Instant>,
}

/// Why a lease request was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRefusal {
    /// This node does not lead (or has not taken over the leases yet).
    NotPrimary,
    /// No such lease (never granted, expired or revoked).
    NotFound,
}

/// What the leader knows of a lease's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeToLive {
    /// Granted, in seconds.
    pub granted_seconds: u64,
    /// Remaining, in whole seconds (truncated, as etcd's).
    pub remaining_seconds: u64,
}

/// The node's leases.
#[derive(Debug)]
pub struct Lessor {
    leases: BTreeMap<u64, Lease>,
    /// Leads and has taken over the deadlines.
    primary: bool,
    /// Added to every deadline at promotion (the election timeout).
    extension: Duration,
    /// Revokes proposed and not yet applied, with when.
    revoking: HashMap<u64, Instant>,
    /// The deliberate bug of `--inject-fault lease-early-expiry`: promotion
    /// expires every lease at once.
    early_expiry: bool,
    /// When checkpoints are next due (leader only).
    next_checkpoint: Option<Instant>,
}

fn seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

impl Lessor {
    /// A lessor over the applied lease table; `extension` is added to every
    /// deadline when this node takes over as leader.
    pub fn new(leases: Vec<(u64, LeaseRecord)>, extension: Duration) -> Self {
        let mut lessor = Self {
            leases: BTreeMap::new(),
            primary: false,
            extension,
            revoking: HashMap::new(),
            early_expiry: false,
            next_checkpoint: None,
        };
        lessor.reload(leases);
        lessor
    }

    /// Switches on the deliberate bug of `--inject-fault lease-early-expiry`.
    pub fn inject_early_expiry(&mut self) {
        self.early_expiry = true;
    }

    /// Replaces the mirror with the applied lease table (after a snapshot
    /// was installed); a leader keeps the deadlines it had and gives new
    /// leases a full extended TTL from `now`.
    pub fn reload_at(&mut self, leases: Vec<(u64, LeaseRecord)>, now: Instant) {
        let old = std::mem::take(&mut self.leases);
        self.reload(leases);
        if self.primary {
            for (id, lease) in &mut self.leases {
                lease.expiry = Some(
                    old.get(id)
                        .and_then(|old| old.expiry)
                        .unwrap_or(now + lease.ttl + self.extension),
                );
            }
        }
    }

    fn reload(&mut self, leases: Vec<(u64, LeaseRecord)>) {
        self.leases = leases
            .into_iter()
            .map(|(id, record)| {
                (
                    id,
                    Lease {
                        ttl: Duration::from_secs(record.ttl_seconds),
                        checkpointed: Duration::from_secs(record.remaining_seconds),
                        expiry: None,
                        correction_proposed: None,
                    },
                )
            })
            .collect();
        self.revoking.retain(|id, _| self.leases.contains_key(id));
    }

    /// Whether this node serves keep-alives.
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Leases known.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// This node now leads: every lease expires no earlier than its
    /// remaining TTL (the checkpointed one, else the full TTL) plus the
    /// extension from `now`.
    pub fn promote(&mut self, now: Instant) {
        self.primary = true;
        self.revoking.clear();
        for lease in self.leases.values_mut() {
            let remaining = if lease.checkpointed.is_zero() {
                lease.ttl
            } else {
                lease.checkpointed.min(lease.ttl)
            };
            lease.expiry = Some(if self.early_expiry {
                now
            } else {
                now + remaining + self.extension
            });
        }
        self.next_checkpoint = Some(now + CHECKPOINT_INTERVAL);
    }

    /// This node no longer leads: deadlines are forgotten.
    pub fn demote(&mut self) {
        self.primary = false;
        self.revoking.clear();
        self.next_checkpoint = None;
        for lease in self.leases.values_mut() {
            lease.expiry = None;
        }
    }

    /// A grant was applied.
    pub fn granted(&mut self, id: u64, ttl_seconds: u64, now: Instant) {
        let ttl = Duration::from_secs(ttl_seconds);
        let expiry = self.primary.then_some(now + ttl);
        self.leases.insert(
            id,
            Lease {
                ttl,
                checkpointed: Duration::ZERO,
                expiry,
                correction_proposed: None,
            },
        );
    }

    /// A revoke was applied.
    pub fn revoked(&mut self, id: u64) {
        self.leases.remove(&id);
        self.revoking.remove(&id);
    }

    /// Checkpoints were applied.
    pub fn checkpointed(&mut self, checkpoints: &[(u64, u64)]) {
        for (id, remaining) in checkpoints {
            if let Some(lease) = self.leases.get_mut(id) {
                lease.checkpointed = Duration::from_secs(*remaining);
                lease.correction_proposed = None;
            }
        }
    }

    /// A keep-alive: the lease lives its full TTL from `now`. Returns the
    /// TTL in seconds. A checkpoint it had is now too short: the next tick
    /// clears it ([`Lessor::stale_checkpoints`]).
    pub fn keep_alive(&mut self, id: u64, now: Instant) -> Result<u64, LeaseRefusal> {
        if !self.primary {
            return Err(LeaseRefusal::NotPrimary);
        }
        if self.revoking.contains_key(&id) {
            return Err(LeaseRefusal::NotFound);
        }
        let lease = self.leases.get_mut(&id).ok_or(LeaseRefusal::NotFound)?;
        if lease.expiry.is_some_and(|expiry| expiry <= now) {
            return Err(LeaseRefusal::NotFound);
        }
        lease.expiry = Some(now + lease.ttl);
        Ok(lease.ttl.as_secs())
    }

    /// Checkpoints to clear (leader only): a lease whose applied checkpoint
    /// is shorter than its remaining TTL (a keep-alive came after it, or
    /// a checkpoint proposed before a keep-alive was applied after it)
    /// would restart from it after a failover and expire before the TTL a
    /// keep-alive promised. Each is cleared (a checkpoint of 0: the full
    /// TTL) through Raft, again after [`REVOKE_RETRY`] if not applied, as
    /// etcd's Renew clears it.
    pub fn stale_checkpoints(&mut self, now: Instant) -> Vec<(u64, u64)> {
        if !self.primary {
            return Vec::new();
        }
        let mut stale = Vec::new();
        for (id, lease) in &mut self.leases {
            let Some(expiry) = lease.expiry else { continue };
            let remaining = expiry.saturating_duration_since(now);
            let short = !lease.checkpointed.is_zero() && lease.checkpointed < remaining;
            let due = lease
                .correction_proposed
                .is_none_or(|proposed| now.saturating_duration_since(proposed) >= REVOKE_RETRY);
            if short && due {
                lease.correction_proposed = Some(now);
                stale.push((*id, 0));
            }
        }
        stale
    }

    /// A lease's granted and remaining TTL (leader only).
    pub fn time_to_live(&self, id: u64, now: Instant) -> Result<TimeToLive, LeaseRefusal> {
        if !self.primary {
            return Err(LeaseRefusal::NotPrimary);
        }
        let lease = self.leases.get(&id).ok_or(LeaseRefusal::NotFound)?;
        let remaining = lease
            .expiry
            .map_or(lease.ttl, |expiry| expiry.saturating_duration_since(now));
        if remaining.is_zero() || self.revoking.contains_key(&id) {
            return Err(LeaseRefusal::NotFound);
        }
        Ok(TimeToLive {
            granted_seconds: lease.ttl.as_secs(),
            remaining_seconds: remaining.as_secs(),
        })
    }

    /// The expired leases to revoke now (leader only): at most
    /// [`REVOKES_IN_FLIGHT_MAX`] in flight; one proposed long ago without
    /// being applied is proposed again.
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        if !self.primary {
            return Vec::new();
        }
        let retry: Vec<u64> = self
            .revoking
            .iter()
            .filter(|(_, proposed)| now.saturating_duration_since(**proposed) >= REVOKE_RETRY)
            .map(|(id, _)| *id)
            .collect();
        let room = REVOKES_IN_FLIGHT_MAX.saturating_sub(self.revoking.len());
        let fresh: Vec<u64> = self
            .leases
            .iter()
            .filter(|(id, lease)| {
                !self.revoking.contains_key(id) && lease.expiry.is_some_and(|expiry| expiry <= now)
            })
            .map(|(id, _)| *id)
            .take(room)
            .collect();
        let mut due = retry;
        due.extend(fresh);
        for id in &due {
            self.revoking.insert(*id, now);
        }
        due
    }

    /// The checkpoints to propose now (leader only, every
    /// [`CHECKPOINT_INTERVAL`]): the remaining TTL of every lease longer
    /// than the interval that has run for a while, at most
    /// [`CHECKPOINT_BATCH_MAX`] (a shorter lease restarting its TTL after a
    /// failover costs less than checkpointing it).
    pub fn checkpoints_due(&mut self, now: Instant) -> Vec<(u64, u64)> {
        if !self.primary || self.next_checkpoint.is_none_or(|due| now < due) {
            return Vec::new();
        }
        self.next_checkpoint = Some(now + CHECKPOINT_INTERVAL);
        self.leases
            .iter()
            .filter(|(_, lease)| lease.ttl > CHECKPOINT_INTERVAL)
            .filter_map(|(id, lease)| {
                let remaining = lease.expiry?.saturating_duration_since(now);
                (!remaining.is_zero() && remaining < lease.ttl).then(|| (*id, seconds(remaining)))
            })
            .take(CHECKPOINT_BATCH_MAX)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTENSION: Duration = Duration::from_secs(1);

    fn record(ttl_seconds: u64, remaining_seconds: u64) -> LeaseRecord {
        LeaseRecord {
            ttl_seconds,
            remaining_seconds,
        }
    }

    #[test]
    fn only_the_leader_expires_and_keeps_alive() {
        let start = Instant::now();
        let mut lessor = Lessor::new(vec![(1, record(10, 0))], EXTENSION);
        assert_eq!(lessor.keep_alive(1, start), Err(LeaseRefusal::NotPrimary));
        assert!(lessor.expired(start + Duration::from_secs(100)).is_empty());
        lessor.promote(start);
        assert_eq!(lessor.keep_alive(1, start), Ok(10));
        assert_eq!(lessor.keep_alive(2, start), Err(LeaseRefusal::NotFound));
        let ttl = lessor
            .time_to_live(1, start + Duration::from_millis(2_500))
            .unwrap();
        assert_eq!((ttl.granted_seconds, ttl.remaining_seconds), (10, 7));
        assert!(lessor.expired(start + Duration::from_secs(9)).is_empty());
        assert_eq!(lessor.expired(start + Duration::from_secs(10)), vec![1]);
        // Proposed once; an expired lease refuses keep-alives meanwhile.
        assert!(lessor.expired(start + Duration::from_secs(11)).is_empty());
        assert_eq!(
            lessor.keep_alive(1, start + Duration::from_secs(11)),
            Err(LeaseRefusal::NotFound)
        );
        // Not applied within the retry time: proposed again.
        assert_eq!(
            lessor.expired(start + Duration::from_secs(10) + REVOKE_RETRY),
            vec![1]
        );
        lessor.revoked(1);
        assert!(lessor.is_empty());
    }

    #[test]
    fn a_new_leader_extends_every_lease_and_starts_from_the_checkpoint() {
        let start = Instant::now();
        let mut lessor = Lessor::new(vec![(1, record(10, 0)), (2, record(600, 30))], EXTENSION);
        lessor.promote(start);
        // Not before the full TTL (1) or the checkpoint (2), plus the
        // election timeout.
        assert!(lessor.expired(start + Duration::from_secs(10)).is_empty());
        assert_eq!(lessor.expired(start + Duration::from_secs(11)), vec![1]);
        lessor.revoked(1);
        assert!(lessor.expired(start + Duration::from_secs(30)).is_empty());
        assert_eq!(lessor.expired(start + Duration::from_secs(31)), vec![2]);
        lessor.demote();
        assert_eq!(lessor.keep_alive(2, start), Err(LeaseRefusal::NotPrimary));
    }

    #[test]
    fn grants_on_the_leader_start_their_deadline_and_checkpoints_record_the_remaining_ttl() {
        let start = Instant::now();
        let mut lessor = Lessor::new(Vec::new(), EXTENSION);
        lessor.promote(start);
        lessor.granted(7, 3_600, start);
        assert!(lessor
            .checkpoints_due(start + Duration::from_secs(60))
            .is_empty());
        let due = lessor.checkpoints_due(start + CHECKPOINT_INTERVAL);
        assert_eq!(due, vec![(7, 3_600 - CHECKPOINT_INTERVAL.as_secs())]);
        assert!(lessor
            .checkpoints_due(start + CHECKPOINT_INTERVAL)
            .is_empty());
        lessor.checkpointed(&due);
        let after = start + CHECKPOINT_INTERVAL;
        assert!(lessor.stale_checkpoints(after).is_empty(), "it is current");
        // A keep-alive makes it too short: cleared once, again after a
        // while if the clear was not applied, no more once it was.
        assert_eq!(lessor.keep_alive(7, after), Ok(3_600));
        assert_eq!(lessor.stale_checkpoints(after), vec![(7, 0)]);
        assert!(lessor.stale_checkpoints(after).is_empty());
        assert_eq!(lessor.stale_checkpoints(after + REVOKE_RETRY), vec![(7, 0)]);
        lessor.checkpointed(&[(7, 0)]);
        assert!(lessor
            .stale_checkpoints(after + 2 * REVOKE_RETRY)
            .is_empty());
        // A follower that takes over later starts from the checkpoint.
        let mut follower = Lessor::new(vec![(7, record(3_600, due[0].1))], EXTENSION);
        let later = start + CHECKPOINT_INTERVAL;
        follower.promote(later);
        let ttl = follower.time_to_live(7, later).unwrap();
        assert_eq!(ttl.remaining_seconds, due[0].1 + EXTENSION.as_secs());
    }
}
