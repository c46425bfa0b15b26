//! Observing the cluster through `Status`, and faults made of several
//! container actions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kvstore_proto::kv::v1 as pb;

use crate::client::Client;
use crate::cluster::{Cluster, NodeState};

/// How long one `Status` call may take.
pub(super) const STATUS_TIMEOUT: Duration = Duration::from_millis(700);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A node's view of the cluster, for the steps that depend on roles.
#[derive(Debug, Clone)]
pub(super) struct View {
    pub(super) statuses: BTreeMap<u64, pb::StatusResponse>,
}

impl View {
    /// The leader: a node reporting itself leader, acknowledged (same leader,
    /// same term) by a majority of the cluster; the highest term wins.
    pub(super) fn leader(&self, nodes: u64) -> Option<&pb::StatusResponse> {
        let mut candidates: Vec<&pb::StatusResponse> = self
            .statuses
            .values()
            .filter(|status| status.role == pb::Role::Leader as i32)
            .collect();
        candidates.sort_by_key(|status| std::cmp::Reverse(status.term));
        candidates.into_iter().find(|candidate| {
            let votes = self
                .statuses
                .values()
                .filter(|status| status.leader_id == candidate.id && status.term == candidate.term)
                .count() as u64;
            votes > nodes / 2
        })
    }
}

/// What runs the steps; shared with the background tasks.
#[derive(Clone)]
pub(super) struct Harness {
    pub(super) cluster: Arc<Cluster>,
    pub(super) client: Client,
    pub(super) nodes: u64,
}

impl Harness {
    pub(super) async fn view(&self) -> View {
        let running: Vec<u64> = self
            .cluster
            .ids()
            .into_iter()
            .filter(|&id| self.cluster.state(id) == NodeState::Running)
            .collect();
        let answers = futures::future::join_all(
            running
                .iter()
                .map(|&id| self.client.status(id, STATUS_TIMEOUT)),
        )
        .await;
        View {
            statuses: running
                .into_iter()
                .zip(answers)
                .filter_map(|(id, answer)| answer.ok().map(|status| (id, status)))
                .collect(),
        }
    }

    /// Waits for a leader (other than `not`, in a term above `above`).
    pub(super) async fn wait_for_leader(
        &self,
        timeout: Duration,
        not: Option<u64>,
        above: u64,
    ) -> Result<pb::StatusResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.view().await;
            if let Some(leader) = view.leader(self.nodes) {
                if Some(leader.id) != not && leader.term > above {
                    return Ok(leader.clone());
                }
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = view
                    .statuses
                    .values()
                    .map(|s| {
                        format!(
                            "node {} role {} term {} leader {}",
                            s.id, s.role, s.term, s.leader_id
                        )
                    })
                    .collect();
                bail!("no leader within {timeout:?} (saw: {})", seen.join("; "));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub(super) async fn leader(&self) -> Result<u64> {
        Ok(self
            .wait_for_leader(Duration::from_secs(20), None, 0)
            .await?
            .id)
    }

    pub(super) async fn followers(&self) -> Result<Vec<u64>> {
        let leader = self
            .wait_for_leader(Duration::from_secs(20), None, 0)
            .await?;
        let view = self.view().await;
        let followers: Vec<u64> = view
            .statuses
            .values()
            .filter(|status| status.id != leader.id && status.role == pb::Role::Follower as i32)
            .filter(|status| status.leader_id == leader.id)
            .map(|status| status.id)
            .collect();
        if followers.is_empty() {
            bail!("node {} leads, but no running node follows it", leader.id);
        }
        Ok(followers)
    }

    pub(super) async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let leader = self.wait_for_leader(timeout, None, 0).await?;
        let target = leader.commit_index;
        loop {
            let view = self.view().await;
            let running: Vec<u64> = self
                .cluster
                .ids()
                .into_iter()
                .filter(|&id| self.cluster.state(id) == NodeState::Running)
                .collect();
            let lagging: Vec<String> = running
                .iter()
                .filter_map(|id| match view.statuses.get(id) {
                    None => Some(format!("node {id} does not answer")),
                    Some(status) if status.applied_index < target => Some(format!(
                        "node {id} applied {} < {target}",
                        status.applied_index
                    )),
                    Some(status)
                        if view.leader(self.nodes).map(|l| l.id) != Some(status.leader_id) =>
                    {
                        Some(format!("node {id} follows {}", status.leader_id))
                    }
                    Some(_) => None,
                })
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not caught up within {timeout:?}: {}", lagging.join("; "));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub(super) async fn isolate(&self, id: u64) -> Result<()> {
        for other in self.cluster.ids() {
            if other != id {
                self.cluster.cut(id, other).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn restart(&self, id: u64) -> Result<()> {
        self.cluster.stop(id).await?;
        self.client.forget(id);
        self.cluster.start_node_again(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: pb::Role, term: u64, leader_id: u64) -> pb::StatusResponse {
        pb::StatusResponse {
            id,
            role: role as i32,
            term,
            leader_id,
            ..Default::default()
        }
    }

    #[test]
    fn leader_needs_a_majority_and_the_highest_term_wins() {
        let view = View {
            statuses: BTreeMap::from([
                (1, status(1, pb::Role::Leader, 2, 1)),
                (2, status(2, pb::Role::Follower, 3, 3)),
                (3, status(3, pb::Role::Leader, 3, 3)),
            ]),
        };
        assert_eq!(view.leader(3).map(|s| s.id), Some(3));
        let view = View {
            statuses: BTreeMap::from([
                (1, status(1, pb::Role::Leader, 2, 1)),
                (2, status(2, pb::Role::Follower, 2, 0)),
            ]),
        };
        assert_eq!(view.leader(3), None);
    }
}
