//! Start-up, part 1: the durable state. The data directory and its
//! identity, the WAL and the snapshot it names ([`recover_log`]), the
//! state machine brought in line with that snapshot
//! ([`open_state_machine`]), and the Raft core rebuilt from them
//! ([`build_core`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_raft::{Entry, HardState, RaftCore, SnapshotMetadata};
use kvstore_wal::{Wal, WalOptions};

use super::{blocking, ServerError};
use crate::config::{InitialClusterState, ServerConfig};
use crate::data_dir::{CatchUpMarker, DataDir, DataDirError, Identity as DataDirIdentity};
use crate::logging;
use crate::node::persist;
use crate::snapshot::{self, SnapshotDirectory};
use crate::state_machine;
use crate::storage::actor::{self, StoreHandle, StoreThread};
use crate::storage::leveldb::LevelDbStore;
use crate::storage::overlay::{Backlog, OverlayLimits, OverlayStore};
use crate::storage::resident::{ResidentSize, ResidentStore};
use crate::storage::{recovery, Reclaim, StoreError};

/// The data directory, opened and checked against this node's identity;
/// with whether the identity was recorded only now (a directory written by
/// a release before identities).
pub(super) fn open_data_dir(config: &ServerConfig) -> Result<(DataDir, bool), ServerError> {
    let data_dir = DataDir::open(&config.data_dir)?;
    let identity_stored = data_dir.check_identity(&DataDirIdentity::new(
        &config.cluster_id,
        config.id,
        &config.members(),
    ))?;
    Ok((data_dir, identity_stored))
}

/// The durable Raft state: the WAL, the snapshot it names, the log after
/// it and the hard state.
pub(super) struct RecoveredLog {
    pub wal: Wal,
    pub snapshots: SnapshotDirectory,
    pub snapshot: Option<SnapshotMetadata>,
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    /// The node lost state the cluster knows it had: it catches up before
    /// it votes (kept across restarts by `catch_up_marker`).
    pub catch_up_before_voting: bool,
    pub catch_up_marker: CatchUpMarker,
}

/// Opens the WAL (cutting a torn tail) and the snapshot directory, and
/// decides whether the node must catch up before it votes.
pub(super) async fn recover_log(
    config: &ServerConfig,
    data_dir: &DataDir,
    identity_stored: bool,
) -> Result<RecoveredLog, ServerError> {
    let wal_directory = data_dir.wal_directory();
    let wal_options = WalOptions {
        preallocate_bytes: config.wal_preallocate_bytes,
        ..WalOptions::default()
    };
    let (wal, recovered) = blocking(move || Wal::open(&wal_directory, wal_options)).await?;
    if recovered.truncated_tail_bytes > 0 {
        tracing::warn!(
            bytes = recovered.truncated_tail_bytes,
            "the WAL ended in a torn record (a crash mid-write); it was cut back to the last whole record"
        );
    }
    let snapshots = SnapshotDirectory::open(&data_dir.snapshot_directory())?;
    let snapshot = recovered.snapshot.map(persist::marker_from_wal);
    if let Some(snapshot) = snapshot {
        let path = snapshots.path_of(snapshot);
        if !path.exists() {
            return Err(ServerError::Recovery(format!(
                "the WAL starts after snapshot {snapshot:?}, but {} is missing",
                path.display()
            )));
        }
    }
    let entries = recovered
        .entries
        .into_iter()
        .map(persist::entry_from_wal)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServerError::Recovery)?;
    let hard_state = persist::hard_state_from_wal(&recovered.hard_state);
    logging::set_term(hard_state.term);
    let holds_state = hard_state.term > 0 || snapshot.is_some() || !entries.is_empty();
    let catch_up_marker = data_dir.catch_up_marker();
    let catch_up_before_voting = if catch_up_marker.is_set() {
        tracing::warn!("this node was catching up after it lost its state when it stopped: it goes on catching up before it votes");
        true
    } else {
        let rejoins =
            rejoins_without_state(config.initial_cluster_state, holds_state, identity_stored);
        log_rejoin_decision(rejoins);
        rejoins == Rejoin::LostState
    };
    if catch_up_before_voting {
        catch_up_marker.set().map_err(|source| DataDirError::Io {
            path: data_dir.root().to_path_buf(),
            source,
        })?;
    }
    Ok(RecoveredLog {
        wal,
        snapshots,
        snapshot,
        entries,
        hard_state,
        catch_up_before_voting,
        catch_up_marker,
    })
}

/// How a node starts, as `--initial-cluster-state` and its data directory
/// decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejoin {
    /// A new member, or one with its state: it votes at once.
    AsIs,
    /// `existing` on a directory holding state: the flag is ignored.
    FlagIgnored,
    /// The identity of a directory written by an earlier release was
    /// recorded just now.
    IdentityRecorded,
    /// `existing` on an empty directory: the node lost its state; it
    /// catches up from the leader and neither votes nor campaigns until
    /// then.
    LostState,
}

