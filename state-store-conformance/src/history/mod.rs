//! Recorded histories under faults, checked for linearizability.
//!
//! [`record`] runs clients — each its own handle, so its own connection — doing seeded random
//! operations on a few keys (get, set, create, compare-and-set, conditional and unconditional
//! remove on register keys; get, set and increment on a counter key), and records when each
//! call was made and how and when it returned. A call that timed out or failed with
//! `Unavailable` or `OutcomeUnknown` is recorded as indeterminate (it may have taken effect,
//! late or never), and the client carries on as a new client. [`linearizable_under_faults`]
//! records while a server is killed and restarted, then frozen and thawed, and checks the
//! history with [`crate::linearizability`]; [`linearizable_under_partitions`] does it through
//! a fault proxy, and [`histories_stay_linearizable_when_clients_are_killed`] (a conformance
//! case) with clients in processes of their own, SIGKILLed mid-call.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use state_store_core::{Error, SetMode, SetOptions, StateStore, Version};

use crate::linearizability::{self, Budget, Call, Operation, Outcome, Report};
use crate::report;

mod killed;
mod scenarios;

pub use killed::histories_stay_linearizable_when_clients_are_killed;
pub use scenarios::{
    histories_are_linearizable, histories_are_linearizable_across_partitions, judge, keep,
    linearizable_under_faults, linearizable_under_partitions, print_verdict, record_during, seeded,
    summary,
};

/// What the clients do.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Clients, each with its own handle.
    pub clients: usize,
    /// Register keys (plus one counter key).
    pub keys: usize,
    /// At most this many operations per client.
    pub operations: usize,
    /// The seed of every client's choices (client `i` uses `seed + i`).
    pub seed: u64,
    /// A call that has not returned after this long is indeterminate.
    pub timeout: Duration,
    /// Each client waits a random time up to this between its calls, so that a run spans the
    /// faults instead of finishing before them.
    pub think: Duration,
}

impl Default for Workload {
    /// Four clients on three register keys and a counter, at most 2000 operations each,
    /// 2 s per call, up to 4 ms between calls.
    fn default() -> Self {
        Workload {
            clients: 4,
            keys: 3,
            operations: 2000,
            seed: 1,
            timeout: Duration::from_secs(2),
            think: Duration::from_millis(4),
        }
    }
}

/// One client: the handle, what it last read of each key (to build conditional calls), and
/// its identity (a new one after an indeterminate call).
struct Client {
    store: StateStore,
    id: usize,
    incarnation: usize,
    rng: StdRng,
    seen: Vec<Option<(i64, Version)>>,
    next_value: i64,
    /// Only reads until one succeeds: the last call failed.
    probing: bool,
}

/// Where a client's times come from: nanoseconds on one monotonic clock, shifted by `offset`
/// so that clients in other processes (which start their own clock) share the parent's
/// zero.
#[derive(Debug, Clone, Copy)]
struct Clock {
    started: Instant,
    offset: u64,
}

impl Clock {
    fn new(offset: u64) -> Self {
        Clock {
            started: Instant::now(),
            offset,
        }
    }

    fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.offset.saturating_add(elapsed)
    }
}

/// Where a client reports what it does.
trait Sink {
    /// A call is about to be made (its outcome `Indeterminate` until [`Sink::completed`]).
    fn invoked(&mut self, _op: &Operation) {}
    /// A call returned, or is recorded as indeterminate.
    fn completed(&mut self, op: Operation);
    /// A write-once key's write was acknowledged.
    fn inserted(&mut self, key: String);
}

impl Sink for Recording {
    fn completed(&mut self, op: Operation) {
        self.history.push(op);
    }

    fn inserted(&mut self, key: String) {
        self.inserts.push(key);
    }
}

/// What [`record`] saw.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The operations on the register and counter keys.
    pub history: Vec<Operation>,
    /// Keys written once each (`lin:<seed>:w:…`, never touched again) whose write was acknowledged:
    /// every one must still be there afterwards ([`lost_inserts`]).
    pub inserts: Vec<String>,
}

