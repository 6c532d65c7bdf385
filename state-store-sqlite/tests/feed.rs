//! The change feed costs nothing while nobody watches: writes then copy no values into it
//! (they would sit in the file for minutes). A watch holds it open; a watch resumed across a
//! time nobody held it starts over with `Resync` instead of missing what happened meanwhile.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use serde_json::json;
use state_store_core::{Selector, StateStore, WatchEvent, WatchStart};
use state_store_sqlite::{rusqlite, SqliteConfig, SqliteStateStore};
use state_store_testkit::harness::temp_dir;

async fn open(path: &std::path::Path) -> StateStore {
    StateStore::from(
        SqliteStateStore::connect(SqliteConfig::new(path))
            .await
            .expect("open"),
    )
}

fn feed_rows(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(
        "SELECT count(*) FROM state_store_changes WHERE op <> 3",
        [],
        |row| row.get(0),
    )
    .expect("count")
}

async fn next(watch: &mut state_store_core::Watch) -> WatchEvent {
    tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
        .await
        .expect("an event")
        .expect("the watch goes on")
        .expect("no error")
}

#[tokio::test]
async fn writes_copy_nothing_into_the_feed_while_nobody_watches() {
    let dir = temp_dir("sqlite-feed");
    let path = dir.path().join("state.db");
    let store = open(&path).await;
    for i in 0..10 {
        store
            .set_state("secret", &json!({ "card": i }))
            .await
            .expect("set");
    }
    store.remove_state("secret").await.expect("remove");
    assert_eq!(
        feed_rows(&path),
        0,
        "values were kept for watchers nobody runs"
    );

    let mut watch = store
        .watch(Selector::Name("k".into()), WatchStart::Now)
        .await
        .expect("watch");
    store.set_state("k", &json!(1)).await.expect("set");
    assert!(matches!(next(&mut watch).await, WatchEvent::Put { .. }));
    assert_eq!(feed_rows(&path), 1, "a watched change is recorded");
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn a_watch_resumed_across_a_time_nobody_watched_starts_over() {
    let dir = temp_dir("sqlite-feed");
    let path = dir.path().join("state.db");
    let store = open(&path).await;
    let mut watch = store
        .watch(Selector::Name("k".into()), WatchStart::Now)
        .await
        .expect("watch");
    store.set_state("k", &json!(1)).await.expect("set");
    let WatchEvent::Put { version, .. } = next(&mut watch).await else {
        panic!("a put first");
    };
    drop(watch);
    // Nobody watches any more; let the hold lapse (as a minute would).
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute(
            "UPDATE state_store_meta SET value = 0 WHERE name = 'feed_until'",
            [],
        )
        .expect("lapse");
    store
        .set_state("k", &json!(2))
        .await
        .expect("set unwatched");
    let mut resumed = store
        .watch(
            Selector::Name("k".into()),
            WatchStart::AfterVersion(version),
        )
        .await
        .expect("resume");
    assert!(
        matches!(next(&mut resumed).await, WatchEvent::Resync { .. }),
        "a resumed watch missed a change silently"
    );
    store.set_state("k", &json!(3)).await.expect("set");
    let WatchEvent::Put { value, .. } = next(&mut resumed).await else {
        panic!("then the changes after the resume");
    };
    assert_eq!(value, json!(3));
    store.destroy().await.expect("destroy");
}
