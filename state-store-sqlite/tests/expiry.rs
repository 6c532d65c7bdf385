//! Expired rows leave the file, however fast short-lived keys are written; extreme settings
//! are clamped rather than crashing the store's thread.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::time::{Duration, Instant};

use serde_json::json;
use state_store_core::{SetOptions, StateStore};
use state_store_sqlite::{rusqlite, SqliteConfig, SqliteStateStore};
use state_store_testkit::harness::temp_dir;

fn rows(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row("SELECT count(*) FROM state_store", [], |row| row.get(0))
        .expect("count")
}

/// 30 000 expired rows are all deleted within a few sweeps: each sweep keeps going in
/// batches until nothing expired is left (a sweep of at most 1000 rows every interval would
/// need 30 intervals, and a workload writing short TTLs faster than that would grow the file
/// forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_expired_row_is_swept() {
    let dir = temp_dir("sqlite-sweep");
    let path = dir.path().join("state.db");
    let config = SqliteConfig::new(&path).with_sweep_interval(Duration::from_secs(1));
    let store = StateStore::from(SqliteStateStore::connect(config).await.expect("open"));
    let short = SetOptions::new().ttl(Duration::from_millis(1));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let short = short.clone();
            tokio::spawn(async move {
                for i in 0..3750 {
                    store
                        .set_with(&format!("k{t}-{i}"), &json!(i), short.clone())
                        .await
                        .expect("set");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    store.set_state("kept", &json!(1)).await.expect("set");
    let started = Instant::now();
    while rows(&path) > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "expired rows are not swept: {} left",
            rows(&path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get::<i32>("kept").await.expect("get"), Some(1));
    store.destroy().await.expect("destroy");
}

/// Durations too large for SQLite or for the clock are clamped: the store opens and works.
#[tokio::test]
async fn huge_settings_are_clamped_not_fatal() {
    let dir = temp_dir("sqlite-huge");
    let config = SqliteConfig::new(dir.path().join("state.db"))
        .with_busy_timeout(Duration::MAX)
        .with_sweep_interval(Duration::MAX);
    let store = StateStore::from(SqliteStateStore::connect(config).await.expect("open"));
    store.set_state("k", &json!(1)).await.expect("set");
    assert_eq!(store.get::<i32>("k").await.expect("get"), Some(1));
    store.destroy().await.expect("destroy");

    let url = format!(
        "sqlite://{}?busy_timeout_ms={}",
        dir.path().join("url.db").display(),
        u64::MAX
    );
    let store = StateStore::from(
        SqliteStateStore::connect(SqliteConfig::from_url(&url).expect("url"))
            .await
            .expect("open"),
    );
    store.set_state("k", &json!(2)).await.expect("set");
    store.destroy().await.expect("destroy");
}