/// Records the history of `workload` on handles from `connect`, until every client has made
/// its operations or `stop` is set (then each client finishes its current call). One call in
/// eight is an insert of a fresh key, outside the history, counted by [`lost_inserts`].
///
/// # Panics
///
/// When `connect` fails, or a call fails with anything but a transient error or the
/// `Conflict` of a conditional write.
pub async fn record<F, Fut>(connect: &F, workload: Workload, stop: Arc<AtomicBool>) -> Recording
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StateStore, Error>>,
{
    let clients = connect_clients(connect, &workload).await;
    run_clients(clients, workload, stop).await
}

/// One client per `workload.clients`, each on its own handle from `connect`: connected before
/// the run, so that a fault schedule starting with the run finds them all ready.
async fn connect_clients<F, Fut>(connect: &F, workload: &Workload) -> Vec<Client>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StateStore, Error>>,
{
    let mut clients = Vec::with_capacity(workload.clients);
    for id in 0..workload.clients {
        let store = connect().await.expect("connect a client");
        clients.push(Client::new(store, id, workload));
    }
    clients
}

/// Runs connected clients as [`record`] does.
async fn run_clients(clients: Vec<Client>, workload: Workload, stop: Arc<AtomicBool>) -> Recording {
    // One zero for every client's times.
    let clock = Clock::new(0);
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let stop = Arc::clone(&stop);
        tasks.spawn(async move {
            let mut recording = Recording::default();
            client.work(&workload, &stop, clock, &mut recording).await;
            recording
        });
    }
    let mut all = Recording::default();
    for recording in tasks.join_all().await {
        all.history.extend(recording.history);
        all.inserts.extend(recording.inserts);
    }
    all
}

/// How many of `inserts` are gone: read back (in batches) through `store`.
///
/// # Errors
///
/// What a read fails with.
pub async fn lost_inserts(store: &StateStore, inserts: &[String]) -> Result<usize, Error> {
    let mut lost = 0;
    for batch in inserts.chunks(1000) {
        let found = store.get_state(batch).await?;
        lost += batch
            .iter()
            .filter(|name| found.get(name.as_str()).is_none_or(Option::is_none))
            .count();
    }
    Ok(lost)
}

impl Client {
    fn new(store: StateStore, id: usize, workload: &Workload) -> Self {
        Client {
            store,
            id,
            incarnation: 0,
            rng: StdRng::seed_from_u64(workload.seed.wrapping_add(id as u64)),
            seen: vec![None; workload.keys],
            next_value: 0,
            probing: false,
        }
    }

