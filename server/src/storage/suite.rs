//! The test suite every [`Store`] implementation must pass, run over the
//! in-memory store and LevelDB, plus a property test against a `BTreeMap`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::leveldb::{Durability, LevelDbStore};
use super::memory::MemoryStore;
use super::{KeyRange, Store, WriteBatch};

fn put_get_overwrite_delete(store: &mut dyn Store) {
    assert_eq!(store.get(b"a").unwrap(), None);
    store.put(b"a", b"1").unwrap();
    assert_eq!(store.get(b"a").unwrap(), Some(b"1".to_vec()));
    store.put(b"a", b"2").unwrap();
    assert_eq!(store.get(b"a").unwrap(), Some(b"2".to_vec()));
    store.delete(b"a").unwrap();
    assert_eq!(store.get(b"a").unwrap(), None);
    store.delete(b"never-there").unwrap();
}

fn binary_keys_and_values_round_trip(store: &mut dyn Store) {
    let key = vec![0u8, 0xff, 0xfe, b'\n', 0];
    let value: Vec<u8> = (0..=255).collect();
    store.put(&key, &value).unwrap();
    store.put(b"empty", b"").unwrap();
    assert_eq!(store.get(&key).unwrap(), Some(value));
    assert_eq!(store.get(b"empty").unwrap(), Some(Vec::new()));
}

fn batch_is_applied_in_order(store: &mut dyn Store) {
    let mut batch = WriteBatch::new();
    batch.put(b"x".to_vec(), b"1".to_vec());
    batch.put(b"y".to_vec(), b"2".to_vec());
    batch.delete(b"x".to_vec());
    batch.put(b"z".to_vec(), b"3".to_vec());
    store.write(batch).unwrap();
    assert_eq!(store.get(b"x").unwrap(), None);
    assert_eq!(store.get(b"y").unwrap(), Some(b"2".to_vec()));
    assert_eq!(store.get(b"z").unwrap(), Some(b"3".to_vec()));
}

fn scans_are_ordered_bounded_and_limited(store: &mut dyn Store) {
    for key in ["b", "a", "user/2", "user/1", "user0", "c", "user/10"] {
        store
            .put(key.as_bytes(), key.to_uppercase().as_bytes())
            .unwrap();
    }
    store.put(&[0xff, 0xff], b"top").unwrap();
    let keys = |pairs: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<Vec<u8>> {
        pairs.into_iter().map(|(key, _)| key).collect()
    };
    let prefix = store
        .scan(&KeyRange::prefix(b"user/".to_vec()), 100)
        .unwrap();
    assert_eq!(
        keys(prefix.clone()),
        vec![b"user/1".to_vec(), b"user/10".to_vec(), b"user/2".to_vec()]
    );
    assert_eq!(prefix[0].1, b"USER/1".to_vec());
    let between = store
        .scan(&KeyRange::between(b"a".to_vec(), b"c".to_vec()), 100)
        .unwrap();
    assert_eq!(keys(between), vec![b"a".to_vec(), b"b".to_vec()]);
    let limited = store.scan(&KeyRange::all(), 2).unwrap();
    assert_eq!(keys(limited), vec![b"a".to_vec(), b"b".to_vec()]);
    let all = store.scan(&KeyRange::all(), 100).unwrap();
    assert_eq!(all.len(), 8);
    assert_eq!(all.last().unwrap().0, vec![0xff, 0xff]);
    let tail = store.scan(&KeyRange::prefix(vec![0xff]), 100).unwrap();
    assert_eq!(keys(tail), vec![vec![0xff, 0xff]]);
    let empty = store
        .scan(&KeyRange::between(b"c".to_vec(), b"a".to_vec()), 100)
        .unwrap();
    assert!(empty.is_empty());
    let missing_start = store
        .scan(&KeyRange::between(b"bb".to_vec(), b"user/"), 100)
        .unwrap();
    assert_eq!(keys(missing_start), vec![b"c".to_vec()]);
}

/// Runs every suite case against fresh stores from `make_store`.
pub(crate) fn run_suite(mut make_store: impl FnMut() -> Box<dyn Store>) {
    put_get_overwrite_delete(make_store().as_mut());
    binary_keys_and_values_round_trip(make_store().as_mut());
    batch_is_applied_in_order(make_store().as_mut());
    scans_are_ordered_bounded_and_limited(make_store().as_mut());
}

#[test]
fn memory_store_passes_the_suite() {
    run_suite(|| Box::new(MemoryStore::new()));
}

