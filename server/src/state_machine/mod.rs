//! The key-value state machine on top of a [`Store`].
//!
//! User keys live under a data prefix so that metadata — the last applied
//! log index and a "restore in progress" mark — shares the same database and
//! the same write batches: an entry's effect and the applied index that
//! records it are written together, so a restart never skips an entry.
//!
//! The server's store writes behind ([`crate::storage::overlay`]): after a
//! crash, LevelDB may hold part of a batch with the applied index before
//! it. Replaying the log from that index rewrites the same values (puts and
//! deletes are blind writes), so the state ends the same; meanwhile the
//! data mixes two indexes. The applied index is therefore written twice, under
//! a key sorting before all data and one sorting after: the first reaches
//! LevelDB first, so when they differ, [`consistent_at`] names the index the
//! node must apply again before its local state is a state of the log.

pub mod command;
pub mod kv_encoding;
pub mod lease;
pub mod log_encoding;
pub mod mvcc;
pub mod view;

pub use command::{
    Applied, Command, Outcome, Refusal, STORAGE_VERSION_LEASES, STORAGE_VERSION_MAX,
    STORAGE_VERSION_MVCC, STORAGE_VERSION_SINGLE,
};
use kvstore_raft::{Entry, Index, SnapshotMetadata};
use mvcc::store::{self as mvcc_store, Change, KeySpan, Meta, MvccError, WriteTxn};
use mvcc::Revision;
use view::{BatchView, Waiting};

use crate::storage::{KeyRange, KeyValue, Store, StoreError, WriteBatch, WriteOp};

/// Prefix of every user key in a single-version store (storage version 1).
const DATA_PREFIX: &[u8] = b"d/";
/// Metadata key: index and term of the last applied entry, and the storage
/// version, revision and compacted revision after it. It sorts after every
/// data key: a write-behind store ([`crate::storage::overlay`]) writes in
/// key order, so the applied index never reaches the engine before the
/// data it covers.
const APPLIED_KEY: &[u8] = b"m/applied";
/// Metadata key: the applied record again, sorting before every data key, so
/// that it reaches the engine before the data it covers (see the module
/// documentation).
const APPLIED_AHEAD_KEY: &[u8] = b"0/applied";
/// Metadata key: set while a snapshot is being restored (the data is then
/// incomplete and the restore must be redone on restart).
const RESTORING_KEY: &[u8] = b"m/restoring";
/// Keys written per batch while restoring or clearing.
pub const RESTORE_BATCH_KEYS: usize = 1_000;
/// Bytes of an applied record of storage version 1 (index, term).
const APPLIED_RECORD_V1_BYTES: usize = 16;
/// Bytes of a later applied record (index, term, revision, compacted,
/// storage version).
const APPLIED_RECORD_BYTES: usize = 36;

/// The store key of a user key in a single-version store.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(DATA_PREFIX.len() + key.len());
    stored.extend_from_slice(DATA_PREFIX);
    stored.extend_from_slice(key);
    stored
}

/// The user key of a store key under the data prefix.
pub fn user_key(stored: &[u8]) -> Option<&[u8]> {
    stored.strip_prefix(DATA_PREFIX)
}

/// A key's value and the store revision it was read at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValueRead {
    /// The value (`None`: no such key).
    pub value: Option<Vec<u8>>,
    /// The store revision (0 before storage version 2).
    pub revision: u64,
}

/// Reads a user key.
pub fn get(store: &mut dyn Store, key: &[u8]) -> Result<ValueRead, StoreError> {
    read_value(store, key, Waiting::Allowed).map(|read| read.expect("waiting is allowed"))
}

/// Reads a user key unless that means waiting for the storage engine
/// (see [`Store::get_if_ready`]).
pub fn get_if_ready(store: &mut dyn Store, key: &[u8]) -> Option<Result<ValueRead, StoreError>> {
    read_value(store, key, Waiting::Refused).transpose()
}

fn read_value(
    store: &mut dyn Store,
    key: &[u8],
    waiting: Waiting,
) -> Result<Option<ValueRead>, StoreError> {
    let mut view = BatchView::new(store, waiting);
    // The multi-version table first; a single-version store has none of
    // it, and a converted one has no single-version keys left.
    let value = match mvcc_store::latest(&mut view, key).map_err(store_error)? {
        Some(record) => Some(record.value),
        None => view.get(&data_key(key))?,
    };
    let revision = match mvcc_store::recorded_revision_if_ready(&mut view) {
        Some(revision) => revision.map_err(store_error)?,
        None => 0,
    };
    Ok((!view.would_wait()).then_some(ValueRead { value, revision }))
}

/// A read of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// One key's value.
    Get(Vec<u8>),
    /// A range (storage version 2).
    Range(mvcc::range::RangeRequest),
    /// Every lease (storage version 3).
    Leases,
    /// One lease and the keys attached to it (storage version 3).
    LeaseKeys(u64),
}

/// What a [`Query`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryAnswer {
    /// A key's value.
    Value(ValueRead),
    /// A range's pairs, or why the range was refused.
    Range {
        /// The pairs (or the refusal: a compacted or future revision, a
        /// store without revisions).
        outcome: Result<mvcc::range::RangeOutcome, Refusal>,
        /// The current store revision.
        revision: u64,
    },
    /// Every lease, in id order.
    Leases(Vec<(u64, lease::LeaseRecord)>),
    /// One lease (`None`: it does not exist) and its keys, in key order.
    LeaseKeys {
        /// The lease.
        record: Option<lease::LeaseRecord>,
        /// Its keys.
        keys: Vec<Vec<u8>>,
    },
}

/// Runs a read.
pub fn query(store: &mut dyn Store, query: &Query) -> Result<QueryAnswer, StoreError> {
    match query {
        Query::Get(key) => get(store, key).map(QueryAnswer::Value),
        Query::Range(request) => range(store, request),
        Query::Leases => lease::all(store).map(QueryAnswer::Leases),
        Query::LeaseKeys(id) => {
            let record = lease::get(store, *id)?;
            let keys = match record {
                Some(_) => lease::attached_keys(store, *id)?,
                None => Vec::new(),
            };
            Ok(QueryAnswer::LeaseKeys { record, keys })
        }
    }
}

/// Runs a read unless that means waiting for the storage engine (a range
/// at the current revision scans the latest-record table, which the server
/// holds in memory; one at a past revision scans the history in the engine
/// and goes through the store thread).
pub fn query_if_ready(
    store: &mut dyn Store,
    query: &Query,
) -> Option<Result<QueryAnswer, StoreError>> {
    match query {
        Query::Get(key) => get_if_ready(store, key).map(|read| read.map(QueryAnswer::Value)),
        Query::Range(_) | Query::Leases | Query::LeaseKeys(_) => {
            let mut view = BatchView::new(store, Waiting::Refused);
            let answer = self::query(&mut view, query);
            (!view.would_wait()).then_some(answer)
        }
    }
}

fn range(
    store: &mut dyn Store,
    request: &mvcc::range::RangeRequest,
) -> Result<QueryAnswer, StoreError> {
    let state = applied_state(store)?;
    if state.storage_version < STORAGE_VERSION_MVCC {
        return Ok(QueryAnswer::Range {
            outcome: Err(Refusal::StorageVersion {
                current: state.storage_version,
                needed: STORAGE_VERSION_MVCC,
            }),
            revision: 0,
        });
    }
    let options = &request.options;
    let outcome = match mvcc_store::range_at(
        store,
        &request.span,
        request.revision,
        options.store_limit(),
    ) {
        Ok(read) => Ok(options.select(read.kvs, read.count, read.more)),
        Err(error) => Err(Refusal::from_mvcc(&error).ok_or_else(|| store_error(error))?),
    };
    Ok(QueryAnswer::Range {
        outcome,
        revision: state.revision,
    })
}

/// Whether `compares` hold on the store's current state (for the
/// deliberate stale-compare bug: a correct node decides them when it
/// applies the txn).
pub fn compares_hold(
    store: &mut dyn Store,
    compares: &[mvcc::compare::Compare],
) -> Result<bool, StoreError> {
    let mut txn = WriteTxn::begin(store).map_err(store_error)?;
    mvcc::compare::all_hold(&mut txn, compares).map_err(store_error)
}

