//! Leader election: one leader at a time, across processes, and failover when it dies.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use state_store_core::{FencingToken, LeaderEvent, StateStore};
use tokio::sync::mpsc;

use crate::context::{Context, Worker};
use crate::leases::{lease_store, observe_until, ok, within, PATIENCE};

/// One line of a candidate's events.
fn describe(event: &LeaderEvent) -> String {
    match event {
        LeaderEvent::Elected { token } => format!("elected {token}"),
        LeaderEvent::Lost => "lost".to_owned(),
        LeaderEvent::NewLeader { id } => format!("leader {id}"),
        other => format!("other {other:?}"),
    }
}

/// The counter that orders terms, as `sequence` orders critical sections.
const TERMS: &str = "election-sequence";

/// A candidate: campaigns and reports every event until stopped. A term is bracketed by two
/// increments of [`TERMS`] made by the leader itself, right after it is elected and right after
/// it learns it lost: `elected <token> <enter>` … `lost <exit>`.
async fn candidate(store: StateStore, id: String, report: impl Fn(String)) {
    let mut election = store.elect("leader", id, Duration::from_secs(2));
    while let Some(event) = election.next().await {
        match event {
            Ok(event) => {
                let line = describe(&event);
                if matches!(event, LeaderEvent::Elected { .. } | LeaderEvent::Lost) {
                    report(format!("{line} {}", next_term_mark(&store).await));
                } else {
                    report(line);
                }
            }
            Err(err) if err.is_transient() => {}
            Err(err) => panic!("the campaign failed: {}", crate::report(&err)),
        }
    }
}

/// The next value of [`TERMS`] (retried through transient errors: a value skipped by a write
/// that did land only leaves a gap).
async fn next_term_mark(store: &StateStore) -> i64 {
    let started = std::time::Instant::now();
    loop {
        match store.increment(TERMS, 1, None).await {
            Ok(mark) => return mark,
            Err(err) if err.is_transient() && started.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("marking a term failed: {}", crate::report(&err)),
        }
    }
}

/// Leader election among 3 candidates (worker processes where the store allows): exactly one
/// is elected and the others see it as leader; when the leader's process dies (SIGKILL), another
/// candidate is elected with a greater token and the third sees the change. Terms never
/// overlap: ordered by the store (a counter each leader bumps when elected and when it learns
/// it lost, as critical sections are ordered in [`lease_mutual_exclusion`](crate::cases::lease_mutual_exclusion)), every term ends
/// before the next begins. A process that does not campaign observes the first leader and
/// then the second, with their tokens ([`StateStore::observe_leader`]).
pub async fn election_has_one_leader_and_fails_over(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    if let Some(id) = ctx.worker_role() {
        let id = id.to_owned();
        let ctx2 = ctx.clone();
        candidate(store, id, move |line| ctx2.tell_parent(&line)).await;
        return;
    }
    let ids = ["c0", "c1", "c2"];
    // A process that does not campaign follows the leadership too.
    let mut observer = store.observe_leader("leader");
    let mut observed = Vec::new();
    let (events, mut rx) = mpsc::unbounded_channel::<(usize, String)>();
    let mut stops = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(Some(stop));
        let events = events.clone();
        match ctx.spawn_worker(id) {
            Some(worker) => {
                tokio::spawn(forward(worker, i, events, stopped));
            }
            None => {
                let store = ctx.store().await;
                let id = (*id).to_owned();
                tokio::spawn(async move {
                    tokio::select! {
                        () = candidate(store, id, |line| { let _ = events.send((i, line)); }) => {}
                        _ = stopped => {}
                    }
                });
            }
        }
    }
    // Exactly one elected; the other two see it.
    let mut view: HashMap<usize, String> = HashMap::new();
    let mut tokens: HashMap<usize, u64> = HashMap::new();
    let mut terms = Terms::default();
    let first = within("the first leader", async {
        loop {
            let (i, line) = rx.recv().await.expect("events");
            record(&mut view, &mut tokens, &mut terms, i, &line, &ids);
            if let Some(leader) = agreed(&view, &ids, None) {
                return leader;
            }
        }
    })
    .await;
    assert_eq!(
        ok(store.leader("leader").await, "leader").as_deref(),
        Some(ids[first])
    );
    let first_token = tokens[&first];
    observe_until(
        &mut observer,
        &mut observed,
        ids[first],
        FencingToken::new(first_token),
    )
    .await;
    // The leader dies. Its term ends no later than the counter reads now: it marks nothing
    // while it leads, and a leader elected after it marks its start above this.
    let mark = ok(store.get::<i64>(TERMS).await, "read the terms counter").unwrap_or(0);
    terms.end(first, mark);
    if let Some(stop) = stops[first].take() {
        let _ = stop.send(());
    }
    view.remove(&first);
    let second = within("failover", async {
        loop {
            let (i, line) = rx.recv().await.expect("events");
            if i == first {
                continue;
            }
            record(&mut view, &mut tokens, &mut terms, i, &line, &ids);
            if let Some(leader) = agreed(&view, &ids, Some(first)) {
                return leader;
            }
        }
    })
    .await;
    assert_ne!(second, first);
    assert!(
        tokens[&second] > first_token,
        "the new leader's token {} is not above {first_token}",
        tokens[&second]
    );
    observe_until(
        &mut observer,
        &mut observed,
        ids[second],
        FencingToken::new(tokens[&second]),
    )
    .await;
    for stop in stops.into_iter().flatten() {
        let _ = stop.send(());
    }
    terms.assert_disjoint(&ids);
}

