//! The change feed and the schema's upgrade path, against a real PostgreSQL: writes record
//! nothing while nobody watches; a watch resumed from before the feed was held starts over;
//! a table the first release made is upgraded in place, its rows and versions kept.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::time::Duration;

use serde_json::json;
use state_store_core::{Selector, StateStore, WatchEvent, WatchStart};
use state_store_postgres::{PostgresConfig, PostgresStateStore};
use state_store_testkit::harness::postgres::postgres_url;

/// A raw connection, to look at the tables the store keeps.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("a raw connection");
    tokio::spawn(connection);
    client
}

async fn open(url: &str, table: &str) -> StateStore {
    let config = PostgresConfig::from_url(url)
        .expect("url")
        .with_table(table)
        .expect("a plain name");
    StateStore::from(PostgresStateStore::connect(config).await.expect("connect"))
}

async fn changes(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM \"{table}_changes\""), &[])
        .await
        .expect("count the feed")
        .get(0)
}

async fn next(watch: &mut state_store_core::Watch) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("no event came")
        .expect("the watch ended")
        .expect("a watch event")
}

/// Until a watch holds the feed, writes add nothing to it: no copies of values, no extra
/// rows. A watch resumed from a version written then starts with `Resync` (those changes
/// were not recorded), then follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_record_nothing_until_a_watch_holds_the_feed() {
    let Some(url) = postgres_url() else {
        return;
    };
    let table = format!("unwatched_{}", std::process::id());
    let client = raw(&url).await;
    let store = open(&url, &table).await;
    let version = store
        .set_with("k", &json!("secret"), state_store_core::SetOptions::new())
        .await
        .expect("write");
    store.increment("n", 1, None).await.expect("increment");
    store.remove_state("n").await.expect("remove");
    assert_eq!(
        changes(&client, &table).await,
        0,
        "unwatched writes were recorded"
    );

    let mut watch = store
        .watch(
            Selector::Name("k".into()),
            WatchStart::AfterVersion(version),
        )
        .await
        .expect("resume");
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Resync { .. }),
        "a resume across an unrecorded time did not start over"
    );
    store.set_state("k", &json!("again")).await.expect("write");
    match next(&mut watch).await {
        WatchEvent::Put { name, value, .. } => {
            assert_eq!((name.as_str(), value), ("k", json!("again")));
        }
        other => panic!("expected the write, got {other:?}"),
    }
    assert!(
        changes(&client, &table).await >= 1,
        "a watched write was not recorded"
    );
    store.destroy().await.expect("close");
}

/// A table as the first release (schema 1, no change feed) made it is upgraded on connect:
/// its rows, versions and TTLs stay, new versions are above the old ones, and watches work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_the_first_release_is_upgraded_in_place() {
    let Some(url) = postgres_url() else {
        return;
    };
    let table = format!("first_release_{}", std::process::id());
    let client = raw(&url).await;
    // Schema 1, verbatim.
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}_meta\" (name text PRIMARY KEY, value bigint NOT NULL);
             CREATE SEQUENCE \"{table}_version\";
             CREATE TABLE \"{table}\" (
                 key bytea PRIMARY KEY,
                 value text NOT NULL,
                 version bigint NOT NULL,
                 expires_at timestamptz
             );
             CREATE INDEX \"{table}_expires_at\" ON \"{table}\" (expires_at)
                 WHERE expires_at IS NOT NULL;
             INSERT INTO \"{table}_meta\" (name, value) VALUES ('schema', 1);
             INSERT INTO \"{table}\" VALUES
                 ('kept'::bytea, '{{\"as\":\"it was\"}}', nextval('\"{table}_version\"'), NULL),
                 ('ttl'::bytea, '7', nextval('\"{table}_version\"'), now() + interval '1 hour');"
        ))
        .await
        .expect("a schema-1 table");

    // Without migration, the old table is refused with what to do, not used half-way.
    let unmigrated = PostgresConfig::from_url(&url)
        .expect("url")
        .with_table(&table)
        .expect("a plain name")
        .with_migrate(false);
    let err = PostgresStateStore::connect(unmigrated)
        .await
        .expect_err("a schema-1 table without migration");
    assert!(
        matches!(&err, state_store_core::Error::Config { message, .. }
            if message.contains("schema version 1") && message.contains("migrate")),
        "{err:?}"
    );

    let store = open(&url, &table).await;
    let schema: i64 = client
        .query_one(
            &format!("SELECT value FROM \"{table}_meta\" WHERE name = 'schema'"),
            &[],
        )
        .await
        .expect("meta")
        .get(0);
    assert_eq!(schema, 2);
    assert_eq!(
        store.get::<serde_json::Value>("kept").await.expect("read"),
        Some(json!({ "as": "it was" }))
    );
    let ttl = store
        .get_entry("ttl")
        .await
        .expect("read")
        .expect("present");
    assert_eq!(ttl.value, json!(7));
    let deadline: Option<std::time::SystemTime> = client
        .query_one(
            &format!("SELECT expires_at FROM \"{table}\" WHERE key = 'ttl'::bytea"),
            &[],
        )
        .await
        .expect("the row")
        .get(0);
    assert!(deadline.is_some(), "the TTL was lost");
    let old: i64 = ttl.version.as_str().parse().expect("a number");

    let mut watch = store
        .watch(Selector::Prefix(String::new()), WatchStart::Now)
        .await
        .expect("watch");
    let new = store
        .set_with("kept", &json!("new"), state_store_core::SetOptions::new())
        .await
        .expect("write");
    assert!(new.as_str().parse::<i64>().expect("a number") > old);
    match next(&mut watch).await {
        WatchEvent::Put { name, version, .. } => {
            assert_eq!((name.as_str(), &version), ("kept", &new));
        }
        other => panic!("expected the write, got {other:?}"),
    }
    store.destroy().await.expect("close");
}

/// A watch resumed from a version this table never reached (another table's, a restored
/// database's) cannot vouch for anything: it starts with `Resync`, then follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_from_a_version_ahead_of_the_table_starts_over() {
    let Some(url) = postgres_url() else {
        return;
    };
    let table = format!("ahead_{}", std::process::id());
    let store = open(&url, &table).await;
    store.set_state("k", &json!(1)).await.expect("write");
    let ahead = state_store_core::Version::new(i64::MAX.to_string());
    let mut watch = store
        .watch(Selector::Name("k".into()), WatchStart::AfterVersion(ahead))
        .await
        .expect("resume");
    assert!(
        matches!(next(&mut watch).await, WatchEvent::Resync { .. }),
        "a resume from the future did not start over"
    );
    store.set_state("k", &json!(2)).await.expect("write");
    match next(&mut watch).await {
        WatchEvent::Put { value, .. } => assert_eq!(value, json!(2)),
        other => panic!("expected the write, got {other:?}"),
    }
    store.destroy().await.expect("close");
}
