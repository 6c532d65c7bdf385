//! Recorded histories under faults, checked for linearizability.
//!
//! [`record`] runs clients — each its own handle, so its own connection — doing seeded random
//! operations on a few keys (get, set, create, compare-and-set, conditional and unconditional
//! remove on register keys; get, set and increment on a counter key), and records when each
//! call was made and how and when it returned. A call that timed out or failed with
//! `Unavailable` or `OutcomeUnknown` is recorded as indeterminate (it may have taken effect,
//! late or never), and the client carries on as a new client. [`linearizable_under_faults`]
//! records while a server is killed and restarted, then frozen and thawed, and checks the
//! history with [`crate::linearizability`].

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

use crate::faults::{Link, LinkFault, TestServer};
use crate::linearizability::{self, Budget, Call, Operation, Outcome, Report};
use crate::report;

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
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..workload.clients {
        let store = connect().await.expect("connect a client");
        let stop = Arc::clone(&stop);
        let mut client = Client {
            store,
            id,
            incarnation: 0,
            rng: StdRng::seed_from_u64(workload.seed.wrapping_add(id as u64)),
            seen: vec![None; workload.keys],
            next_value: 0,
            probing: false,
        };
        tasks.spawn(async move {
            let mut recording = Recording::default();
            for _ in 0..workload.operations {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let determinate = if client.probing {
                    // After a failure a client only reads, until a read succeeds: the way a
                    // service backs off, and it bounds the writes whose outcome is unknown
                    // (each one multiplies the orders the checker must try).
                    let op = client.act(&workload, started).await;
                    let determinate = op.outcome != Outcome::Indeterminate;
                    if determinate {
                        client.probing = false;
                        recording.history.push(op);
                    }
                    determinate
                } else if client.rng.random_ratio(1, 8) {
                    let inserted = client.insert(&workload).await;
                    recording.inserts.extend(inserted.clone());
                    inserted.is_some()
                } else {
                    let op = client.act(&workload, started).await;
                    let determinate = op.outcome != Outcome::Indeterminate;
                    recording.history.push(op);
                    determinate
                };
                if !determinate {
                    client.incarnation += 1;
                    client.probing = true;
                    // Pause so a client does not spin through its operations while the server
                    // is down.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let think = client.rng.random_range(Duration::ZERO..=workload.think);
                if !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
            }
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

    /// Makes one random call and records it.
    async fn act(&mut self, workload: &Workload, started: Instant) -> Operation {
        let at = |started: Instant| u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
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
        let invoked = at(started);
        let result = tokio::time::timeout(
            workload.timeout,
            self.run(&key, call, version, (!counter).then_some(slot)),
        )
        .await;
        let completed = at(started);
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
            client: self.id + 1000 * self.incarnation,
            key,
            call,
            outcome,
            invoked,
            completed: (outcome != Outcome::Indeterminate).then_some(completed),
        }
    }

    /// Runs `call` on `key` (register `slot`, or the counter: `None`).
    async fn run(
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

/// Records `workload` while `server` is killed and restarted, then frozen and thawed, and
/// checks the history. Returns the checker's report and the history (to keep as a
/// counterexample); the caller asserts what its backend promises.
///
/// `connect` makes a handle with a request timeout under `workload.timeout`.
pub async fn linearizable_under_faults<F, Fut>(
    server: &mut dyn TestServer,
    connect: F,
    workload: Workload,
) -> Run
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StateStore, Error>>,
{
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    let faults = async {
        pause(300).await;
        server.crash();
        pause(700).await;
        server.restart().expect("restart the server");
        pause(500).await;
        if server.pause().is_ok() {
            pause(u64::try_from(workload.timeout.as_millis()).unwrap_or(1000) + 500).await;
            server.resume().expect("resume the server");
        }
        pause(1000).await;
    };
    record_during(connect, workload, faults).await
}

/// Records `workload` while the network between the clients and their server (`link`: the
/// clients from `connect` must reach the server through it) adds latency with jitter, then
/// partitions them past the call timeout (a black hole), heals, goes half-open (requests
/// arrive, answers do not), resets every connection, refuses new ones, and heals; then checks
/// the history.
pub async fn linearizable_under_partitions<F, Fut>(
    link: &dyn Link,
    connect: F,
    workload: Workload,
) -> Run
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StateStore, Error>>,
{
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    let past_timeout = u64::try_from(workload.timeout.as_millis()).unwrap_or(1000) + 500;
    let faults = async {
        pause(300).await;
        link.set(LinkFault::Latency {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(50),
        });
        pause(700).await;
        link.set(LinkFault::BlackHole);
        pause(past_timeout).await;
        link.set(LinkFault::Healthy);
        pause(500).await;
        link.set(LinkFault::HalfOpen);
        pause(past_timeout).await;
        link.set(LinkFault::ResetAll);
        link.set(LinkFault::Refuse);
        pause(500).await;
        link.set(LinkFault::Healthy);
        pause(1000).await;
    };
    record_during(connect, workload, faults).await
}

/// Records `workload` on handles from `connect` while `faults` runs, stops the clients when
/// it ends, and [`audit`]s the recording.
pub async fn record_during<F, Fut>(
    connect: F,
    workload: Workload,
    faults: impl Future<Output = ()>,
) -> Run
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StateStore, Error>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let recording = record(&connect, workload, Arc::clone(&stop));
    let faults = async {
        faults.await;
        stop.store(true, Ordering::Relaxed);
    };
    let (recording, ()) = tokio::join!(recording, faults);
    audit(&connect, recording).await
}

/// The kill-and-freeze scenario as a test: records [`Workload::default`] with the seed from
/// `STATE_STORE_LIN_SEED` (else one from the clock; `STATE_STORE_LIN_ROUNDS` runs it that
/// many times with the following seeds) under [`linearizable_under_faults`],
/// prints the seed, the size of the history and the verdict (a line starting
/// `linearizability:`), and panics on a violation or an unknown verdict, naming the file the
/// history was kept in ([`keep`]).
pub async fn histories_are_linearizable<F, Fut>(
    server: &mut dyn TestServer,
    connect: F,
    scenario: &str,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StateStore, Error>>,
{
    for workload in seeded() {
        let run = linearizable_under_faults(server, &connect, workload).await;
        judge(scenario, workload.seed, &run);
    }
}

/// The partition scenario as a test, as [`histories_are_linearizable`] does it, under
/// [`linearizable_under_partitions`].
pub async fn histories_are_linearizable_across_partitions<F, Fut>(
    link: &dyn Link,
    connect: F,
    scenario: &str,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<StateStore, Error>>,
{
    for workload in seeded() {
        let run = linearizable_under_partitions(link, &connect, workload).await;
        judge(scenario, workload.seed, &run);
    }
}

/// [`Workload::default`] with the seed from `STATE_STORE_LIN_SEED`, else from the clock, once
/// or `STATE_STORE_LIN_ROUNDS` times (with the seeds that follow it).
pub fn seeded() -> Vec<Workload> {
    let var = |name| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let seed = var("STATE_STORE_LIN_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let rounds = var("STATE_STORE_LIN_ROUNDS").unwrap_or(1).max(1);
    (0..rounds)
        .map(|round| Workload {
            seed: seed.wrapping_add(round),
            ..Workload::default()
        })
        .collect()
}

/// Prints the verdict and the lost inserts (a line starting `linearizability:`); panics,
/// keeping the history, unless it is linearizable and lost nothing.
pub fn judge(scenario: &str, seed: u64, run: &Run) {
    println!("linearizability: {scenario}, seed {seed}: {}", summary(run));
    if !run.report.linearizable() {
        let path = keep(&run.history, scenario, seed);
        panic!(
            "{scenario}, seed {seed} (STATE_STORE_LIN_SEED replays it): {}\nhistory: {}",
            run.report,
            path.display()
        );
    }
    assert_eq!(
        run.lost, 0,
        "{scenario}, seed {seed}: {} of {} acknowledged inserts were lost",
        run.lost, run.inserted
    );
}

/// `<n> operations, <i> indeterminate, <lost> of <inserted> acknowledged inserts lost: <verdict>`.
pub fn summary(run: &Run) -> String {
    let indeterminate = run
        .history
        .iter()
        .filter(|op| op.completed.is_none())
        .count();
    format!(
        "{} operations, {indeterminate} indeterminate, {} of {} acknowledged inserts lost: {}",
        run.history.len(),
        run.lost,
        run.inserted,
        run.report
    )
}

/// Writes `history` as JSON lines to `linearizability/<name>-seed<seed>.jsonl` in the
/// target directory of the running test (next to `debug/`) and returns the path, so a
/// counterexample outlives the test.
pub fn keep(history: &[Operation], name: &str, seed: u64) -> std::path::PathBuf {
    // A test binary runs from `<target>/<profile>/deps/`.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(std::path::Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("linearizability");
    std::fs::create_dir_all(&dir).expect("create the counterexample directory");
    let path = dir.join(format!("{name}-seed{seed}.jsonl"));
    let lines: Vec<String> = history
        .iter()
        .map(|op| serde_json::to_string(op).expect("serializable"))
        .collect();
    std::fs::write(&path, lines.join("\n")).expect("write the history");
    path
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
