//! `DefaultStateStore`: the whole contract in process memory.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use tokio::sync::broadcast;

use crate::backend::{Backend, Extensions, Increment, ListKeys, SetMode, SetOptions, WatchKeys};
use crate::capability::{Capabilities, WatchSupport};
use crate::cas::parse_counter;
use crate::change::{
    watch_channel, BackendEvent, KeyPage, KeySelector, RemoveCause, WatchStart, WatchStream,
};
use crate::error::{Error, Result};
use crate::version::{Entry, Version};

/// How often the background sweep runs by default.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Most expired keys one sweep removes, so one pass never holds the lock for long.
const SWEEP_BATCH: usize = 10_000;
/// Events a watcher may fall behind by before it gets a `Resync`.
const WATCH_BUFFER: usize = 4096;

/// The in-memory default store, mirroring PURISTA's `DefaultStateStore`.
///
/// A real implementation of the contract, not a test double: values are stored as JSON text
/// (a read never returns a live reference), every write gets a new version, `Create`/`Update`
/// conflicts and `increment` are atomic, and TTLs expire. Expired keys are dropped lazily on
/// access and by a background sweep (when created inside a Tokio runtime) that deletes them in
/// bounded batches, releasing the lock in between, which
/// [`StateStore::destroy`](crate::StateStore::destroy) stops.
///
/// **It loses everything when the process exits, and each process has its own.** Use it for
/// tests and single-instance tools; for state that survives restarts and is shared by
/// instances, use the SQLite, Redis, NATS or Dapr store.
///
/// Clones share the same data.
///
/// ```
/// use state_store_core::{DefaultStateStore, StateStore};
///
/// let store = StateStore::new(DefaultStateStore::new());
/// assert_eq!(store.name(), "memory");
/// ```
#[derive(Clone)]
pub struct DefaultStateStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: RwLock<State>,
    sweeper: Mutex<Option<tokio::task::AbortHandle>>,
}

struct State {
    slots: HashMap<String, Slot>,
    /// Keys with a deadline, ordered by deadline: the sweep pops from the front.
    deadlines: BTreeSet<(Instant, u64, String)>,
    last_version: u64,
    /// Changes, for watchers (sent only while somebody watches).
    events: broadcast::Sender<BackendEvent>,
}

impl Default for State {
    fn default() -> Self {
        State {
            slots: HashMap::new(),
            deadlines: BTreeSet::new(),
            last_version: 0,
            events: broadcast::channel(WATCH_BUFFER).0,
        }
    }
}

struct Slot {
    value: Vec<u8>,
    version: u64,
    expires_at: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl State {
    /// The live slot at `key`; an expired one is removed on the way.
    fn live(&mut self, key: &str, now: Instant) -> Option<&Slot> {
        let expired = self.slots.get(key).is_some_and(|slot| !slot.live(now));
        if expired {
            self.remove(key);
            self.announce_removal(key, RemoveCause::Expired);
        }
        self.slots.get(key)
    }

    fn watched(&self) -> bool {
        self.events.receiver_count() > 0
    }

    fn announce_removal(&self, key: &str, cause: RemoveCause) {
        if self.watched() {
            let _ = self.events.send(BackendEvent::Removed {
                key: key.to_owned(),
                cause,
                version: None,
            });
        }
    }

    /// Replaces the slot in place when the key exists (one lookup, no new key string). A
    /// replaced slot that had expired is announced as expired first, as a read would have.
    fn write(
        &mut self,
        key: &str,
        value: Vec<u8>,
        expires_at: Option<Instant>,
        now: Instant,
    ) -> u64 {
        self.last_version += 1;
        let version = self.last_version;
        let watched = self.watched();
        let put = watched.then(|| BackendEvent::Put {
            key: key.to_owned(),
            value: value.clone(),
            version: Version::new(version.to_string()),
        });
        let slot = Slot {
            value,
            version,
            expires_at,
        };
        let mut expired = false;
        match self.slots.get_mut(key) {
            Some(old) => {
                if let Some(at) = old.expires_at {
                    expired = at <= now;
                    self.deadlines.remove(&(at, old.version, key.to_owned()));
                }
                *old = slot;
            }
            None => {
                self.slots.insert(key.to_owned(), slot);
            }
        }
        if let Some(at) = expires_at {
            self.deadlines.insert((at, version, key.to_owned()));
        }
        if expired {
            self.announce_removal(key, RemoveCause::Expired);
        }
        if let Some(put) = put {
            let _ = self.events.send(put);
        }
        version
    }

    fn remove(&mut self, key: &str) -> Option<Slot> {
        let slot = self.slots.remove(key)?;
        if let Some(at) = slot.expires_at {
            self.deadlines.remove(&(at, slot.version, key.to_owned()));
        }
        Some(slot)
    }

    fn sweep(&mut self, now: Instant, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            match self.deadlines.first() {
                Some((at, _, _)) if *at <= now => {}
                _ => break,
            }
            if let Some((_, _, key)) = self.deadlines.pop_first() {
                self.slots.remove(&key);
                self.announce_removal(&key, RemoveCause::Expired);
                removed += 1;
            }
        }
        removed
    }
}

