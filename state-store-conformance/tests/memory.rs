//! The whole suite on the in-memory `DefaultStateStore`: as a concrete type, boxed and shared.

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