/// Whether this node starts without the state the cluster knows it had
/// (`--initial-cluster-state existing` on an empty data directory), so it
/// must catch up before it votes.
pub(super) fn rejoins_without_state(
    initial: InitialClusterState,
    holds_state: bool,
    identity_stored: bool,
) -> Rejoin {
    match (initial, holds_state) {
        (InitialClusterState::Existing, false) => Rejoin::LostState,
        (InitialClusterState::Existing, true) => Rejoin::FlagIgnored,
        (InitialClusterState::New, true) if identity_stored => Rejoin::IdentityRecorded,
        (InitialClusterState::New, _) => Rejoin::AsIs,
    }
}

fn log_rejoin_decision(rejoin: Rejoin) {
    match rejoin {
        Rejoin::LostState => tracing::warn!(
            "--initial-cluster-state existing on an empty data directory: this node lost its state; \
             it catches up from the leader and neither votes nor campaigns until then"
        ),
        Rejoin::FlagIgnored => tracing::info!(
            "--initial-cluster-state existing is ignored: the data directory holds state"
        ),
        Rejoin::IdentityRecorded => {
            tracing::info!("recorded the identity of a data directory written by an earlier release")
        }
        Rejoin::AsIs => {}
    }
}

/// The server's store: the latest-record table in memory, everything else
/// written behind into LevelDB.
type ServerStore = ResidentStore<OverlayStore<LevelDbStore>>;

/// The state machine's store, running on its thread, at a consistent
/// applied position.
pub(super) struct StateMachine {
    pub handle: StoreHandle,
    pub thread: StoreThread,
    /// Index and term of the last applied entry.
    pub applied: SnapshotMetadata,
    /// The applied index from which the local state is a state of the log
    /// (see `state_machine::consistent_at`).
    pub consistent_at: kvstore_raft::Index,
    /// Keys written into memory and not yet into LevelDB (a metric).
    pub backlog: Backlog,
    /// The latest-record table held in memory (a metric).
    pub latest_table: ResidentSize,
    /// Frees the disk of compacted history (`node::compactor`).
    pub reclaimer: Arc<dyn Reclaim>,
    /// The storage version applied.
    pub storage_version: u32,
    /// The store revision at the applied index (where watches start).
    pub revision: u64,
    /// The lease table at the applied index.
    pub leases: Vec<(u64, state_machine::lease::LeaseRecord)>,
}

impl StateMachine {
    /// The store thread, dropping this handle on the store.
    pub fn into_thread(self) -> StoreThread {
        self.thread
    }
}

/// Opens LevelDB (checked, else set aside and rebuilt), puts the
/// write-behind overlay in front of it, starts the store thread and
/// restores the snapshot if the store is behind it.
pub(super) async fn open_state_machine(
    config: &ServerConfig,
    data_dir: &DataDir,
    log: &RecoveredLog,
) -> Result<StateMachine, ServerError> {
    let kv_directory = data_dir.kv_directory();
    // Checked, else set aside and rebuilt; a table failing later stops the
    // process (see `storage::recovery`).
    let store = blocking(move || {
        recovery::open_state_store(&kv_directory, |error| {
            crate::fatal::storage_failure("a LevelDB table is corrupt", error)
        })
    })
    .await?;
    // Committed entries are applied into memory and written behind into
    // LevelDB, so that no answer waits for LevelDB's inserts and compactions.
    let overlay_limits = OverlayLimits {
        freeze_ops: config.backend_batch_limit,
        freeze_age: Duration::from_millis(config.backend_batch_interval_ms),
        ..OverlayLimits::default()
    };
    let overlay = OverlayStore::new(store, overlay_limits);
    overlay.on_failure(|reason| {
        crate::fatal::storage_failure("writing behind into LevelDB failed", reason)
    });
    let backlog = overlay.backlog();
    let reclaimer = overlay.reclaimer();
    // The latest-record table lives in memory only, rebuilt from the
    // history below (`storage::resident`).
    let store =
        blocking(move || ResidentStore::open(overlay, state_machine::LATEST_TABLE_PREFIX)).await?;
    let latest_table = store.size();
    let (handle, thread) = actor::spawn(store, |store: ServerStore| {
        if let Err(error) = store
            .into_inner()
            .into_engine()
            .and_then(LevelDbStore::close)
        {
            tracing::error!(%error, "closing the store failed");
        }
    });
    let rebuild_started = Instant::now();
    let live = handle.with(state_machine::rebuild_latest).await?;
    tracing::info!(
        live_keys = live,
        elapsed_ms = rebuild_started.elapsed().as_millis() as u64,
        "rebuilt the latest-record table from the history"
    );
    let applied = recover_state_machine(&handle, &log.snapshots, log.snapshot).await?;
    let undone = handle.with(state_machine::repair).await?;
    if undone > 0 {
        tracing::warn!(
            undone,
            applied_index = applied.index,
            "undid writes LevelDB kept of a write-behind torn by a crash; the log replays them"
        );
    }
    let applied_state = handle
        .with(|store| state_machine::applied_state(store))
        .await?;
    let leases = handle.with(state_machine::lease::all).await?;
    let storage_version = applied_state.storage_version;
    let consistent_at = handle.with(state_machine::consistent_at).await?;
    if consistent_at > applied.index {
        tracing::warn!(
            applied_index = applied.index,
            consistent_at,
            "LevelDB holds part of a write-behind from before a crash; serializable reads wait until the log is applied up to consistent_at again"
        );
    }
    Ok(StateMachine {
        handle,
        thread,
        applied,
        consistent_at,
        backlog,
        latest_table,
        reclaimer,
        storage_version,
        revision: applied_state.revision,
        leases,
    })
}

