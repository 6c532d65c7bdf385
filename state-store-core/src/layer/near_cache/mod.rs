//! A near cache: hot values served from process memory, kept coherent by the server's own
//! change stream.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::Layer;
use crate::backend::{
    AcquireLease, Backend, CheckRateLimit, Extensions, Increment, ListKeys, SetOptions,
    WatchInvalidations, WatchKeys,
};
use crate::capability::{Capabilities, WatchSupport};
use crate::change::{InvalidationStream, KeyPage, KeySelector, WatchStart, WatchStream};
use crate::error::{Error, Result};
use crate::native::{LeaseAcquire, LeaseGrant, RateLimitReply, RateLimitRequest};
use crate::version::{Entry, Version};

mod follower;
mod slots;

use follower::run_follower;
use slots::{lock, Shared, Slots, Tickets};

/// Keeps the values plain reads (`get`, `get_state`) find in process memory, bounded in bytes
/// and in age, and drops each one the moment the server reports it changed: the layer follows
/// the backend's invalidations where it has them ([`WatchInvalidations`]: Redis client
/// tracking), else every change with its watch (NATS KV watch, SQLite's and PostgreSQL's
/// change feeds, Redis keyspace notifications when tracking is refused), and forgets a key on
/// each event.
///
/// **Consistency.** A write through this handle drops the key at once (read-your-writes for
/// the handle). A write from elsewhere is seen once the server's event arrives: until then a
/// read may return the value it replaced — how long is the backend's event delay, measured by
/// `cargo run --release -p examples --example near_cache`. Any doubt empties the whole
/// cache: a `Resync` or [`Invalidation::All`](crate::Invalidation::All) (a lossy watch
/// dropped events, a reconnect); an error or the end of the stream also stops caching until a
/// new stream runs. A read that overlapped a change of its key does not cache what it read.
/// Values expire from the cache no later than on the server (the TTL left when read), and
/// after `max_age` whatever their TTL. Versioned reads (`get_entry`,
/// `update`, compare-and-set) always go to the server, so conditional writes never work
/// from a stale base.
///
/// Over a backend that can neither watch nor report invalidations (Dapr, Redis Cluster) it
/// caches nothing: nothing would tell it of changes.
///
/// ```
/// use std::time::Duration;
/// use state_store_core::{DefaultStateStore, NearCacheLayer, StateStore};
///
/// let store = StateStore::builder(DefaultStateStore::new())
///     .layer(NearCacheLayer::new(64 * 1024 * 1024, Duration::from_secs(60)))
///     .build();
/// # let _ = store;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct NearCacheLayer {
    max_bytes: usize,
    max_age: Duration,
}

impl NearCacheLayer {
    /// At most `max_bytes` of keys and values, each kept at most `max_age`.
    pub fn new(max_bytes: usize, max_age: Duration) -> Self {
        NearCacheLayer { max_bytes, max_age }
    }
}

impl Layer for NearCacheLayer {
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        let watched = inner.capabilities().watch != WatchSupport::None
            || inner.extensions().invalidations.is_some();
        Arc::new(NearCache {
            inner,
            shared: Arc::new(Shared {
                slots: Mutex::new(Slots::new(self.max_bytes)),
                live: AtomicBool::new(false),
            }),
            max_age: self.max_age,
            watched,
            follower: Mutex::new(None),
        })
    }
}

struct NearCache {
    inner: Arc<dyn Backend>,
    shared: Arc<Shared>,
    max_age: Duration,
    /// Whether the backend can watch at all (else nothing is ever cached).
    watched: bool,
    /// The task following the server's changes, started by the first read.
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for NearCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearCache")
            .field("live", &self.shared.live.load(Ordering::Acquire))
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Drop for NearCache {
    fn drop(&mut self) {
        if let Some(task) = lock_follower(&self.follower).take() {
            task.abort();
        }
    }
}

impl NearCache {
    fn below(&self) -> &dyn Backend {
        &*self.inner
    }

    fn missing(&self, feature: &'static str) -> Error {
        Error::unsupported(self.below().name(), feature)
    }

    /// Starts following the server's changes, once.
    fn follow(&self) {
        if !self.watched {
            return;
        }
        let mut follower = lock_follower(&self.follower);
        if follower.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        *follower = Some(tokio::spawn(run_follower(
            Arc::downgrade(&self.inner),
            Arc::downgrade(&self.shared),
        )));
    }
}

#[async_trait]
impl Backend for NearCache {
    fn name(&self) -> &str {
        self.below().name()
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.below().server()
    }

    fn capabilities(&self) -> Capabilities {
        self.below().capabilities()
    }