/// Leaders' terms as the store ordered them: (candidate, enter, exit once known).
#[derive(Default)]
struct Terms(Vec<(usize, i64, Option<i64>)>);

impl Terms {
    fn begin(&mut self, i: usize, enter: i64) {
        self.0.push((i, enter, None));
    }

    /// Ends candidate `i`'s open term (if any) at `exit`.
    fn end(&mut self, i: usize, exit: i64) {
        if let Some(term) = self.0.iter_mut().rev().find(|t| t.0 == i && t.2.is_none()) {
            term.2 = Some(exit);
        }
    }

    fn assert_disjoint(&mut self, ids: &[&str]) {
        self.0.sort_by_key(|&(_, enter, _)| enter);
        for pair in self.0.windows(2) {
            let ((a, enter_a, exit_a), (b, enter_b, _)) = (pair[0], pair[1]);
            assert!(
                exit_a.is_some_and(|exit| exit < enter_b),
                "two leaders at once: {} (term from {enter_a} to {exit_a:?}) and {} (from {enter_b})",
                ids[a],
                ids[b]
            );
        }
    }
}

/// Forwards a worker's lines until told to stop, then kills it (SIGKILL).
async fn forward(
    mut worker: Worker,
    i: usize,
    events: mpsc::UnboundedSender<(usize, String)>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            line = worker.next() => match line {
                Some(line) => { let _ = events.send((i, line)); }
                None => return,
            },
            _ = &mut stopped => {
                worker.kill().await;
                return;
            }
        }
    }
}

/// Updates who candidate `i` believes leads, and the terms, from one of its event lines.
fn record(
    view: &mut HashMap<usize, String>,
    tokens: &mut HashMap<usize, u64>,
    terms: &mut Terms,
    i: usize,
    line: &str,
    ids: &[&str],
) {
    let number = |text: &str| -> i64 { text.parse().expect("a number") };
    if let Some(rest) = line.strip_prefix("elected ") {
        let (token, enter) = rest.split_once(' ').expect("a token and a term mark");
        let token = u64::try_from(number(token)).expect("a positive token");
        if let Some(&earlier) = tokens.values().max() {
            assert!(
                token > earlier,
                "{} was elected with token {token}, not above {earlier}",
                ids[i]
            );
        }
        tokens.insert(i, token);
        terms.begin(i, number(enter));
        view.insert(i, ids[i].to_owned());
    } else if let Some(id) = line.strip_prefix("leader ") {
        view.insert(i, id.to_owned());
    } else if let Some(exit) = line.strip_prefix("lost ") {
        terms.end(i, number(exit));
        view.remove(&i);
    } else {
        panic!("unexpected event from {}: {line}", ids[i]);
    }
}

/// The candidate every live candidate agrees leads (and which says so itself), if any.
fn agreed(view: &HashMap<usize, String>, ids: &[&str], dead: Option<usize>) -> Option<usize> {
    let live: Vec<usize> = (0..ids.len()).filter(|i| Some(*i) != dead).collect();
    let leader = live
        .iter()
        .find(|&&i| view.get(&i).map(String::as_str) == Some(ids[i]))?;
    let all_agree = live
        .iter()
        .all(|i| view.get(i).map(String::as_str) == Some(ids[*leader]));
    all_agree.then_some(*leader)
}
