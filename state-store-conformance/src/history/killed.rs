//! Clients killed mid-call: worker processes record a history, and some are SIGKILLed while
//! they run (on SQLite, writers killed in the middle of a write).

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use state_store_core::Error;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{audit, judge, record, seeded, Client, Clock, Recording, Run, Sink, Workload};
use crate::linearizability::Operation;
use crate::{Context, Worker};

/// The role of a client process: `lin-client <id> <seed> <epoch> <until>`: the epoch in
/// nanoseconds since 1970 (the parent's zero, so that every process's times line up), and
/// when after it to stop, in nanoseconds.
const ROLE: &str = "lin-client";

/// Client processes at once (each killed one is replaced).
const PROCESSES: usize = 4;

/// How many clients are killed in a run.
const KILLS: usize = 6;

/// How long the clients run (a client started later stops at the same time).
const RUN: Duration = Duration::from_millis(2500);

/// Clients in processes of their own, each its own connection, do random calls on a few keys
/// while some of them are killed with SIGKILL (no chance to clean up), mostly in the middle
/// of a call, and replaced by new ones. The history is linearizable (a killed client's last
/// call may have taken effect or not, but nothing else) and no acknowledged write is lost.
/// The seed, and how many runs, come from `STATE_STORE_LIN_SEED` and `STATE_STORE_LIN_ROUNDS`
/// as for the other scenarios ([`seeded`]).
///
/// Where the data cannot be shared with another process (no
/// [`crate::StoreFactory::process_env`]), the same clients run as tasks and none is killed.
pub async fn histories_stay_linearizable_when_clients_are_killed(ctx: Context) {
    if let Some(role) = ctx.worker_role() {
        return client_process(&ctx, role).await;
    }
    // The backend, and the suite's module where a test binary runs several (a cluster).
    let backend = ctx.store().await.name().to_owned();
    let scenario = match ctx.test_name().and_then(|test| test.rsplit_once("::")) {
        Some((module, _)) => format!("{backend}-{}-clients-killed", module.replace("::", "-")),
        None => format!("{backend}-clients-killed"),
    };
    for seeded in seeded() {
        let (run, kills) = killing_clients(&ctx, workload(seeded.seed)).await;
        judge(&scenario, seeded.seed, &run);
        // Where clients run in processes, the case is about killing them: a run in which no
        // kill landed (every victim gone before its next call) proved nothing.
        assert!(
            kills.is_none_or(|kills| kills > 0),
            "{scenario}, seed {}: no client was killed during the run",
            seeded.seed
        );
    }
}

/// One run: [`KILLS`] kills among [`PROCESSES`] client processes, or tasks where the data
/// cannot be shared. Returns the run and how many clients were killed (`None` for tasks).
async fn killing_clients(ctx: &Context, workload: Workload) -> (Run, Option<usize>) {
    let connect = || async { Ok::<_, Error>(ctx.store().await) };
    let epoch = unix_nanos(SystemTime::now());
    let until = RUN.as_nanos();
    let spawn = |id: usize| {
        ctx.spawn_worker(&format!("{ROLE} {id} {} {epoch} {until}", workload.seed))
            .map(watch)
    };
    let Some(first) = spawn(0) else {
        let stop = Arc::new(AtomicBool::new(false));
        let (recording, ()) = tokio::join!(record(&connect, workload, Arc::clone(&stop)), async {
            tokio::time::sleep(RUN).await;
            stop.store(true, Ordering::Relaxed);
        });
        return (audit(&connect, recording).await, None);
    };
    let mut running = vec![first];
    running.extend((1..workload.clients).filter_map(spawn));
    let mut recording = Recording::default();
    let mut kills = 0;
    let mut rng = StdRng::seed_from_u64(workload.seed);
    for kill in 0..KILLS {
        let wait = rng.random_range(Duration::from_millis(100)..Duration::from_millis(350));
        tokio::time::sleep(wait).await;
        // A client still running, if any is.
        let alive: Vec<usize> = (0..running.len())
            .filter(|&i| !running[i].1.is_finished())
            .collect();
        let victim = if alive.is_empty() {
            rng.random_range(0..running.len())
        } else {
            alive[rng.random_range(0..alive.len())]
        };
        let (stop, lines) = running.swap_remove(victim);
        // It may have ended on its own already: then there is nothing to kill.
        let _ = stop.send(());
        let (lines, killed) = lines.await.expect("a client process's reader");
        kills += usize::from(killed);
        fold(lines, &mut recording);
        running.extend(spawn(workload.clients + kill));
    }
    for (_, lines) in running {
        let (lines, _) = lines.await.expect("a client process's reader");
        fold(lines, &mut recording);
    }
    (audit(&connect, recording).await, Some(kills))
}

