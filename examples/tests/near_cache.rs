//! The near cache (`NearCacheLayer`) on every backend that can watch: one cached stack shared
//! by every handle of a test reads exactly what the model says (the randomized sequences and
//! concurrent histories of the conformance suite); hot reads stop reaching the backend, and a
//! write made through another connection reaches a cached read (polled with a deadline: no
//! timing assumption).

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::sync::Arc;
use std::time::Duration;

use state_store::{Layer, NearCacheLayer, StateStore, StoreConfig};
use state_store_conformance::near_cache::near_cache_follows_another_connection;
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
    runtime.block_on(async {
        let near = state_store::open(&url).await.expect("open");
        // Its own connections, except in memory (another open is another store).
        let other = if url.starts_with("memory:") {
            StateStore::from_arc(Arc::clone(near.raw_backend()), StoreConfig::default())
        } else {
            state_store::open(&url).await.expect("open")
        };
        near_cache_follows_another_connection(Arc::clone(near.raw_backend()), &other).await;
        near.destroy().await.expect("destroy");
        other.destroy().await.expect("destroy");
    });
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
