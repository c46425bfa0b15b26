//! The multi-version store (storage version 2; `docs/architecture.md`):
//! revisions, the key layout in the `Store`, transactions and their
//! compares, reads at a revision, compaction.

pub mod compare;
pub mod keys;
pub mod range;
pub mod record;
pub mod store;
pub mod txn;

/// A point in the store's history: `main` is raised once per write
/// transaction; `sub` orders the writes inside one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The store revision (etcd's main revision).
    pub main: u64,
    /// The write's position inside its transaction.
    pub sub: u32,
}

impl Revision {
    /// The first write of transaction `main`.
    pub fn new(main: u64) -> Self {
        Self { main, sub: 0 }
    }
}
