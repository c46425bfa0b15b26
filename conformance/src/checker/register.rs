//! The sequential specification of one key: a register that can be absent.
//! Values are interned per key (0 = absent), in bytewise order of the
//! values, so that comparing two ids compares their values.

use super::wgl::Model;

/// What an operation on one key asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Store a value (interned id, never 0).
    Put(u32),
    /// Read.
    Get,
    /// Remove.
    Delete,
    /// Store `new` if the value is `expected` (0: absent).
    Cas {
        /// The value it must be.
        expected: u32,
        /// The value stored if so.
        new: u32,
    },
    /// Store `new` if the key exists with a value below it (a fenced
    /// write: the value is a fencing token), else read.
    Fence {
        /// The token stored if so.
        new: u32,
    },
}

/// What the client was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A put was acknowledged.
    Written,
    /// A get read this value (0 = absent).
    Read(u32),
    /// A delete said whether the key existed.
    Deleted(bool),
    /// A compare-and-swap stored its value.
    Swapped,
    /// A compare-and-swap found this value instead (0 = absent).
    NotSwapped(u32),
    /// The outcome is unknown: any answer is possible.
    Unknown,
}

/// The register model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

impl Model for Register {
    type State = u32;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> u32 {
        0
    }

    fn step(&self, state: &u32, input: &Input, output: &Output) -> Option<u32> {
        match (input, output) {
            (Input::Put(value), _) => Some(*value),
            (Input::Get, Output::Read(value)) => (value == state).then_some(*state),
            (Input::Get, _) => Some(*state),
            (Input::Delete, Output::Deleted(existed)) => (*existed == (*state != 0)).then_some(0),
            (Input::Delete, _) => Some(0),
            (Input::Cas { expected, new }, Output::Swapped) => (state == expected).then_some(*new),
            (Input::Cas { expected, .. }, Output::NotSwapped(read)) => {
                (state != expected && state == read).then_some(*state)
            }
            // Unknown: it swapped exactly when the value was the expected one.
            (Input::Cas { expected, new }, _) => {
                Some(if state == expected { *new } else { *state })
            }
            (Input::Fence { new }, Output::Swapped) => (*state != 0 && state < new).then_some(*new),
            (Input::Fence { new }, Output::NotSwapped(read)) => {
                (!(*state != 0 && state < new) && state == read).then_some(*state)
            }
            (Input::Fence { new }, _) => Some(if *state != 0 && state < new {
                *new
            } else {
                *state
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get() {
        let state = Register.step(&0, &Input::Put(3), &Output::Written).unwrap();
        assert_eq!(
            Register.step(&state, &Input::Get, &Output::Read(3)),
            Some(3)
        );
        assert_eq!(Register.step(&state, &Input::Get, &Output::Read(0)), None);
    }

    #[test]
    fn a_cas_swaps_only_from_the_expected_value() {
        let cas = Input::Cas {
            expected: 3,
            new: 4,
        };
        assert_eq!(Register.step(&3, &cas, &Output::Swapped), Some(4));
        assert_eq!(Register.step(&2, &cas, &Output::Swapped), None);
        assert_eq!(Register.step(&2, &cas, &Output::NotSwapped(2)), Some(2));
        assert_eq!(Register.step(&3, &cas, &Output::NotSwapped(3)), None);
        assert_eq!(Register.step(&2, &cas, &Output::NotSwapped(5)), None);
        assert_eq!(Register.step(&3, &cas, &Output::Unknown), Some(4));
        assert_eq!(Register.step(&2, &cas, &Output::Unknown), Some(2));
        let create = Input::Cas {
            expected: 0,
            new: 1,
        };
        assert_eq!(Register.step(&0, &create, &Output::Swapped), Some(1));
    }

    #[test]
    fn a_fence_stores_only_a_higher_token_over_an_existing_one() {
        let fence = Input::Fence { new: 3 };
        assert_eq!(Register.step(&2, &fence, &Output::Swapped), Some(3));
        assert_eq!(Register.step(&3, &fence, &Output::Swapped), None);
        assert_eq!(Register.step(&4, &fence, &Output::Swapped), None);
        assert_eq!(Register.step(&0, &fence, &Output::Swapped), None);
        assert_eq!(Register.step(&4, &fence, &Output::NotSwapped(4)), Some(4));
        assert_eq!(Register.step(&0, &fence, &Output::NotSwapped(0)), Some(0));
        assert_eq!(Register.step(&2, &fence, &Output::NotSwapped(2)), None);
        assert_eq!(Register.step(&2, &fence, &Output::Unknown), Some(3));
        assert_eq!(Register.step(&5, &fence, &Output::Unknown), Some(5));
    }

    #[test]
    fn delete_reports_existence() {
        assert_eq!(
            Register.step(&3, &Input::Delete, &Output::Deleted(true)),
            Some(0)
        );
        assert_eq!(
            Register.step(&3, &Input::Delete, &Output::Deleted(false)),
            None
        );
        assert_eq!(
            Register.step(&0, &Input::Delete, &Output::Deleted(false)),
            Some(0)
        );
        assert_eq!(
            Register.step(&0, &Input::Delete, &Output::Deleted(true)),
            None
        );
        assert_eq!(Register.step(&5, &Input::Delete, &Output::Unknown), Some(0));
    }
}
