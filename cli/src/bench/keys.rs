//! Keys and values of `bench`: key `i` of the keyspace is [`KEY_PREFIX`]
//! followed by `i` in zero-padded decimal, exactly the key size in all.

use rand::RngCore;

/// Every benchmark key starts with this, so they are easy to find and remove.
pub const KEY_PREFIX: &[u8] = b"bench-";

/// Digits of `value` in decimal.
fn decimal_digits(value: u64) -> usize {
    value
        .checked_ilog10()
        .map_or(1, |exponent| exponent as usize + 1)
}

/// The smallest key size that holds every key of `0..keyspace`.
pub fn key_size_bytes_min(keyspace: u64) -> usize {
    KEY_PREFIX.len() + decimal_digits(keyspace.saturating_sub(1))
}

/// Key `index`, `key_size_bytes` long. The caller checked that the size is at
/// least [`key_size_bytes_min`] of the keyspace.
pub fn key(index: u64, key_size_bytes: usize) -> Vec<u8> {
    let digits_width = key_size_bytes - KEY_PREFIX.len();
    assert!(
        decimal_digits(index) <= digits_width,
        "key {index} does not fit in {key_size_bytes} bytes"
    );
    let mut key = Vec::with_capacity(key_size_bytes);
    key.extend_from_slice(KEY_PREFIX);
    key.extend_from_slice(format!("{index:0digits_width$}").as_bytes());
    assert_eq!(key.len(), key_size_bytes);
    key
}

/// A value of `value_size_bytes` random bytes.
pub fn random_value(random: &mut impl RngCore, value_size_bytes: usize) -> Vec<u8> {
    let mut value = vec![0; value_size_bytes];
    random.fill_bytes(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn keys_are_prefixed_zero_padded_indexes_of_the_exact_size() {
        assert_eq!(key(42, 16), b"bench-0000000042");
        assert_eq!(key(0, 7), b"bench-0");
        assert_eq!(key(9_999, 10), b"bench-9999");
        assert_eq!(key(7, 300).len(), 300);
    }

    #[test]
    fn distinct_indexes_give_distinct_keys() {
        let keys: std::collections::HashSet<Vec<u8>> =
            (0..1_000).map(|index| key(index, 12)).collect();
        assert_eq!(keys.len(), 1_000);
    }

    #[test]
    fn minimum_key_size_holds_the_largest_index() {
        assert_eq!(key_size_bytes_min(1), 7); // only key 0
        assert_eq!(key_size_bytes_min(10), 7); // 0..=9
        assert_eq!(key_size_bytes_min(11), 8); // 10 has two digits
        assert_eq!(key_size_bytes_min(10_000), 10);
        assert_eq!(key_size_bytes_min(u64::MAX), 6 + 20);
        for keyspace in [1, 9, 10, 11, 99, 100, 101, 123_456] {
            assert_eq!(
                key(keyspace - 1, key_size_bytes_min(keyspace)).len(),
                key_size_bytes_min(keyspace)
            );
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_key_too_large_for_its_size_is_a_programmer_error() {
        key(100, 7);
    }

    #[test]
    fn values_are_random_bytes_of_the_size_and_seeded() {
        let mut first = StdRng::seed_from_u64(7);
        let mut second = StdRng::seed_from_u64(7);
        let value = random_value(&mut first, 256);
        assert_eq!(value.len(), 256);
        assert_eq!(value, random_value(&mut second, 256));
        assert_ne!(value, random_value(&mut first, 256));
        assert!(random_value(&mut first, 0).is_empty());
    }
}
