//! Writes run on the caller's thread when they can (small values, the writer connection free,
//! the file not locked) and on the store thread otherwise; both paths keep the file healthy.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::time::Duration;

use serde_json::json;
use state_store_core::StateStore;
use state_store_sqlite::{rusqlite, SqliteConfig, SqliteStateStore};
use state_store_testkit::harness::temp_dir;

async fn open(path: &std::path::Path) -> StateStore {
    StateStore::from(
        SqliteStateStore::connect(SqliteConfig::new(path))
            .await
            .expect("open"),
    )
}

/// Another process's exclusive lock on the file: taken before this returns, released once
/// `hold` returns (on the thread this gives back).
fn lock_file(
    path: &std::path::Path,
    hold: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    let holder = std::thread::spawn(move || {
        let mut other = rusqlite::Connection::open(path).expect("raw open");
        let tx = other
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .expect("lock");
        locked_tx.send(()).expect("signal");
        hold();
        tx.rollback().expect("release");
    });
    locked_rx.recv().expect("locked");
    holder
}

/// The WAL stays near SQLite's 1000-page checkpoint size (4 MB), not growing with every write.
fn assert_wal_bounded(path: &std::path::Path) {
    let wal = std::fs::metadata(path.with_extension("db-wal"))
        .expect("the WAL file")
        .len();
    assert!(
        wal < 16 * 1024 * 1024,
        "the WAL grew to {wal} bytes: it is not checkpointed"
    );
}

/// Writers never checkpoint (a checkpoint syncs the file, and an inline write must not block
/// the runtime for that); the store thread does. The WAL must still stay near SQLite's
/// 1000-page checkpoint size however many writes run inline, not grow with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_while_writes_run_inline() {
    let dir = temp_dir("sqlite-wal");
    let path = dir.path().join("state.db");
    let store = open(&path).await;
    // 8 KiB values: each write adds the row and its change-feed copy, ~5 pages; 3000 of them
    // would make a WAL of about 60 MB without checkpoints.
    let value = json!("x".repeat(8 * 1024));
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (store, value) = (store.clone(), value.clone());
            tokio::spawn(async move {
                for i in 0..750 {
                    store
                        .set_state(&format!("k{t}-{}", i % 50), &value)
                        .await
                        .expect("set");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    assert_wal_bounded(&path);
    assert_eq!(
        store.get::<String>("k3-49").await.expect("get"),
        Some("x".repeat(8 * 1024))
    );
    store.destroy().await.expect("destroy");
}

/// The same with `increment` alone: a statement with `RETURNING` commits (and tells the WAL
/// hook) only when it is stepped to its end, so a store that only counts must checkpoint too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_increments_alone() {
    let dir = temp_dir("sqlite-wal-increments");
    let path = dir.path().join("state.db");
    let store = open(&path).await;
    // Each increment adds a few pages (the row's, the change feed's and their indexes'):
    // 6000 of them would make a WAL of tens of MB without checkpoints.
    let tasks: Vec<_> = (0..2)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..3000 {
                    store
                        .increment(&format!("n{t}-{}", i % 20), 1, None)
                        .await
                        .expect("increment");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("counter");
    }
    assert_wal_bounded(&path);
    assert_eq!(store.get::<i64>("n1-19").await.expect("get"), Some(150));
    store.destroy().await.expect("destroy");
}

/// A write that finds the file locked by another process for longer than an inline write may
/// wait (2 ms) is not failed: the store thread runs it, waiting up to the busy timeout.
#[tokio::test]
async fn a_write_outlasts_a_short_lock_held_by_another_process() {
    let dir = temp_dir("sqlite-short-lock");
    let path = dir.path().join("state.db");
    let store = open(&path).await;
    store.set_state("n", &json!(1)).await.expect("set");

    let holder = lock_file(&path, || std::thread::sleep(Duration::from_millis(300)));
    assert_eq!(store.increment("n", 1, None).await.expect("increment"), 2);
    store.set_state("k", &json!("after")).await.expect("set");
    store.remove_state("k").await.expect("remove");
    assert_eq!(store.get::<String>("k").await.expect("get"), None);
    holder.join().expect("holder");

    // Large values go to the store thread, small ones inline; one caller's writes stay in order.
    let large = json!("y".repeat(100 * 1024));
    for _ in 0..20 {
        store.set_state("k", &large).await.expect("large");
        store.set_state("k", &json!("small")).await.expect("small");
        assert_eq!(
            store.get::<String>("k").await.expect("get").as_deref(),
            Some("small")
        );
    }
    store.destroy().await.expect("destroy");
}

/// A write whose caller gave up (here a timeout) while it waited behind another for a lock
/// held by another process never runs after the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gave_up_never_runs_later() {
    let dir = temp_dir("sqlite-gave-up");
    let path = dir.path().join("state.db");
    let store = StateStore::from(
        SqliteStateStore::connect(
            SqliteConfig::new(&path).with_busy_timeout(Duration::from_secs(60)),
        )
        .await
        .expect("open"),
    );
    store
        .set_state("late", &json!("before"))
        .await
        .expect("set");

    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = lock_file(&path, move || release_rx.recv().expect("release signal"));

    // The store thread waits for the lock with this write...
    let first = {
        let store = store.clone();
        tokio::spawn(async move { store.set_state("first", &json!(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and this one waits behind it until its caller stops waiting.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        store.set_state("late", &json!("gave up")),
    )
    .await;
    assert!(gave_up.is_err(), "the write finished with the file locked");
    release_tx.send(()).expect("release");
    holder.join().expect("holder");
    first.await.expect("join").expect("the first write");

    store
        .set_state("fence", &json!(1))
        .await
        .expect("a later write");
    assert_eq!(
        store.get::<String>("late").await.expect("get").as_deref(),
        Some("before"),
        "a write whose caller gave up ran later"
    );
    store.destroy().await.expect("destroy");
}