#[test]
fn leveldb_store_passes_the_suite() {
    let directories: Vec<tempfile::TempDir> = Vec::new();
    let directories = std::cell::RefCell::new(directories);
    run_suite(|| {
        let directory = tempfile::tempdir().unwrap();
        let store = LevelDbStore::open(directory.path(), Durability::Fsync).unwrap();
        directories.borrow_mut().push(directory);
        Box::new(store)
    });
}

#[test]
fn leveldb_store_reopens_with_its_data() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("nested").join("kv");
    let mut store = LevelDbStore::open(&path, Durability::Fsync).unwrap();
    for index in 0..2_000u32 {
        store.put(&index.to_be_bytes(), &[7u8; 512]).unwrap();
    }
    store.delete(&5u32.to_be_bytes()).unwrap();
    store.close().unwrap();
    let mut reopened = LevelDbStore::open(&path, Durability::Flush).unwrap();
    assert_eq!(
        reopened.get(&4u32.to_be_bytes()).unwrap(),
        Some(vec![7u8; 512])
    );
    assert_eq!(reopened.get(&5u32.to_be_bytes()).unwrap(), None);
    assert_eq!(
        reopened.scan(&KeyRange::all(), usize::MAX).unwrap().len(),
        1_999
    );
}

#[test]
fn leveldb_store_refuses_a_second_opener() {
    let directory = tempfile::tempdir().unwrap();
    let _first = LevelDbStore::open(directory.path(), Durability::Flush).unwrap();
    let error = LevelDbStore::open(directory.path(), Durability::Flush).unwrap_err();
    assert!(
        error.to_string().contains("lock"),
        "unexpected error: {error}"
    );
}

#[derive(Debug, Clone)]
pub(crate) enum Operation {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Scan(Vec<u8>, Option<Vec<u8>>, usize),
    Get(Vec<u8>),
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    // A tiny alphabet makes collisions, overwrites and prefix overlaps common.
    proptest::collection::vec(
        prop_oneof![Just(0u8), Just(b'a'), Just(b'b'), Just(0xff)],
        0..4,
    )
}

pub(crate) fn operation() -> impl Strategy<Value = Operation> {
    let value = proptest::collection::vec(any::<u8>(), 0..16);
    prop_oneof![
        (small_key(), value.clone()).prop_map(|(key, value)| Operation::Put(key, value)),
        small_key().prop_map(Operation::Delete),
        proptest::collection::vec((small_key(), proptest::option::of(value)), 0..5)
            .prop_map(Operation::Batch),
        (small_key(), proptest::option::of(small_key()), 0usize..6)
            .prop_map(|(start, end, limit)| Operation::Scan(start, end, limit)),
        small_key().prop_map(Operation::Get),
    ]
}

pub(crate) fn check_against_model(store: &mut dyn Store, operations: &[Operation]) {
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for operation in operations {
        match operation.clone() {
            Operation::Put(key, value) => {
                store.put(&key, &value).unwrap();
                model.insert(key, value);
            }
            Operation::Delete(key) => {
                store.delete(&key).unwrap();
                model.remove(&key);
            }
            Operation::Batch(items) => {
                let mut batch = WriteBatch::new();
                for (key, value) in items {
                    match value {
                        Some(value) => {
                            batch.put(key.clone(), value.clone());
                            model.insert(key, value);
                        }
                        None => {
                            batch.delete(key.clone());
                            model.remove(&key);
                        }
                    }
                }
                store.write(batch).unwrap();
            }
            Operation::Scan(start, end, limit) => {
                let range = KeyRange { start, end };
                let expected: Vec<_> = model
                    .iter()
                    .filter(|(key, _)| range.contains(key))
                    .take(limit)
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                assert_eq!(
                    store.scan(&range, limit).unwrap(),
                    expected,
                    "scan {range:?}"
                );
            }
            Operation::Get(key) => {
                assert_eq!(
                    store.get(&key).unwrap(),
                    model.get(&key).cloned(),
                    "get {key:?}"
                );
            }
        }
    }
    let everything: Vec<_> = model.into_iter().collect();
    assert_eq!(
        store.scan(&KeyRange::all(), usize::MAX).unwrap(),
        everything
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_store_matches_a_btreemap(operations in proptest::collection::vec(operation(), 1..60)) {
        check_against_model(&mut MemoryStore::new(), &operations);
    }

    #[test]
    fn leveldb_store_matches_a_btreemap(operations in proptest::collection::vec(operation(), 1..60)) {
        let directory = tempfile::tempdir().unwrap();
        let mut store = LevelDbStore::open(directory.path(), Durability::Flush).unwrap();
        check_against_model(&mut store, &operations);
    }
}
