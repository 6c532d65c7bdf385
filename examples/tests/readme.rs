//! The README's handler lines, unchanged, on every backend the facade opens from a URL.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use serde_json::json;
use state_store::StateStore;
use state_store_testkit::harness::dapr::{dapr_endpoint, Component, COMPONENT};
use state_store_testkit::harness::nats::nats_url;
use state_store_testkit::harness::postgres::postgres_url;
use state_store_testkit::harness::redis::redis_url;
use state_store_testkit::harness::temp_dir;

#[derive(serde::Serialize, serde::Deserialize)]
struct Job {
    status: String,
}

/// The README's example, between `open` and `destroy` (as rustfmt lays it out), plus checks.
async fn handler(store: &StateStore) -> Result<(), state_store::Error> {
    store
        .set_state("session:abc", &json!({ "user": "ada" }))
        .await?;
    let visits = store.increment("visits", 1, None).await?;
    let state = store
        .get_state(&["session:abc", "visits", "missing"])
        .await?;
    store
        .update("job:7", |_old: Option<Job>| Job {
            status: "done".into(),
        })
        .await?;

    println!("visit #{visits}: {state:?}");
    assert_eq!(state["session:abc"], Some(json!({ "user": "ada" })));
    assert_eq!(state["missing"], None);
    assert_eq!(
        store
            .get::<Job>("job:7")
            .await?
            .map(|job| job.status)
            .as_deref(),
        Some("done")
    );
    Ok(())
}

async fn run(url: &str) {
    // A prefix of its own, so runs sharing a server stay apart.
    let config =
        state_store::StoreConfig::default().with_prefix(format!("readme-{}", std::process::id()));
    let store = state_store::open_with(url, config)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {}", state_store_conformance::report(&e)));
    handler(&store)
        .await
        .unwrap_or_else(|e| panic!("{url}: {}", state_store_conformance::report(&e)));
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn on_memory() {
    run("memory://").await;
}

#[tokio::test]
async fn on_sqlite() {
    let dir = temp_dir("readme");
    run(&format!("sqlite://{}/state.db", dir.path().display())).await;
}

#[tokio::test]
async fn on_redis() {
    if let Some(url) = redis_url() {
        run(&url).await;
    }
}

#[tokio::test]
async fn on_nats() {
    if let Some(url) = nats_url() {
        run(&url).await;
    }
}

#[tokio::test]
async fn on_postgres() {
    if let Some(url) = postgres_url() {
        run(&url).await;
    }
}

#[tokio::test]
async fn on_dapr() {
    if let Some(endpoint) = dapr_endpoint(Component::InMemory) {
        let host = endpoint.trim_start_matches("http://");
        run(&format!("dapr://{host}/{COMPONENT}")).await;
    }
}
