//! The near cache ([`NearCacheLayer`]) over a backend: what it keeps, and that it follows
//! the writes of other connections.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use state_store_core::{
    Backend, Call, Error, Intercept, Intercepted, Layer, NearCacheLayer, Site, StateStore,
    StoreConfig,
};

/// How long a read waits for the cache to keep a value, or to hear of a change.
const PATIENCE: Duration = Duration::from_secs(30);

/// A value cached by a near cache over `backend` (a read of it no longer reaches `backend`),
/// then rewritten and removed through `other` (another connection, with no key prefix), is
/// read anew after each change: the server's report of it reaches the cache. A cached absence
/// is dropped the same way when `other` creates the name. The cache's own writes are read
/// back at once.
pub async fn near_cache_follows_another_connection(backend: Arc<dyn Backend>, other: &StateStore) {
    let near = Probe::over(backend);
    let name = &format!("near:follow:{}", std::process::id());
    let name = name.as_str();
    other.set_state(name, &json!(1)).await.expect("write");
    near.cache(name, Some(&json!(1))).await;
    other
        .set_state(name, &json!(2))
        .await
        .expect("write elsewhere");
    near.follows(name, Some(&json!(2)), "a write elsewhere")
        .await;
    near.cache(name, Some(&json!(2))).await;
    other.remove_state(name).await.expect("remove elsewhere");
    near.follows(name, None, "a removal elsewhere").await;
    near.cache(name, None).await;
    other
        .set_state(name, &json!(3))
        .await
        .expect("create elsewhere");
    near.follows(name, Some(&json!(3)), "a creation elsewhere")
        .await;
    // Its own writes: at once.
    for value in [json!("a"), json!("b")] {
        near.store.set_state(name, &value).await.expect("write");
        let read = near.store.get_state(&[name]).await.expect("read");
        assert_eq!(read[name], Some(value), "a handle reads its own write");
    }
    other.remove_state(name).await.expect("clean up");
}

/// A near cache over a backend that counts the reads reaching the backend, so a test can
/// tell when a value is cached, then watch it follow a change.
pub struct Probe {
    store: StateStore,
    reads: Arc<AtomicUsize>,
}

/// Counts the reads that pass it.
#[derive(Debug)]
struct CountReads(Arc<AtomicUsize>);

impl Intercept for CountReads {
    fn before(&self, _: Site<'_>, call: &Call<'_>) -> Result<(), Error> {
        if let Call::Get { .. } = call {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Probe {
    /// A near cache of 1 MiB, values kept up to 10 minutes, over `backend`.
    pub fn over(backend: Arc<dyn Backend>) -> Self {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted: Arc<dyn Backend> =
            Arc::new(Intercepted::new(backend, CountReads(Arc::clone(&reads))));
        let cached = NearCacheLayer::new(1024 * 1024, Duration::from_secs(600)).layer(counted);
        Probe {
            store: StateStore::from_arc(cached, StoreConfig::default()),
            reads,
        }
    }

    /// The handle on the cache.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Reads `name`, which must be `expected`, until a read of it no longer reaches the
    /// backend: it is cached.
    pub async fn cache(&self, name: &str, expected: Option<&serde_json::Value>) {
        let started = Instant::now();
        loop {
            let before = self.reads.load(Ordering::Relaxed);
            let read = self.store.get_state(&[name]).await.expect("read");
            assert_eq!(read[name].as_ref(), expected, "{name} before the change");
            if self.reads.load(Ordering::Relaxed) == before {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the near cache never kept {name}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads `name` until it is `expected` (the old value until the cache hears of `change`,
    /// or `Unavailable` while it reconnects), then 50 times more: never anything else.
    pub async fn follows(&self, name: &str, expected: Option<&serde_json::Value>, change: &str) {
        let started = Instant::now();
        loop {
            match self.store.get_state(&[name]).await {
                Ok(state) if state[name].as_ref() == expected => break,
                Ok(_) | Err(Error::Unavailable { .. }) => {}
                Err(err) => panic!("a near-cached read after {change}: {err}"),
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the near cache still serves the value from before {change}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..50 {
            let state = self.store.get_state(&[name]).await.expect("read");
            assert_eq!(
                state[name].as_ref(),
                expected,
                "the value from before {change} came back"
            );
        }
    }
}
