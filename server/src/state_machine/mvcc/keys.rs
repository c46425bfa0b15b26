//! Store keys of the multi-version layout (`docs/design-22-mvcc.md`):
//!
//! - `k/<user key>`: the key's latest live record;
//! - `h/<escaped user key><inverted revision>`: every record of the key,
//!   newest first, so that one forward scan from `h/<key><!R>` meets the
//!   newest record at or below revision `R`;
//! - `c/<revision><sub revision>`: which key each revision wrote, in
//!   revision order (compaction, watch's catch-up, and the repair of a
//!   write-behind torn by a crash).
//!
//! - `l/<lease id>`: the lease table; `a/<lease id><user key>`: the keys
//!   attached to each lease. A batch that writes either is written
//!   atomically (`BatchView::require_atomic`): they carry no revision, so
//!   the repair below could not undo a torn part of them.
//!
//! The prefixes sort `c/` < `h/` < `k/` < `m/` on purpose: a write-behind
//! store that crashes mid-write keeps a key-order prefix of a batch
//! ([`crate::storage::Store::write`]), so whenever any history or latest
//! record of a batch reached the engine, all of its `c/` records did, and
//! `state_machine::repair` finds every write to undo from them.
//!
//! The user key inside `h/` is escaped so that the history of one key never
//! interleaves with the history of a key it prefixes, and keys still sort
//! in user-key order: each `0x00` byte becomes `0x00 0xff`, and `0x00 0x00`
//! ends the key.

use super::Revision;

/// Prefix of the latest-record table.
pub const LATEST_PREFIX: &[u8] = b"k/";
/// Prefix of the history table.
pub const HISTORY_PREFIX: &[u8] = b"h/";
/// Prefix of the revision table.
pub const REVISION_PREFIX: &[u8] = b"c/";
/// Prefix of the lease table: `l/<lease id, 8 bytes big-endian>`.
pub const LEASE_PREFIX: &[u8] = b"l/";
/// Prefix of the attachment index: `a/<lease id, 8 bytes big-endian><user
/// key>` for every live key attached to a lease (revoking a lease finds its
/// keys here).
pub const ATTACHED_PREFIX: &[u8] = b"a/";

/// The lease table's key of lease `id`.
pub fn lease_key(id: u64) -> Vec<u8> {
    let mut stored = Vec::with_capacity(LEASE_PREFIX.len() + 8);
    stored.extend_from_slice(LEASE_PREFIX);
    stored.extend_from_slice(&id.to_be_bytes());
    stored
}

/// The lease id of a lease-table key.
pub fn parse_lease_key(stored: &[u8]) -> Option<u64> {
    let id = stored.strip_prefix(LEASE_PREFIX)?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

/// The attachment index's prefix of lease `id`.
pub fn attached_prefix(id: u64) -> Vec<u8> {
    let mut stored = Vec::with_capacity(ATTACHED_PREFIX.len() + 8);
    stored.extend_from_slice(ATTACHED_PREFIX);
    stored.extend_from_slice(&id.to_be_bytes());
    stored
}

/// The attachment index's entry of `key` attached to lease `id`.
pub fn attached_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut stored = attached_prefix(id);
    stored.extend_from_slice(key);
    stored
}

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xff;
const END: u8 = 0x00;

/// `key`, escaped and terminated: order-preserving, and no escaped key is a
/// prefix of another.
pub fn escape(key: &[u8]) -> Vec<u8> {
    let mut escaped = Vec::with_capacity(key.len() + 2);
    for &byte in key {
        escaped.push(byte);
        if byte == ESCAPE {
            escaped.push(ESCAPED_ZERO);
        }
    }
    escaped.extend_from_slice(&[ESCAPE, END]);
    escaped
}

/// The user key at the start of `escaped`, and the bytes after its end;
/// `None` when `escaped` holds no whole escaped key.
pub fn unescape(escaped: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::with_capacity(escaped.len());
    let mut position = 0;
    while position < escaped.len() {
        let byte = escaped[position];
        if byte != ESCAPE {
            key.push(byte);
            position += 1;
            continue;
        }
        match escaped.get(position + 1) {
            Some(&ESCAPED_ZERO) => {
                key.push(ESCAPE);
                position += 2;
            }
            Some(&END) => return Some((key, &escaped[position + 2..])),
            _ => return None,
        }
    }
    None
}

