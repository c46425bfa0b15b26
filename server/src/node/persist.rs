//! Conversions between the Raft core's durable state and the WAL's records.

use bytes::Bytes;
use kvstore_raft::{Entry, EntryKind, HardState, SnapshotMetadata};

const KIND_NORMAL: u8 = 1;
const KIND_EMPTY: u8 = 2;

/// A core entry as a WAL entry: the kind byte, then the data.
pub fn entry_to_wal(entry: &Entry) -> kvstore_wal::Entry {
    let mut payload = Vec::with_capacity(1 + entry.data.len());
    payload.push(match entry.kind {
        EntryKind::Normal => KIND_NORMAL,
        EntryKind::Empty => KIND_EMPTY,
    });
    payload.extend_from_slice(&entry.data);
    kvstore_wal::Entry {
        index: entry.index,
        term: entry.term,
        payload,
    }
}

/// A WAL entry as a core entry.
pub fn entry_from_wal(entry: kvstore_wal::Entry) -> Result<Entry, String> {
    let payload = Bytes::from(entry.payload);
    let kind = *payload
        .first()
        .ok_or_else(|| format!("WAL entry {} has an empty payload", entry.index))?;
    let kind = match kind {
        KIND_NORMAL => EntryKind::Normal,
        KIND_EMPTY => EntryKind::Empty,
        other => {
            return Err(format!(
                "WAL entry {} has unknown kind {other}",
                entry.index
            ))
        }
    };
    Ok(Entry {
        index: entry.index,
        term: entry.term,
        kind,
        data: payload.slice(1..),
    })
}

/// The core's hard state as the WAL's.
pub fn hard_state_to_wal(hard_state: &HardState) -> kvstore_wal::HardState {
    kvstore_wal::HardState {
        term: hard_state.term,
        vote: hard_state.vote.unwrap_or(0),
        commit: hard_state.commit,
    }
}

/// The WAL's hard state as the core's.
pub fn hard_state_from_wal(hard_state: &kvstore_wal::HardState) -> HardState {
    HardState {
        term: hard_state.term,
        vote: (hard_state.vote != 0).then_some(hard_state.vote),
        commit: hard_state.commit,
    }
}

/// A snapshot's identity as the WAL's marker.
pub fn marker_to_wal(snapshot: SnapshotMetadata) -> kvstore_wal::SnapshotMarker {
    kvstore_wal::SnapshotMarker {
        index: snapshot.index,
        term: snapshot.term,
    }
}

/// The WAL's marker as a snapshot's identity.
pub fn marker_from_wal(marker: kvstore_wal::SnapshotMarker) -> SnapshotMetadata {
    SnapshotMetadata {
        index: marker.index,
        term: marker.term,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_hard_states_round_trip() {
        for entry in [
            Entry {
                index: 3,
                term: 2,
                kind: EntryKind::Normal,
                data: vec![0, 1, 2].into(),
            },
            Entry {
                index: 4,
                term: 2,
                kind: EntryKind::Empty,
                data: Bytes::new(),
            },
        ] {
            assert_eq!(entry_from_wal(entry_to_wal(&entry)).unwrap(), entry);
        }
        for hard_state in [
            HardState::default(),
            HardState {
                term: 5,
                vote: Some(2),
                commit: 9,
            },
        ] {
            assert_eq!(
                hard_state_from_wal(&hard_state_to_wal(&hard_state)),
                hard_state
            );
        }
        assert!(entry_from_wal(kvstore_wal::Entry {
            index: 1,
            term: 1,
            payload: vec![9]
        })
        .is_err());
    }
}
