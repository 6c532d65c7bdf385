//! The whole suite against a real `daprd` on loopback, with `state.redis` (backed by a spawned
//! `redis-server`) and with `state.in-memory`. Each handle is its own gRPC channel.

use state_store_conformance::StoreFactory;
use state_store_core::{StateStore, StoreConfig};
use state_store_dapr::{DaprConfig, DaprStateStore};
use state_store_testkit::harness::dapr::{dapr_endpoint, Component, COMPONENT};

fn factory(endpoint: String) -> impl StoreFactory {
    move |config: StoreConfig| {
        let endpoint = endpoint.clone();
        async move {
            let store = DaprStateStore::connect(DaprConfig::new(endpoint, COMPONENT)).await?;
            Ok(StateStore::with_config(store, config))
        }
    }
}

mod redis {
    use super::*;
    state_store_conformance::conformance_suite!(optional: dapr_endpoint(Component::Redis).map(factory));
}

mod in_memory {
    use super::*;
    state_store_conformance::conformance_suite!(optional: dapr_endpoint(Component::InMemory).map(factory));
}
