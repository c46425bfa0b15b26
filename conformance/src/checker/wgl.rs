//! The Wing & Gong linearizability search with Lowe's memoization, in the
//! form Porcupine uses: the history is a doubly linked list of call and return
//! entries ordered by time; the search walks it from the head, linearizing
//! ("lifting") an operation at its call entry when the model accepts it and
//! the (linearized set, state) pair was not seen before, and backtracking
//! when it reaches the return entry of an operation it has not linearized.
//!
//! Operations with an unknown outcome have their return entry at infinity
//! (after every other entry), so they may take effect at any time after their
//! call, or never (linearized last, where nothing observes them).

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification, as in Porcupine.
pub trait Model {
    /// The state of the object.
    type State: Clone + Eq + Hash;
    /// An operation's input.
    type Input;
    /// An operation's output (may stand for "unknown").
    type Output;
    /// The initial state.
    fn init(&self) -> Self::State;
    /// Applies `input` in `state`; `None` when `output` is impossible there.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;
}

/// One operation to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOp<I, O> {
    /// Identifier reported back in results (the history's operation id).
    pub id: usize,
    /// Invocation time.
    pub call: u64,
    /// Completion time; `None` = unknown outcome, returns "at infinity".
    pub ret: Option<u64>,
    /// What was asked.
    pub input: I,
    /// What was answered.
    pub output: O,
}

/// Result of one search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    Violation {
        /// Ids of the longest sequence of operations the search managed to
        /// linearize, in linearization order.
        longest: Vec<usize>,
        /// Ids of the operations that were pending after `longest` and could
        /// not be linearized next.
        stuck: Vec<usize>,
    },
    /// The budget ran out before an answer.
    Inconclusive,
}

/// Limits a search.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Give up after this instant.
    pub deadline: Instant,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;
/// How many search steps run between two looks at the clock.
const STEPS_PER_CLOCK_CHECK: u32 = 4096;

/// The entry list: index 0 is the head sentinel; call entry of op `i` and
/// return entry of op `i` live at `1 + 2i` and `2 + 2i`.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Entries {
    fn call_of(op: usize) -> usize {
        1 + 2 * op
    }
    fn return_of(op: usize) -> usize {
        2 + 2 * op
    }
    fn op_of(entry: usize) -> usize {
        (entry - 1) / 2
    }
    fn is_call(entry: usize) -> bool {
        entry % 2 == 1
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    /// Re-inserts an entry unlinked last (dancing links: its own pointers
    /// still name its old neighbours).
    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        if next != NIL {
            self.prev[next] = entry;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(Self::call_of(op));
        self.unlink(Self::return_of(op));
    }

    fn unlift(&mut self, op: usize) {
        self.relink(Self::return_of(op));
        self.relink(Self::call_of(op));
    }
}

/// A fixed-size set of operation indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(size: usize) -> Self {
        Bitset(vec![0; size.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }
    fn clear(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }
}