/// An MVCC error that is a storage failure, as one.
fn store_error(error: MvccError) -> StoreError {
    match error {
        MvccError::Store(error) => error,
        other => StoreError::Engine(other.to_string()),
    }
}

/// Up to `limit` user pairs of a single-version store with keys at or after
/// `start`, in key order.
pub fn scan_data_from(
    store: &mut dyn Store,
    start: &[u8],
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    let range = KeyRange {
        start: data_key(start),
        end: KeyRange::prefix(DATA_PREFIX.to_vec()).end,
    };
    let pairs = store.scan(&range, limit)?;
    Ok(pairs
        .into_iter()
        .filter_map(|(key, value)| user_key(&key).map(|key| (key.to_vec(), value)))
        .collect())
}

/// What the applied record holds: the last applied entry, and the state
/// of the store after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedState {
    /// Index and term of the last applied entry.
    pub snapshot: SnapshotMetadata,
    /// The storage version.
    pub storage_version: u32,
    /// The store revision (0 at storage version 1).
    pub revision: u64,
    /// The compacted revision (0: none).
    pub compacted: u64,
}

impl Default for AppliedState {
    fn default() -> Self {
        Self {
            snapshot: SnapshotMetadata::default(),
            storage_version: STORAGE_VERSION_SINGLE,
            revision: 0,
            compacted: 0,
        }
    }
}

impl AppliedState {
    /// The record's bytes: a storage-version-1 record is the index and the
    /// term alone, as releases before storage versions wrote it.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(APPLIED_RECORD_BYTES);
        bytes.extend_from_slice(&self.snapshot.index.to_be_bytes());
        bytes.extend_from_slice(&self.snapshot.term.to_be_bytes());
        if self.storage_version > STORAGE_VERSION_SINGLE {
            bytes.extend_from_slice(&self.revision.to_be_bytes());
            bytes.extend_from_slice(&self.compacted.to_be_bytes());
            bytes.extend_from_slice(&self.storage_version.to_be_bytes());
        }
        bytes
    }

    /// Reads a record [`AppliedState::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let snapshot = |bytes: &[u8]| SnapshotMetadata {
            index: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            term: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
        };
        match bytes.len() {
            APPLIED_RECORD_V1_BYTES => Ok(Self {
                snapshot: snapshot(bytes),
                ..Self::default()
            }),
            APPLIED_RECORD_BYTES => Ok(Self {
                snapshot: snapshot(bytes),
                revision: u64_at(16),
                compacted: u64_at(24),
                storage_version: u32::from_be_bytes(bytes[32..36].try_into().expect("4 bytes")),
            }),
            other => Err(StoreError::Engine(format!(
                "applied record has {other} bytes, expected {APPLIED_RECORD_V1_BYTES} or {APPLIED_RECORD_BYTES}"
            ))),
        }
    }

    fn meta(&self) -> Meta {
        Meta {
            revision: self.revision.max(mvcc_store::FIRST_REVISION),
            compacted: self.compacted,
        }
    }
}

fn decode_metadata(bytes: &[u8]) -> Result<SnapshotMetadata, StoreError> {
    AppliedState::decode(bytes).map(|state| state.snapshot)
}

/// Index and term of the last applied entry ((0, 0) for a fresh store).
pub fn applied(store: &mut dyn Store) -> Result<SnapshotMetadata, StoreError> {
    applied_state(store).map(|state| state.snapshot)
}

/// The applied record (a fresh store's: nothing applied, version 1).
pub fn applied_state(store: &mut dyn Store) -> Result<AppliedState, StoreError> {
    applied_from(store.get(APPLIED_KEY)?)
}

/// The applied record under [`APPLIED_KEY`] (the default when there is
/// none).
fn applied_from(record: Option<Vec<u8>>) -> Result<AppliedState, StoreError> {
    record.map_or(Ok(AppliedState::default()), |bytes| {
        AppliedState::decode(&bytes)
    })
}

/// The applied index at which the stored data is a state of the log again:
/// the applied index, or, after a crash while a write-behind was partly
/// written, the index that write came from. Reads that do not wait for the
/// log (serializable ones) must wait until the node has applied it.
pub fn consistent_at(store: &mut dyn Store) -> Result<Index, StoreError> {
    let applied = applied(store)?.index;
    let ahead = match store.get(APPLIED_AHEAD_KEY)? {
        Some(bytes) => decode_metadata(&bytes)?.index,
        None => 0,
    };
    Ok(applied.max(ahead))
}

/// Writes read per step of [`repair`].
const REPAIR_WRITES_PER_STEP: usize = 1_024;

/// Puts a store that a crash left partly written back to the state of its
/// applied record, before the log is replayed from there: a write-behind
/// store keeps a key-order prefix of a batch ([`Store::write`]). Data of a
/// single-version store is written blind (replaying rewrites the same
/// values), but a multi-version apply reads what it changes (versions,
/// compares), so replaying over a half-written batch would diverge. The
/// revision table sorts first (`mvcc::keys`), so the writes to undo are the
/// revision records above the recorded revision. Returns how many writes
/// were undone.
pub fn repair(store: &mut dyn Store) -> Result<usize, StoreError> {
    let state = applied_state(store)?;
    let mut undone = 0;
    loop {
        let writes = mvcc_store::writes_after(store, state.revision, REPAIR_WRITES_PER_STEP)
            .map_err(store_error)?;
        if writes.is_empty() {
            break;
        }
        let mut batch = WriteBatch::new();
        for (revision, key) in &writes {
            let before = mvcc_store::record_at(store, key, state.revision).map_err(store_error)?;
            mvcc_store::undo_write(&mut batch, key, *revision, before.as_ref());
        }
        undone += writes.len();
        store.write(batch)?;
    }
    if state.storage_version >= STORAGE_VERSION_MVCC {
        let mut batch = WriteBatch::new();
        mvcc_store::set_meta(&mut batch, state.meta());
        store.write(batch)?;
    }
    Ok(undone)
}

/// The snapshot whose restore was interrupted, if any.
pub fn interrupted_restore(store: &mut dyn Store) -> Result<Option<SnapshotMetadata>, StoreError> {
    store
        .get(RESTORING_KEY)?
        .map(|bytes| decode_metadata(&bytes))
        .transpose()
}

/// Applies committed entries in order, in one batch together with the new
/// applied index. Entries at or below the applied index are skipped (they
/// were applied before a restart).
pub fn apply(store: &mut dyn Store, entries: &[Entry]) -> Result<Vec<Applied>, StoreError> {
    apply_in(store, entries, Waiting::Allowed)
        .map(|outcomes| outcomes.expect("an apply that may wait always runs"))
}

/// [`apply`], unless it would wait for the storage engine (a read that
/// misses memory while the engine is busy, a scan, or a write that must
/// wait for the write-behind to catch up): then `None`, with nothing
/// written, and the caller applies through the store thread instead.
pub fn apply_if_ready(
    store: &mut dyn Store,
    entries: &[Entry],
) -> Option<Result<Vec<Applied>, StoreError>> {
    apply_in(store, entries, Waiting::Refused).transpose()
}

/// Applies `entries`; `Ok(None)`, with nothing written, when that would
/// wait and waiting is refused.
fn apply_in(
    store: &mut dyn Store,
    entries: &[Entry],
    waiting: Waiting,
) -> Result<Option<Vec<Applied>>, StoreError> {
    let mut view = BatchView::new(store, waiting);
    let applied_record = view.get(APPLIED_KEY)?;
    if view.would_wait() {
        return Ok(None);
    }
    let mut state = applied_from(applied_record)?;
    let mut outcomes = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.index <= state.snapshot.index {
            continue;
        }
        assert_eq!(
            entry.index,
            state.snapshot.index + 1,
            "entries must be applied in order without gaps"
        );
        let outcome = apply_entry(&mut view, &mut state, entry)?;
        if view.would_wait() {
            return Ok(None);
        }
        state.snapshot = SnapshotMetadata {
            index: entry.index,
            term: entry.term,
        };
        outcomes.push(outcome);
    }
    if !outcomes.is_empty() {
        let mut batch = WriteBatch::new();
        batch.put(APPLIED_AHEAD_KEY.to_vec(), state.encode());
        batch.put(APPLIED_KEY.to_vec(), state.encode());
        if !view.commit(batch)? {
            return Ok(None);
        }
    }
    Ok(Some(outcomes))
}

