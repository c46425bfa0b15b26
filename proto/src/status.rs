//! The Status RPC's answer as people and scripts read it: one spelling of
//! the roles and one JSON shape, shared by `kvstore-cli status -w json` and
//! the server's `/status` page, which each add their own fields.

use serde_json::{json, Map, Value};

use crate::kv::v1::{Role, StatusResponse};

/// A role as text: "leader", "follower", "candidate", "pre-candidate" (the
/// Raft core's spelling), or "unknown" for a value this release does not
/// know.
pub fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Leader) => "leader",
        Ok(Role::Follower) => "follower",
        Ok(Role::Candidate) => "candidate",
        Ok(Role::PreCandidate) => "pre-candidate",
        Ok(Role::Unspecified) | Err(_) => "unknown",
    }
}

/// The facts of a Status answer as a JSON object. Each follower's
/// `lag_entries` is the leader's last index minus the follower's match
/// index.
pub fn status_json(status: &StatusResponse) -> Map<String, Value> {
    let followers: Vec<Value> = status
        .followers
        .iter()
        .map(|follower| {
            json!({
                "id": follower.id,
                "match_index": follower.match_index,
                "next_index": follower.next_index,
                "lag_entries": status.last_log_index.saturating_sub(follower.match_index),
            })
        })
        .collect();
    let document = json!({
        "id": status.id,
        "cluster_id": status.cluster_id,
        "version": status.version,
        "role": role_name(status.role),
        "term": status.term,
        "leader_id": status.leader_id,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_log_index": status.last_log_index,
        "snapshot_index": status.snapshot_index,
        "followers": followers,
    });
    match document {
        Value::Object(object) => object,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::v1::FollowerProgress;

    #[test]
    fn every_role_has_a_name_and_unknown_values_say_so() {
        assert_eq!(role_name(Role::PreCandidate as i32), "pre-candidate");
        assert_eq!(role_name(Role::Leader as i32), "leader");
        assert_eq!(role_name(99), "unknown");
    }

    #[test]
    fn followers_carry_their_lag() {
        let status = StatusResponse {
            id: 1,
            role: Role::Leader as i32,
            last_log_index: 10,
            followers: vec![FollowerProgress {
                id: 2,
                match_index: 7,
                next_index: 8,
            }],
            ..Default::default()
        };
        let document = status_json(&status);
        assert_eq!(document["role"], "leader");
        assert_eq!(document["followers"][0]["lag_entries"], 3);
    }
}