    /// Makes `workload.operations` calls, or fewer if `stop` is set (the current call
    /// finishes), reporting each to `sink`.
    async fn work(
        &mut self,
        workload: &Workload,
        stop: &AtomicBool,
        clock: Clock,
        sink: &mut (dyn Sink + Send),
    ) {
        for _ in 0..workload.operations {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let determinate = if self.probing {
                // After a failure a client only reads, until a read succeeds: the way a
                // service backs off, and it bounds the writes whose outcome is unknown
                // (each one multiplies the orders the checker must try). A read whose outcome
                // is unknown says nothing, so it is neither announced nor recorded.
                let op = self.act(workload, &clock, None).await;
                let determinate = op.outcome != Outcome::Indeterminate;
                if determinate {
                    self.probing = false;
                    sink.completed(op);
                }
                determinate
            } else if self.rng.random_ratio(1, 8) {
                let inserted = self.insert(workload).await;
                let determinate = inserted.is_some();
                if let Some(key) = inserted {
                    sink.inserted(key);
                }
                determinate
            } else {
                let op = self.act(workload, &clock, Some(&mut *sink)).await;
                let determinate = op.outcome != Outcome::Indeterminate;
                sink.completed(op);
                determinate
            };
            if !determinate {
                self.incarnation += 1;
                self.probing = true;
                // Pause so a client does not spin through its operations while the server
                // is down.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let think = self.rng.random_range(Duration::ZERO..=workload.think);
            if !think.is_zero() {
                tokio::time::sleep(think).await;
            }
        }
    }

    /// Writes a fresh key once: its name when the write was acknowledged, `None` when its
    /// outcome is unknown.
    async fn insert(&mut self, workload: &Workload) -> Option<String> {
        self.next_value += 1;
        let key = format!("lin:{}:w:{}:{}", workload.seed, self.id, self.next_value);
        let one = json!(1);
        let write = tokio::time::timeout(workload.timeout, self.store.set_state(&key, &one));
        match write.await {
            Ok(Ok(())) => Some(key),
            Ok(Err(err)) if err.is_transient() => None,
            Err(_) => None,
            Ok(Err(err)) => panic!("an insert of {key} failed: {}", report(&err)),
        }
    }

    /// Makes one random call and records it, announcing it to `announce` first.
    async fn act(
        &mut self,
        workload: &Workload,
        clock: &Clock,
        announce: Option<&mut (dyn Sink + Send)>,
    ) -> Operation {
        // Unique values: client, then a sequence number.
        self.next_value += 1;
        let fresh = i64::try_from(self.id).unwrap_or(0) * 1_000_000 + self.next_value;
        // Only what the store declares: a counter where it increments, conditional calls
        // where it has them.
        let (increments, conditional) = {
            let caps = self.store.capabilities();
            (caps.increment, caps.conditional)
        };
        let counter = increments && self.rng.random_range(0..5) == 0;
        let slot = self.rng.random_range(0..workload.keys);
        let key = if counter {
            format!("lin:{}:counter", workload.seed)
        } else {
            format!("lin:{}:r{slot}", workload.seed)
        };
        let choice = if self.probing {
            0
        } else {
            self.rng.random_range(0..8)
        };
        let seen = if counter {
            None
        } else {
            self.seen[slot].clone()
        };
        let call = match (counter, choice, &seen) {
            (_, 0..=2, _) => Call::Read,
            (true, 3, _) => Call::Write(0),
            (true, _, _) => Call::Increment(1),
            (false, 3, _) => Call::Write(fresh),
            (false, 4..=6, _) if !conditional => Call::Write(fresh),
            (false, 4, _) => Call::Create(fresh),
            (false, 5, Some((expected, _))) => Call::CompareAndSet {
                expected: *expected,
                new: fresh,
            },
            (false, 6, Some((expected, _))) => Call::RemoveIf {
                expected: *expected,
            },
            (false, 7, _) => Call::Remove,
            // A conditional call without a read to start from: read first.
            (false, _, _) => Call::Read,
        };
        let version = seen.map(|(_, version)| version);
        let client = self.id + 1000 * self.incarnation;
        let invoked = clock.now();
        if let Some(sink) = announce {
            sink.invoked(&Operation {
                client,
                key: key.clone(),
                call,
                outcome: Outcome::Indeterminate,
                invoked,
                completed: None,
            });
        }
        let result = tokio::time::timeout(
            workload.timeout,
            self.call(&key, call, version, (!counter).then_some(slot)),
        )
        .await;
        let completed = clock.now();
        let outcome = match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) if err.is_transient() => Outcome::Indeterminate,
            Err(_) => Outcome::Indeterminate,
            Ok(Err(err)) => panic!("{call:?} on {key} failed: {}", report(&err)),
        };
        if let (false, Outcome::Value(value)) = (counter, outcome) {
            if value.is_none() {
                self.seen[slot] = None;
            }
        }
        Operation {
            client,
            key,
            call,
            outcome,
            invoked,
            completed: (outcome != Outcome::Indeterminate).then_some(completed),
        }
    }

    /// Runs `call` on `key` (register `slot`, or the counter: `None`).
    async fn call(
        &mut self,
        key: &str,
        call: Call,
        version: Option<Version>,
        slot: Option<usize>,
    ) -> Result<Outcome, Error> {
        let store = &self.store;
        let refused = |result: Result<(), Error>| match result {
            Ok(()) => Ok(Outcome::Done),
            Err(Error::Conflict { .. }) => Ok(Outcome::Refused),
            Err(err) => Err(err),
        };
        match call {
            Call::Read => {
                let entry = store.get_entry(key).await?;
                let value = entry
                    .as_ref()
                    .map(|e| e.value.as_i64().expect("an integer"));
                if let (Some(entry), Some(slot)) = (entry, slot) {
                    self.seen[slot] = Some((value.expect("read"), entry.version));
                }
                Ok(Outcome::Value(value))
            }
            Call::Write(v) => store
                .set_state(key, &json!(v))
                .await
                .map(|()| Outcome::Done),
            Call::Create(v) => refused(
                store
                    .set_with(key, &json!(v), SetOptions::new().mode(SetMode::Create))
                    .await
                    .map(drop),
            ),
            Call::CompareAndSet { new, .. } => {
                let version = version.expect("a version read before");
                refused(
                    store
                        .set_with(
                            key,
                            &json!(new),
                            SetOptions::new().mode(SetMode::Update(version)),
                        )
                        .await
                        .map(drop),
                )
            }
            Call::RemoveIf { .. } => {
                let version = version.expect("a version read before");
                refused(store.remove_if(key, &version).await)
            }
            Call::Remove => store.remove_state(key).await.map(|()| Outcome::Done),
            Call::Increment(delta) => store
                .increment(key, delta, None)
                .await
                .map(Outcome::Counter),
        }
    }
}