impl Default for DefaultStateStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DefaultStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultStateStore")
            .field("keys", &self.read().slots.len())
            .finish()
    }
}

impl DefaultStateStore {
    /// An empty store. Inside a Tokio runtime it starts the background sweep of expired keys.
    pub fn new() -> Self {
        Self::with_sweep_interval(SWEEP_EVERY)
    }

    /// An empty store whose background sweep runs every `every`.
    pub fn with_sweep_interval(every: Duration) -> Self {
        let store = DefaultStateStore {
            shared: Arc::new(Shared {
                state: RwLock::new(State::default()),
                sweeper: Mutex::new(None),
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&store.shared);
            let task = runtime.spawn(sweep_forever(weak, every.max(Duration::from_millis(1))));
            *lock(&store.shared.sweeper) = Some(task.abort_handle());
        }
        store
    }

    /// Removes up to `limit` expired keys now and returns how many it removed.
    pub fn sweep_expired(&self, limit: usize) -> usize {
        self.write().sweep(Instant::now(), limit)
    }

    /// Number of keys held, expired ones not yet swept included.
    pub fn len_including_expired(&self) -> usize {
        self.read().slots.len()
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `read` of each live slot, under the shared lock. Expired slots read as absent; when
    /// there are any, they are dropped (and announced) under the write lock afterwards, so a
    /// store without a sweeper still frees them on access.
    fn read_live<T>(
        &self,
        keys: &[String],
        read: impl Fn(&Slot, Instant) -> T,
    ) -> Result<Vec<Option<T>>> {
        let state = self.read();
        let now = Instant::now();
        let mut expired = false;
        let found = keys
            .iter()
            .map(|key| match state.slots.get(key) {
                Some(slot) if slot.live(now) => Some(read(slot, now)),
                Some(_) => {
                    expired = true;
                    None
                }
                None => None,
            })
            .collect();
        drop(state);
        if expired {
            let mut state = self.write();
            for key in keys {
                // Checked again: a writer may have replaced it in between.
                state.live(key, now);
            }
        }
        Ok(found)
    }
}

/// A panic while the lock is held cannot leave `State` half-written (no step of a change can
/// panic between its map updates), so a poisoned lock is safe to keep using.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn sweep_forever(shared: Weak<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Batch after batch until nothing expired is left, letting callers take the lock in
        // between: keys expiring faster than one batch per interval never pile up.
        let now = Instant::now();
        let sweep = || {
            let mut state = shared.state.write().unwrap_or_else(PoisonError::into_inner);
            state.sweep(now, SWEEP_BATCH)
        };
        while sweep() == SWEEP_BATCH {
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.sweeper).take() {
            task.abort();
        }
    }
}

fn deadline(now: Instant, ttl: Option<Duration>) -> Option<Instant> {
    // A TTL too large for `Instant` is as good as no TTL.
    ttl.and_then(|ttl| now.checked_add(ttl))
}

fn version(v: u64) -> Version {
    Version::new(v.to_string())
}

fn entry(slot: &Slot, now: Instant) -> Entry {
    Entry {
        value: slot.value.clone(),
        version: version(slot.version),
        expires_in: slot.expires_at.map(|at| at.saturating_duration_since(now)),
    }
}

#[async_trait]
impl Backend for DefaultStateStore {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
            .with_persistent(false)
            .with_list(true)
            .with_watch(WatchSupport::Lossy)
            .with_max_key_len(64 * 1024)
            .with_max_value_len(512 * 1024 * 1024)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.read_live(keys, entry)
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read_live(keys, |slot, _| slot.value.clone())
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        let mut state = self.write();
        let now = Instant::now();
        if matches!(options.mode, SetMode::Upsert) && !options.keep_ttl {
            // Nothing to check: one lookup, in `write`.
            let written = state.write(key, value, deadline(now, options.ttl), now);
            return Ok(if options.want_version {
                version(written)
            } else {
                Version::unwanted()
            });
        }
        let current = state
            .live(key, now)
            .map(|slot| (slot.version, slot.expires_at));
        let expires_at = match current {
            Some((_, kept)) if options.keep_ttl => kept,
            _ => deadline(now, options.ttl),
        };
        let current = current.map(|(version, _)| version);
        let allowed = match (&options.mode, current) {
            (SetMode::Upsert, _) => true,
            (SetMode::Create, current) => current.is_none(),
            (SetMode::Update(expected), Some(current)) => expected.as_str() == current.to_string(),
            (SetMode::Update(_), None) => false,
        };
        if !allowed {
            return Err(Error::Conflict {
                key: key.to_owned(),
            });
        }
        let written = state.write(key, value, expires_at, now);
        Ok(if options.want_version {
            version(written)
        } else {
            Version::unwanted()
        })
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        let mut state = self.write();
        let current = state.live(key, Instant::now()).map(|slot| slot.version);
        match (expected, current) {
            (_, None) => Ok(false),
            (Some(expected), Some(current)) if expected.as_str() != current.to_string() => {
                Err(Error::Conflict {
                    key: key.to_owned(),
                })
            }
            _ => {
                let removed = state.remove(key).is_some();
                if removed {
                    state.announce_removal(key, RemoveCause::Removed);
                }
                Ok(removed)
            }
        }
    }

    async fn close(&self) -> Result<()> {
        if let Some(task) = lock(&self.shared.sweeper).take() {
            task.abort();
        }
        // Watchers end: their channel closes. The data stays for clones still in use.
        self.write().events = broadcast::channel(WATCH_BUFFER).0;
        Ok(())
    }

    fn extensions(&self) -> Extensions<'_> {
        Extensions::none()
            .with_increment(self)
            .with_list(self)
            .with_watch(self)
    }
}