/// Applies one entry through `view`, keeping `state`'s counters.
fn apply_entry(
    view: &mut BatchView<'_>,
    state: &mut AppliedState,
    entry: &Entry,
) -> Result<Applied, StoreError> {
    let mut changes = Vec::new();
    let mut applied = apply_command(view, state, entry, &mut changes)?;
    applied.changes = changes;
    Ok(applied)
}

/// [`apply_entry`]: the writes made go to `changes`.
fn apply_command(
    view: &mut BatchView<'_>,
    state: &mut AppliedState,
    entry: &Entry,
    changes: &mut Vec<Change>,
) -> Result<Applied, StoreError> {
    let index = entry.index;
    let Some(command) = log_encoding::decode_entry(entry) else {
        return Ok(Applied::simple(index, true, state.revision));
    };
    let multi_version = state.storage_version >= STORAGE_VERSION_MVCC;
    let refused = |state: &AppliedState, refusal: Refusal| Applied {
        index,
        found: false,
        revision: state.revision,
        outcome: Some(Box::new(Outcome::Refused(refusal))),
        changes: Vec::new(),
    };
    match command {
        Command::Put { key, value } if !multi_version => {
            view.put(&data_key(&key), &value)?;
            Ok(Applied::simple(index, true, state.revision))
        }
        Command::Delete { key } if !multi_version => {
            let found = view.get(&data_key(&key))?.is_some();
            view.delete(&data_key(&key))?;
            Ok(Applied::simple(index, found, state.revision))
        }
        Command::Txn(_) | Command::Compact { .. } if !multi_version => Ok(refused(
            state,
            Refusal::StorageVersion {
                current: state.storage_version,
                needed: STORAGE_VERSION_MVCC,
            },
        )),
        Command::LeaseGrant { .. }
        | Command::LeaseRevoke { .. }
        | Command::LeaseCheckpoint { .. }
            if state.storage_version < STORAGE_VERSION_LEASES =>
        {
            Ok(refused(
                state,
                Refusal::StorageVersion {
                    current: state.storage_version,
                    needed: STORAGE_VERSION_LEASES,
                },
            ))
        }
        Command::LeaseGrant { id, ttl_seconds } => {
            // No revision: a grant changes no key (as etcd).
            view.require_atomic();
            let id = if id == 0 {
                lease::pick_id(view, index)?
            } else if lease::get(view, id)?.is_some() {
                return Ok(refused(state, Refusal::LeaseExists(id)));
            } else {
                id
            };
            let mut batch = WriteBatch::new();
            lease::put(
                &mut batch,
                id,
                lease::LeaseRecord {
                    ttl_seconds,
                    remaining_seconds: 0,
                },
            );
            view.write(batch)?;
            Ok(Applied {
                outcome: Some(Box::new(Outcome::LeaseGranted { id, ttl_seconds })),
                ..Applied::simple(index, true, state.revision)
            })
        }
        Command::LeaseRevoke { id } => {
            view.require_atomic();
            if lease::get(view, id)?.is_none() {
                return Ok(refused(state, Refusal::LeaseNotFound(id)));
            }
            // Every attached key is deleted at one revision (none: no new
            // revision), then the lease.
            let attached = lease::attached_keys(view, id)?;
            let done = write_txn(view, state, changes, |txn| {
                let mut deleted = 0u64;
                for key in &attached {
                    deleted += txn.delete_range(&KeySpan::single(key.clone()))?.len() as u64;
                }
                Ok(deleted)
            })?;
            let deleted = match done {
                TxnResult::Done(deleted) => deleted,
                TxnResult::Refused(reason) => return Ok(refused(state, reason)),
                TxnResult::WouldWait => return Ok(Applied::simple(index, false, state.revision)),
            };
            let mut batch = WriteBatch::new();
            batch.delete(mvcc::keys::lease_key(id));
            view.write(batch)?;
            Ok(Applied {
                outcome: Some(Box::new(Outcome::LeaseRevoked { id, deleted })),
                ..Applied::simple(index, true, state.revision)
            })
        }
        Command::LeaseCheckpoint { checkpoints } => {
            view.require_atomic();
            let mut batch = WriteBatch::new();
            let mut recorded = Vec::with_capacity(checkpoints.len());
            for (id, remaining_seconds) in checkpoints {
                if let Some(record) = lease::get(view, id)? {
                    recorded.push((id, remaining_seconds));
                    lease::put(
                        &mut batch,
                        id,
                        lease::LeaseRecord {
                            remaining_seconds,
                            ..record
                        },
                    );
                }
            }
            view.write(batch)?;
            Ok(Applied {
                outcome: Some(Box::new(Outcome::LeaseCheckpointed(recorded))),
                ..Applied::simple(index, true, state.revision)
            })
        }
        Command::Put { key, value } => {
            let done = write_txn(view, state, changes, |txn| txn.put(&key, value, 0))?;
            Ok(match done {
                TxnResult::Refused(reason) => refused(state, reason),
                _ => Applied::simple(index, true, state.revision),
            })
        }
        Command::Delete { key } => {
            let done = write_txn(view, state, changes, |txn| {
                txn.delete_range(&KeySpan::single(key))
                    .map(|deleted| !deleted.is_empty())
            })?;
            Ok(match done {
                TxnResult::Done(found) => Applied::simple(index, found, state.revision),
                TxnResult::Refused(reason) => refused(state, reason),
                TxnResult::WouldWait => Applied::simple(index, false, state.revision),
            })
        }
        Command::Txn(request) => {
            if let Err(invalid) = mvcc::txn::validate(&request) {
                return Ok(refused(state, invalid.into()));
            }
            let done = write_txn(view, state, changes, |txn| mvcc::txn::apply(txn, &request))?;
            Ok(match done {
                TxnResult::Done(response) => Applied {
                    index,
                    found: true,
                    revision: state.revision,
                    outcome: Some(Box::new(Outcome::Txn(response))),
                    changes: Vec::new(),
                },
                TxnResult::Refused(reason) => refused(state, reason),
                TxnResult::WouldWait => Applied::simple(index, false, state.revision),
            })
        }
        Command::Compact { revision } => {
            // The counters are the applied record's (the view's copies are
            // the same: a store is repaired before it is applied to).
            match mvcc_store::schedule_compaction(view, revision) {
                Ok(batch) => {
                    view.write(batch)?;
                    state.compacted = revision;
                    Ok(Applied {
                        index,
                        found: true,
                        revision: state.revision,
                        outcome: Some(Box::new(Outcome::Compacted)),
                        changes: Vec::new(),
                    })
                }
                Err(error) => match Refusal::from_mvcc(&error) {
                    Some(reason) => Ok(refused(state, reason)),
                    None => Err(store_error(error)),
                },
            }
        }
        Command::SetStorageVersion { version } => {
            if version > STORAGE_VERSION_MAX {
                crate::fatal::stop(
                    "the cluster raised its storage version beyond this release's",
                    format!(
                        "entry {index} sets storage version {version}, this release applies at most {STORAGE_VERSION_MAX}: upgrade this node's release"
                    ),
                );
            }
            if version > state.storage_version {
                // Only the step to revisions converts the store; leases
                // need nothing from a multi-version one.
                if state.storage_version < STORAGE_VERSION_MVCC {
                    convert_to_multi_version(view)?;
                    state.revision = mvcc_store::FIRST_REVISION;
                    state.compacted = 0;
                }
                state.storage_version = version;
            }
            Ok(Applied {
                outcome: Some(Box::new(Outcome::StorageVersion(state.storage_version))),
                ..Applied::simple(index, true, state.revision)
            })
        }
    }
}

/// How a write transaction ended.
enum TxnResult<T> {
    /// It ran; its writes are in the view.
    Done(T),
    /// It was refused; nothing of it was written.
    Refused(Refusal),
    /// A read would have waited: the caller drops the whole batch.
    WouldWait,
}

