//! Layers: a backend wrapped in another that adds one concern to every call, whatever the
//! backend — as tower's layers wrap services. Each cross-cutting concern is one layer;
//! [`StateStore::builder`] stacks the default ones over the backend and yours.
//!
//! ```text
//! StateStore           enable flags, JSON, typed helpers, leases, limiter, watch
//!   TracingLayer       a span per call
//!   ClosedLayer        after destroy, every call fails with Closed
//!   LimitLayer         empty or long names, large values, bad TTLs
//!   CapabilityLayer    undeclared features fail with Unsupported
//!   NamespaceLayer     prefix:name (StoreConfig::key_prefix, StateStore::with_prefix)
//!   CompletionLayer    increments by CAS, TTL-keeping upserts, composed leases
//!   your layers        StateStoreBuilder::layer (TimeoutLayer, CircuitBreakerLayer,
//!                      RetryLayer, NearCacheLayer, your own),
//!                      last added outermost
//!   Backend            the adapter
//! ```

mod breaker;
mod completion;
mod concerns;
mod intercept;
#[cfg(feature = "metrics")]
mod metrics;
mod namespace;
mod near_cache;
mod retrying;

use std::sync::Arc;

use crate::backend::Backend;
use crate::config::StoreConfig;
use crate::store::StateStore;

pub use breaker::{BreakerState, CircuitBreakerLayer, MAX_COOL_DOWN};
pub use completion::CompletionLayer;
pub use concerns::{
    CapabilityLayer, ClosedLayer, LimitLayer, TimeoutLayer, TracingLayer, MAX_NAMES_PER_CALL,
};
pub use intercept::{Call, CallInfo, Intercept, Intercepted, Site};
#[cfg(feature = "metrics")]
pub use metrics::MetricsLayer;
pub use namespace::NamespaceLayer;
pub use near_cache::NearCacheLayer;
pub use retrying::{RetryLayer, MAX_RETRY_DEADLINE};

/// Wraps a backend in another. Implement it for a concern of your own (metrics, say) — an
/// [`Intercept`] is the short way — or use a closure:
/// `|inner: Arc<dyn Backend>| -> Arc<dyn Backend>`.
pub trait Layer {
    /// The backend `inner` with this layer's concern added.
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend>;
}

impl<F> Layer for F
where
    F: Fn(Arc<dyn Backend>) -> Arc<dyn Backend>,
{
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        self(inner)
    }
}

/// Builds a [`StateStore`] over a backend wrapped in layers: [`StateStore::builder`].
///
/// ```
/// use std::time::Duration;
/// use state_store_core::{DefaultStateStore, StateStore, StoreConfig, TimeoutLayer};
///
/// let store = StateStore::builder(DefaultStateStore::new())
///     .layer(TimeoutLayer::new(Duration::from_secs(2)))
///     .config(StoreConfig::default().with_prefix("billing"))
///     .build();
/// assert_eq!(store.name(), "memory");
/// ```
#[must_use]
pub struct StateStoreBuilder {
    raw: Arc<dyn Backend>,
    backend: Arc<dyn Backend>,
    config: StoreConfig,
}

impl std::fmt::Debug for StateStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStoreBuilder")
            .field("backend", &self.backend.name())
            .field("config", &self.config)
            .finish()
    }
}

impl StateStoreBuilder {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Self {
        StateStoreBuilder {
            raw: Arc::clone(&backend),
            backend,
            config: StoreConfig::default(),
        }
    }

    /// Wraps the backend as built so far in `layer`: the last layer added is the outermost
    /// of yours, the first to see each call after the default stack.
    // By value, as tower's `ServiceBuilder::layer`: the builder owns what it is given.
    #[allow(clippy::needless_pass_by_value)]
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.backend = layer.layer(self.backend);
        self
    }

    /// The handle's config (prefix, enable flags, limits, default TTL).
    pub fn config(mut self, config: StoreConfig) -> Self {
        self.config = config;
        self
    }

    /// The handle over the default stack (see the [module docs](self)) and your layers.
    pub fn build(self) -> StateStore {
        StateStore::over(self.raw, self.backend, self.config)
    }
}

/// The checks and tracing at the top of a handle's stack, as one intercept.
pub(crate) type HandleStack =
    Intercepted<(TracingLayer, (ClosedLayer, (LimitLayer, CapabilityLayer)))>;

