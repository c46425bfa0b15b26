//! The cluster's storage version (`docs/architecture.md`, "Storage
//! version"): a leader proposes raising it to this release's highest once
//! every member's release supports that, and every replica converts its
//! store when it applies the entry, at the same index. Until then, the
//! commands of the newer version are refused the same way everywhere.

use std::sync::Arc;

use kvstore_raft::{NodeId, Term};
use tokio::sync::watch;

use crate::state_machine::STORAGE_VERSION_MAX;
use crate::transport::inbound::PeerReleases;

/// Decides when the leader proposes a higher storage version.
#[derive(Debug)]
pub(super) struct StorageVersionGate {
    /// The version this node has applied (published to the node's services).
    applied: Arc<watch::Sender<u32>>,
    /// What peers report of their releases.
    releases: Arc<PeerReleases>,
    /// The term in which this node proposed the raise (once per term: a
    /// proposal lost with a leadership change is made again by the next
    /// leader).
    proposed_in: Option<Term>,
}

impl StorageVersionGate {
    pub(super) fn new(applied: Arc<watch::Sender<u32>>, releases: Arc<PeerReleases>) -> Self {
        Self {
            applied,
            releases,
            proposed_in: None,
        }
    }

    /// The version to propose now, if any: this node leads in `term`, has
    /// not proposed in it, the applied version is below this release's
    /// highest, and every other member supports that.
    pub(super) fn due(&mut self, leads: bool, term: Term, others: &[NodeId]) -> Option<u32> {
        if !leads || self.proposed_in == Some(term) {
            return None;
        }
        if *self.applied.borrow() >= STORAGE_VERSION_MAX {
            return None;
        }
        if self.releases.lowest(others) < STORAGE_VERSION_MAX {
            return None;
        }
        self.proposed_in = Some(term);
        Some(STORAGE_VERSION_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposed_once_per_term_when_every_member_supports_it() {
        let (applied, _) = watch::channel(1);
        let applied = Arc::new(applied);
        let releases = Arc::new(PeerReleases::default());
        let mut gate = StorageVersionGate::new(applied.clone(), releases.clone());
        let others = [2, 3];
        assert_eq!(gate.due(true, 1, &others), None, "no peer heard from");
        releases.record(2, STORAGE_VERSION_MAX);
        releases.record(3, 0);
        assert_eq!(
            gate.due(true, 1, &others),
            None,
            "node 3 runs an older release"
        );
        releases.record(3, STORAGE_VERSION_MAX);
        assert_eq!(
            gate.due(false, 1, &others),
            None,
            "a follower never proposes"
        );
        assert_eq!(gate.due(true, 1, &others), Some(STORAGE_VERSION_MAX));
        assert_eq!(gate.due(true, 1, &others), None, "once per term");
        assert_eq!(gate.due(true, 2, &others), Some(STORAGE_VERSION_MAX));
        applied.send_replace(STORAGE_VERSION_MAX);
        assert_eq!(gate.due(true, 3, &others), None, "applied already");
        let mut alone = StorageVersionGate::new(Arc::new(watch::channel(1).0), releases);
        assert_eq!(alone.due(true, 1, &[]), Some(STORAGE_VERSION_MAX));
    }
}
