//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};

use kvstore_wal::{Entry, HardState, Recovered, Wal, WalError, WalOptions};

/// Options for tests: no fsync (a process crash keeps the page cache), one
/// segment unless a test asks for rotation, and no preallocation, so that a
/// segment file holds exactly its records (tests cut and damage them by
/// offset).
pub fn options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 64 * 1024 * 1024,
        sync: false,
        preallocate_bytes: 0,
    }
}

/// [`options`] with segment files zero-filled ahead by `preallocate_bytes`.
pub fn preallocated(preallocate_bytes: u64) -> WalOptions {
    WalOptions {
        preallocate_bytes,
        ..options()
    }
}

/// Options that rotate after `segment_bytes_max` bytes.
pub fn small_segments(segment_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_bytes_max,
        sync: false,
        preallocate_bytes: 0,
    }
}

/// An entry whose payload depends on index and term, of varying length.
pub fn entry(index: u64, term: u64) -> Entry {
    let length = (index % 7) as usize * 3;
    Entry {
        index,
        term,
        payload: (0..length)
            .map(|position| (index as u8).wrapping_mul(31) ^ (term as u8) ^ position as u8)
            .collect(),
    }
}

/// Entries `first..=last`, all of `term`.
pub fn entries(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last).map(|index| entry(index, term)).collect()
}

pub fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

pub fn open(directory: &Path, options: WalOptions) -> (Wal, Recovered) {
    Wal::open(directory, options).unwrap_or_else(|error| panic!("open failed: {error}"))
}

pub fn open_error(directory: &Path, options: WalOptions) -> WalError {
    match Wal::open(directory, options) {
        Ok((_, recovered)) => panic!("open succeeded, recovered {recovered:?}"),
        Err(error) => error,
    }
}

/// Segment files, oldest first.
pub fn segment_paths(directory: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    paths.sort();
    paths
}

pub fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Bytes of every file in the directory, to check that nothing changed.
pub fn directory_snapshot(directory: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(directory)
        .unwrap()
        .map(|item| item.unwrap().path())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}
