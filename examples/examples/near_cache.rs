//! How stale a near-cached read can be: the time from a write on one connection until a
//! handle with a `NearCacheLayer`, on its own connection, reads the new value instead of the
//! cached old one (the server's change event arriving and the cache dropping the entry, plus
//! one read), on every backend that can watch.
//!
//! ```text
//! cargo run --release -p examples --example near_cache                # 50 writes per row
//! cargo run --release -p examples --example near_cache -- --quick     # a smoke run (CI)
//! ```
//!
//! Hot-key read throughput with the near cache against each raw client is in the crate
//! benchmarks (`redis_bench`, `nats_bench`, `sqlite_bench`, `postgres_bench`: the "hot get"
//! rows). Servers come from the test harness, as in the scaling report.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure it cannot report

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use state_store::{Layer, NearCacheLayer, StateStore, StoreConfig};
use state_store_testkit::harness::dapr::Component;
use state_store_testkit::harness::{backend_url, temp_dir};
use tokio::time::Instant;

const BACKENDS: [&str; 4] = ["sqlite", "redis", "nats", "postgres"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let writes = if quick { 3 } else { 50 };
    println!("# Near cache: write on one connection → new value read through another\n");
    println!(
        "`cargo run --release -p examples --example near_cache`, {writes} writes per backend\n"
    );
    println!("| backend | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    let dir = temp_dir("near-cache-bench");
    for backend in BACKENDS {
        let url = backend_url(backend, dir.path(), Component::Redis)?;
        let prefix = format!("near-bench-{}", std::process::id());
        let opened = state_store::open(&url).await?;
        let near = StateStore::from_arc(
            NearCacheLayer::new(64 * 1024 * 1024, Duration::from_secs(60))
                .layer(Arc::clone(opened.raw_backend())),
            StoreConfig::default().with_prefix(&prefix),
        );
        let writer = state_store::open(&url).await?.with_prefix(&prefix)?;
        writer.set_state("hot", &json!(0)).await?;
        // The cache follows the server from the first read on.
        for _ in 0..20 {
            near.get::<Value>("hot").await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut delays = Vec::with_capacity(writes);
        for n in 1..=writes {
            // Cached: the previous value.
            near.get::<Value>("hot").await?;
            let written = Instant::now();
            writer.set_state("hot", &json!(n)).await?;
            loop {
                if near.get::<Value>("hot").await? == Some(json!(n)) {
                    break;
                }
                if written.elapsed() > Duration::from_secs(30) {
                    return Err(format!("{backend}: write {n} never reached the near cache").into());
                }
                tokio::task::yield_now().await;
            }
            delays.push(written.elapsed());
        }
        delays.sort();
        let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
        println!(
            "| {backend} | {} | {} | {} |",
            ms(at(0.5)),
            ms(at(0.99)),
            ms(delays[delays.len() - 1])
        );
        writer.remove_state("hot").await?;
        near.destroy().await?;
        writer.destroy().await?;
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
