//! A linearizability checker for recorded histories of a key-value register with
//! compare-and-set and counters.
//!
//! The algorithm is Wing & Gong's search with Lowe's memoization, as Porcupine and Knossos run
//! it: walk the history's call and return events in time order; at a call, try to take the
//! operation as the next one in the linear order (the model must accept it from the current
//! state); at a return whose operation was not taken, undo the last choice. A set of taken
//! operations with the state they lead to is tried once (the cache). Keys are independent
//! (P-compositionality: a history is linearizable iff each key's is), so each key is
//! searched alone.
//!
//! The model is one register per key holding an integer or nothing. Written values are unique
//! per write in a recorded history, so a compare-and-set's expected version is identified by
//! the value it was read with; counters are keys that only see increments, reads and writes
//! (never compare-and-set: two increments can lead to the same value).
//!
//! An operation whose outcome the client never learned (it timed out, or failed with
//! `Unavailable` or `OutcomeUnknown`) is *indeterminate*: it may have taken effect at any time
//! after its call, or never; it has no return event and any result is accepted. An
//! indeterminate read tells nothing and is dropped.
//!
//! The search is exponential in the worst case: it stops after a budget of steps or a
//! deadline and says [`Verdict::Unknown`], never "linearizable", when it does.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// `get`.
    Read,
    /// An unconditional `set` of this value.
    Write(i64),
    /// `set` with `SetMode::Create`.
    Create(i64),
    /// `set` with `SetMode::Update`, from the version read with `expected`.
    CompareAndSet {
        /// The value the client read (and whose version it sent).
        expected: i64,
        /// The value it writes.
        new: i64,
    },
    /// An unconditional `remove`.
    Remove,
    /// `remove_if`, from the version read with `expected`.
    RemoveIf {
        /// The value the client read.
        expected: i64,
    },
    /// `increment` by this delta.
    Increment(i64),
}

/// What the client learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A read's answer: the value, or nothing stored.
    Value(Option<i64>),
    /// A write or remove that took effect (for an increment: use [`Outcome::Counter`]).
    Done,
    /// A conditional write or remove the store refused (`Conflict`): nothing changed.
    Refused,
    /// An increment's new value.
    Counter(i64),
    /// No answer: the call timed out or failed with `Unavailable` or `OutcomeUnknown`.
    Indeterminate,
}

/// One operation of a history: a client's call on a key, when it was made, and when and how
/// it completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Which client made it (a client makes one call at a time).
    pub client: usize,
    /// The key.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// What came back.
    pub outcome: Outcome,
    /// When the call was made (any monotonic unit, e.g. nanoseconds since the run started).
    pub invoked: u64,
    /// When it returned; `None` for an [`Outcome::Indeterminate`] operation.
    pub completed: Option<u64>,
}

/// A history the checker cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// An operation completed before it was made.
    #[error("operation {index}: completed at {completed} before it was invoked at {invoked}")]
    CompletedBeforeInvoked {
        /// Its position in the history.
        index: usize,
        /// When it was made.
        invoked: u64,
        /// When it completed.
        completed: u64,
    },
    /// A determinate operation without a completion time, or an indeterminate one with one.
    #[error("operation {index}: a completion time goes with a known outcome, and only with one")]
    CompletionMismatch {
        /// Its position in the history.
        index: usize,
    },
    /// An outcome the call cannot have (a read that says `Done`, an increment that says
    /// `Value`, …).
    #[error("operation {index}: {call:?} cannot end with {outcome:?}")]
    OutcomeMismatch {
        /// Its position in the history.
        index: usize,
        /// The call.
        call: Call,
        /// The outcome recorded.
        outcome: Outcome,
    },
    /// One client with two calls in flight at once.
    #[error("operation {index}: client {client} made it while its previous call was in flight")]
    OverlappingCalls {
        /// Its position in the history.
        index: usize,
        /// The client.
        client: usize,
    },
}

/// The verdict on one key's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// There is a linear order of the operations that respects real time and the model.
    Linearizable,
    /// There is none. `counterexample` is the key's history with every read removed whose
    /// removal keeps it non-linearizable (removing reads only drops constraints, so what is
    /// left is still a violation; writes are kept: removing one could create a violation).
    NotLinearizable {
        /// The key.
        key: String,
        /// A minimal-by-reads sub-history that is not linearizable, in invocation order.
        counterexample: Vec<Operation>,
    },
    /// The search ran out of its budget before it could tell.
    Unknown {
        /// The key.
        key: String,
        /// Steps taken.
        steps: u64,
    },
}

