//! The checker's own tests: histories it must reject, and histories it must accept.

#![allow(clippy::expect_used)] // a test fails by panicking

use super::search::step;
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
    // Four clients, each on its own key, calling at the same times, as a register serves them.
    let mut h = Vec::new();
    let mut value = [None::<i64>; 4];
    let mut next = 0;
    for round in 0..2500u64 {
        for (client, current) in value.iter_mut().enumerate() {
            let t = round * 10;
            let mut o = if round % 3 == 0 {
                next += 1;
                *current = Some(next);
                op(client, Call::Write(next), Outcome::Done, t, t + 5)
            } else {
                read(client, *current, t, t + 5)
            };
            o.key = format!("k{client}");
            h.push(o);
        }
    }
    assert_eq!(h.len(), 10_000);
    let report = check(&h, Budget::default()).expect("well formed");
    assert!(report.linearizable(), "{report}");
}