/// Runs `write` in a write transaction over `view` and records its writes
/// there, all or nothing: an MVCC error that is not a storage failure
/// (a compacted revision, `ignore_value` on a missing key...) drops them
/// and refuses the command.
fn write_txn<T>(
    view: &mut BatchView<'_>,
    state: &mut AppliedState,
    changes: &mut Vec<Change>,
    write: impl FnOnce(&mut WriteTxn<'_>) -> Result<T, MvccError>,
) -> Result<TxnResult<T>, StoreError> {
    let before = state.meta();
    if cfg!(debug_assertions) {
        // What the store holds must be what the applied record says (a
        // store is repaired before it is applied to). Release builds
        // trust it: reading the counters cost a fifth of the leader's CPU.
        let stored = mvcc_store::meta(view).map_err(store_error)?;
        assert!(
            view.would_wait() || stored == before,
            "stored counters {stored:?} differ from the applied record's {before:?}"
        );
    }
    let mut txn = WriteTxn::begin_at(view, before);
    let result = write(&mut txn);
    let written = txn.take_changes();
    let touches_leases = txn.touches_leases();
    let (batch, meta) = txn.finish();
    if touches_leases {
        // The attachment index carries no revision: a torn write of it
        // could not be repaired (`mvcc::keys`).
        view.require_atomic();
    }
    if view.would_wait() {
        return Ok(TxnResult::WouldWait);
    }
    match result {
        Ok(value) => {
            view.write(batch)?;
            *changes = written;
            state.revision = meta.revision;
            Ok(TxnResult::Done(value))
        }
        Err(error) => match Refusal::from_mvcc(&error) {
            Some(reason) => Ok(TxnResult::Refused(reason)),
            None => Err(store_error(error)),
        },
    }
}

/// Converts a single-version store to the multi-version layout: every key
/// becomes a live record at revision 1 (create = mod = 1, version 1), the
/// store's revision 1. One atomic write ([`BatchView::require_atomic`]):
/// a crash keeps all of it or none.
fn convert_to_multi_version(view: &mut BatchView<'_>) -> Result<(), StoreError> {
    view.require_atomic();
    let mut batch = WriteBatch::new();
    let mut start = Vec::new();
    let mut sub: u32 = 0;
    loop {
        let pairs = scan_data_from(view, &start, RESTORE_BATCH_KEYS)?;
        let Some((last, _)) = pairs.last() else {
            break;
        };
        start = last.clone();
        start.push(0);
        for (key, value) in pairs {
            let record = mvcc::record::KeyRecord {
                create_revision: mvcc_store::FIRST_REVISION,
                mod_revision: mvcc_store::FIRST_REVISION,
                version: 1,
                lease: 0,
                value,
            };
            let revision = Revision {
                main: mvcc_store::FIRST_REVISION,
                sub,
            };
            sub = sub.checked_add(1).expect("fewer than 2^32 keys");
            mvcc_store::import_live(&mut batch, &key, &record, revision);
            batch.delete(data_key(&key));
        }
    }
    mvcc_store::set_meta(
        &mut batch,
        Meta {
            revision: mvcc_store::FIRST_REVISION,
            compacted: 0,
        },
    );
    view.write(batch)
}

/// Prefixes of every table a restore clears: the single-version data and
/// the multi-version tables.
const DATA_TABLE_PREFIXES: [&[u8]; 6] = [
    DATA_PREFIX,
    mvcc::keys::REVISION_PREFIX,
    mvcc::keys::HISTORY_PREFIX,
    mvcc::keys::LATEST_PREFIX,
    mvcc::keys::LEASE_PREFIX,
    mvcc::keys::ATTACHED_PREFIX,
];

/// Starts replacing the whole state with a snapshot's: marks the restore as
/// in progress and deletes every user key and every record of them.
pub fn begin_restore(store: &mut dyn Store, snapshot: SnapshotMetadata) -> Result<(), StoreError> {
    let mut mark = WriteBatch::new();
    mark.put(
        RESTORING_KEY.to_vec(),
        AppliedState {
            snapshot,
            ..AppliedState::default()
        }
        .encode(),
    );
    store.write(mark)?;
    for prefix in DATA_TABLE_PREFIXES {
        clear_table(store, prefix)?;
    }
    Ok(())
}

/// Deletes every key starting with `prefix`.
fn clear_table(store: &mut dyn Store, prefix: &[u8]) -> Result<(), StoreError> {
    let mut range = KeyRange::prefix(prefix.to_vec());
    loop {
        let pairs = store.scan(&range, RESTORE_BATCH_KEYS)?;
        let Some((last_key, _)) = pairs.last() else {
            return Ok(());
        };
        range.start = last_key.clone();
        range.start.push(0);
        let mut batch = WriteBatch::new();
        for (key, _) in &pairs {
            batch.delete(key.clone());
        }
        store.write(batch)?;
    }
}

/// Writes restored user pairs of a single-version snapshot (between
/// [`begin_restore`] and [`finish_restore`]).
pub fn restore_pairs(store: &mut dyn Store, pairs: Vec<KeyValue>) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    for (key, value) in pairs {
        batch.put(data_key(&key), value);
    }
    store.write(batch)
}

/// The prefix of the latest-record table, which the server holds in memory
/// only ([`crate::storage::resident`]) and rebuilds with
/// [`rebuild_latest`] after opening the store.
pub const LATEST_TABLE_PREFIX: &[u8] = mvcc::keys::LATEST_PREFIX;

/// History records read per step of [`rebuild_latest`].
const REBUILD_SCAN_RECORDS: usize = 8_192;

/// Adds to `batch` the latest record of the key of history record
/// `stored` when it is the first (newest) record of its key met in key
/// order, `last_key` carrying the key met last. Returns whether it was
/// added (a live record, not a tombstone).
fn latest_from_history(
    batch: &mut WriteBatch,
    stored: &[u8],
    value: &[u8],
    last_key: &mut Option<Vec<u8>>,
) -> Result<bool, StoreError> {
    let Some((key, _)) = mvcc::keys::parse_history_key(stored) else {
        return Err(StoreError::Engine(format!(
            "a malformed history key: {stored:?}"
        )));
    };
    if last_key.as_ref() == Some(&key) {
        return Ok(false);
    }
    let record = mvcc::record::HistoryRecord::decode(value)
        .map_err(|error| StoreError::Engine(format!("a history record: {error}")))?;
    let live = match record {
        mvcc::record::HistoryRecord::Live(record) => {
            // The attachment index follows the live records (a snapshot
            // does not carry it).
            if record.lease != 0 {
                batch.put(mvcc::keys::attached_key(record.lease, &key), Vec::new());
            }
            true
        }
        mvcc::record::HistoryRecord::Tombstone => false,
    };
    if live {
        batch.put(mvcc::keys::latest_key(&key), value.to_vec());
    }
    *last_key = Some(key);
    Ok(live)
}

/// Rebuilds the latest-record table from the history, whose first record
/// of each key is its newest: after opening a store that holds the table
/// in memory only. Nothing at storage version 1. Returns how many keys are
/// live.
pub fn rebuild_latest(store: &mut dyn Store) -> Result<usize, StoreError> {
    if applied_state(store)?.storage_version < STORAGE_VERSION_MVCC {
        return Ok(0);
    }
    clear_table(store, mvcc::keys::LATEST_PREFIX)?;
    let mut range = KeyRange::prefix(mvcc::keys::HISTORY_PREFIX.to_vec());
    let mut last_key = None;
    let mut live = 0;
    loop {
        let records = store.scan(&range, REBUILD_SCAN_RECORDS)?;
        let Some((last_stored, _)) = records.last() else {
            break;
        };
        range.start = last_stored.clone();
        range.start.push(0);
        let mut batch = WriteBatch::new();
        for (stored, value) in &records {
            if latest_from_history(&mut batch, stored, value, &mut last_key)? {
                live += 1;
            }
        }
        store.write(batch)?;
    }
    Ok(live)
}

/// Restores the records of a multi-version snapshot, in the order the
/// snapshot holds them: each key's latest live record is rebuilt from its
/// newest history record (the first of the key), `last_key` carrying the
/// key seen last from one call to the next.
pub fn restore_records(
    store: &mut dyn Store,
    pairs: Vec<KeyValue>,
    last_key: &mut Option<Vec<u8>>,
) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    for (stored, value) in pairs {
        if stored.starts_with(mvcc::keys::HISTORY_PREFIX) {
            latest_from_history(&mut batch, &stored, &value, last_key)?;
        } else if !stored.starts_with(mvcc::keys::REVISION_PREFIX)
            && !stored.starts_with(mvcc::keys::LEASE_PREFIX)
        {
            return Err(StoreError::Engine(format!(
                "a multi-version snapshot holds a key outside its tables: {stored:?}"
            )));
        }
        batch.put(stored, value);
    }
    store.write(batch)
}