/// How much search a check may spend per key.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Search steps (an operation tried or undone).
    pub steps: u64,
    /// Wall-clock time for the whole history.
    pub time: Duration,
}

impl Default for Budget {
    /// Five million steps per key, one minute in all.
    fn default() -> Self {
        Budget {
            steps: 5_000_000,
            time: Duration::from_secs(60),
        }
    }
}

/// The verdicts on a history, per key.
#[derive(Debug, Clone)]
pub struct Report {
    /// Each key's verdict, by key.
    pub keys: BTreeMap<String, Verdict>,
}

impl Report {
    /// Whether every key is linearizable.
    pub fn linearizable(&self) -> bool {
        self.keys.values().all(|v| *v == Verdict::Linearizable)
    }

    /// The first key found not linearizable, if any.
    pub fn violation(&self) -> Option<&Verdict> {
        self.keys
            .values()
            .find(|v| matches!(v, Verdict::NotLinearizable { .. }))
    }

    /// Whether some key could not be decided within the budget.
    pub fn unknown(&self) -> bool {
        self.keys
            .values()
            .any(|v| matches!(v, Verdict::Unknown { .. }))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(Verdict::NotLinearizable {
            key,
            counterexample,
        }) = self.violation()
        {
            writeln!(f, "not linearizable on key {key:?}:")?;
            for op in counterexample {
                let completed = op
                    .completed
                    .map_or_else(|| "never".to_owned(), |t| t.to_string());
                writeln!(
                    f,
                    "  client {} {:?} -> {:?} [{}, {}]",
                    op.client, op.call, op.outcome, op.invoked, completed
                )?;
            }
            Ok(())
        } else if self.unknown() {
            write!(f, "unknown: the search ran out of its budget")
        } else {
            write!(f, "linearizable ({} keys)", self.keys.len())
        }
    }
}

/// Checks `history` against the register model, key by key.
///
/// # Errors
///
/// [`HistoryError`] when the history is malformed.
pub fn check(history: &[Operation], budget: Budget) -> Result<Report, HistoryError> {
    validate(history)?;
    let deadline = Instant::now() + budget.time;
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        // A read that never answered constrains nothing.
        if op.call == Call::Read && op.outcome == Outcome::Indeterminate {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut keys = BTreeMap::new();
    for (key, ops) in by_key {
        let ops: Vec<Operation> = ops.into_iter().cloned().collect();
        let verdict = match search(&ops, budget.steps, deadline) {
            Search::Linearizable => Verdict::Linearizable,
            Search::Unknown(steps) => Verdict::Unknown {
                key: key.to_owned(),
                steps,
            },
            Search::NotLinearizable => Verdict::NotLinearizable {
                key: key.to_owned(),
                counterexample: shrink(ops, budget.steps, deadline),
            },
        };
        keys.insert(key.to_owned(), verdict);
    }
    Ok(Report { keys })
}

fn validate(history: &[Operation]) -> Result<(), HistoryError> {
    let mut busy_until: BTreeMap<usize, u64> = BTreeMap::new();
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| history[i].invoked);
    for index in order {
        let op = &history[index];
        let fits = matches!(
            (op.call, op.outcome),
            (_, Outcome::Indeterminate)
                | (Call::Read, Outcome::Value(_))
                | (Call::Write(_) | Call::Remove, Outcome::Done)
                | (
                    Call::Create(_) | Call::CompareAndSet { .. } | Call::RemoveIf { .. },
                    Outcome::Done | Outcome::Refused,
                )
                | (Call::Increment(_), Outcome::Counter(_))
        );
        if !fits {
            return Err(HistoryError::OutcomeMismatch {
                index,
                call: op.call,
                outcome: op.outcome,
            });
        }
        match (op.outcome, op.completed) {
            (Outcome::Indeterminate, None) => {}
            (Outcome::Indeterminate, Some(_)) | (_, None) => {
                return Err(HistoryError::CompletionMismatch { index })
            }
            (_, Some(completed)) if completed < op.invoked => {
                return Err(HistoryError::CompletedBeforeInvoked {
                    index,
                    invoked: op.invoked,
                    completed,
                })
            }
            _ => {}
        }
        let end = op.completed.unwrap_or(u64::MAX);
        if let Some(&until) = busy_until.get(&op.client) {
            if until >= op.invoked {
                return Err(HistoryError::OverlappingCalls {
                    index,
                    client: op.client,
                });
            }
        }
        busy_until.insert(op.client, end);
    }
    Ok(())
}

