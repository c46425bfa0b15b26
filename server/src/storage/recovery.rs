//! Opens a node's LevelDB state so that it never serves data it cannot
//! vouch for.
//!
//! The state is derived data: every pair in it came from the newest
//! snapshot file and the WAL entries after it, both checksummed, and the
//! WAL is compacted only into a snapshot already durable (a received one
//! too). So a state that fails its checks is not repaired: it is set aside
//! for inspection, as `<data-dir>/kv.corrupt-<unix seconds>`, and the node
//! starts on an empty store, which the start-up sequence fills as after a
//! deleted `kv/`: restored from the newest snapshot (an applied index of 0
//! is behind any snapshot), then the driver applies the WAL's committed
//! entries again, and the leader sends the rest as to any follower.
//! Nothing is read from the set-aside store, so no pair of it can come
//! back. (An empty store waiting for the leader's InstallSnapshot was not
//! chosen: a single node has no leader, and the local snapshot and WAL
//! already hold everything the store held.)
//!
//! When: every file of the store is checked at start-up
//! ([`integrity::verify_store`] reads the whole store once; its cost is in
//! the README's operations notes). A table
//! that fails while the store runs calls the caller's
//! [`CorruptionHandler`], which in the server stops the process with exit
//! code 70 (rusty-leveldb itself would have read the failure as a missing
//! key) after leaving [`REBUILD_MARKER_FILE`] in the directory: the next
//! start rebuilds, even if a compaction already replaced the bad table by
//! one lacking its keys, so a restart neither loops nor serves the loss. A store LevelDB cannot open at all (a
//! damaged manifest, say) is set aside the same way.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::integrity;
use super::leveldb::{CorruptionHandler, Durability, LevelDbStore, REBUILD_MARKER_FILE};
use super::StoreError;

/// Opens the node's state in `directory` (see the module documentation):
/// checked, else set aside and opened empty. Tables that fail later call
/// `on_corruption`.
pub fn open_state_store(
    directory: &Path,
    on_corruption: CorruptionHandler,
) -> Result<LevelDbStore, StoreError> {
    if let Ok(marker) = std::fs::read_to_string(directory.join(REBUILD_MARKER_FILE)) {
        let (file, reason) = marker.trim_end().split_once('\n').unwrap_or((&marker, ""));
        let (file, reason) = (file.to_string(), reason.to_string());
        let aside = set_aside(directory)?;
        tracing::error!(
            %file,
            %reason,
            aside = %aside.display(),
            "a LevelDB file is corrupt (found while the node ran); the state is set aside and rebuilt from the snapshot and the WAL"
        );
    } else if directory.exists() {
        let started = Instant::now();
        match integrity::verify_store(directory) {
            Ok(checked) => tracing::info!(
                files = checked.files,
                bytes = checked.bytes,
                torn_logs = checked.torn_logs,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "checked every LevelDB file"
            ),
            Err(corruption) => {
                let aside = set_aside(directory)?;
                tracing::error!(
                    file = %corruption.path.display(),
                    reason = %corruption.reason,
                    aside = %aside.display(),
                    "a LevelDB file is corrupt; the state is set aside and rebuilt from the snapshot and the WAL"
                );
            }
        }
    }
    let mut store = match LevelDbStore::open(directory, Durability::Flush) {
        Ok(store) => store,
        // Held by another process: not ours to set aside.
        Err(StoreError::Engine(reason)) if reason.contains("LockError") => {
            return Err(StoreError::Engine(reason))
        }
        Err(error @ (StoreError::Engine(_) | StoreError::Corrupt { .. })) => {
            let aside = set_aside(directory)?;
            tracing::error!(%error, aside = %aside.display(), "the LevelDB state cannot be opened; it is set aside and rebuilt from the snapshot and the WAL");
            LevelDbStore::open(directory, Durability::Flush)?
        }
        Err(error) => return Err(error),
    };
    store.stop_on_corruption(on_corruption);
    Ok(store)
}

