//! A sidecar that dies and comes back, an unknown component, a missing sidecar.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::time::Duration;

use state_store_conformance::faults::{
    breaker_fails_fast_while_the_store_is_down, failed_writes_never_land_later,
    hung_server_times_out, killed_server_recovers,
};
use state_store_conformance::history::histories_are_linearizable;
use state_store_core::{Error, StateStore};
use state_store_dapr::{DaprConfig, DaprStateStore};
use state_store_testkit::harness::dapr::{Component, Daprd, COMPONENT};
use state_store_testkit::harness::{free_port, unavailable};

fn daprd(component: Component) -> Option<Daprd> {
    Daprd::spawn(component).map_or_else(|why| unavailable("daprd", &why), Some)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sidecar_gives_unavailable_then_the_same_handle_recovers() {
    let Some(mut sidecar) = daprd(Component::Redis) else {
        return;
    };
    let config = DaprConfig::new(sidecar.endpoint(), COMPONENT)
        .with_request_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    let store = StateStore::from(DaprStateStore::connect(config).await.expect("connect"));
    // state.redis: the data lives in Redis, which outlives the sidecar.
    killed_server_recovers(&mut sidecar, &store, true).await;
    store.destroy().await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sidecar_gives_unavailable_then_the_same_handle_recovers() {
    let Some(mut sidecar) = daprd(Component::InMemory) else {
        return;
    };
    let config = DaprConfig::new(sidecar.endpoint(), COMPONENT)
        .with_request_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    let store = StateStore::from(DaprStateStore::connect(config).await.expect("connect"));
    // A frozen sidecar keeps its in-memory state.
    hung_server_times_out(&mut sidecar, &store).await;
    store.destroy().await.expect("destroy");
}

/// Writes that time out against a frozen daprd never reach `state.redis` after daprd is
/// killed and restarted: tonic drops them from its queue when the call gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_never_land_after_a_restart() {
    let Some(mut sidecar) = daprd(Component::Redis) else {
        return;
    };
    let endpoint = sidecar.endpoint();
    failed_writes_never_land_later(&mut sidecar, || {
        let config = DaprConfig::new(endpoint.clone(), COMPONENT)
            .with_request_timeout(Duration::from_secs(1))
            .with_connect_timeout(Duration::from_secs(1));
        async move { DaprStateStore::connect(config).await.map(StateStore::from) }
    })
    .await;
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
        .with_connect_timeout(Duration::from_secs(1))
        .with_request_timeout(Duration::from_secs(1));
    let result = tokio::time::timeout(Duration::from_secs(30), DaprStateStore::connect(config))
        .await
        .expect("connect hung");
    assert!(result.expect_err("nothing listens").is_transient());
}

#[test]
fn the_api_token_is_redacted() {
    let config = DaprConfig::new("http://127.0.0.1:50001", COMPONENT).with_api_token("tok-secret");
    assert!(!format!("{config:?}").contains("tok-secret"));
}

/// With a circuit breaker in the stack, a frozen sidecar costs `threshold` timeouts, not one
/// per call: then calls fail at once, and the breaker closes once the sidecar answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_fails_fast_while_the_sidecar_hangs() {
    let Some(mut sidecar) = daprd(Component::InMemory) else {
        return;
    };
    let config = DaprConfig::new(sidecar.endpoint(), COMPONENT)
        .with_request_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    let backend = DaprStateStore::connect(config).await.expect("connect");
    let breaker =
        state_store_core::CircuitBreakerLayer::new(2, Duration::from_millis(300)).expect("valid");
    let store = StateStore::builder(backend).layer(breaker.clone()).build();
    breaker_fails_fast_while_the_store_is_down(&mut sidecar, &store, &breaker, 2).await;
    store.destroy().await.expect("destroy");
}

/// Histories of clients doing random reads, writes, compare-and-sets and increments while
/// the sidecar is killed and restarted, then frozen and thawed, are linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_are_linearizable_across_a_kill_and_a_freeze() {
    let Some(mut sidecar) = daprd(Component::Redis) else {
        return;
    };
    let endpoint = sidecar.endpoint();
    histories_are_linearizable(
        &mut sidecar,
        || {
            let config = DaprConfig::new(endpoint.clone(), COMPONENT)
                .with_request_timeout(Duration::from_secs(1))
                .with_connect_timeout(Duration::from_secs(1));
            async move { DaprStateStore::connect(config).await.map(StateStore::from) }
        },
        "dapr-redis-kill-freeze",
    )
    .await;
}

/// The same clients through a fault proxy in front of the sidecar: latency with jitter, a
/// partition past the request timeout, a half-open link, every connection reset, new ones
/// refused. Histories stay linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_are_linearizable_across_partitions() {
    use state_store_conformance::history::histories_are_linearizable_across_partitions;
    use state_store_testkit::harness::proxy::FaultProxy;
    let Some(sidecar) = daprd(Component::Redis) else {
        return;
    };
    let (proxy, endpoint) = FaultProxy::in_front_of(&sidecar.endpoint()).expect("start the proxy");
    histories_are_linearizable_across_partitions(
        &proxy,
        || {
            let config = DaprConfig::new(endpoint.clone(), COMPONENT)
                .with_request_timeout(Duration::from_secs(1))
                .with_connect_timeout(Duration::from_secs(1));
            async move { DaprStateStore::connect(config).await.map(StateStore::from) }
        },
        "dapr-redis-partitions",
    )
    .await;
}
