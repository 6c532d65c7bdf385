//! The whole suite against a real `daprd` on loopback, with `state.redis` (backed by a spawned
//! `redis-server`), `state.in-memory`, `state.postgresql` v2 (backed by a spawned PostgreSQL)
//! and `state.sqlite`. Each handle is its own gRPC channel.

use state_store_conformance::{across_processes, StoreFactory};
use state_store_core::{StateStore, StoreConfig};
use state_store_dapr::{DaprConfig, DaprStateStore};
use state_store_testkit::harness::dapr::{dapr_endpoint, Component, COMPONENT, DAPR_ENDPOINT_VAR};

/// Worker processes of the multi-process cases talk to the same sidecar.
fn factory(endpoint: String) -> impl StoreFactory {
    let env = vec![(DAPR_ENDPOINT_VAR.to_owned(), endpoint.clone())];
    across_processes(
        move |config: StoreConfig| {
            let endpoint = endpoint.clone();
            async move {
                let store = DaprStateStore::connect(DaprConfig::new(endpoint, COMPONENT)).await?;
                Ok(StateStore::with_config(store, config))
            }
        },
        env,
    )
}

mod redis {
    use super::*;
    state_store_conformance::conformance_suite!(optional: dapr_endpoint(Component::Redis).map(factory));
}

mod in_memory {
    use super::*;
    state_store_conformance::conformance_suite!(optional: dapr_endpoint(Component::InMemory).map(factory));
}

/// `state.postgresql` v2 on a PostgreSQL the harness starts (local binaries only: the
/// container tier skips `postgres`).
mod on_postgres {
    use super::*;
    state_store_conformance::conformance_suite!(optional: dapr_endpoint(Component::Postgres).map(factory));
}

/// `state.sqlite` on a file (local binaries only: the container tier skips `on_sqlite`).
mod on_sqlite {
    use super::*;
    state_store_conformance::conformance_suite!(optional: dapr_endpoint(Component::Sqlite).map(factory));
}

/// Metrics and spans name the sidecar: `server.address` and `server.port` of the endpoint.
#[tokio::test]
async fn the_store_names_its_sidecar() {
    use state_store_core::Backend;
    let Some(endpoint) = dapr_endpoint(Component::InMemory) else {
        return;
    };
    let store = DaprStateStore::connect(DaprConfig::new(endpoint.clone(), COMPONENT))
        .await
        .expect("connect");
    let (host, port) = store.server().expect("a server");
    assert!(
        endpoint.ends_with(&format!("{host}:{port}")),
        "{endpoint} reported as {host}:{port}"
    );
    store.close().await.expect("close");
}
