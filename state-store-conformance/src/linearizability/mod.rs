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

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

mod search;
use search::{search, shrink, Search};

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

#[cfg(test)]
mod tests;