/// Renames `directory` to `<directory>.corrupt-<unix seconds>` (with a
/// counter after it if that is taken) and returns the new name.
fn set_aside(directory: &Path) -> Result<PathBuf, StoreError> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut name = directory.as_os_str().to_owned();
    name.push(format!(".corrupt-{seconds}"));
    let mut aside = PathBuf::from(&name);
    let mut attempt = 1;
    while aside.exists() {
        attempt += 1;
        let mut numbered = name.clone();
        numbered.push(format!("-{attempt}"));
        aside = PathBuf::from(numbered);
    }
    std::fs::rename(directory, &aside).map_err(|source| StoreError::Io {
        path: directory.to_path_buf(),
        source,
    })?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::integrity::tests::{
        key, store_with_a_corrupt_table, store_with_tables, value, KEYS,
    };
    use crate::storage::Store;
    use crate::storage::StoreError;

    /// Directories named `kv.corrupt-*` in `parent`.
    fn set_aside_in(parent: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(parent)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("kv.corrupt-"))
            })
            .collect()
    }

    #[test]
    fn a_healthy_state_is_kept() {
        let directory = tempfile::tempdir().unwrap();
        let kv = directory.path().join("kv");
        store_with_tables(&kv);
        let mut store = open_state_store(&kv, |error| panic!("{error}")).unwrap();
        assert_eq!(store.get(&key(0)).unwrap(), Some(value(0)));
        assert!(set_aside_in(directory.path()).is_empty());
    }

    #[test]
    fn a_corrupt_state_is_set_aside_and_opened_empty() {
        let directory = tempfile::tempdir().unwrap();
        let kv = directory.path().join("kv");
        let table = store_with_a_corrupt_table(&kv);
        let mut store = open_state_store(&kv, |error| panic!("{error}")).unwrap();
        assert_eq!(store.get(&key(0)).unwrap(), None, "opened empty");
        let aside = set_aside_in(directory.path());
        assert_eq!(aside.len(), 1, "{aside:?}");
        let table_name = table.file_name().unwrap();
        assert!(aside[0].join(table_name).exists(), "kept for inspection");
        // The next start finds a healthy (rebuilt) state and keeps it.
        store.put(b"rebuilt", b"1").unwrap();
        store.close().unwrap();
        let mut store = open_state_store(&kv, |error| panic!("{error}")).unwrap();
        assert_eq!(store.get(b"rebuilt").unwrap(), Some(b"1".to_vec()));
        assert_eq!(set_aside_in(directory.path()).len(), 1);
    }

    #[test]
    fn a_table_failing_while_running_rebuilds_at_the_next_start_whatever_is_found_then() {
        let directory = tempfile::tempdir().unwrap();
        let kv = directory.path().join("kv");
        store_with_a_corrupt_table(&kv);
        // Opened without the start-up check, as if the table went bad later.
        let mut store = LevelDbStore::open(&kv, Durability::Flush).unwrap();
        let failed = (0..KEYS)
            .map(|index| store.get(&key(index)))
            .find(|read| read.is_err())
            .expect("a read of the damaged table fails");
        assert!(
            matches!(failed, Err(StoreError::Corrupt { .. })),
            "{failed:?}"
        );
        assert!(kv.join(REBUILD_MARKER_FILE).exists(), "marked for rebuild");
        drop(store);
        // A compaction may have replaced the damaged table by a healthy one
        // lacking its keys: every file passes its check, the mark alone
        // sets the state aside.
        std::fs::remove_dir_all(&kv).unwrap();
        store_with_tables(&kv);
        std::fs::write(kv.join(REBUILD_MARKER_FILE), b"").unwrap();
        let mut store = open_state_store(&kv, |error| panic!("{error}")).unwrap();
        assert_eq!(store.get(&key(0)).unwrap(), None, "opened empty");
        assert_eq!(set_aside_in(directory.path()).len(), 1);
        assert!(!kv.join(REBUILD_MARKER_FILE).exists());
    }
}
