//! The Redis fast paths: one script call per lease acquisition and per rate-limit check.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use fred::interfaces::{ClientLike, KeysInterface};
use std::time::Duration;

use state_store_core::{Limiter, Quota, StateStore};
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

fn server() -> Option<RedisServer> {
    RedisServer::spawn(&[]).map_or_else(|why| unavailable("redis", &why), Some)
}

#[tokio::test]
async fn a_rate_limit_check_is_one_script_call_on_the_server_clock() {
    let Some(server) = server() else {
        return;
    };
    let connect = || async {
        RedisStateStore::connect(RedisConfig::from_url(&server.url()).expect("url"))
            .await
            .expect("connect")
    };
    let probe = connect().await;
    let store = StateStore::from(connect().await);
    let gcra = Limiter::gcra(&store, Quota::per_minute(10));
    let window = Limiter::fixed_window(&store, 10, Duration::from_secs(60));
    // Warm the script cache.
    gcra.check("warm").await.expect("check");
    window.check("warm").await.expect("check");
    for (kind, limiter, script_only) in [("gcra", &gcra, "time"), ("window", &window, "pttl")] {
        let before = calls(&probe).await;
        assert!(limiter.check("k").await.expect("check").allowed, "{kind}");
        let after = calls(&probe).await;
        let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
        assert_eq!(delta("evalsha"), 1, "{kind}: {before:?} then {after:?}");
        // Only the script runs TIME (GCRA on the server's clock) or PTTL (the window's end).
        assert_eq!(delta(script_only), 1, "{kind}: {after:?}");
    }
}

#[tokio::test]
async fn taking_a_lease_is_one_script_call() {
    let Some(server) = server() else {
        return;
    };
    let backend = RedisStateStore::connect(RedisConfig::from_url(&server.url()).expect("url"))
        .await
        .expect("connect");
    let probe = RedisStateStore::connect(RedisConfig::from_url(&server.url()).expect("url"))
        .await
        .expect("connect");
    let store = StateStore::from(backend)
        .with_prefix("app")
        .expect("prefix");
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
    let stored: Option<String> = probe.client().get("app:$lease:{job}").await.expect("GET");
    let stored: serde_json::Value = serde_json::from_str(&stored.expect("stored")).expect("json");
    assert_eq!(stored["token"], lease.fencing_token().get());
    lease.renew().await.expect("renew");
    assert!(lease.release().await.expect("release"));
}

/// A server with Redis's default `notify-keyspace-events ""` cannot feed a watch: the
/// capabilities say so before anyone tries, the handle refuses to watch, and the opt-in turns
/// the notifications on (then a watch sees a write).
#[tokio::test]
async fn capabilities_tell_whether_the_server_publishes_keyspace_notifications() {
    use state_store_core::{Selector, WatchEvent, WatchStart, WatchSupport};
    let prefix = || Selector::Prefix("w:".to_owned());

    let Some(server) = RedisServer::spawn(&["--notify-keyspace-events", ""])
        .map_or_else(|why| unavailable("redis", &why), Some)
    else {
        return;
    };
    let config = RedisConfig::from_url(&server.url()).expect("url");
    let quiet = StateStore::from(
        RedisStateStore::connect(config.clone())
            .await
            .expect("connect"),
    );
    assert_eq!(quiet.capabilities().watch, WatchSupport::None);
    let refused = quiet
        .watch(prefix(), WatchStart::Now)
        .await
        .map(drop)
        .expect_err("no notifications");
    assert!(
        matches!(refused, state_store_core::Error::Unsupported { .. }),
        "{refused:?}"
    );

    let store = StateStore::from(
        RedisStateStore::connect(config.with_keyspace_notifications(true))
            .await
            .expect("connect and turn notifications on"),
    );
    assert_eq!(store.capabilities().watch, WatchSupport::Lossy);
    let mut watch = store.watch(prefix(), WatchStart::Now).await.expect("watch");
    // A lossy watch: a notification lost to a reconnect (a busy machine) shows as `Resync`,
    // so the write is made again until its `Put` arrives.
    let mut seen = false;
    for round in 0..15 {
        store
            .set_state("w:1", &serde_json::json!(round))
            .await
            .expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, watch.next()).await {
            match event.expect("no error") {
                WatchEvent::Put { name, .. } if name == "w:1" => seen = true,
                WatchEvent::Resync { .. } => {}
                other => panic!("an unexpected event: {other:?}"),
            }
            if seen {
                break;
            }
        }
        if seen {
            break;
        }
    }
    assert!(
        seen,
        "no notification of a write with notifications turned on"
    );
    // A new handle on the same server now sees them on.
    let later = RedisStateStore::connect(RedisConfig::from_url(&server.url()).expect("url"))
        .await
        .expect("connect");
    assert_eq!(
        StateStore::from(later).capabilities().watch,
        WatchSupport::Lossy
    );
}