#[async_trait]
impl ListKeys for DefaultStateStore {
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let state = self.read();
        let now = Instant::now();
        let mut keys: Vec<&String> = state
            .slots
            .iter()
            .filter(|(key, slot)| {
                slot.live(now)
                    && key.starts_with(prefix)
                    && after.is_none_or(|after| key.as_str() > after)
            })
            .map(|(key, _)| key)
            .collect();
        keys.sort_unstable();
        let more = keys.len() > limit;
        let keys: Vec<String> = keys.into_iter().take(limit).cloned().collect();
        let next = more.then(|| keys.last().cloned()).flatten();
        Ok(KeyPage::new(keys, next))
    }
}

#[async_trait]
impl WatchKeys for DefaultStateStore {
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        if matches!(start, WatchStart::AfterVersion(_)) {
            return Err(Error::unsupported(
                "memory",
                "resuming a watch from a version",
            ));
        }
        let mut events = self.read().events.subscribe();
        let (tx, stream) = watch_channel(64);
        let selector = selector.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = tx.closed() => return,
                };
                let event = match event {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(missed)) => BackendEvent::Resync {
                        reason: format!("the watcher fell {missed} changes behind"),
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if selector.selects(&event) && tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(stream)
    }
}

#[async_trait]
impl Increment for DefaultStateStore {
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let mut state = self.write();
        let now = Instant::now();
        let (next, expires_at) = match state.live(key, now) {
            None => (delta, deadline(now, ttl)),
            Some(slot) => {
                let next = parse_counter(key, &slot.value)?
                    .checked_add(delta)
                    .ok_or_else(|| Error::NotAnInteger {
                        key: key.to_owned(),
                    })?;
                (next, slot.expires_at)
            }
        };
        state.write(key, next.to_string().into_bytes(), expires_at, now);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sweep_removes_expired_keys_without_reads() {
        let store = DefaultStateStore::with_sweep_interval(Duration::from_secs(3600));
        let ttl = SetOptions::new().ttl(Duration::from_millis(1));
        for i in 0..5 {
            store
                .set(&format!("k{i}"), b"1".to_vec(), &ttl)
                .await
                .expect("write");
        }
        store
            .set("keep", b"1".to_vec(), &SetOptions::new())
            .await
            .expect("write");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.sweep_expired(3), 3);
        assert_eq!(store.sweep_expired(100), 2);
        assert_eq!(store.len_including_expired(), 1);
    }

    #[tokio::test]
    async fn a_read_frees_the_expired_keys_it_finds() {
        // No sweep within the test: only the read can drop the key.
        let store = DefaultStateStore::with_sweep_interval(Duration::from_secs(3600));
        let ttl = SetOptions::new().ttl(Duration::from_millis(1));
        store.set("gone", b"1".to_vec(), &ttl).await.expect("write");
        store
            .set("kept", b"2".to_vec(), &SetOptions::new())
            .await
            .expect("write");
        std::thread::sleep(Duration::from_millis(5));
        let keys = ["gone".to_owned(), "kept".to_owned()];
        let values = store.get_values(&keys).await.expect("read");
        assert_eq!(values, vec![None, Some(b"2".to_vec())]);
        assert_eq!(store.len_including_expired(), 1);
    }

    #[tokio::test]
    async fn background_sweep_frees_memory() {
        let store = DefaultStateStore::with_sweep_interval(Duration::from_millis(10));
        let ttl = SetOptions::new().ttl(Duration::from_millis(1));
        store.set("gone", b"1".to_vec(), &ttl).await.expect("write");
        for _ in 0..1000 {
            if store.len_including_expired() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the background sweep never removed the expired key");
    }

    #[tokio::test]
    async fn rewriting_a_key_drops_its_old_deadline() {
        let store = DefaultStateStore::with_sweep_interval(Duration::from_secs(3600));
        store
            .set(
                "k",
                b"1".to_vec(),
                &SetOptions::new().ttl(Duration::from_millis(1)),
            )
            .await
            .expect("write");
        store
            .set("k", b"2".to_vec(), &SetOptions::new())
            .await
            .expect("write");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.sweep_expired(100), 0);
        assert_eq!(store.len_including_expired(), 1);
    }
}
