//! A sidecar that dies and comes back, an unknown component, a missing sidecar.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::time::Duration;

use serde_json::json;
use state_store_conformance::harness::dapr::{Component, Daprd, COMPONENT};
use state_store_conformance::harness::{free_port, unavailable};
use state_store_core::Error;
use state_store_dapr::{DaprConfig, DaprStateStore};

fn daprd(component: Component) -> Option<Daprd> {
    Daprd::spawn(component).map_or_else(|why| unavailable("daprd", &why), Some)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sidecar_gives_unavailable_then_the_same_handle_recovers() {
    let Some(mut sidecar) = daprd(Component::Redis) else {
        return;
    };
    let config = DaprConfig::new(sidecar.endpoint(), COMPONENT)
        .request_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1));
    let store = DaprStateStore::connect(config)
        .await
        .expect("connect")
        .into_store();
    store.set_state("k", &json!("before")).await.expect("set");

    sidecar.crash();
    for _ in 0..3 {
        let read = tokio::time::timeout(Duration::from_secs(30), store.get_state(&["k"]))
            .await
            .expect("a read hung with the sidecar down");
        let err = read.expect_err("sidecar is down");
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        let write = tokio::time::timeout(Duration::from_secs(30), store.set_state("n", &json!(1)))
            .await
            .expect("a write hung with the sidecar down");
        assert!(write.expect_err("sidecar is down").is_transient());
    }

    sidecar.restart().expect("restart");
    let mut value = None;
    for _ in 0..150 {
        if let Ok(v) = store.get::<String>("k").await {
            value = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        value.as_deref(),
        Some("before"),
        "state.redis keeps state across sidecar restarts"
    );
    store
        .set_state("k", &json!("after"))
        .await
        .expect("set after restart");
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn an_unknown_component_is_a_config_error() {
    let Some(sidecar) = daprd(Component::InMemory) else {
        return;
    };
    let err = DaprStateStore::connect(DaprConfig::new(sidecar.endpoint(), "no-such-store"))
        .await
        .expect_err("unknown component");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-store"), "{err}");
}

#[tokio::test]
async fn no_sidecar_is_unavailable_within_the_timeout() {
    let config = DaprConfig::new(format!("http://127.0.0.1:{}", free_port()), COMPONENT)
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(1));
    let result = tokio::time::timeout(Duration::from_secs(30), DaprStateStore::connect(config))
        .await
        .expect("connect hung");
    assert!(result.expect_err("nothing listens").is_transient());
}

#[test]
fn the_api_token_is_redacted() {
    let config = DaprConfig::new("http://127.0.0.1:50001", COMPONENT).api_token("tok-secret");
    assert!(!format!("{config:?}").contains("tok-secret"));
}
