//! What a Range returns of the keys it read, with etcd's semantics
//! (`docs/reference-etcd-kv-semantics.md`, section 2): the min/max
//! revision filters, the sort, then the limit; `count` is every key of the
//! range at that revision, before the filters and the limit.

use std::cmp::Ordering;

use super::record::KeyRecord;
use super::store::KeySpan;

/// The field a Range sorts by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// The key (the default).
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// The order a Range sorts in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order, unless a target other than the key is given: then
    /// ascending (as etcd).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// A Range's options beyond its span and revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Most pairs returned (0: all).
    pub limit: usize,
    /// Blank the values.
    pub keys_only: bool,
    /// Return no pairs, only the count.
    pub count_only: bool,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Keep pairs with a mod revision at least this (0: no bound).
    pub min_mod_revision: u64,
    /// Keep pairs with a mod revision at most this (0: no bound).
    pub max_mod_revision: u64,
    /// Keep pairs with a create revision at least this (0: no bound).
    pub min_create_revision: u64,
    /// Keep pairs with a create revision at most this (0: no bound).
    pub max_create_revision: u64,
}

/// A Range: which keys, at which revision (0: the current one), and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    /// The keys.
    pub span: KeySpan,
    /// The revision (0: current).
    pub revision: u64,
    /// The options.
    pub options: RangeOptions,
}

/// What a Range returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOutcome {
    /// The pairs.
    pub kvs: Vec<(Vec<u8>, KeyRecord)>,
    /// How many keys the range holds (before filters and limit).
    pub count: u64,
    /// Whether more pairs matched than were returned.
    pub more: bool,
}

impl RangeOptions {
    /// How many pairs the store keeps (0: all; it counts every one either
    /// way): a sort or a filter needs all, a plain limit that many, and a
    /// count none (one is kept, since 0 means all), so that counting a
    /// million keys does not hold a million values.
    pub fn store_limit(&self) -> usize {
        if self.count_only {
            1
        } else if self.sorts() || self.filters() {
            0
        } else {
            self.limit
        }
    }

    fn sorts(&self) -> bool {
        self.sort_order != SortOrder::None || self.sort_target != SortTarget::Key
    }

    fn filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    fn keeps(&self, record: &KeyRecord) -> bool {
        let at_least = |value: u64, bound: u64| bound == 0 || value >= bound;
        let at_most = |value: u64, bound: u64| bound == 0 || value <= bound;
        at_least(record.mod_revision, self.min_mod_revision)
            && at_most(record.mod_revision, self.max_mod_revision)
            && at_least(record.create_revision, self.min_create_revision)
            && at_most(record.create_revision, self.max_create_revision)
    }

    /// Applies the filters, the sort, the limit and `keys_only` to the
    /// pairs read (in key order; `more_in_store`: the store held more than
    /// it returned), `count` being every key of the range.
    pub fn select(
        &self,
        mut kvs: Vec<(Vec<u8>, KeyRecord)>,
        count: u64,
        more_in_store: bool,
    ) -> RangeOutcome {
        if self.count_only {
            return RangeOutcome {
                kvs: Vec::new(),
                count,
                more: false,
            };
        }
        if self.filters() {
            kvs.retain(|(_, record)| self.keeps(record));
        }
        if self.sorts() {
            let compare = |a: &(Vec<u8>, KeyRecord), b: &(Vec<u8>, KeyRecord)| -> Ordering {
                match self.sort_target {
                    SortTarget::Key => a.0.cmp(&b.0),
                    SortTarget::Version => a.1.version.cmp(&b.1.version),
                    SortTarget::Create => a.1.create_revision.cmp(&b.1.create_revision),
                    SortTarget::Mod => a.1.mod_revision.cmp(&b.1.mod_revision),
                    SortTarget::Value => a.1.value.cmp(&b.1.value),
                }
            };
            // Stable, so ties stay in key order (etcd leaves them in none).
            match self.sort_order {
                SortOrder::Descend => kvs.sort_by(|a, b| compare(b, a)),
                SortOrder::None | SortOrder::Ascend => kvs.sort_by(compare),
            }
        }
        let mut more = more_in_store;
        if self.limit > 0 && kvs.len() > self.limit {
            kvs.truncate(self.limit);
            more = true;
        }
        if self.keys_only {
            for (_, record) in &mut kvs {
                record.value = Vec::new();
            }
        }
        RangeOutcome { kvs, count, more }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(create: u64, modified: u64, value: &str) -> KeyRecord {
        KeyRecord {
            create_revision: create,
            mod_revision: modified,
            version: modified - create + 1,
            lease: 0,
            value: value.into(),
        }
    }

    fn pairs() -> Vec<(Vec<u8>, KeyRecord)> {
        vec![
            (b"a".to_vec(), record(2, 9, "z")),
            (b"b".to_vec(), record(3, 3, "y")),
            (b"c".to_vec(), record(4, 6, "x")),
        ]
    }

    fn keys(outcome: &RangeOutcome) -> Vec<&[u8]> {
        outcome.kvs.iter().map(|(key, _)| key.as_slice()).collect()
    }

    #[test]
    fn filters_and_sort_come_before_the_limit_and_count_ignores_both() {
        let options = RangeOptions {
            limit: 1,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            min_mod_revision: 4,
            ..RangeOptions::default()
        };
        assert_eq!(options.store_limit(), 0, "the store must read all");
        let outcome = options.select(pairs(), 3, false);
        assert_eq!(keys(&outcome), [b"a"]);
        assert_eq!((outcome.count, outcome.more), (3, true));
    }

    #[test]
    fn a_target_without_an_order_sorts_ascending() {
        let options = RangeOptions {
            sort_target: SortTarget::Value,
            keys_only: true,
            ..RangeOptions::default()
        };
        let outcome = options.select(pairs(), 3, false);
        assert_eq!(keys(&outcome), [b"c", b"b", b"a"]);
        assert!(outcome
            .kvs
            .iter()
            .all(|(_, record)| record.value.is_empty()));
    }

    #[test]
    fn count_only_returns_no_pairs_and_no_more() {
        let options = RangeOptions {
            count_only: true,
            limit: 1,
            ..RangeOptions::default()
        };
        assert_eq!(options.store_limit(), 1, "a count keeps no pairs");
        let outcome = options.select(pairs()[..1].to_vec(), 3, true);
        assert!(outcome.kvs.is_empty());
        assert_eq!((outcome.count, outcome.more), (3, false));
    }

    #[test]
    fn a_plain_limit_is_left_to_the_store() {
        let options = RangeOptions {
            limit: 2,
            ..RangeOptions::default()
        };
        assert_eq!(options.store_limit(), 2);
        let outcome = options.select(pairs()[..2].to_vec(), 3, true);
        assert_eq!(keys(&outcome), [b"a", b"b"]);
        assert!(outcome.more);
    }
}