    /// Versioned reads always go to the server (a compare-and-set needs the current version),
    /// and refresh nothing: the cache fills from plain reads.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.below().get_many(keys).await
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.follow();
        let now = Instant::now();
        let live = self.shared.live.load(Ordering::Acquire);
        let mut values: Vec<Option<Option<Vec<u8>>>> = if live {
            let slots = lock(&self.shared.slots);
            keys.iter().map(|key| slots.get(key, now)).collect()
        } else {
            vec![None; keys.len()]
        };
        let misses: Vec<String> = keys
            .iter()
            .zip(&values)
            .filter(|(_, cached)| cached.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        if !misses.is_empty() {
            // Only while the watch runs from before the read (a change before it started is
            // never reported); a ticket per key tells whether the key changed meanwhile.
            let mut tickets = Tickets {
                shared: &self.shared,
                keys: &misses,
                numbers: if live {
                    let mut slots = lock(&self.shared.slots);
                    // Again under the lock: caching stops by clearing `live`, then the
                    // tickets, under it; a ticket taken once it is clear would outlive that.
                    if self.shared.live.load(Ordering::Acquire) {
                        misses.iter().map(|key| slots.reading(key)).collect()
                    } else {
                        vec![0; misses.len()]
                    }
                } else {
                    // No ticket is 0: these read without caching.
                    vec![0; misses.len()]
                },
            };
            // With the time left of each value, so none outlives its server deadline here.
            let entries = self.below().get_many(&misses).await?;
            if entries.len() != misses.len() {
                return Err(Error::backend(
                    self.name(),
                    "the backend answered a batch read with a wrong number of slots",
                ));
            }
            // Checked under the lock, so an invalidation either took the ticket already or
            // removes what we insert.
            let mut slots = lock(&self.shared.slots);
            let still_live = live && self.shared.live.load(Ordering::Acquire);
            let mut fetched = entries
                .into_iter()
                .zip(std::mem::take(&mut tickets.numbers));
            for (key, value) in keys.iter().zip(values.iter_mut()) {
                if value.is_some() {
                    continue;
                }
                let (entry, ticket) = fetched.next().unwrap_or((None, 0));
                if slots.take_ticket(key, ticket) && still_live {
                    let age = entry
                        .as_ref()
                        .and_then(|e| e.expires_in)
                        .map_or(self.max_age, |left| left.min(self.max_age));
                    // A `max_age` of `Duration::MAX` means no bound of its own.
                    let until = now
                        .checked_add(age)
                        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
                    slots.insert(key.clone(), entry.as_ref().map(|e| e.value.clone()), until);
                }
                *value = Some(entry.map(|e| e.value));
            }
        }
        Ok(values.into_iter().map(Option::flatten).collect())
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        let written = self.below().set(key, value, options).await;
        self.shared.forget(key);
        written
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        let removed = self.below().remove(key, expected).await;
        self.shared.forget(key);
        removed
    }

    async fn close(&self) -> Result<()> {
        if let Some(task) = lock_follower(&self.follower).take() {
            task.abort();
        }
        self.shared.live.store(false, Ordering::Release);
        self.shared.forget_all();
        self.below().close().await
    }

    fn extensions(&self) -> Extensions<'_> {
        self.below().extensions().served_by(self)
    }
}

fn lock_follower(
    follower: &Mutex<Option<tokio::task::JoinHandle<()>>>,
) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
    follower
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Increment for NearCache {
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let counter = self
            .below()
            .extensions()
            .increment
            .ok_or_else(|| self.missing("atomic increment"))?;
        let result = counter.increment(key, delta, ttl).await;
        self.shared.forget(key);
        result
    }
}

#[async_trait]
impl ListKeys for NearCache {
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let lister = self
            .below()
            .extensions()
            .list
            .ok_or_else(|| self.missing("listing keys"))?;
        lister.list_keys(prefix, after, limit).await
    }
}

#[async_trait]
impl WatchKeys for NearCache {
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        let watcher = self
            .below()
            .extensions()
            .watch
            .ok_or_else(|| self.missing("watching changes"))?;
        watcher.watch(selector, start).await
    }
}

#[async_trait]
impl WatchInvalidations for NearCache {
    async fn invalidations(&self, prefix: &str) -> Result<InvalidationStream> {
        let tracker = self
            .below()
            .extensions()
            .invalidations
            .ok_or_else(|| self.missing("following invalidations"))?;
        tracker.invalidations(prefix).await
    }
}

#[async_trait]
impl AcquireLease for NearCache {
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        let leases = self
            .below()
            .extensions()
            .lease
            .ok_or_else(|| self.missing("leases"))?;
        let grant = leases.acquire_lease(request).await;
        self.shared.forget(request.record_key);
        self.shared.forget(request.counter_key);
        grant
    }
}

#[async_trait]
impl CheckRateLimit for NearCache {
    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        let limiter = self
            .below()
            .extensions()
            .rate_limit
            .ok_or_else(|| self.missing("rate limits"))?;
        let reply = limiter.rate_limit(request).await;
        self.shared.forget(request.key);
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory whose reads take a while and are counted: reads of one key overlap.
    #[derive(Debug)]
    struct Slow {
        memory: crate::DefaultStateStore,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Backend for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn capabilities(&self) -> Capabilities {
            self.memory.capabilities()
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.memory.get_many(keys).await
        }
        async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
            self.memory.set(key, value, options).await
        }
        async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
            self.memory.remove(key, expected).await
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
        fn extensions(&self) -> Extensions<'_> {
            self.memory.extensions()
        }
    }

    /// Eight tasks reading one key without pause, each read overlapping others: the key is
    /// cached all the same, so few of the reads reach the backend. (Which interleavings
    /// may cache is the unit test below: overlapping reads share a ticket.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_read_by_overlapping_tasks_is_cached() {
        const TASKS: usize = 8;
        const READS: usize = 400;
        let slow = Arc::new(Slow {
            memory: crate::DefaultStateStore::new(),
            reads: std::sync::atomic::AtomicUsize::new(0),
        });
        let store = crate::StateStore::from_arc(
            NearCacheLayer::new(1 << 20, Duration::from_secs(60))
                .layer(Arc::clone(&slow) as Arc<dyn Backend>),
            crate::StoreConfig::default(),
        );
        store
            .set_state("hot", &serde_json::json!(1))
            .await
            .expect("write");
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    for _ in 0..READS {
                        let read = store.get::<i64>("hot").await.expect("read");
                        assert_eq!(read, Some(1));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        let reached = slow.reads.load(Ordering::Relaxed);
        assert!(
            reached < TASKS * READS / 10,
            "{reached} of {} reads reached the backend",
            TASKS * READS
        );
    }
}
