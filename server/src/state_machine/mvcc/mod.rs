//! The multi-version store of issue #22, being built (see
//! `docs/design-22-mvcc.md`): revisions, the key layout in the `Store`, and
//! (next) apply and reads at a revision. Nothing here is wired into the
//! server yet.

pub mod compare;
pub mod keys;
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
