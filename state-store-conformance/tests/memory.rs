//! The whole suite on the in-memory `DefaultStateStore`: as a concrete type, boxed, shared, and
//! behind a layer.

use std::sync::Arc;

use state_store_core::{Backend, DefaultStateStore, StateStore, StoreConfig};

mod concrete {
    use super::*;

    state_store_conformance::conformance_suite!({
        let data = DefaultStateStore::new();
        move |config: StoreConfig| {
            let data = data.clone();
            async move { Ok(StateStore::with_config(data, config)) }
        }
    });
}

mod boxed {
    use super::*;

    state_store_conformance::conformance_suite!({
        let data = DefaultStateStore::new();
        move |config: StoreConfig| {
            let backend: Box<dyn Backend> = Box::new(data.clone());
            async move { Ok(StateStore::with_config(backend, config)) }
        }
    });
}

mod shared {
    use super::*;

    state_store_conformance::conformance_suite!({
        let backend: Arc<dyn Backend> = Arc::new(DefaultStateStore::new());
        move |config: StoreConfig| {
            let backend = Arc::clone(&backend);
            async move { Ok(StateStore::from_arc(backend, config)) }
        }
    });
}

/// Behind a layer: the stack forwards every operation (lists, watches, leases, limits too).
mod layered {
    use std::time::Duration;

    use state_store_core::TimeoutLayer;

    use super::*;

    state_store_conformance::conformance_suite!({
        let data = DefaultStateStore::new();
        move |config: StoreConfig| {
            let store = StateStore::builder(data.clone())
                .layer(TimeoutLayer::new(Duration::from_secs(30)))
                .config(config)
                .build();
            async move { Ok(store) }
        }
    });
}