/// A recorded run, checked.
#[derive(Debug, Clone)]
pub struct Run {
    /// The linearizability checker's verdicts.
    pub report: Report,
    /// The history it checked.
    pub history: Vec<Operation>,
    /// Acknowledged inserts.
    pub inserted: usize,
    /// Acknowledged inserts gone afterwards.
    pub lost: usize,
}

/// Checks `recording`: its history for linearizability, and its inserts through a new handle
/// from `connect` (retried for up to 30 s while the store recovers).
///
/// # Panics
///
/// When the history is malformed, or no handle can read the inserts back.
pub async fn audit<F, Fut>(connect: &F, recording: Recording) -> Run
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StateStore, Error>>,
{
    let verdicts = linearizability::check(&recording.history, Budget::default())
        .expect("a well-formed history");
    let started = Instant::now();
    let lost = loop {
        let counted = match connect().await {
            Ok(store) => lost_inserts(&store, &recording.inserts).await,
            Err(err) => Err(err),
        };
        match counted {
            Ok(lost) => break lost,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("the inserts could not be read back: {}", report(&err)),
        }
    };
    Run {
        report: verdicts,
        history: recording.history,
        inserted: recording.inserts.len(),
        lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_store_core::DefaultStateStore;

    /// The in-memory store, many clients at once on one store: its history is linearizable,
    /// and every kind of call ran (a recorder that made only reads would prove nothing).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_store_records_a_linearizable_history() {
        let shared = StateStore::new(DefaultStateStore::new());
        let workload = Workload {
            operations: 500,
            think: Duration::ZERO,
            ..Workload::default()
        };
        let connect = || {
            let store = shared.clone();
            async move { Ok(store) }
        };
        let recording = record(&connect, workload, Arc::new(AtomicBool::new(false))).await;
        assert_eq!(
            recording.history.len() + recording.inserts.len(),
            workload.clients * workload.operations
        );
        let run = audit(&connect, recording).await;
        assert!(run.inserted > 0 && run.lost == 0, "{}", summary(&run));
        let history = run.history;
        for wanted in [
            |c: &Call| matches!(c, Call::CompareAndSet { .. }),
            |c: &Call| matches!(c, Call::RemoveIf { .. }),
            |c: &Call| matches!(c, Call::Create(_)),
            |c: &Call| matches!(c, Call::Increment(_)),
        ] {
            assert!(
                history
                    .iter()
                    .any(|op| wanted(&op.call) && op.outcome == Outcome::Done)
                    || history
                        .iter()
                        .any(|op| wanted(&op.call) && matches!(op.outcome, Outcome::Counter(_))),
                "a kind of call never succeeded"
            );
        }
        assert!(run.report.linearizable(), "{}", run.report);
    }
}