/// What each client process does: four at a time, until [`RUN`] is over.
fn workload(seed: u64) -> Workload {
    Workload {
        clients: PROCESSES,
        operations: usize::MAX,
        seed,
        ..Workload::default()
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Reads a client process's lines until it exits, or, once told to kill it, until it
/// announces a call: then kills it, in the middle of that call if the call has not already
/// returned, and reads what it had sent. Returns the lines and whether it killed the
/// process; panics if the process failed on its own.
fn watch(mut worker: Worker) -> (oneshot::Sender<()>, JoinHandle<(Vec<String>, bool)>) {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let lines = tokio::spawn(async move {
        let mut lines = Vec::new();
        let mut armed = false;
        loop {
            tokio::select! {
                line = worker.next() => match line {
                    Some(line) => {
                        let invoked = line.starts_with("invoked ");
                        lines.push(line);
                        if armed && invoked {
                            worker.kill().await;
                            while let Some(line) = worker.next().await {
                                lines.push(line);
                            }
                            return (lines, true);
                        }
                    }
                    None => break,
                },
                Ok(()) = &mut stopped, if !armed => armed = true,
            }
        }
        lines.extend(worker.finish().await);
        (lines, false)
    });
    (stop, lines)
}

/// Adds what a client process reported to `recording`. A call it announced and never
/// reported back was cut short by the kill: it is indeterminate.
fn fold(lines: Vec<String>, recording: &mut Recording) {
    let parse = |json: &str| -> Operation {
        serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("a client process sent a bad operation {json:?}: {e}"))
    };
    let mut pending = None;
    for line in lines {
        match line.split_once(' ') {
            Some(("invoked", json)) => pending = Some(parse(json)),
            Some(("completed", json)) => {
                pending = None;
                recording.history.push(parse(json));
            }
            Some(("inserted", key)) => recording.inserts.push(key.to_owned()),
            _ => panic!("a client process sent {line:?}"),
        }
    }
    recording.history.extend(pending);
}

/// The client process: one client of [`workload`], reporting each call to the parent before
/// and after it is made.
async fn client_process(ctx: &Context, role: &str) {
    let fields: Vec<u64> = role
        .strip_prefix(ROLE)
        .unwrap_or_else(|| panic!("not a client process role: {role:?}"))
        .split_whitespace()
        .map(|field| field.parse().expect("a number in the role"))
        .collect();
    let [id, seed, epoch, until] = fields[..] else {
        panic!("a client process role needs an id, a seed, an epoch and an end: {role:?}");
    };
    let workload = workload(seed);
    let id = usize::try_from(id).expect("a client id");
    // The wall clock once, to find the parent's zero; then the monotonic one.
    let clock = Clock::new(unix_nanos(SystemTime::now()).saturating_sub(epoch));
    let mut client = Client::new(ctx.store().await, id, &workload);
    let stop = Arc::new(AtomicBool::new(false));
    let left = Duration::from_nanos(until.saturating_sub(clock.now()));
    let timer = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            tokio::time::sleep(left).await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    client.work(&workload, &stop, clock, &mut Parent(ctx)).await;
    timer.abort();
}

/// Sends a client's reports to the parent process, one line each.
struct Parent<'a>(&'a Context);

impl Parent<'_> {
    fn send(&self, kind: &str, op: &Operation) {
        let json = serde_json::to_string(op).expect("an operation serializes");
        self.0.tell_parent(&format!("{kind} {json}"));
    }
}

impl Sink for Parent<'_> {
    fn invoked(&mut self, op: &Operation) {
        self.send("invoked", op);
    }

    fn completed(&mut self, op: Operation) {
        self.send("completed", &op);
    }

    fn inserted(&mut self, key: String) {
        self.0.tell_parent(&format!("inserted {key}"));
    }
}
