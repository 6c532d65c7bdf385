//! A server that goes away, comes back, hangs, or refuses the password; and a table from a
//! newer release.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use state_store_conformance::faults::{
    hung_server_times_out, killed_server_recovers, lease_tokens_survive_restart,
};
use state_store_core::{Error, StateStore};
use state_store_postgres::{PostgresConfig, PostgresStateStore};
use state_store_testkit::harness::postgres::{postgres_url, PostgresServer};
use state_store_testkit::harness::unavailable;

fn server() -> Option<PostgresServer> {
    PostgresServer::spawn().map_or_else(|why| unavailable("postgres", &why), Some)
}

/// A handle that gives up on a call after a second.
async fn impatient(url: &str) -> StateStore {
    let config = PostgresConfig::from_url(url)
        .expect("url")
        .with_request_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    StateStore::from(PostgresStateStore::connect(config).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_gives_unavailable_then_the_same_handle_recovers() {
    let Some(mut server) = server() else {
        return;
    };
    let store = impatient(&server.url()).await;
    killed_server_recovers(&mut server, &store, true).await;
    store.destroy().await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_gives_unavailable_then_the_same_handle_recovers() {
    let Some(mut server) = server() else {
        return;
    };
    let store = impatient(&server.url()).await;
    hung_server_times_out(&mut server, &store).await;
    store.destroy().await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_tokens_survive_a_restart() {
    let Some(mut server) = server() else {
        return;
    };
    let store = impatient(&server.url()).await;
    lease_tokens_survive_restart(&mut server, &store).await;
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn a_wrong_password_or_a_missing_database_is_a_config_error_at_connect() {
    let Some(url) = postgres_url() else {
        return;
    };
    let wrong = url.replace(":state-store-test@", ":wrong-password@");
    let missing = format!("{}nowhere", url.trim_end_matches("postgres"));
    for (what, url) in [("wrong password", wrong), ("missing database", missing)] {
        let config = PostgresConfig::from_url(&url).expect("url");
        let err = PostgresStateStore::connect(config).await.expect_err(what);
        assert!(matches!(err, Error::Config { .. }), "{what}: {err:?}");
        assert!(
            !format!("{err} {err:?}").contains("wrong-password"),
            "{what}: {err:?}"
        );
    }
}

#[tokio::test]
async fn no_server_fails_within_the_connect_timeout() {
    let port = state_store_testkit::harness::free_port();
    let config = PostgresConfig::from_url(&format!("postgres://u:p@127.0.0.1:{port}/db"))
        .expect("url")
        .with_connect_timeout(Duration::from_secs(1));
    let result = tokio::time::timeout(Duration::from_secs(30), PostgresStateStore::connect(config))
        .await
        .expect("connect hung");
    let err = result.expect_err("nothing listens");
    assert!(err.is_transient(), "{err:?}");
}

/// A table whose schema version is newer than this release knows is refused, and left as it
/// was; a table of this release's version opens.
#[tokio::test]
async fn a_table_from_a_newer_release_is_refused_and_left_untouched() {
    let Some(url) = postgres_url() else {
        return;
    };
    let table = format!("newer_{}", std::process::id());
    let config = || {
        PostgresConfig::from_url(&url)
            .expect("url")
            .with_table(&table)
            .expect("a plain name")
    };
    let store = StateStore::from(PostgresStateStore::connect(config()).await.expect("create"));
    store
        .set_state("kept", &json!("as it was"))
        .await
        .expect("set");
    store.destroy().await.expect("destroy");

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("a raw connection");
    tokio::spawn(connection);
    client
        .execute(
            &format!("UPDATE \"{table}_meta\" SET value = 99 WHERE name = 'schema'"),
            &[],
        )
        .await
        .expect("pretend a newer release wrote it");
    let err = PostgresStateStore::connect(config())
        .await
        .expect_err("a newer schema");
    assert!(
        matches!(&err, Error::Config { message, .. } if message.contains("newer release")),
        "{err:?}"
    );
    client
        .execute(
            &format!("UPDATE \"{table}_meta\" SET value = 2 WHERE name = 'schema'"),
            &[],
        )
        .await
        .expect("back to this release's version");
    let store = StateStore::from(PostgresStateStore::connect(config()).await.expect("open"));
    assert_eq!(
        store.get::<String>("kept").await.expect("read").as_deref(),
        Some("as it was")
    );
    store.destroy().await.expect("destroy");
}

/// Histories of clients doing random reads, writes, compare-and-sets and increments while
/// the server is killed and restarted, then frozen and thawed, are linearizable, and no
/// acknowledged write is lost; a violation is written out with its seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_are_linearizable_across_a_kill_and_a_freeze() {
    use state_store_conformance::history::histories_are_linearizable;
    let Some(mut server) = server() else {
        return;
    };
    let url = server.url();
    histories_are_linearizable(&mut server, || connect(&url), "postgres-kill-freeze").await;
}

/// The same clients through a fault proxy: latency with jitter, a partition past the request
/// timeout, a half-open link, every connection reset, new ones refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_are_linearizable_across_partitions() {
    use state_store_conformance::history::histories_are_linearizable_across_partitions;
    use state_store_testkit::harness::proxy::FaultProxy;
    let Some(server) = server() else {
        return;
    };
    let (proxy, url) = FaultProxy::in_front_of(&server.url()).expect("start the proxy");
    histories_are_linearizable_across_partitions(&proxy, || connect(&url), "postgres-partitions")
        .await;
}

/// A handle on `url` that gives up on a call after a second.
async fn connect(url: &str) -> Result<StateStore, Error> {
    let config = PostgresConfig::from_url(url)?
        .with_request_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    PostgresStateStore::connect(config)
        .await
        .map(StateStore::from)
}

/// A watch rides out a server restart: the changes before and after it arrive, in order,
/// with no `Resync` (the feed is a table, kept across the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_every_change_across_a_server_restart() {
    use state_store_conformance::faults::TestServer;
    use state_store_core::{Selector, WatchEvent, WatchStart};
    let Some(mut server) = server() else {
        return;
    };
    let store = impatient(&server.url()).await;
    let mut watch = store
        .watch(Selector::Prefix("w:".into()), WatchStart::Now)
        .await
        .expect("watch");
    store.set_state("w:a", &json!(1)).await.expect("write");
    server.restart().expect("restart");
    // The handle's connections broke with the server: the first calls may fail.
    let mut tries = 0;
    while store.set_state("w:b", &json!(2)).await.is_err() {
        tries += 1;
        assert!(tries < 100, "the handle did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("no event came")
            .expect("the watch ended")
            .expect("a watch event");
        match event {
            WatchEvent::Put { name, value, .. } => seen.push((name, value)),
            other => panic!("expected the writes, got {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [("w:a".to_owned(), json!(1)), ("w:b".to_owned(), json!(2))]
    );
    store.destroy().await.expect("destroy");
}

/// A near-cached value rewritten by another connection after a server restart is read anew,
/// and the old value never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_follows_the_server_across_a_restart() {
    use state_store_conformance::faults::near_cache_follows_a_restart;
    let Some(mut server) = server() else {
        return;
    };
    let near = impatient(&server.url()).await;
    let other = impatient(&server.url()).await;
    near_cache_follows_a_restart(&mut server, Arc::clone(near.raw_backend()), &other).await;
    near.destroy().await.expect("destroy");
    other.destroy().await.expect("destroy");
}

/// The near cache's connections cut off while the value changes, then reset: the change it
/// missed is not hidden for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_follows_the_server_across_a_lost_connection() {
    use state_store_conformance::faults::near_cache_follows_a_lost_connection;
    use state_store_testkit::harness::proxy::FaultProxy;
    let Some(server) = server() else {
        return;
    };
    let (proxy, url) = FaultProxy::in_front_of(&server.url()).expect("start the proxy");
    let near = impatient(&url).await;
    let other = impatient(&server.url()).await;
    near_cache_follows_a_lost_connection(&proxy, Arc::clone(near.raw_backend()), &other).await;
    near.destroy().await.expect("destroy");
    other.destroy().await.expect("destroy");
}