/// The Raft core over the recovered log; takes the log's entries.
pub(super) fn build_core(
    config: &ServerConfig,
    log: &mut RecoveredLog,
    applied: SnapshotMetadata,
    started: Instant,
) -> Result<RaftCore, ServerError> {
    let mut core_config = kvstore_raft::Config::new(config.id, config.members());
    core_config.election_tick = config.election_ticks();
    core_config.heartbeat_tick = 1;
    core_config.seed = random_seed();
    core_config.catch_up_before_voting = log.catch_up_before_voting;
    let entries = std::mem::take(&mut log.entries);
    let entry_count = entries.len();
    let core = RaftCore::new(core_config, log.hard_state, log.snapshot, entries)
        .map_err(|error| ServerError::Recovery(error.to_string()))?;
    tracing::info!(
        node_id = config.id,
        term = log.hard_state.term,
        commit_index = log.hard_state.commit,
        applied_index = applied.index,
        snapshot_index = log.snapshot.map(|snapshot| snapshot.index).unwrap_or(0),
        log_entries = entry_count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered durable state"
    );
    Ok(core)
}

/// Seed for the Raft core's election jitter: the core is deterministic for a
/// given seed; a running server draws a fresh one.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Brings the state machine to a consistent starting point: when a restore
/// was interrupted, or the store is behind the WAL's snapshot, it is restored
/// from the snapshot file. Returns the applied position.
async fn recover_state_machine(
    store: &StoreHandle,
    snapshots: &SnapshotDirectory,
    snapshot: Option<SnapshotMetadata>,
) -> Result<SnapshotMetadata, ServerError> {
    let (applied, interrupted) = store
        .with(|store| {
            Ok((
                state_machine::applied(store)?,
                state_machine::interrupted_restore(store)?,
            ))
        })
        .await?;
    let Some(snapshot) = snapshot else {
        if let Some(interrupted) = interrupted {
            return Err(ServerError::Recovery(format!(
                "a restore of snapshot {interrupted:?} was interrupted, but the WAL names no snapshot"
            )));
        }
        return Ok(applied);
    };
    if interrupted.is_none() && applied.index >= snapshot.index {
        return Ok(applied);
    }
    let path = snapshots.path_of(snapshot);
    tracing::info!(
        applied_index = applied.index,
        snapshot_index = snapshot.index,
        interrupted = interrupted.is_some(),
        "restoring the state machine from the snapshot"
    );
    let (restored, pairs) = store
        .with(move |store| {
            snapshot::restore_into_store(store, &path)
                .map_err(|error| StoreError::Engine(error.to_string()))
        })
        .await?;
    tracing::info!(
        index = restored.snapshot.index,
        pairs,
        "state machine restored"
    );
    Ok(restored.snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_on_an_empty_directory_catches_up_before_voting() {
        use InitialClusterState::{Existing, New};
        let cases = [
            // (flag, holds state, identity stored now) -> decision
            ((Existing, false, false), Rejoin::LostState),
            ((Existing, false, true), Rejoin::LostState),
            ((Existing, true, false), Rejoin::FlagIgnored),
            ((Existing, true, true), Rejoin::FlagIgnored),
            ((New, true, true), Rejoin::IdentityRecorded),
            ((New, true, false), Rejoin::AsIs),
            ((New, false, false), Rejoin::AsIs),
            ((New, false, true), Rejoin::AsIs),
        ];
        for ((initial, holds_state, identity_stored), expected) in cases {
            assert_eq!(
                rejoins_without_state(initial, holds_state, identity_stored),
                expected,
                "{initial:?}, holds state {holds_state}, identity stored {identity_stored}"
            );
        }
    }
}
