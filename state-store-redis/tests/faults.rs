//! A server that goes away, comes back, or refuses the password.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::time::Duration;

use serde_json::json;
use state_store_conformance::harness::redis::RedisServer;
use state_store_conformance::harness::unavailable;
use state_store_core::Error;
use state_store_redis::{RedisConfig, RedisStateStore};

fn server(extra: &[&str]) -> Option<RedisServer> {
    RedisServer::spawn(extra).map_or_else(|why| unavailable("redis", &why), Some)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_gives_unavailable_then_the_same_handle_recovers() {
    let Some(mut server) = server(&[]) else {
        return;
    };
    let config = RedisConfig::from_url(&server.url())
        .expect("url")
        .command_timeout(Duration::from_secs(1))
        .reconnect(0, Duration::from_millis(200));
    let store = RedisStateStore::connect(config)
        .await
        .expect("connect")
        .into_store();
    store.set_state("k", &json!("before")).await.expect("set");

    server.crash();
    // Bounded: each call ends by itself within the command timeout; the outer timeout only
    // turns a hang into a failure instead of a stuck test.
    for _ in 0..3 {
        let call = tokio::time::timeout(Duration::from_secs(30), store.get_state(&["k"])).await;
        let err = call
            .expect("a call hung with the server down")
            .expect_err("server is down");
        assert!(err.is_transient(), "{err:?}");
        assert!(matches!(err, Error::Unavailable { .. }));
        let write = tokio::time::timeout(Duration::from_secs(30), store.increment("n", 1, None))
            .await
            .expect("a call hung with the server down");
        assert!(write.expect_err("server is down").is_transient());
    }

    server.restart().expect("restart");
    // Reconnecting takes a moment; the handle is never rebuilt.
    let mut recovered = false;
    for _ in 0..100 {
        if store.set_state("k", &json!("after")).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the handle did not recover after the server restarted"
    );
    assert_eq!(
        store.get::<String>("k").await.expect("get").as_deref(),
        Some("after")
    );
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn wrong_password_fails_at_connect_with_a_config_error() {
    let Some(server) = server(&["--requirepass", "right-password"]) else {
        return;
    };
    let url = server.url().replace("redis://", "redis://:wrong-password@");
    let err = RedisStateStore::connect(RedisConfig::from_url(&url).expect("url"))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(
        !format!("{err} {err:?}").contains("wrong-password"),
        "{err:?}"
    );

    let url = server.url().replace("redis://", "redis://:right-password@");
    let store = RedisStateStore::connect(RedisConfig::from_url(&url).expect("url"))
        .await
        .expect("right password")
        .into_store();
    store.set_state("k", &json!(1)).await.expect("set");
    assert!(!format!("{store:?}").contains("right-password"));
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn no_server_fails_within_the_connect_timeout() {
    let port = state_store_conformance::harness::free_port();
    let config = RedisConfig::from_url(&format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .connect_timeout(Duration::from_secs(1));
    let result = tokio::time::timeout(Duration::from_secs(30), RedisStateStore::connect(config))
        .await
        .expect("connect hung");
    let err = result.expect_err("nothing listens");
    assert!(err.is_transient(), "{err:?}");
}