/// Searches for a linearization of `ops` under `model`.
pub fn search<M: Model>(model: &M, ops: &[CheckOp<M::Input, M::Output>], budget: Budget) -> Search {
    let count = ops.len();
    if count == 0 {
        return Search::Linearizable;
    }
    // Sort entries by time; at equal times calls come first, which makes the
    // two operations concurrent (the permissive choice: never a false alarm).
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * count);
    for (index, op) in ops.iter().enumerate() {
        order.push((op.call, 0, Entries::call_of(index)));
        order.push((op.ret.unwrap_or(u64::MAX), 1, Entries::return_of(index)));
    }
    order.sort_unstable();
    let mut entries = Entries {
        next: vec![NIL; 2 * count + 1],
        prev: vec![NIL; 2 * count + 1],
    };
    let mut previous = HEAD;
    for &(_, _, entry) in &order {
        entries.next[previous] = entry;
        entries.prev[entry] = previous;
        previous = entry;
    }

    let mut state = model.init();
    let mut linearized = Bitset::new(count);
    let mut cache: HashSet<(Bitset, M::State)> = HashSet::new();
    // (op index, state before it) for every lifted operation.
    let mut calls: Vec<(usize, M::State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut longest_stuck: Vec<usize> = Vec::new();
    let mut steps: u32 = 0;
    let mut entry = entries.next[HEAD];

    while entries.next[HEAD] != NIL {
        steps = steps.wrapping_add(1);
        if steps.is_multiple_of(STEPS_PER_CLOCK_CHECK) && Instant::now() > budget.deadline {
            return Search::Inconclusive;
        }
        assert!(
            entry != NIL,
            "a non-empty entry list always ends with a return entry"
        );
        if Entries::is_call(entry) {
            let op = Entries::op_of(entry);
            let mut lifted = false;
            if let Some(next_state) = model.step(&state, &ops[op].input, &ops[op].output) {
                linearized.set(op);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    calls.push((op, state));
                    state = next_state;
                    entries.lift(op);
                    lifted = true;
                    entry = entries.next[HEAD];
                } else {
                    linearized.clear(op);
                }
            }
            if !lifted {
                entry = entries.next[entry];
            }
        } else {
            // An operation returned before we could linearize it: backtrack.
            if longest_stuck.is_empty() || calls.len() > longest.len() {
                longest = calls.iter().map(|&(op, _)| ops[op].id).collect();
                longest_stuck = pending_calls(&entries, ops, entry);
            }
            let Some((op, previous_state)) = calls.pop() else {
                return Search::Violation {
                    longest,
                    stuck: longest_stuck,
                };
            };
            state = previous_state;
            linearized.clear(op);
            entries.unlift(op);
            entry = entries.next[Entries::call_of(op)];
        }
    }
    Search::Linearizable
}

