//! The near cache (`NearCacheLayer`) on every backend that can watch: one cached stack shared
//! by every handle of a test reads exactly what the model says (the randomized sequences and
//! concurrent histories of the conformance suite), and a write made through another
//! connection reaches a cached read (polled with a deadline: no timing assumption).

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use state_store::{
    Backend, Call, Intercept, Intercepted, Layer, NearCacheLayer, Site, StateStore, StoreConfig,
};
use state_store_conformance::{cases, run_case, StoreFactory};
use state_store_testkit::harness::nats::nats_url;
use state_store_testkit::harness::postgres::postgres_url;
use state_store_testkit::harness::redis::redis_url;
use state_store_testkit::harness::temp_dir;

/// 64 MiB, values kept at most a minute.
fn layer() -> NearCacheLayer {
    NearCacheLayer::new(64 * 1024 * 1024, Duration::from_secs(60))
}

/// A factory whose handles all share one near-cached stack over `url`.
async fn cached(url: String) -> Option<impl StoreFactory> {
    let opened = state_store::open(&url).await.expect("open");
    let shared = layer().layer(Arc::clone(opened.raw_backend()));
    Some(move |config: StoreConfig| {
        let shared = Arc::clone(&shared);
        async move { Ok(StateStore::from_arc(shared, config)) }
    })
}

/// The model cases and the cross-connection check on `url` (`None`: the backend's server is
/// missing, and the harness said so).
fn on(url: Option<String>) {
    let Some(url) = url else {
        return;
    };
    run_case(cached(url.clone()), cases::model_sequences);
    run_case(cached(url.clone()), cases::model_concurrent);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(another_connection_is_seen(&url));
    runtime.block_on(hot_reads_stay_in_process(&url));
}

/// Counts the reads that reach the backend.
#[derive(Debug, Default)]
struct Reads(Arc<AtomicUsize>);

impl Intercept for Reads {
    fn before(&self, _: Site<'_>, call: &Call<'_>) -> Result<(), state_store::Error> {
        if let Call::Get { .. } = call {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Once the cache follows the server, reading a hot name again does not reach the backend.
async fn hot_reads_stay_in_process(url: &str) {
    let opened = state_store::open(url).await.expect("open");
    let reads = Arc::new(AtomicUsize::new(0));
    let counted: Arc<dyn Backend> = Arc::new(Intercepted::new(
        Arc::clone(opened.raw_backend()),
        Reads(Arc::clone(&reads)),
    ));
    let prefix = format!("near-hot-{}", std::process::id());
    let near = StateStore::from_arc(
        layer().layer(counted),
        StoreConfig::default().with_prefix(&prefix),
    );
    near.set_state("hot", &json!("value")).await.expect("write");
    let started = Instant::now();
    loop {
        let before = reads.load(Ordering::Relaxed);
        let value = near.get::<serde_json::Value>("hot").await.expect("read");
        assert_eq!(value, Some(json!("value")));
        if reads.load(Ordering::Relaxed) == before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}: every read still reaches the backend",
            near.name()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    near.remove_state("hot").await.expect("clean up");
    near.destroy().await.expect("destroy");
}

/// A value read (and cached) through the near cache, then rewritten and removed through
/// another connection, is read anew: each change reaches the cached handle. Its own writes
/// are read back at once.
async fn another_connection_is_seen(url: &str) {
    let prefix = format!("near-{}", std::process::id());
    let opened = state_store::open(url).await.expect("open");
    let near = StateStore::from_arc(
        layer().layer(Arc::clone(opened.raw_backend())),
        StoreConfig::default().with_prefix(&prefix),
    );
    // Its own connections, except in memory (another open is another store).
    let other = if url.starts_with("memory:") {
        StateStore::from_arc(Arc::clone(opened.raw_backend()), StoreConfig::default())
    } else {
        state_store::open(url).await.expect("open")
    }
    .with_prefix(&prefix)
    .expect("prefix");
    other.set_state("hot", &json!(1)).await.expect("write");
    for value in [json!(2), json!(3)] {
        // Read (and cache) the current value, then change it elsewhere.
        let _ = near.get::<serde_json::Value>("hot").await.expect("read");
        other
            .set_state("hot", &value)
            .await
            .expect("write elsewhere");
        eventually(&near, "hot", Some(value)).await;
    }
    other.remove_state("hot").await.expect("remove elsewhere");
    eventually(&near, "hot", None).await;
    // Its own writes: at once.
    near.set_state("mine", &json!("a")).await.expect("write");
    assert_eq!(
        near.get::<serde_json::Value>("mine").await.expect("read"),
        Some(json!("a"))
    );
    near.set_state("mine", &json!("b")).await.expect("write");
    assert_eq!(
        near.get::<serde_json::Value>("mine").await.expect("read"),
        Some(json!("b")),
        "a handle reads its own write"
    );
    for name in ["hot", "mine"] {
        other.remove_state(name).await.expect("clean up");
    }
    near.destroy().await.expect("destroy");
    other.destroy().await.expect("destroy");
}

/// Reads `name` through `store` until it is `expected` (a liveness bound, not a timing claim).
async fn eventually(store: &StateStore, name: &str, expected: Option<serde_json::Value>) {
    let started = Instant::now();
    loop {
        let read = store.get::<serde_json::Value>(name).await.expect("read");
        if read == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}: the near cache still serves {read:?}, not {expected:?}",
            store.name()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn on_memory() {
    on(Some("memory://".to_owned()));
}

#[test]
fn on_sqlite() {
    let dir = temp_dir("near-cache");
    on(Some(format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    )));
}

#[test]
fn on_redis() {
    on(redis_url());
}

#[test]
fn on_nats() {
    on(nats_url());
}

#[test]
fn on_postgres() {
    on(postgres_url());
}