/// The layers of a handle above the completion layer: the namespace, the checks and tracing.
/// `closed` is shared by every handle over one stack, so that destroying one closes all;
/// `caller`: a caller's handle, which refuses reserved keys.
pub(crate) fn handle_stack(
    base: &Arc<dyn Backend>,
    config: &StoreConfig,
    closed: &ClosedLayer,
    caller: bool,
) -> Arc<HandleStack> {
    let named = NamespaceLayer::new(&config.key_prefix).layer(Arc::clone(base));
    Arc::new(Intercepted::new(
        named,
        (
            TracingLayer::with_prefix(&config.key_prefix).with_level(config.span_level),
            (
                closed.clone(),
                (LimitLayer::for_handle(config, caller), CapabilityLayer),
            ),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::{
        Capabilities, DefaultStateStore, Entry, Error, Result, SetOptions, TimeoutLayer, Version,
    };

    /// A store that never answers a write (a frozen server), and reads from memory.
    #[derive(Debug)]
    struct Frozen(DefaultStateStore);

    #[async_trait]
    impl Backend for Frozen {
        fn name(&self) -> &str {
            "frozen"
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
            self.0.get_many(keys).await
        }
        async fn set(&self, _: &str, _: Vec<u8>, _: &SetOptions) -> Result<Version> {
            std::future::pending().await
        }
        async fn remove(&self, _: &str, _: Option<&Version>) -> Result<bool> {
            std::future::pending().await
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_write_that_never_ends_gives_outcome_unknown_and_reads_still_work() {
        let store = StateStore::builder(Frozen(DefaultStateStore::new()))
            .layer(TimeoutLayer::new(Duration::from_millis(20)))
            .build();
        let write = store.set_state("k", &serde_json::json!(1)).await;
        assert!(
            matches!(&write, Err(err) if err.may_have_applied()),
            "{write:?}"
        );
        let counted = store.increment("n", 1, None).await;
        assert!(
            matches!(&counted, Err(Error::OutcomeUnknown { store, .. }) if store == "frozen"),
            "{counted:?}"
        );
        assert_eq!(
            store.get::<i64>("k").await.ok(),
            Some(None),
            "reads go through"
        );
    }

    #[tokio::test]
    async fn layers_wrap_in_order_and_the_config_applies() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tag = |name: &'static str| {
            let order = Arc::clone(&order);
            move |inner: Arc<dyn Backend>| {
                order
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(name);
                inner
            }
        };
        let store = StateStore::builder(DefaultStateStore::new())
            .layer(tag("first"))
            .layer(tag("second"))
            .config(StoreConfig::default().with_prefix("p"))
            .build();
        assert_eq!(
            *order
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            ["first", "second"]
        );
        assert_eq!(store.config().key_prefix, "p");
        store
            .set_state("k", &serde_json::json!(1))
            .await
            .expect("write");
        assert_eq!(store.get::<i64>("k").await.expect("read"), Some(1));
    }

    /// Records the operations that reach it, and refuses names starting with `deny`.
    #[derive(Debug, Default, Clone)]
    struct Record(Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl Record {
        fn seen(&self) -> Vec<&'static str> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    }

    impl Intercept for Record {
        fn before(&self, _: Site<'_>, call: &Call<'_>) -> Result<()> {
            match call {
                Call::Set { key, .. } if key.starts_with("deny") => {
                    Err(Error::invalid_key(key, "refused by the test layer"))
                }
                _ => Ok(()),
            }
        }

        fn around<'a, T, F>(
            &'a self,
            _: Site<'a>,
            call: CallInfo,
            inner: F,
        ) -> impl std::future::Future<Output = Result<T>> + Send + 'a
        where
            T: Send + 'a,
            F: std::future::Future<Output = Result<T>> + Send + 'a,
        {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(call.operation);
            inner
        }
    }

    /// A user's intercept sits under the completion layer: it sees the calls the backend gets
    /// (an increment composed by compare-and-set is a read and a write; a native one is one
    /// increment), and what it refuses never reaches the backend.
    #[tokio::test]
    async fn an_intercept_sees_what_reaches_the_backend() {
        let record = Record::default();
        let layer = {
            let record = record.clone();
            move |inner: Arc<dyn Backend>| {
                Arc::new(Intercepted::new(inner, record.clone())) as Arc<dyn Backend>
            }
        };
        let native = StateStore::builder(DefaultStateStore::new())
            .layer(layer.clone())
            .config(StoreConfig::default().with_prefix("p"))
            .build();
        assert_eq!(native.increment("n", 2, None).await.expect("increment"), 2);
        assert_eq!(record.seen(), ["increment"]);

        let record = Record::default();
        let layer = {
            let record = record.clone();
            move |inner: Arc<dyn Backend>| {
                Arc::new(Intercepted::new(inner, record.clone())) as Arc<dyn Backend>
            }
        };
        // No native increment: the completion layer composes one over the intercept.
        let composed = StateStore::builder(Plain(DefaultStateStore::new()))
            .layer(layer)
            .build();
        assert!(composed.capabilities().increment);
        assert_eq!(
            composed.increment("n", 2, None).await.expect("increment"),
            2
        );
        assert_eq!(record.seen(), ["get", "set"]);
        let refused = composed.set_state("deny-me", &serde_json::json!(1)).await;
        assert!(
            matches!(refused, Err(Error::InvalidKey { .. })),
            "{refused:?}"
        );
        assert_eq!(composed.get::<i64>("deny-me").await.expect("read"), None);
        assert_eq!(
            record.seen(),
            ["get", "set", "get"],
            "the refused write never ran"
        );
    }

    /// The memory store without its extensions: get, set, remove, close.
    #[derive(Debug)]
    struct Plain(DefaultStateStore);

    #[async_trait]
    impl Backend for Plain {
        fn name(&self) -> &str {
            "plain"
        }
        fn capabilities(&self) -> Capabilities {
            self.0
                .capabilities()
                .with_increment(false)
                .with_list(false)
                .with_watch(crate::WatchSupport::None)
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
            self.0.get_many(keys).await
        }
        async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
            self.0.set(key, value, options).await
        }
        async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
            self.0.remove(key, expected).await
        }
        async fn close(&self) -> Result<()> {
            self.0.close().await
        }
    }
}
