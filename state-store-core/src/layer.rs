//! Layers: a backend wrapped in another that adds one concern to every call, whatever the
//! backend — as tower's layers wrap services. [`StateStore::builder`] stacks them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{
    Backend, Capabilities, Entry, KeyPage, KeySelector, LeaseAcquire, LeaseGrant, RateLimitReply,
    RateLimitRequest, SetOptions, Version, WatchStart, WatchStream,
};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::store::StateStore;

/// Wraps a backend in another. Implement it for a concern of your own (metrics, say), or use
/// a closure: `|inner: Arc<dyn Backend>| -> Arc<dyn Backend>`.
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
            backend,
            config: StoreConfig::default(),
        }
    }

    /// Wraps the backend as built so far in `layer`: the last layer added is the outermost,
    /// the first to see each call.
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

    /// The handle over the layered backend.
    pub fn build(self) -> StateStore {
        StateStore::from_arc(self.backend, self.config)
    }
}

/// Ends every call that has not finished within a limit: a read (or a peek at a rate limit)
/// with [`Error::Unavailable`], a write with [`Error::OutcomeUnknown`] (it may have reached
/// the store). For a backend without deadlines of its own — the adapters of this workspace
/// have theirs (`with_request_timeout`). Opening a watch is one call; the events that follow
/// are not.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Calls end after `limit`.
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit }
    }
}

impl Layer for TimeoutLayer {
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(Timeout {
            inner,
            limit: self.limit,
        })
    }
}

struct Timeout {
    inner: Arc<dyn Backend>,
    limit: Duration,
}

impl std::fmt::Debug for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish()
    }
}

/// Whether a call changes the store (so that running out of time leaves its outcome unknown).
#[derive(Clone, Copy)]
enum Call {
    Read,
    Write,
}

impl Timeout {
    async fn within<T>(&self, call: Call, work: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.limit, work).await {
            Ok(result) => result,
            Err(elapsed) => {
                let store = self.inner.name().to_owned();
                Err(match call {
                    Call::Read => Error::unavailable(store, elapsed),
                    Call::Write => Error::outcome_unknown(store, elapsed),
                })
            }
        }
    }
}

#[async_trait]
impl Backend for Timeout {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.within(Call::Read, self.inner.get_many(keys)).await
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.within(Call::Read, self.inner.get_values(keys)).await
    }

    async fn get_value(&self, key: String) -> Result<Option<Vec<u8>>> {
        self.within(Call::Read, self.inner.get_value(key)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        self.within(Call::Write, self.inner.set(key, value, options))
            .await
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        self.within(Call::Write, self.inner.remove(key, expected))
            .await
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        self.within(Call::Write, self.inner.increment(key, delta, ttl))
            .await
    }

    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        self.within(Call::Read, self.inner.list_keys(prefix, after, limit))
            .await
    }

    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        self.within(Call::Read, self.inner.watch(selector, start))
            .await
    }

    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        self.within(Call::Write, self.inner.acquire_lease(request))
            .await
    }

    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        let call = if request.write {
            Call::Write
        } else {
            Call::Read
        };
        self.within(call, self.inner.rate_limit(request)).await
    }

    async fn close(&self) -> Result<()> {
        self.within(Call::Read, self.inner.close()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DefaultStateStore;

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
        async fn increment(&self, _: &str, _: i64, _: Option<Duration>) -> Result<i64> {
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
}