/// Completes a restore: the state now reflects the snapshot's.
pub fn finish_restore(store: &mut dyn Store, state: AppliedState) -> Result<(), StoreError> {
    let mut batch = WriteBatch::new();
    if state.storage_version >= STORAGE_VERSION_MVCC {
        mvcc_store::set_meta(&mut batch, state.meta());
    }
    batch.put(APPLIED_AHEAD_KEY.to_vec(), state.encode());
    batch.put(APPLIED_KEY.to_vec(), state.encode());
    batch.delete(RESTORING_KEY.to_vec());
    store.write(batch)
}

/// Pairs a snapshot of a multi-version store at revision `revision` holds,
/// read from the live store in key order from `start`: the revision and
/// history records at or below `revision` (later ones are writes after the
/// snapshot; the latest-record table is rebuilt on restore). At most
/// `limit` pairs are looked at; the second value is where the next call
/// starts (`None`: done). Physical compaction must not run meanwhile (it
/// could drop a record the snapshot's revision still needs).
pub fn snapshot_records(
    store: &mut dyn Store,
    start: Option<Vec<u8>>,
    revision: u64,
    limit: usize,
) -> Result<(Vec<KeyValue>, Option<Vec<u8>>), StoreError> {
    let start = start.unwrap_or_else(|| mvcc::keys::REVISION_PREFIX.to_vec());
    let range = KeyRange {
        start,
        end: KeyRange::prefix(mvcc::keys::HISTORY_PREFIX.to_vec()).end,
    };
    let scanned = store.scan(&range, limit)?;
    let next = (scanned.len() == limit).then(|| {
        let mut next = scanned.last().expect("a full chunk").0.clone();
        next.push(0);
        next
    });
    let kept = scanned
        .into_iter()
        .filter(|(stored, _)| {
            if let Some(written) = mvcc::keys::parse_revision_key(stored) {
                written.main <= revision
            } else if let Some((_, written)) = mvcc::keys::parse_history_key(stored) {
                written <= revision
            } else {
                false
            }
        })
        .collect();
    Ok((kept, next))
}

/// The lease table as a snapshot holds it, after the history (`l/` sorts
/// after `h/`). It carries no revision: read it at the snapshot's index,
/// with the applied record. The attachment index is not in a snapshot:
/// [`restore_records`] rebuilds it from the live records.
pub fn snapshot_leases(store: &mut dyn Store) -> Result<Vec<KeyValue>, StoreError> {
    Ok(lease::all(store)?
        .into_iter()
        .map(|(id, record)| (mvcc::keys::lease_key(id), record.encode()))
        .collect())
}

/// Where a physical compaction stands after one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionStep {
    /// Whether history below the compacted revision is all dropped.
    pub finished: bool,
    /// The compacted revision whose history is all dropped (0: none).
    pub done_through: u64,
    /// History records this step dropped.
    pub dropped: usize,
}

/// The key ranges whose records a compaction through `compacted` deleted
/// (to free their disk, `storage::Reclaim`).
pub fn compacted_ranges(compacted: u64) -> [KeyRange; 2] {
    mvcc_store::compacted_ranges(compacted)
}

/// One step of the physical compaction (at most `revisions_max` writes
/// looked at); nothing while a snapshot restore is in progress.
pub fn compaction_step(
    store: &mut dyn Store,
    revisions_max: usize,
) -> Result<CompactionStep, StoreError> {
    if interrupted_restore(store)?.is_some()
        || applied_state(store)?.storage_version < STORAGE_VERSION_MVCC
    {
        return Ok(CompactionStep {
            finished: true,
            done_through: 0,
            dropped: 0,
        });
    }
    let (batch, progress) = mvcc_store::compact_step(store, revisions_max).map_err(store_error)?;
    let dropped = batch
        .operations()
        .iter()
        .filter(|operation| {
            matches!(operation, WriteOp::Delete { key } if key.starts_with(mvcc::keys::HISTORY_PREFIX))
        })
        .count();
    store.write(batch)?;
    Ok(CompactionStep {
        finished: progress == mvcc_store::CompactionProgress::Done,
        done_through: mvcc_store::compacted_through(store).map_err(store_error)?,
        dropped,
    })
}

/// Log entries for tests.
#[cfg(test)]
pub(crate) mod test_entries {
    use kvstore_raft::{Entry, EntryKind, Index};

    use super::{log_encoding, Command};