/// A page of a sparse listing (one matching key among many) costs a bounded number of `SCAN`
/// calls, not a walk of the whole keyspace; going on from its cursor still finds every key.
#[tokio::test]
async fn a_listing_page_does_bounded_work() {
    let Some(server) = server() else {
        return;
    };
    let connect = || async {
        RedisStateStore::connect(RedisConfig::from_url(&server.url()).expect("url"))
            .await
            .expect("connect")
    };
    let probe = connect().await;
    let filler: Vec<(String, String)> = (0..20_000)
        .map(|i| (format!("filler:{i}"), "1".to_owned()))
        .collect();
    for chunk in filler.chunks(1000) {
        let _: () = probe.client().mset(chunk.to_vec()).await.expect("MSET");
    }
    let store = StateStore::from(connect().await);
    store
        .set_state("needle:1", &serde_json::json!(1))
        .await
        .expect("set");
    let before = calls(&probe).await;
    let options = state_store_core::ListOptions::new().limit(1);
    let page = store.list("needle:", options).await.expect("list");
    let after = calls(&probe).await;
    let scans = after.get("scan").unwrap_or(&0) - before.get("scan").unwrap_or(&0);
    assert!(scans <= 16, "one page ran {scans} SCANs");
    assert!(
        !page.names.is_empty() || page.next.is_some(),
        "an empty page must say where to go on"
    );
    assert_eq!(
        store.list_all("needle:").await.expect("list_all"),
        ["needle:1"]
    );
}

/// With Redis's default `notify-keyspace-events ""` (no watch), a near cache still keeps hot
/// values and hears of every change: it follows client tracking, which needs no server
/// setting. A flushed database reaches it too (tracking's nil invalidation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_follows_client_tracking_without_keyspace_notifications() {
    use state_store_conformance::near_cache::{near_cache_follows_another_connection, Probe};
    use state_store_core::WatchSupport;
    let Some(server) = RedisServer::spawn(&["--notify-keyspace-events", ""])
        .map_or_else(|why| unavailable("redis", &why), Some)
    else {
        return;
    };
    let connect = || async {
        RedisStateStore::connect(RedisConfig::from_url(&server.url()).expect("url"))
            .await
            .expect("connect")
    };
    let near = connect().await;
    let client = near.client().clone();
    let (near, other) = (StateStore::from(near), StateStore::from(connect().await));
    assert_eq!(near.capabilities().watch, WatchSupport::None);
    near_cache_follows_another_connection(std::sync::Arc::clone(near.raw_backend()), &other).await;

    let probe = Probe::over(std::sync::Arc::clone(near.raw_backend()));
    let one = serde_json::json!(1);
    other.set_state("flushed", &one).await.expect("write");
    probe.cache("flushed", Some(&one)).await;
    let _: () = client
        .custom(fred::cmd!("FLUSHDB"), Vec::<String>::new())
        .await
        .expect("FLUSHDB");
    probe.follows("flushed", None, "FLUSHDB").await;
    near.destroy().await.expect("destroy");
    other.destroy().await.expect("destroy");
}
