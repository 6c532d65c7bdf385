//! The lease handover benchmark: how long a released lease sits idle before the next holder
//! has it — from the moment the holder calls `release` to the moment a waiter blocked in
//! `acquire` (on its own handle, with its own connections) returns the lease — on every
//! backend with leases, with the waiter woken by a watch on the holder record and with
//! polling alone (`LeaseRequest::wake_on_release(false)`).
//!
//! ```text
//! cargo run --release -p examples --example handover                # 30 handovers per row
//! cargo run --release -p examples --example handover -- --quick     # a smoke run (CI)
//! HANDOVERS=100 cargo run --release -p examples --example handover -- --backends redis,nats
//! ```
//!
//! Servers come from the test harness (as in the scaling report); Dapr runs `state.sqlite`,
//! the first of its components with leases that the harness runs without another server.
//! Dapr has no watch: its rows are polling alone.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure it cannot report

use std::time::Duration;

use state_store::{StateStore, WatchSupport};
use state_store_testkit::harness::dapr::Component;
use state_store_testkit::harness::{backend_url, temp_dir};
use tokio::time::Instant;

const BACKENDS: [&str; 6] = ["memory", "sqlite", "redis", "nats", "postgres", "dapr"];
/// Long enough that no lease expires during a round: every handover is a release.
const TTL: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let args: Vec<String> = std::env::args().collect();
    let chosen = args
        .iter()
        .position(|a| a == "--backends")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| BACKENDS.join(","));
    let handovers: usize = if quick {
        3
    } else {
        std::env::var("HANDOVERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30)
    };
    println!("# Lease handover: release → next holder acquired\n");
    println!(
        "`cargo run --release -p examples --example handover`, {handovers} handovers per row\n"
    );
    println!("| backend | waiter wakes by | p50 | p99 | max |");
    println!("|---|---|---:|---:|---:|");
    let dir = temp_dir("handover");
    for backend in chosen.split(',').map(str::trim) {
        if !BACKENDS.contains(&backend) {
            return Err(format!(
                "unknown backend {backend:?}: choose from {}",
                BACKENDS.join(",")
            )
            .into());
        }
        let url = backend_url(backend, dir.path(), Component::Sqlite)?;
        let holder = state_store::open(&url).await?.with_prefix("handover")?;
        // The waiter's own handle (its own connections); the in-memory store has one.
        let waiter = if backend == "memory" {
            holder.clone()
        } else {
            state_store::open(&url).await?.with_prefix("handover")?
        };
        let modes: &[bool] = if holder.capabilities().watch == WatchSupport::None {
            &[false]
        } else {
            &[true, false]
        };
        for &watch in modes {
            let mut delays = Vec::with_capacity(handovers);
            for round in 0..handovers {
                delays.push(handover(&holder, &waiter, watch, round).await?);
            }
            delays.sort();
            let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
            println!(
                "| {backend} | {} | {} | {} | {} |",
                if watch { "watch" } else { "polling" },
                ms(at(0.5)),
                ms(at(0.99)),
                ms(delays[delays.len() - 1]),
            );
        }
        holder.destroy().await?;
        if backend != "memory" {
            waiter.destroy().await?;
        }
    }
    Ok(())
}

/// One handover: `holder` takes the lease, a task on `waiter` blocks in `acquire`, the holder
/// releases; returns the time from the release call to the waiter's lease.
async fn handover(
    holder: &StateStore,
    waiter: &StateStore,
    watch: bool,
    round: usize,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let name = format!("lease-{round}");
    let held = holder
        .lease(&name)
        .ttl(TTL)
        .try_acquire()
        .await?
        .ok_or("a fresh lease name is held")?;
    let request = waiter.lease(&name).ttl(TTL).wake_on_release(watch);
    let task = tokio::spawn(async move {
        let lease = request.acquire(TTL * 3).await;
        (Instant::now(), lease)
    });
    // The waiter has tried once and waits (its watch open), at a random point of its
    // polling period.
    let settle = 200 + rand_below(300);
    tokio::time::sleep(Duration::from_millis(settle)).await;
    let released = Instant::now();
    if !held.release().await? {
        return Err("the holder lost its lease".into());
    }
    let (acquired, lease) = task.await?;
    let lease = lease?.ok_or("the waiter never got the lease")?;
    lease.release().await?;
    Ok(acquired.saturating_duration_since(released))
}

/// A pseudo-random number below `n` (the clock's nanoseconds: enough to spread the release
/// over the waiter's polling period).
fn rand_below(n: u64) -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    ) % n
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