/// Ids of the operations whose call entry precedes `stop` in the list: the
/// ones that could have been linearized next.
fn pending_calls<I, O>(entries: &Entries, ops: &[CheckOp<I, O>], stop: usize) -> Vec<usize> {
    let mut pending = Vec::new();
    let mut entry = entries.next[HEAD];
    while entry != NIL {
        if Entries::is_call(entry) {
            pending.push(ops[Entries::op_of(entry)].id);
        }
        if entry == stop {
            break;
        }
        entry = entries.next[entry];
    }
    // The op whose return stopped the search belongs to it as well.
    let stopped = ops[Entries::op_of(stop)].id;
    if !pending.contains(&stopped) {
        pending.push(stopped);
    }
    pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A register of small integers; output `None` on a write, `Some(v)` on a read.
    struct Register;

    #[derive(Debug)]
    enum Op {
        Write(u32),
        Read,
    }

    impl Model for Register {
        type State = u32;
        type Input = Op;
        type Output = Option<u32>;
        fn init(&self) -> u32 {
            0
        }
        fn step(&self, state: &u32, input: &Op, output: &Option<u32>) -> Option<u32> {
            match (input, output) {
                (Op::Write(value), _) => Some(*value),
                (Op::Read, Some(value)) => (value == state).then_some(*state),
                (Op::Read, None) => Some(*state),
            }
        }
    }

    fn op(
        id: usize,
        call: u64,
        ret: Option<u64>,
        input: Op,
        output: Option<u32>,
    ) -> CheckOp<Op, Option<u32>> {
        CheckOp {
            id,
            call,
            ret,
            input,
            output,
        }
    }

    fn budget() -> Budget {
        Budget {
            deadline: Instant::now() + Duration::from_secs(10),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(search(&Register, &[], budget()), Search::Linearizable);
    }

    #[test]
    fn sequential_write_then_read() {
        let ops = [
            op(0, 0, Some(10), Op::Write(1), None),
            op(1, 20, Some(30), Op::Read, Some(1)),
        ];
        assert_eq!(search(&Register, &ops, budget()), Search::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        let ops = [
            op(0, 0, Some(10), Op::Write(1), None),
            op(1, 20, Some(30), Op::Write(2), None),
            op(2, 40, Some(50), Op::Read, Some(1)),
        ];
        match search(&Register, &ops, budget()) {
            Search::Violation { longest, stuck } => {
                assert_eq!(longest, vec![0, 1]);
                assert!(stuck.contains(&2), "{stuck:?}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        // The read overlaps the write of 2: both 1 and 2 are fine.
        for seen in [1, 2] {
            let ops = [
                op(0, 0, Some(10), Op::Write(1), None),
                op(1, 20, Some(40), Op::Write(2), None),
                op(2, 30, Some(50), Op::Read, Some(seen)),
            ];
            assert_eq!(
                search(&Register, &ops, budget()),
                Search::Linearizable,
                "read {seen}"
            );
        }
    }

    #[test]
    fn reads_cannot_go_back_in_time() {
        // Two sequential reads during a concurrent write: 2 then 1 is impossible.
        let ops = [
            op(0, 0, Some(10), Op::Write(1), None),
            op(1, 20, Some(100), Op::Write(2), None),
            op(2, 30, Some(40), Op::Read, Some(2)),
            op(3, 50, Some(60), Op::Read, Some(1)),
        ];
        assert!(matches!(
            search(&Register, &ops, budget()),
            Search::Violation { .. }
        ));
    }

    #[test]
    fn unknown_write_may_take_effect_much_later() {
        // The write of 2 never returned; a read long after sees it, and a read
        // before that does not.
        let ops = [
            op(0, 0, Some(10), Op::Write(1), None),
            op(1, 20, None, Op::Write(2), None),
            op(2, 30, Some(40), Op::Read, Some(1)),
            op(3, 1000, Some(1010), Op::Read, Some(2)),
        ];
        assert_eq!(search(&Register, &ops, budget()), Search::Linearizable);
    }

    #[test]
    fn unknown_write_may_never_take_effect() {
        let ops = [
            op(0, 0, Some(10), Op::Write(1), None),
            op(1, 20, None, Op::Write(2), None),
            op(2, 1000, Some(1010), Op::Read, Some(1)),
        ];
        assert_eq!(search(&Register, &ops, budget()), Search::Linearizable);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_it_was_invoked() {
        let ops = [
            op(0, 0, Some(10), Op::Read, Some(2)),
            op(1, 20, None, Op::Write(2), None),
        ];
        assert!(matches!(
            search(&Register, &ops, budget()),
            Search::Violation { .. }
        ));
    }

    #[test]
    fn equal_timestamps_count_as_concurrent() {
        // The read starts exactly when the write of 2 returns: allowed to miss it.
        let ops = [
            op(0, 0, Some(10), Op::Write(1), None),
            op(1, 10, Some(20), Op::Write(2), None),
            op(2, 20, Some(30), Op::Read, Some(1)),
        ];
        assert_eq!(search(&Register, &ops, budget()), Search::Linearizable);
    }

    #[test]
    fn many_concurrent_operations_finish_quickly() {
        // 8 clients, 400 ops each, overlapping in every way; every read sees
        // the value of the write it overlaps or the last one completed.
        let mut ops = Vec::new();
        let mut id = 0;
        for round in 0..400u64 {
            let base = round * 100;
            for client in 0..8u64 {
                let call = base + client;
                let ret = Some(base + 50 + client);
                let input = if client == 0 {
                    Op::Write(round as u32 + 1)
                } else {
                    Op::Read
                };
                let output = if client == 0 {
                    None
                } else if client % 2 == 0 {
                    Some(round as u32 + 1)
                } else {
                    Some(round as u32)
                };
                ops.push(op(id, call, ret, input, output));
                id += 1;
            }
        }
        let started = Instant::now();
        assert_eq!(search(&Register, &ops, budget()), Search::Linearizable);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn budget_exhaustion_is_inconclusive() {
        let ops: Vec<_> = (0..20_000)
            .map(|index| op(index, index as u64, None, Op::Write(index as u32 + 1), None))
            .chain([op(20_000, 0, Some(u64::MAX - 1), Op::Read, Some(7_777_777))])
            .collect();
        let past = Budget {
            deadline: Instant::now() - Duration::from_secs(1),
        };
        assert_eq!(search(&Register, &ops, past), Search::Inconclusive);
    }
}
