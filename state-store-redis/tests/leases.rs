//! The Redis fast path for leases: one script call per acquisition.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use fred::interfaces::{ClientLike, KeysInterface};
use state_store_core::StateStore;
use state_store_redis::{RedisConfig, RedisStateStore};
use state_store_testkit::harness::redis::RedisServer;
use state_store_testkit::harness::unavailable;

/// `INFO commandstats` call counts by command.
async fn calls(store: &RedisStateStore) -> std::collections::HashMap<String, u64> {
    let info: String = store
        .client()
        .custom(fred::cmd!("INFO"), vec!["commandstats"])
        .await
        .expect("INFO");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn taking_a_lease_is_one_script_call() {
    let Some(server) = RedisServer::spawn(&[]).map_or_else(|why| unavailable("redis", &why), Some)
    else {
        return;
    };
    let backend = RedisStateStore::connect(RedisConfig::from_url(&server.url()).expect("url"))
        .await
        .expect("connect");
    let probe = RedisStateStore::connect(RedisConfig::from_url(&server.url()).expect("url"))
        .await
        .expect("connect");
    let store = StateStore::from(backend).with_prefix("app");
    // Warm the script cache, so the measured call is a plain EVALSHA.
    let warm = store
        .lease("warm")
        .try_acquire()
        .await
        .expect("acquire")
        .expect("free");
    let before = calls(&probe).await;
    let lease = store
        .lease("job")
        .try_acquire()
        .await
        .expect("acquire")
        .expect("free");
    let after = calls(&probe).await;
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    // Commands run inside a script count too: the script's EXISTS, INCR and SET.
    assert_eq!(delta("evalsha"), 1, "{after:?}");
    assert_eq!(delta("exists"), 1, "{after:?}");
    // The composed path's INCRBY and its compare-and-set script's GET never ran.
    for composed in ["incrby", "get"] {
        assert_eq!(delta(composed), 0, "{composed} was called: {after:?}");
    }
    assert!(warm.release().await.expect("release"));
    // The record is where the composed path would put it, and reads back.
    assert_eq!(
        store.leader("job").await.expect("leader").as_deref(),
        Some(lease.holder())
    );
    let stored: Option<String> = probe.client().get("app:lease:{job}").await.expect("GET");
    let stored: serde_json::Value = serde_json::from_str(&stored.expect("stored")).expect("json");
    assert_eq!(stored["token"], lease.fencing_token().get());
    lease.renew().await.expect("renew");
    assert!(lease.release().await.expect("release"));
}