    fn entry(index: Index, command: Command) -> Entry {
        Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data: log_encoding::encode(command, "").into(),
        }
    }

    pub(crate) fn put(index: Index, key: &str, value: &str) -> Entry {
        let (key, value) = (key.into(), value.into());
        entry(index, Command::Put { key, value })
    }

    pub(crate) fn delete(index: Index, key: &str) -> Entry {
        entry(index, Command::Delete { key: key.into() })
    }

    pub(crate) fn raise_storage_version(index: Index) -> Entry {
        entry(
            index,
            Command::SetStorageVersion {
                version: super::STORAGE_VERSION_MVCC,
            },
        )
    }

    pub(crate) fn command(index: Index, command: Command) -> Entry {
        entry(index, command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;
    use bytes::Bytes;
    use kvstore_raft::EntryKind;
    use test_entries::{delete, put};

    #[test]
    fn entries_apply_once_in_order_with_the_applied_index() {
        let mut store = MemoryStore::new();
        let empty = Entry {
            index: 1,
            term: 1,
            kind: EntryKind::Empty,
            data: Bytes::new(),
        };
        let outcomes = apply(
            &mut store,
            &[empty, put(2, "a", "1"), delete(3, "a"), delete(4, "a")],
        )
        .unwrap();
        assert_eq!(
            outcomes
                .iter()
                .map(|outcome| outcome.found)
                .collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(
            applied(&mut store).unwrap(),
            SnapshotMetadata { index: 4, term: 1 }
        );
        // Replaying after a restart skips what was applied.
        let outcomes = apply(&mut store, &[put(3, "a", "replayed"), put(5, "b", "2")]).unwrap();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(
            get(&mut store, b"a").unwrap().value,
            None,
            "index 3 must not be re-applied"
        );
        assert_eq!(get(&mut store, b"b").unwrap().value, Some(b"2".to_vec()));
    }

    /// A memory store that can be told that reads or writes would wait.
    #[derive(Default)]
    struct Slow {
        store: MemoryStore,
        /// Reads of keys with this prefix would wait.
        reads_wait_under: Option<&'static [u8]>,
        writes_wait: bool,
        /// Every scan would wait (as the engine's, behind the overlay).
        scans_wait: bool,
    }

    impl Store for Slow {
        fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.store.get(key)
        }

        fn get_if_ready(&mut self, key: &[u8]) -> Option<Result<Option<Vec<u8>>, StoreError>> {
            let waits = self
                .reads_wait_under
                .is_some_and(|prefix| key.starts_with(prefix));
            (!waits).then(|| self.store.get(key))
        }

        fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
            self.store.write(batch)
        }

        fn writes_without_waiting(&self, _operations: usize) -> bool {
            !self.writes_wait
        }

        fn scan(&mut self, range: &KeyRange, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
            self.store.scan(range, limit)
        }

        fn scan_if_ready(
            &mut self,
            range: &KeyRange,
            limit: usize,
        ) -> Option<Result<Vec<KeyValue>, StoreError>> {
            (!self.scans_wait).then(|| self.store.scan(range, limit))
        }
    }

    #[test]
    fn an_apply_that_would_wait_writes_nothing() {
        let mut store = Slow::default();
        let outcomes = apply_if_ready(&mut store, &[put(1, "a", "1"), delete(2, "b")]);
        assert_eq!(outcomes.unwrap().unwrap().len(), 2);
        for (reads_wait_under, writes_wait) in [(Some(APPLIED_KEY), false), (None, true)] {
            store.reads_wait_under = reads_wait_under;
            store.writes_wait = writes_wait;
            assert!(apply_if_ready(&mut store, &[put(3, "c", "1")]).is_none());
            assert_eq!(applied(&mut store).unwrap().index, 2);
            assert_eq!(get(&mut store, b"c").unwrap().value, None);
        }
        // A delete must read whether its key existed.
        store.reads_wait_under = Some(DATA_PREFIX);
        store.writes_wait = false;
        assert!(apply_if_ready(&mut store, &[put(3, "x", "1"), delete(4, "x")]).is_some());
        assert!(apply_if_ready(&mut store, &[delete(5, "x")]).is_none());
        assert_eq!(applied(&mut store).unwrap().index, 4);
        // The waiting apply goes through.
        assert!(!apply(&mut store, &[delete(5, "x")]).unwrap()[0].found);
        assert_eq!(applied(&mut store).unwrap().index, 5);
    }

    #[test]
    fn the_applied_index_sorts_around_every_data_key() {
        let last_data_key = data_key(&[u8::MAX; 64]);
        assert!(APPLIED_KEY > last_data_key.as_slice());
        assert!(RESTORING_KEY > last_data_key.as_slice());
        assert!(APPLIED_AHEAD_KEY < data_key(b"").as_slice());
    }

    #[test]
    fn a_partly_written_batch_names_the_index_to_apply_again() {
        let mut store = MemoryStore::new();
        apply(&mut store, &[put(1, "a", "1"), put(2, "b", "1")]).unwrap();
        assert_eq!(consistent_at(&mut store).unwrap(), 2);
        // What a crash in the middle of writing the next batch behind, in
        // key order, leaves: the first key and some data, not the last key.
        let mut next = MemoryStore::new();
        apply(
            &mut next,
            &[put(1, "a", "1"), put(2, "b", "1"), put(3, "a", "2")],
        )
        .unwrap();
        let mut written = next.scan(&KeyRange::all(), usize::MAX).unwrap();
        written.retain(|(key, _)| key.as_slice() < &b"d/b"[..]);
        for (key, value) in written {
            store.put(&key, &value).unwrap();
        }
        assert_eq!(
            get(&mut store, b"a").unwrap().value,
            Some(b"2".to_vec()),
            "ahead"
        );
        assert_eq!(applied(&mut store).unwrap().index, 2);
        assert_eq!(consistent_at(&mut store).unwrap(), 3);
        // Replaying from the applied index brings both back together.
        apply(&mut store, &[put(3, "a", "2")]).unwrap();
        assert_eq!(consistent_at(&mut store).unwrap(), 3);
        assert_eq!(applied(&mut store).unwrap().index, 3);
    }

    #[test]
    #[should_panic(expected = "without gaps")]
    fn a_gap_in_applied_entries_is_a_bug() {
        let mut store = MemoryStore::new();
        let _ = apply(&mut store, &[put(2, "a", "1")]);
    }

    #[test]
    fn restore_replaces_everything_and_records_the_snapshot() {
        let mut store = MemoryStore::new();
        apply(&mut store, &[put(1, "old", "x"), put(2, "keep", "y")]).unwrap();
        let snapshot = SnapshotMetadata { index: 10, term: 3 };
        begin_restore(&mut store, snapshot).unwrap();
        assert_eq!(interrupted_restore(&mut store).unwrap(), Some(snapshot));
        restore_pairs(&mut store, vec![(b"keep".to_vec(), b"new".to_vec())]).unwrap();
        finish_restore(
            &mut store,
            AppliedState {
                snapshot,
                ..AppliedState::default()
            },
        )
        .unwrap();
        assert_eq!(interrupted_restore(&mut store).unwrap(), None);
        assert_eq!(applied(&mut store).unwrap(), snapshot);
        assert_eq!(get(&mut store, b"old").unwrap().value, None);
        assert_eq!(
            get(&mut store, b"keep").unwrap().value,
            Some(b"new".to_vec())
        );
        assert_eq!(
            scan_data_from(&mut store, b"", 10).unwrap(),
            vec![(b"keep".to_vec(), b"new".to_vec())]
        );
    }

    mod multi_version {
        use super::super::*;
        use super::Slow;
        use crate::state_machine::mvcc::compare::{Compare, CompareResult, CompareTarget};
        use crate::state_machine::mvcc::range::{RangeOptions, RangeRequest};
        use crate::state_machine::mvcc::txn::{OpResponse, TxnOp, TxnRequest};
        use crate::state_machine::test_entries::{command, delete, put, raise_storage_version};
        use crate::storage::memory::MemoryStore;
        use crate::storage::resident::ResidentStore;

        /// A CAS on `key`: put `value` if its mod revision is `expected`.
        fn cas(key: &str, expected: u64, value: &str) -> Command {
            Command::Txn(TxnRequest {
                compares: vec![Compare {
                    span: KeySpan::single(key),
                    result: CompareResult::Equal,
                    target: CompareTarget::Mod(expected),
                }],
                success: vec![TxnOp::Put {
                    key: key.into(),
                    value: value.into(),
                    lease: 0,
                    ignore_value: false,
                    ignore_lease: false,
                }],
                failure: Vec::new(),
            })
        }

        /// Key, create revision, mod revision, value.
        type Pair = (Vec<u8>, u64, u64, Vec<u8>);

        fn range_all(store: &mut dyn Store, revision: u64) -> Result<Vec<Pair>, Refusal> {
            let request = RangeRequest {
                span: KeySpan::range(vec![0], vec![0]),
                revision,
                options: RangeOptions::default(),
            };
            match query(store, &Query::Range(request)).unwrap() {
                QueryAnswer::Range { outcome, .. } => outcome.map(|outcome| {
                    outcome
                        .kvs
                        .into_iter()
                        .map(|(key, record)| {
                            (
                                key,
                                record.create_revision,
                                record.mod_revision,
                                record.value,
                            )
                        })
                        .collect()
                }),
                _ => unreachable!(),
            }
        }

        fn outcome(applied: &Applied) -> &Outcome {
            applied.outcome.as_deref().expect("an outcome")
        }

        #[test]
        fn revisions_come_with_the_storage_version_and_convert_every_key() {
            let mut store = MemoryStore::new();
            let applied = apply(
                &mut store,
                &[
                    put(1, "a", "1"),
                    put(2, "b", "2"),
                    command(3, cas("a", 0, "x")),
                ],
            )
            .unwrap();
            assert!(
                matches!(
                    outcome(&applied[2]),
                    Outcome::Refused(Refusal::StorageVersion {
                        current: 1,
                        needed: 2
                    })
                ),
                "{applied:?}"
            );
            assert!(matches!(
                range_all(&mut store, 0),
                Err(Refusal::StorageVersion { .. })
            ));
            assert_eq!(get(&mut store, b"a").unwrap().revision, 0);
            let applied = apply(
                &mut store,
                &[
                    raise_storage_version(4),
                    delete(5, "b"),
                    command(6, cas("a", 1, "3")),
                ],
            )
            .unwrap();
            assert_eq!(applied[0].revision, 1);
            assert!(applied[1].found, "a converted key is found");
            assert_eq!(applied[1].revision, 2);
            match outcome(&applied[2]) {
                Outcome::Txn(response) => {
                    assert!(response.succeeded, "converted keys are at revision 1")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(applied[2].revision, 3);
            assert_eq!(
                range_all(&mut store, 0).unwrap(),
                [(b"a".to_vec(), 1, 3, b"3".to_vec())]
            );
            assert_eq!(
                range_all(&mut store, 1).unwrap(),
                [
                    (b"a".to_vec(), 1, 1, b"1".to_vec()),
                    (b"b".to_vec(), 1, 1, b"2".to_vec())
                ]
            );
            assert_eq!(
                get(&mut store, b"a").unwrap(),
                ValueRead {
                    value: Some(b"3".to_vec()),
                    revision: 3
                }
            );
            assert!(
                scan_data_from(&mut store, b"", 10).unwrap().is_empty(),
                "no single-version key is left"
            );
            let state = applied_state(&mut store).unwrap();
            assert_eq!(
                (state.storage_version, state.revision, state.snapshot.index),
                (2, 3, 6)
            );
            // Raising it again changes nothing.
            let again = apply(&mut store, &[raise_storage_version(7)]).unwrap();
            assert_eq!(again[0].revision, 3);
            assert_eq!(range_all(&mut store, 0).unwrap().len(), 1);
        }

        #[test]
        fn refused_commands_change_nothing_the_same_way_everywhere() {
            let mut store = MemoryStore::new();
            apply(
                &mut store,
                &[raise_storage_version(1), put(2, "a", "1"), put(3, "a", "2")],
            )
            .unwrap();
            let ignore_missing = Command::Txn(TxnRequest {
                compares: Vec::new(),
                success: vec![
                    TxnOp::Put {
                        key: b"b".to_vec(),
                        value: b"written first".to_vec(),
                        lease: 0,
                        ignore_value: false,
                        ignore_lease: false,
                    },
                    TxnOp::Put {
                        key: b"missing".to_vec(),
                        value: Vec::new(),
                        lease: 0,
                        ignore_value: true,
                        ignore_lease: false,
                    },
                ],
                failure: Vec::new(),
            });
            let applied = apply(
                &mut store,
                &[
                    command(4, ignore_missing),
                    command(5, Command::Compact { revision: 9 }),
                    command(6, Command::Compact { revision: 2 }),
                    command(7, Command::Compact { revision: 2 }),
                ],
            )
            .unwrap();
            assert!(
                matches!(outcome(&applied[0]), Outcome::Refused(Refusal::Invalid(_))),
                "{applied:?}"
            );
            assert!(matches!(
                outcome(&applied[1]),
                Outcome::Refused(Refusal::Revision(_))
            ));
            assert_eq!(outcome(&applied[2]), &Outcome::Compacted);
            assert!(matches!(
                outcome(&applied[3]),
                Outcome::Refused(Refusal::Revision(_))
            ));
            assert_eq!(
                get(&mut store, b"b").unwrap().value,
                None,
                "the refused txn wrote nothing"
            );
            assert_eq!(applied_state(&mut store).unwrap().revision, 3);
            assert_eq!(applied_state(&mut store).unwrap().compacted, 2);
            assert!(matches!(
                range_all(&mut store, 1),
                Err(Refusal::Revision(_))
            ));
            assert_eq!(range_all(&mut store, 2).unwrap().len(), 1);
        }

        /// A txn that puts `value` under `key` attached to `lease`.
        fn leased_put(key: &str, value: &str, lease: u64) -> Command {
            Command::Txn(TxnRequest {
                compares: Vec::new(),
                success: vec![TxnOp::Put {
                    key: key.into(),
                    value: value.into(),
                    lease,
                    ignore_value: false,
                    ignore_lease: false,
                }],
                failure: Vec::new(),
            })
        }

        fn raise_to_leases(index: Index) -> kvstore_raft::Entry {
            command(
                index,
                Command::SetStorageVersion {
                    version: STORAGE_VERSION_LEASES,
                },
            )
        }

        /// Every entry of the attachment index, as (lease, key).
        fn attachments(store: &mut dyn Store) -> Vec<(u64, Vec<u8>)> {
            store
                .scan(
                    &KeyRange::prefix(mvcc::keys::ATTACHED_PREFIX.to_vec()),
                    1_000,
                )
                .unwrap()
                .into_iter()
                .map(|(stored, _)| {
                    let rest = &stored[mvcc::keys::ATTACHED_PREFIX.len()..];
                    (
                        u64::from_be_bytes(rest[..8].try_into().unwrap()),
                        rest[8..].to_vec(),
                    )
                })
                .collect()
        }

        #[test]
        fn a_revoke_deletes_the_keys_of_its_lease_at_one_revision() {
            let mut store = MemoryStore::new();
            // From storage version 1 straight to leases: the store converts.
            apply(&mut store, &[put(1, "a", "1"), raise_to_leases(2)]).unwrap();
            assert_eq!(applied_state(&mut store).unwrap().revision, 1);
            assert_eq!(range_all(&mut store, 0).unwrap().len(), 1);
            let applied = apply(
                &mut store,
                &[
                    command(
                        3,
                        Command::LeaseGrant {
                            id: 0,
                            ttl_seconds: 10,
                        },
                    ),
                    command(
                        4,
                        Command::LeaseGrant {
                            id: 3,
                            ttl_seconds: 5,
                        },
                    ),
                    command(5, leased_put("x", "1", 3)),
                    command(6, leased_put("y", "2", 3)),
                    command(7, leased_put("z", "3", 99)),
                    command(8, leased_put("y", "detached", 0)),
                    command(9, Command::LeaseRevoke { id: 3 }),
                    command(10, Command::LeaseRevoke { id: 3 }),
                ],
            )
            .unwrap();
            assert_eq!(
                outcome(&applied[0]),
                &Outcome::LeaseGranted {
                    id: 3,
                    ttl_seconds: 10
                },
                "an id from the entry's index"
            );
            assert_eq!(
                outcome(&applied[1]),
                &Outcome::Refused(Refusal::LeaseExists(3))
            );
            assert_eq!(applied[1].revision, 1, "a grant changes no revision");
            assert_eq!(
                outcome(&applied[4]),
                &Outcome::Refused(Refusal::LeaseNotFound(99)),
                "a put to an unknown lease is refused"
            );
            assert_eq!(
                applied[4].revision, applied[3].revision,
                "and writes nothing"
            );
            assert_eq!(
                outcome(&applied[6]),
                &Outcome::LeaseRevoked { id: 3, deleted: 1 }
            );
            let revoked_at = applied[6].revision;
            assert_eq!(revoked_at, applied[5].revision + 1, "one revision");
            let deleted: Vec<_> = applied[6]
                .changes
                .iter()
                .map(|change| (change.key.clone(), change.record.is_none()))
                .collect();
            assert_eq!(
                deleted,
                vec![(b"x".to_vec(), true)],
                "watchers see the delete"
            );
            assert_eq!(
                outcome(&applied[7]),
                &Outcome::Refused(Refusal::LeaseNotFound(3))
            );
            let keys: Vec<Vec<u8>> = range_all(&mut store, 0)
                .unwrap()
                .into_iter()
                .map(|pair| pair.0)
                .collect();
            assert_eq!(keys, vec![b"a".to_vec(), b"y".to_vec()]);
            assert!(lease::all(&mut store).unwrap().is_empty());
            assert!(attachments(&mut store).is_empty());
        }

        #[test]
        fn a_version_2_store_raised_to_leases_keeps_its_revisions() {
            let mut store = MemoryStore::new();
            apply(
                &mut store,
                &[raise_storage_version(1), put(2, "a", "1"), put(3, "a", "2")],
            )
            .unwrap();
            let before = range_all(&mut store, 0).unwrap();
            let applied = apply(
                &mut store,
                &[
                    command(
                        4,
                        Command::LeaseGrant {
                            id: 7,
                            ttl_seconds: 1,
                        },
                    ),
                    raise_to_leases(5),
                ],
            )
            .unwrap();
            assert!(matches!(
                outcome(&applied[0]),
                Outcome::Refused(Refusal::StorageVersion { needed: 3, .. })
            ));
            assert_eq!(applied_state(&mut store).unwrap().revision, 3);
            assert_eq!(range_all(&mut store, 0).unwrap(), before);
            assert_eq!(range_all(&mut store, 2).unwrap().len(), 1);
        }

        #[test]
        fn leases_and_their_keys_survive_a_snapshot() {
            let mut source = MemoryStore::new();
            let entries = [
                raise_to_leases(1),
                command(
                    2,
                    Command::LeaseGrant {
                        id: 0,
                        ttl_seconds: 60,
                    },
                ),
                command(
                    3,
                    Command::LeaseGrant {
                        id: 50,
                        ttl_seconds: 9,
                    },
                ),
                command(4, leased_put("p", "1", 2)),
                command(5, leased_put("q", "1", 50)),
                command(
                    6,
                    Command::LeaseCheckpoint {
                        checkpoints: vec![(2, 41), (77, 3)],
                    },
                ),
            ];
            apply(&mut source, &entries).unwrap();
            let state = applied_state(&mut source).unwrap();
            let (mut pairs, next) =
                snapshot_records(&mut source, None, state.revision, 1_000).unwrap();
            assert!(next.is_none());
            pairs.extend(snapshot_leases(&mut source).unwrap());
            let mut target = MemoryStore::new();
            begin_restore(&mut target, state.snapshot).unwrap();
            let mut last_key = None;
            restore_records(&mut target, pairs, &mut last_key).unwrap();
            finish_restore(&mut target, state).unwrap();
            assert_eq!(
                lease::all(&mut target).unwrap(),
                lease::all(&mut source).unwrap()
            );
            assert_eq!(
                lease::get(&mut target, 2)
                    .unwrap()
                    .unwrap()
                    .remaining_seconds,
                41
            );
            assert_eq!(attachments(&mut target), attachments(&mut source));
            // Both revoke the same keys at the same revision.
            let next = [command(7, Command::LeaseRevoke { id: 50 })];
            assert_eq!(
                apply(&mut target, &next).unwrap(),
                apply(&mut source, &next).unwrap()
            );
            assert_eq!(range_all(&mut target, 0), range_all(&mut source, 0));
        }

        #[test]
        fn an_inline_apply_that_must_scan_writes_nothing() {
            let mut store = Slow {
                scans_wait: true,
                ..Slow::default()
            };
            apply(&mut store, &[raise_storage_version(1), put(2, "a", "1")]).unwrap();
            let scan = Command::Txn(TxnRequest {
                compares: Vec::new(),
                success: vec![TxnOp::DeleteRange {
                    span: KeySpan::range("a", "z"),
                }],
                failure: Vec::new(),
            });
            assert!(
                apply_if_ready(&mut store, &[put(3, "b", "1"), command(4, scan.clone())]).is_none()
            );
            assert_eq!(applied(&mut store).unwrap().index, 2);
            assert_eq!(get(&mut store, b"b").unwrap().value, None);
            let applied = apply(&mut store, &[put(3, "b", "1"), command(4, scan)]).unwrap();
            match outcome(&applied[1]) {
                Outcome::Txn(response) => assert!(matches!(
                    &response.responses[0],
                    OpResponse::DeleteRange { deleted } if deleted.len() == 2
                )),
                other => panic!("{other:?}"),
            }
        }

        /// Entries of every kind over a few keys.
        fn workload(first: Index, count: u64) -> Vec<Entry> {
            (first..first + count)
                .map(|index| {
                    let key = format!("k{}", index % 5);
                    match index % 4 {
                        0 => delete(index, &key),
                        1 => command(index, cas(&key, index % 7, "cas")),
                        _ => put(index, &key, &format!("v{index}")),
                    }
                })
                .collect()
        }

        #[test]
        fn a_crash_in_the_middle_of_a_write_behind_is_repaired_before_replay() {
            check_every_cut_is_repaired(false);
        }

        /// As the server runs: the latest-record table is resident, so a
        /// crash loses it whole and the restart rebuilds it from the torn
        /// history before repairing.
        #[test]
        fn a_crash_with_the_latest_table_resident_is_rebuilt_and_repaired() {
            check_every_cut_is_repaired(true);
        }

        fn check_every_cut_is_repaired(resident: bool) {
            let mut entries = vec![raise_storage_version(1)];
            entries.extend(workload(2, 40));
            let mut straight = MemoryStore::new();
            apply(&mut straight, &entries).unwrap();
            // Every key-order prefix of the batch after index 20 that a crash
            // could leave behind.
            let mut before = MemoryStore::new();
            apply(&mut before, &entries[..20]).unwrap();
            let mut after = MemoryStore::new();
            apply(&mut after, &entries[..20]).unwrap();
            let batch_start = after.scan(&KeyRange::all(), usize::MAX).unwrap();
            apply(&mut after, &entries[20..]).unwrap();
            let mut written: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            let end_state: std::collections::BTreeMap<_, _> = after
                .scan(&KeyRange::all(), usize::MAX)
                .unwrap()
                .into_iter()
                .collect();
            let start_state: std::collections::BTreeMap<_, _> = batch_start.into_iter().collect();
            for key in start_state
                .keys()
                .chain(end_state.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                if resident && key.starts_with(LATEST_TABLE_PREFIX) {
                    continue;
                }
                if start_state.get(key) != end_state.get(key) {
                    written.push((key.clone(), end_state.get(key).cloned()));
                }
            }
            assert!(written.len() > 20);
            for cut in 0..=written.len() {
                let mut engine = MemoryStore::new();
                for (key, value) in &start_state {
                    if !(resident && key.starts_with(LATEST_TABLE_PREFIX)) {
                        engine.put(key, value).unwrap();
                    }
                }
                for (key, value) in &written[..cut] {
                    match value {
                        Some(value) => engine.put(key, value).unwrap(),
                        None => engine.delete(key).unwrap(),
                    }
                }
                let mut torn: Box<dyn Store> = if resident {
                    let mut store = ResidentStore::open(engine, LATEST_TABLE_PREFIX).unwrap();
                    rebuild_latest(&mut store).unwrap();
                    Box::new(store)
                } else {
                    Box::new(engine)
                };
                repair(torn.as_mut()).unwrap();
                apply(torn.as_mut(), &entries).unwrap();
                assert_eq!(
                    torn.scan(&KeyRange::all(), usize::MAX).unwrap(),
                    straight.scan(&KeyRange::all(), usize::MAX).unwrap(),
                    "cut {cut} of {}",
                    written.len()
                );
            }
            drop(before);
        }

        #[test]
        fn a_reopened_store_rebuilds_its_latest_table_and_ranges_it_inline() {
            let mut entries = vec![raise_storage_version(1)];
            entries.extend(workload(2, 60));
            entries.push(command(62, Command::Compact { revision: 10 }));
            let mut store = ResidentStore::open(MemoryStore::new(), LATEST_TABLE_PREFIX).unwrap();
            apply(&mut store, &entries).unwrap();
            while !compaction_step(&mut store, 3).unwrap().finished {}
            let state = applied_state(&mut store).unwrap();
            let live = store.size().keys();
            assert!(live > 0);
            let expected: Vec<_> = (10..=state.revision)
                .map(|revision| range_all(&mut store, revision))
                .collect();
            // A restart: the memory is gone, the engine kept the rest.
            let engine = Slow {
                store: store.into_inner(),
                scans_wait: true,
                ..Slow::default()
            };
            let mut reopened = ResidentStore::open(engine, LATEST_TABLE_PREFIX).unwrap();
            assert_eq!(range_all(&mut reopened, 0).unwrap(), Vec::new());
            assert_eq!(rebuild_latest(&mut reopened).unwrap(), live);
            let rebuilt: Vec<_> = (10..=state.revision)
                .map(|revision| range_all(&mut reopened, revision))
                .collect();
            assert_eq!(rebuilt, expected);
            // The current revision reads memory only; a past one scans the
            // (busy) engine and goes to the store thread.
            let at = |revision| {
                Query::Range(RangeRequest {
                    span: KeySpan::range(vec![0], vec![0]),
                    revision,
                    options: RangeOptions::default(),
                })
            };
            assert!(query_if_ready(&mut reopened, &at(0)).is_some());
            assert!(query_if_ready(&mut reopened, &at(state.revision)).is_some());
            assert!(query_if_ready(&mut reopened, &at(state.revision - 1)).is_none());
        }

        #[test]
        fn a_snapshot_from_the_store_answers_every_revision_as_the_store() {
            let mut entries = vec![raise_storage_version(1)];
            entries.extend(workload(2, 60));
            entries.push(command(62, Command::Compact { revision: 10 }));
            let mut source = MemoryStore::new();
            apply(&mut source, &entries).unwrap();
            while !compaction_step(&mut source, 3).unwrap().finished {}
            let state = applied_state(&mut source).unwrap();
            // Writes after the snapshot point are in the store when it is read.
            apply(&mut source, &workload(63, 10)).unwrap();
            let mut pairs = Vec::new();
            let mut start = None;
            loop {
                let (chunk, next) =
                    snapshot_records(&mut source, start, state.revision, 7).unwrap();
                pairs.extend(chunk);
                match next {
                    Some(next) => start = Some(next),
                    None => break,
                }
            }
            let mut target = MemoryStore::new();
            apply(&mut target, &[put(1, "stale", "x")]).unwrap();
            begin_restore(&mut target, state.snapshot).unwrap();
            let mut last_key = None;
            for chunk in pairs.chunks(5) {
                restore_records(&mut target, chunk.to_vec(), &mut last_key).unwrap();
            }
            finish_restore(&mut target, state).unwrap();
            let mut expected = MemoryStore::new();
            apply(&mut expected, &entries).unwrap();
            for revision in 0..=state.revision + 1 {
                assert_eq!(
                    range_all(&mut target, revision),
                    range_all(&mut expected, revision),
                    "revision {revision}"
                );
            }
            assert_eq!(get(&mut target, b"stale").unwrap().value, None);
            // Both go on the same way.
            let next = workload(63, 10);
            assert_eq!(
                apply(&mut target, &next).unwrap(),
                apply(&mut expected, &next).unwrap()
            );
            assert_eq!(range_all(&mut target, 0), range_all(&mut expected, 0));
        }
    }
}
