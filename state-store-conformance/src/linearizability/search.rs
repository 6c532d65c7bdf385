//! The model and Wing & Gong's search over one key's operations.

use std::collections::HashSet;
use std::time::Instant;

use super::{Call, Operation, Outcome};

/// The model: from `state`, does `op` with its outcome fit, and what state does it leave?
pub(super) fn step(state: Option<i64>, call: Call, outcome: Outcome) -> Option<Option<i64>> {
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

pub(super) enum Search {
    Linearizable,
    NotLinearizable,
    Unknown(u64),
}

/// No entry (the end of the list).
const NIL: usize = usize::MAX;

/// Wing & Gong's search with Lowe's cache over one key's operations.
pub(super) fn search(ops: &[Operation], max_steps: u64, deadline: Instant) -> Search {
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
pub(super) fn shrink(mut ops: Vec<Operation>, max_steps: u64, deadline: Instant) -> Vec<Operation> {
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