/// `k/<key>`.
pub fn latest_key(key: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(LATEST_PREFIX.len() + key.len());
    stored.extend_from_slice(LATEST_PREFIX);
    stored.extend_from_slice(key);
    stored
}

/// `h/<escaped key><!revision.main>`: newer revisions of a key sort first.
/// A key is written at most once per transaction, so the main revision
/// alone is unique within a key's history.
pub fn history_key(key: &[u8], revision: u64) -> Vec<u8> {
    let mut stored = Vec::with_capacity(HISTORY_PREFIX.len() + key.len() + 2 + 8);
    stored.extend_from_slice(HISTORY_PREFIX);
    stored.extend_from_slice(&escape(key));
    stored.extend_from_slice(&(!revision).to_be_bytes());
    stored
}

/// The user key and revision of a `h/` store key.
pub fn parse_history_key(stored: &[u8]) -> Option<(Vec<u8>, u64)> {
    let (key, rest) = unescape(stored.strip_prefix(HISTORY_PREFIX)?)?;
    let inverted: [u8; 8] = rest.try_into().ok()?;
    Some((key, !u64::from_be_bytes(inverted)))
}

/// `c/<main><sub>`, in revision order.
pub fn revision_key(revision: Revision) -> Vec<u8> {
    let mut stored = Vec::with_capacity(REVISION_PREFIX.len() + 12);
    stored.extend_from_slice(REVISION_PREFIX);
    stored.extend_from_slice(&revision.main.to_be_bytes());
    stored.extend_from_slice(&revision.sub.to_be_bytes());
    stored
}

/// The revision of a `c/` store key.
pub fn parse_revision_key(stored: &[u8]) -> Option<Revision> {
    let rest = stored.strip_prefix(REVISION_PREFIX)?;
    let main: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    let sub: [u8; 4] = rest.get(8..)?.try_into().ok()?;
    Some(Revision {
        main: u64::from_be_bytes(main),
        sub: u32::from_be_bytes(sub),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        // Small alphabets make shared prefixes and zero bytes likely.
        proptest::collection::vec(
            prop_oneof![Just(0u8), Just(1u8), Just(0xff), any::<u8>()],
            0..8,
        )
    }

    proptest! {
        #[test]
        fn escaping_keeps_the_order_and_no_escaped_key_prefixes_another(a in key(), b in key()) {
            let (escaped_a, escaped_b) = (escape(&a), escape(&b));
            prop_assert_eq!(a.cmp(&b), escaped_a.cmp(&escaped_b));
            if a != b {
                prop_assert!(!escaped_b.starts_with(&escaped_a));
            }
            let (back, rest) = unescape(&escaped_a).unwrap();
            prop_assert_eq!(back, a);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn history_sorts_by_key_then_newest_first(
            a in key(), b in key(), revision_a in any::<u64>(), revision_b in any::<u64>()
        ) {
            let (stored_a, stored_b) = (history_key(&a, revision_a), history_key(&b, revision_b));
            let expected = a.cmp(&b).then(revision_b.cmp(&revision_a));
            prop_assert_eq!(stored_a.cmp(&stored_b), expected);
            prop_assert_eq!(parse_history_key(&stored_a), Some((a, revision_a)));
        }

        #[test]
        fn revision_keys_sort_by_revision(main_a in any::<u64>(), sub_a in any::<u32>(),
                                          main_b in any::<u64>(), sub_b in any::<u32>()) {
            let (a, b) = (Revision { main: main_a, sub: sub_a }, Revision { main: main_b, sub: sub_b });
            prop_assert_eq!(revision_key(a).cmp(&revision_key(b)), a.cmp(&b));
            prop_assert_eq!(parse_revision_key(&revision_key(a)), Some(a));
        }
    }

    #[test]
    fn a_truncated_escaped_key_is_refused() {
        assert_eq!(unescape(b"ab"), None);
        assert_eq!(unescape(&[b'a', 0x00]), None);
        assert_eq!(unescape(&[0x00, 0x07]), None);
        assert_eq!(parse_history_key(b"h/a\x00\x00\x01"), None);
        assert_eq!(parse_revision_key(b"c/\x00\x00"), None);
    }
}