/// The model: from `state`, does `op` with its outcome fit, and what state does it leave?
fn step(state: Option<i64>, call: Call, outcome: Outcome) -> Option<Option<i64>> {
    let any = outcome == Outcome::Indeterminate;
    match call {
        Call::Read => (any || outcome == Outcome::Value(state)).then_some(state),
        Call::Write(v) => Some(Some(v)),
        Call::Remove => Some(None),
        Call::Create(v) => conditional(state.is_none(), outcome, state, Some(v)),
        Call::CompareAndSet { expected, new } => {
            conditional(state == Some(expected), outcome, state, Some(new))
        }
        Call::RemoveIf { expected } => conditional(state == Some(expected), outcome, state, None),
        Call::Increment(delta) => {
            let next = state.unwrap_or(0).checked_add(delta)?;
            (any || outcome == Outcome::Counter(next)).then_some(Some(next))
        }
    }
}

/// A conditional operation: applies when `holds`, is refused (no change) otherwise.
fn conditional(
    holds: bool,
    outcome: Outcome,
    state: Option<i64>,
    after: Option<i64>,
) -> Option<Option<i64>> {
    match (holds, outcome) {
        (true, Outcome::Done | Outcome::Indeterminate) => Some(after),
        (false, Outcome::Refused | Outcome::Indeterminate) => Some(state),
        _ => None,
    }
}

enum Search {
    Linearizable,
    NotLinearizable,
    Unknown(u64),
}

/// No entry (the end of the list).
const NIL: usize = usize::MAX;

/// Wing & Gong's search with Lowe's cache over one key's operations.
fn search(ops: &[Operation], max_steps: u64, deadline: Instant) -> Search {
    // Events: 2i is operation i's call, 2i + 1 its return. An indeterminate operation
    // returns after everything else.
    let mut events: Vec<(u64, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, 2 * i));
        events.push((op.completed.unwrap_or(u64::MAX), 2 * i + 1));
    }
    // At equal times calls come first: the operations overlap (the permissive reading).
    events.sort_by_key(|&(time, event)| (time, event % 2, event));
    // A doubly linked list over the events in time order; `head` is its sentinel.
    let n = events.len();
    let head = n;
    let mut next = vec![NIL; n + 1];
    let mut prev = vec![NIL; n + 1];
    let mut node_of = vec![0; n];
    let mut last = head;
    for (node, &(_, event)) in events.iter().enumerate() {
        node_of[event] = node;
        next[last] = node;
        prev[node] = last;
        last = node;
    }
    let event_at = |node: usize| events[node].1;

    let words = ops.len().div_ceil(64);
    let mut taken = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut state: Option<i64> = None;
    let mut steps: u64 = 0;
    let mut entry = next[head];
    while next[head] != NIL {
        steps += 1;
        if steps > max_steps || (steps % 4096 == 0 && Instant::now() > deadline) {
            return Search::Unknown(steps);
        }
        if entry == NIL {
            // Only returns can end a pass; reaching the end means every call was tried.
            return Search::NotLinearizable;
        }
        let event = event_at(entry);
        let op = event / 2;
        if event % 2 == 0 {
            let fits = step(state, ops[op].call, ops[op].outcome);
            if let Some(after) = fits {
                taken[op / 64] |= 1 << (op % 64);
                if cache.insert((taken.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    // Take the call and its return out of the list.
                    let ret = node_of[event + 1];
                    for node in [entry, ret] {
                        next[prev[node]] = next[node];
                        if next[node] != NIL {
                            prev[next[node]] = prev[node];
                        }
                    }
                    entry = next[head];
                    continue;
                }
                taken[op / 64] &= !(1 << (op % 64));
            }
            entry = next[entry];
        } else {
            // An operation returned before it was taken: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return Search::NotLinearizable;
            };
            let op = event_at(call) / 2;
            state = before;
            taken[op / 64] &= !(1 << (op % 64));
            let ret = node_of[event_at(call) + 1];
            for node in [ret, call] {
                next[prev[node]] = node;
                if next[node] != NIL {
                    prev[next[node]] = node;
                }
            }
            entry = next[call];
        }
    }
    Search::Linearizable
}

