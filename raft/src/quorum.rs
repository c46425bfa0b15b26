//! Majority arithmetic, free of any node state.

use crate::types::Index;

/// Outcome of an election tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority rejected: the election cannot be won.
    Lost,
    /// Neither yet.
    Pending,
}

/// Smallest number of voters that forms a majority of `voter_count`.
pub(crate) fn majority(voter_count: usize) -> usize {
    assert!(voter_count > 0, "a cluster needs at least one voter");
    voter_count / 2 + 1
}

/// The highest index that a majority of voters has, given one match index per
/// voter: the `majority`-th largest value.
pub(crate) fn committed_index(mut match_indexes: Vec<Index>) -> Index {
    let needed = majority(match_indexes.len());
    match_indexes.sort_unstable_by(|left, right| right.cmp(left));
    match_indexes[needed - 1]
}

/// Tallies `granted` and `rejected` answers among `voter_count` voters.
pub(crate) fn vote_result(voter_count: usize, granted: usize, rejected: usize) -> VoteResult {
    assert!(
        granted + rejected <= voter_count,
        "more answers than voters"
    );
    let needed = majority(voter_count);
    if granted >= needed {
        VoteResult::Won
    } else if rejected > voter_count - needed {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The committed index is held by a majority, and no higher index is.
        #[test]
        fn committed_index_is_held_by_a_majority(matches in proptest::collection::vec(0..20u64, 1..8)) {
            let committed = committed_index(matches.clone());
            let needed = majority(matches.len());
            let at_or_above = matches.iter().filter(|index| **index >= committed).count();
            let above = matches.iter().filter(|index| **index > committed).count();
            prop_assert!(at_or_above >= needed);
            prop_assert!(above < needed);
        }

        /// A tally never reports both outcomes reachable: Won and Lost are
        /// final, and Pending means both are still possible.
        #[test]
        fn vote_tally_is_consistent(voters in 1..9usize, granted in 0..9usize, rejected in 0..9usize) {
            prop_assume!(granted + rejected <= voters);
            let needed = majority(voters);
            let outstanding = voters - granted - rejected;
            match vote_result(voters, granted, rejected) {
                VoteResult::Won => prop_assert!(granted >= needed),
                VoteResult::Lost => prop_assert!(granted + outstanding < needed),
                VoteResult::Pending => {
                    prop_assert!(granted < needed);
                    prop_assert!(granted + outstanding >= needed);
                }
            }
        }
    }

    #[test]
    fn majority_sizes() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn committed_index_is_the_majority_th_largest() {
        assert_eq!(committed_index(vec![5]), 5);
        assert_eq!(committed_index(vec![1, 5, 3]), 3);
        assert_eq!(committed_index(vec![9, 9, 0, 0]), 0);
        assert_eq!(committed_index(vec![9, 9, 7, 0]), 7);
        assert_eq!(committed_index(vec![2, 8, 4, 6, 0]), 4);
    }

    #[test]
    fn vote_tally() {
        assert_eq!(vote_result(1, 1, 0), VoteResult::Won);
        assert_eq!(vote_result(3, 1, 0), VoteResult::Pending);
        assert_eq!(vote_result(3, 2, 0), VoteResult::Won);
        assert_eq!(vote_result(3, 1, 1), VoteResult::Pending);
        assert_eq!(vote_result(3, 1, 2), VoteResult::Lost);
        assert_eq!(vote_result(4, 2, 1), VoteResult::Pending);
        assert_eq!(vote_result(4, 2, 2), VoteResult::Lost);
        assert_eq!(vote_result(5, 2, 2), VoteResult::Pending);
    }
}
