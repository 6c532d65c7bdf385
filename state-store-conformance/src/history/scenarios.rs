//! The fault scenarios: what happens to the server or the network while clients record,
//! and the verdict as a test.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use state_store_core::{Error, StateStore};

use super::{audit, connect_clients, run_clients, Run, Workload};
use crate::faults::{Link, LinkFault, TestServer};
use crate::linearizability::Operation;

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
/// it ends, and [`audit`]s the recording. The clients connect first; `faults` starts with
/// their first calls.
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
    let clients = connect_clients(&connect, &workload).await;
    let recording = run_clients(clients, workload, Arc::clone(&stop));
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
    if let Some(path) = print_verdict(scenario, seed, run) {
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

/// Prints the verdict and the lost inserts (a line starting `linearizability:`), for a
/// scenario where a violation is what the server documents; keeps the history when it is not
/// linearizable, and returns where.
pub fn print_verdict(scenario: &str, seed: u64, run: &Run) -> Option<std::path::PathBuf> {
    println!("linearizability: {scenario}, seed {seed}: {}", summary(run));
    (!run.report.linearizable()).then(|| keep(&run.history, scenario, seed))
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