/// Drops every read whose removal keeps `ops` non-linearizable.
fn shrink(mut ops: Vec<Operation>, max_steps: u64, deadline: Instant) -> Vec<Operation> {
    let mut i = 0;
    while i < ops.len() {
        if ops[i].call == Call::Read {
            let mut fewer = ops.clone();
            fewer.remove(i);
            if matches!(search(&fewer, max_steps, deadline), Search::NotLinearizable) {
                ops = fewer;
                continue;
            }
        }
        i += 1;
    }
    ops.sort_by_key(|op| op.invoked);
    ops
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;

    fn op(client: usize, call: Call, outcome: Outcome, invoked: u64, completed: u64) -> Operation {
        Operation {
            client,
            key: "k".to_owned(),
            call,
            outcome,
            invoked,
            completed: Some(completed),
        }
    }

    fn lost(client: usize, call: Call, invoked: u64) -> Operation {
        Operation {
            client,
            key: "k".to_owned(),
            call,
            outcome: Outcome::Indeterminate,
            invoked,
            completed: None,
        }
    }

    fn verdict(history: &[Operation]) -> Verdict {
        let report = check(history, Budget::default()).expect("well formed");
        report.keys.into_values().next().expect("one key")
    }

    fn read(client: usize, value: Option<i64>, invoked: u64, completed: u64) -> Operation {
        op(
            client,
            Call::Read,
            Outcome::Value(value),
            invoked,
            completed,
        )
    }

    #[test]
    fn sequential_histories_follow_the_model() {
        let h = [
            read(0, None, 0, 1),
            op(0, Call::Write(1), Outcome::Done, 2, 3),
            read(1, Some(1), 4, 5),
            op(
                1,
                Call::CompareAndSet {
                    expected: 1,
                    new: 2,
                },
                Outcome::Done,
                6,
                7,
            ),
            op(
                0,
                Call::CompareAndSet {
                    expected: 1,
                    new: 3,
                },
                Outcome::Refused,
                8,
                9,
            ),
            op(0, Call::Create(4), Outcome::Refused, 10, 11),
            op(1, Call::RemoveIf { expected: 2 }, Outcome::Done, 12, 13),
            op(0, Call::Create(5), Outcome::Done, 14, 15),
            read(1, Some(5), 16, 17),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    /// A read after a write completed must see it (or a later write): stale reads are caught.
    #[test]
    fn a_stale_read_is_rejected() {
        let h = [
            op(0, Call::Write(1), Outcome::Done, 0, 1),
            op(0, Call::Write(2), Outcome::Done, 2, 3),
            read(1, Some(1), 4, 5),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    /// Overlapping operations may take effect in either order.
    #[test]
    fn concurrent_operations_may_order_either_way() {
        let h = [
            op(0, Call::Write(1), Outcome::Done, 0, 10),
            op(1, Call::Write(2), Outcome::Done, 1, 9),
            read(2, Some(1), 11, 12),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    /// A value seen and then unseen: two reads after the write, the second one older.
    #[test]
    fn a_value_that_flickers_is_rejected() {
        let h = [
            op(0, Call::Write(1), Outcome::Done, 0, 1),
            lost(0, Call::Write(2), 2),
            read(1, Some(2), 3, 4),
            read(2, Some(1), 5, 6),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    /// Two compare-and-sets from the same version cannot both succeed.
    #[test]
    fn two_winners_of_one_compare_and_set_are_rejected() {
        let h = [
            op(0, Call::Write(1), Outcome::Done, 0, 1),
            op(
                1,
                Call::CompareAndSet {
                    expected: 1,
                    new: 2,
                },
                Outcome::Done,
                2,
                5,
            ),
            op(
                2,
                Call::CompareAndSet {
                    expected: 1,
                    new: 3,
                },
                Outcome::Done,
                3,
                6,
            ),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    /// A create that "failed" (refused) while nothing existed is a violation.
    #[test]
    fn a_refused_create_on_an_empty_key_is_rejected() {
        let h = [
            read(0, None, 0, 1),
            op(0, Call::Create(1), Outcome::Refused, 2, 3),
            read(0, None, 4, 5),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    /// Increments: every acknowledged one counts once.
    #[test]
    fn a_lost_or_doubled_increment_is_rejected() {
        let counted = [
            op(0, Call::Increment(1), Outcome::Counter(1), 0, 1),
            op(1, Call::Increment(1), Outcome::Counter(2), 2, 3),
            read(0, Some(2), 4, 5),
        ];
        assert_eq!(verdict(&counted), Verdict::Linearizable);
        let lost_one = [
            op(0, Call::Increment(1), Outcome::Counter(1), 0, 1),
            op(1, Call::Increment(1), Outcome::Counter(2), 2, 3),
            read(0, Some(1), 4, 5),
        ];
        assert!(matches!(
            verdict(&lost_one),
            Verdict::NotLinearizable { .. }
        ));
        let same_answer = [
            op(0, Call::Increment(1), Outcome::Counter(1), 0, 3),
            op(1, Call::Increment(1), Outcome::Counter(1), 1, 2),
        ];
        assert!(matches!(
            verdict(&same_answer),
            Verdict::NotLinearizable { .. }
        ));
    }

    /// An indeterminate write may have happened, late or never — but only once, and not
    /// before it was made.
    #[test]
    fn indeterminate_writes_may_land_once_after_their_call() {
        let landed_late = [
            lost(0, Call::Write(1), 0),
            read(1, None, 1, 2),
            read(1, Some(1), 3, 4),
        ];
        assert_eq!(verdict(&landed_late), Verdict::Linearizable);
        let never = [lost(0, Call::Write(1), 0), read(1, None, 10, 11)];
        assert_eq!(verdict(&never), Verdict::Linearizable);
        let before_its_call = [read(1, Some(1), 0, 1), lost(0, Call::Write(1), 2)];
        assert!(matches!(
            verdict(&before_its_call),
            Verdict::NotLinearizable { .. }
        ));
        let came_and_went = [
            lost(0, Call::Write(1), 0),
            read(1, Some(1), 1, 2),
            read(1, None, 3, 4),
        ];
        assert!(matches!(
            verdict(&came_and_went),
            Verdict::NotLinearizable { .. }
        ));
    }

    /// The counterexample keeps the violation and drops the reads that do not take part.
    #[test]
    fn counterexamples_are_shrunk_to_the_reads_that_matter() {
        let mut h = vec![op(0, Call::Write(1), Outcome::Done, 0, 1)];
        for t in 0..20 {
            h.push(read(1, Some(1), 2 + 2 * t, 3 + 2 * t));
        }
        h.push(op(0, Call::Write(2), Outcome::Done, 50, 51));
        h.push(read(1, Some(1), 52, 53));
        let Verdict::NotLinearizable { counterexample, .. } = verdict(&h) else {
            panic!("a stale read was accepted");
        };
        assert_eq!(counterexample.len(), 3, "{counterexample:?}");
    }

    /// Keys are independent: a violation on one key names it, the other stays linearizable.
    #[test]
    fn keys_are_checked_apart() {
        let mut h = vec![
            op(0, Call::Write(1), Outcome::Done, 0, 1),
            op(0, Call::Write(2), Outcome::Done, 2, 3),
            read(1, Some(1), 4, 5),
        ];
        let mut other = op(2, Call::Write(7), Outcome::Done, 0, 1);
        other.key = "other".to_owned();
        h.push(other);
        let report = check(&h, Budget::default()).expect("well formed");
        assert_eq!(report.keys["other"], Verdict::Linearizable);
        assert!(matches!(
            report.violation(),
            Some(Verdict::NotLinearizable { key, .. }) if key == "k"
        ));
    }

    #[test]
    fn malformed_histories_are_errors() {
        let backwards = [op(0, Call::Write(1), Outcome::Done, 5, 4)];
        assert!(matches!(
            check(&backwards, Budget::default()),
            Err(HistoryError::CompletedBeforeInvoked { index: 0, .. })
        ));
        let wrong = [op(0, Call::Read, Outcome::Done, 0, 1)];
        assert!(matches!(
            check(&wrong, Budget::default()),
            Err(HistoryError::OutcomeMismatch { index: 0, .. })
        ));
        let mut unfinished = op(0, Call::Write(1), Outcome::Done, 0, 1);
        unfinished.completed = None;
        assert!(matches!(
            check(&[unfinished], Budget::default()),
            Err(HistoryError::CompletionMismatch { index: 0 })
        ));
        let overlapping = [
            op(0, Call::Write(1), Outcome::Done, 0, 10),
            op(0, Call::Write(2), Outcome::Done, 5, 15),
        ];
        assert!(matches!(
            check(&overlapping, Budget::default()),
            Err(HistoryError::OverlappingCalls { client: 0, .. })
        ));
    }

    /// Out of budget is "unknown", never "linearizable".
    #[test]
    fn running_out_of_budget_is_unknown() {
        // Many concurrent writes and a read that sees none of them: every order is tried.
        let mut h: Vec<Operation> = (0..12)
            .map(|c| op(c, Call::Write(c as i64), Outcome::Done, 0, 100))
            .collect();
        h.push(read(99, Some(-1), 101, 102));
        let report = check(
            &h,
            Budget {
                steps: 50,
                time: Duration::from_secs(60),
            },
        )
        .expect("well formed");
        assert!(report.unknown(), "{report}");
        assert!(!report.linearizable());
    }

    /// Histories a correct register produces are accepted: random operations of four
    /// clients, each taking effect at a point inside its own interval (intervals of different
    /// clients overlap), some writes indeterminate (applied or not). Seeded: a failure names
    /// its seed.
    #[test]
    fn histories_of_a_correct_register_are_linearizable() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        const CLIENTS: u64 = 4;
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut state = [None::<i64>, None];
            let mut history = Vec::new();
            let mut fresh = 0;
            for i in 0..60u64 {
                // The operation takes effect at `point`; a client's next one is 40 later.
                let point = 100 + 10 * i;
                let key = rng.random_range(0..2usize);
                let current = state[key];
                fresh += 1;
                let call = match rng.random_range(0..7) {
                    0 | 1 => Call::Read,
                    2 => Call::Write(fresh),
                    3 => Call::Create(fresh),
                    4 => Call::CompareAndSet {
                        expected: current.unwrap_or(-1),
                        new: fresh,
                    },
                    5 => Call::RemoveIf {
                        expected: current.unwrap_or(-1),
                    },
                    _ => Call::Remove,
                };
                let indeterminate = call != Call::Read && rng.random_bool(0.2);
                let applies = !indeterminate || rng.random_bool(0.5);
                let after = step(current, call, Outcome::Indeterminate).expect("total");
                let outcome = match call {
                    Call::Read => Outcome::Value(current),
                    _ if indeterminate => Outcome::Indeterminate,
                    Call::Write(_) | Call::Remove => Outcome::Done,
                    _ if after == current => Outcome::Refused,
                    _ => Outcome::Done,
                };
                if applies {
                    state[key] = after;
                }
                history.push(Operation {
                    client: usize::try_from(i % CLIENTS).expect("small"),
                    key: format!("k{key}"),
                    call,
                    outcome,
                    invoked: point - rng.random_range(0..20),
                    completed: (!indeterminate).then(|| point + rng.random_range(0..20)),
                });
                if indeterminate {
                    // The client gave up on it: its later calls are another client's.
                    history.last_mut().expect("pushed").client += 100 * (i as usize + 1);
                }
            }
            let report = check(&history, Budget::default()).expect("well formed");
            assert!(report.linearizable(), "seed {seed}: {report}");
        }
    }

    /// A long concurrent history of a correct register is checked in time.
    #[test]
    fn ten_thousand_operations_are_checked_within_the_budget() {
        // Four clients on four keys, overlapping in pairs, as a real register serves them.
        let mut h = Vec::new();
        let mut value = [None::<i64>; 4];
        let mut next = 0;
        for round in 0..2500u64 {
            for (key, current) in value.iter_mut().enumerate() {
                let t = round * 10;
                let client = key;
                let k = format!("k{key}");
                let o = if round % 3 == 0 {
                    next += 1;
                    *current = Some(next);
                    Operation {
                        client,
                        key: k,
                        call: Call::Write(next),
                        outcome: Outcome::Done,
                        invoked: t,
                        completed: Some(t + 5),
                    }
                } else {
                    Operation {
                        client,
                        key: k,
                        call: Call::Read,
                        outcome: Outcome::Value(*current),
                        invoked: t,
                        completed: Some(t + 5),
                    }
                };
                h.push(o);
            }
        }
        assert_eq!(h.len(), 10_000);
        let report = check(&h, Budget::default()).expect("well formed");
        assert!(report.linearizable(), "{report}");
    }
}
