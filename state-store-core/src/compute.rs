//! Cached computations: [`StateStore::compute`] reads a value, or computes it once across
//! every instance sharing the store.
//!
//! # How
//!
//! A read that finds the value returns it. A miss takes the lease `{name}` in the reserved
//! area `$compute` (so a miss in many processes at once runs one loader); its holder reads
//! once more (the value may have landed since), runs the loader while renewing the lease,
//! writes the value with its TTL and releases. Everybody else waits for the value: woken by
//! a watch on the name where the backend has one, polling with backoff otherwise, and taking
//! the lease itself when the holder releases it without a value (its loader failed) or dies
//! (its lease expires). A loader's error is never cached.
//!
//! With [`Compute::stale_while_revalidate`] the value is stored for its TTL plus a grace
//! period; during the grace a read returns the old value at once, and the one caller that
//! takes the lease refreshes it (and gets the new value; if its loader fails, the old one).

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::backend::{SetOptions, MAX_TTL};
use crate::capability::WatchSupport;
use crate::error::{BoxError, Error, Result};
use crate::lease::Lease;
use crate::listing::{Selector, Watch, WatchEvent};
use crate::store::StateStore;
use crate::WatchStart;

/// How long a caller waits for another's computation by default.
pub const DEFAULT_COMPUTE_WAIT: Duration = Duration::from_secs(30);

/// The TTL of the lease a computing caller holds (renewed while its loader runs).
const COMPUTE_LEASE_TTL: Duration = Duration::from_secs(10);

/// Where the computing leases live.
const AREA: &str = "compute";

/// A cached computation of one name: [`StateStore::compute`].
///
/// A read that finds the value returns it. A miss takes the lease `{name}` in the reserved
/// area `$compute` (so a miss in many processes at once runs one loader); its holder reads
/// once more (the value may have landed since), runs the loader while renewing the lease,
/// writes the value with its TTL and releases. Everybody else waits for the value: woken by
/// a watch on the name where the backend has one, polling with backoff otherwise, and taking
/// the lease itself when the holder releases it without a value (its loader failed) or dies
/// (its lease expires). A loader's error is never cached.
///
/// With [`Compute::stale_while_revalidate`] the value is stored for its TTL plus a grace
/// period; during the grace a read returns the old value at once, and the one caller that
/// takes the lease refreshes it (and gets the new value; if its loader fails, the old one).
#[derive(Debug, Clone)]
#[must_use = "a computation does nothing until `get_or_compute`"]
pub struct Compute {
    store: StateStore,
    name: String,
    ttl: Duration,
    grace: Duration,
    null_ttl: Option<Duration>,
    wait: Duration,
}

impl StateStore {
    /// A value cached under `name` for `ttl`, computed at most once at a time across every
    /// instance sharing the store: see [`Compute::get_or_compute`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use state_store_core::{DefaultStateStore, StateStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), state_store_core::Error> {
    /// let store = StateStore::new(DefaultStateStore::new());
    /// let report: Vec<u32> = store
    ///     .compute("report:daily", Duration::from_secs(300))
    ///     .get_or_compute(|| async { Ok::<_, std::io::Error>(vec![1, 2, 3]) })
    ///     .await?;
    /// assert_eq!(report, [1, 2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn compute(&self, name: &str, ttl: Duration) -> Compute {
        Compute {
            store: self.clone(),
            name: name.to_owned(),
            ttl,
            grace: Duration::ZERO,
            null_ttl: None,
            wait: DEFAULT_COMPUTE_WAIT,
        }
    }
}

impl Compute {
    /// Keeps the value `grace` past its TTL: a read in that time returns the old value at
    /// once while one caller refreshes it.
    pub fn stale_while_revalidate(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Caches a result that is JSON `null` (a `None`: "there is no such thing") for `ttl`
    /// instead of the TTL of values — negative caching, usually shorter.
    pub fn null_ttl(mut self, ttl: Duration) -> Self {
        self.null_ttl = Some(ttl);
        self
    }

    /// How long a caller waits for another caller's computation before giving up with
    /// [`Error::Compute`] (default [`DEFAULT_COMPUTE_WAIT`]).
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = timeout;
        self
    }

    /// The cached value, or `loader`'s, computed by one caller at a time across every
    /// instance: the others wait for its value (see [`Compute`]).
    ///
    /// # Errors
    ///
    /// [`Error::Compute`] when this caller's loader fails (nothing is cached, and a waiting
    /// caller tries next) or no value comes within [`Compute::wait`]; [`Error::InvalidTtl`]
    /// for a zero TTL or one (with the grace) above [`MAX_TTL`]; [`Error::Unsupported`]
    /// on a backend without leases; [`Error::Decode`] when the stored value does not fit
    /// `T`; and what the store's calls return.
    pub async fn get_or_compute<T, F, Fut, E>(&self, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<BoxError>,
    {
        let stored = self.ttl.saturating_add(self.grace);
        let null_ttl = self.null_ttl.unwrap_or(self.ttl);
        if self.ttl.is_zero()
            || null_ttl.is_zero()
            || stored > MAX_TTL
            || null_ttl.saturating_add(self.grace) > MAX_TTL
        {
            // Refused before any loader runs, not after each one.
            return Err(Error::InvalidTtl {
                key: self.name.clone(),
            });
        }
        let until = Instant::now()
            .checked_add(self.wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut loader = Some(loader);
        let mut wake: Option<Watch> = None;
        let mut watch_tried = false;
        let mut polls = 0u32;
        loop {
            let stale = match self.store.get_versioned::<T>(&self.name).await? {
                Some(entry) if !self.is_stale(entry.expires_in) => return Ok(entry.value),
                Some(entry) => Some(entry.value),
                None => None,
            };
            let lease = self
                .store
                .reserved_area(AREA)
                .lease(&self.name)
                .ttl(COMPUTE_LEASE_TTL)
                .try_acquire()
                .await?;
            match (lease, stale) {
                // Stale, and somebody else refreshes it.
                (None, Some(value)) => return Ok(value),
                (Some(lease), stale) => {
                    let Some(loader) = loader.take() else {
                        // Unreachable: this caller returns after running its loader.
                        let _ = lease.release().await;
                        return Err(self.failed("the loader already ran"));
                    };
                    return self.fill(lease, stale, loader).await;
                }
                (None, None) => {}
            }
            // Another caller computes: wait for its value, or for its lease to end.
            let now = Instant::now();
            if now >= until {
                return Err(self.failed(format!(
                    "no value came within {:?} from the caller computing it",
                    self.wait
                )));
            }
            if !watch_tried {
                watch_tried = true;
                wake = self.watch().await;
                if wake.is_some() {
                    // A value written before the watch started is not reported: read again.
                    continue;
                }
            }
            polls = polls.saturating_add(1);
            wait_for_put(&mut wake, poll_pause(polls).min(until - now)).await;
        }
    }

    /// Whether a value with `left` to live is in its grace period.
    fn is_stale(&self, left: Option<Duration>) -> bool {
        !self.grace.is_zero() && left.is_some_and(|left| left <= self.grace)
    }

    /// Holding the lease: reads again, else runs the loader (renewing the lease meanwhile),
    /// writes its value and releases.
    async fn fill<T, F, Fut, E>(&self, lease: Lease, stale: Option<T>, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<BoxError>,
    {
        let outcome = self.fill_held(&lease, stale, loader).await;
        // Released whatever happened: a waiter takes over at once instead of at expiry.
        let _ = lease.release().await;
        outcome
    }

    async fn fill_held<T, F, Fut, E>(&self, lease: &Lease, stale: Option<T>, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<BoxError>,
    {
        // Read again under the lease: another caller may have filled or refreshed it since.
        let stale = match self.store.get_versioned::<T>(&self.name).await? {
            Some(entry) if !self.is_stale(entry.expires_in) => return Ok(entry.value),
            Some(entry) => Some(entry.value),
            None => stale,
        };
        let computed = tokio::select! {
            biased;
            () = lease.keep_alive() => return Err(lease.lost_error()),
            computed = loader() => computed,
        };
        let value = match (computed, stale) {
            (Ok(value), _) => value,
            // A refresh that failed: the old value still serves its grace.
            (Err(err), Some(old)) => {
                let err: BoxError = err.into();
                tracing::warn!(name = %self.name, error = %err, "refreshing a cached value failed; serving the old one");
                return Ok(old);
            }
            (Err(err), None) => {
                return Err(Error::Compute {
                    key: self.name.clone(),
                    source: err.into(),
                })
            }
        };
        let is_null = serde_json::to_value(&value).is_ok_and(|v| v.is_null());
        let ttl = match self.null_ttl {
            Some(ttl) if is_null => ttl,
            _ => self.ttl,
        };
        self.store
            .set_with(
                &self.name,
                &value,
                SetOptions::new().ttl(ttl.saturating_add(self.grace)),
            )
            .await?;
        Ok(value)
    }

    /// A watch on the name where the backend has one.
    async fn watch(&self) -> Option<Watch> {
        if self.store.capabilities().watch == WatchSupport::None {
            return None;
        }
        self.store
            .watch(Selector::Name(self.name.clone()), WatchStart::Now)
            .await
            .ok()
    }

    fn failed(&self, why: impl Into<BoxError>) -> Error {
        Error::Compute {
            key: self.name.clone(),
            source: why.into(),
        }
    }
}

/// The pause before the `n`-th look at another caller's computation: from 10 ms doubling to a
/// quarter second, each between half and all of that (jitter spreads the waiters out).
fn poll_pause(n: u32) -> Duration {
    let ceiling = Duration::from_millis(10)
        .saturating_mul(1 << n.min(5))
        .min(Duration::from_millis(250));
    ceiling.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Waits `pause`, or less when `watch` reports a write of the name (or a loss); a broken
/// watch is dropped and the rest of the pause slept.
async fn wait_for_put(watch: &mut Option<Watch>, pause: Duration) {
    let sleep = tokio::time::sleep(pause);
    tokio::pin!(sleep);
    if let Some(events) = watch {
        tokio::select! {
            () = &mut sleep => return,
            event = events.next() => match event {
                Some(Ok(WatchEvent::Put { .. } | WatchEvent::Resync { .. })) => return,
                // A removal (an expiry) or nothing: keep waiting for the value.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => *watch = None,
            },
        }
    }
    sleep.await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{DefaultStateStore, Error, StateStore};

    fn store() -> StateStore {
        StateStore::new(DefaultStateStore::new())
    }

    #[tokio::test]
    async fn a_loader_error_is_not_cached_and_the_next_caller_computes() {
        let store = store();
        let compute = store.compute("n", Duration::from_secs(60));
        let failed = compute
            .get_or_compute(|| async { Err::<u32, _>(std::io::Error::other("down")) })
            .await;
        assert!(matches!(failed, Err(Error::Compute { .. })), "{failed:?}");
        assert_eq!(store.get::<u32>("n").await.expect("read"), None);
        let value = compute
            .get_or_compute(|| async { Ok::<_, std::io::Error>(7) })
            .await
            .expect("computed");
        assert_eq!(value, 7);
        // Cached now: this loader does not run.
        let cached = compute
            .get_or_compute(|| async { Err::<u32, _>(std::io::Error::other("not called")) })
            .await
            .expect("cached");
        assert_eq!(cached, 7);
    }

    #[tokio::test]
    async fn a_null_result_is_cached_for_its_own_ttl() {
        let store = store();
        let none: Option<String> = store
            .compute("user:404", Duration::from_secs(3600))
            .null_ttl(Duration::from_secs(5))
            .get_or_compute(|| async { Ok::<_, std::io::Error>(None) })
            .await
            .expect("computed");
        assert_eq!(none, None);
        let entry = store
            .get_entry("user:404")
            .await
            .expect("read")
            .expect("the absence is cached");
        assert_eq!(entry.value, serde_json::Value::Null);
        assert!(entry
            .expires_in
            .is_some_and(|left| left <= Duration::from_secs(5)));
    }

    /// During the grace period, while one caller refreshes, another gets the old value at
    /// once (its loader never runs); then the new value is served.
    #[tokio::test]
    async fn a_stale_value_is_served_while_one_caller_refreshes() {
        let store = store();
        let compute = store
            .compute("report", Duration::from_millis(50))
            .stale_while_revalidate(Duration::from_secs(60));
        let first = compute
            .get_or_compute(|| async { Ok::<_, std::io::Error>("v1".to_owned()) })
            .await
            .expect("computed");
        assert_eq!(first, "v1");
        // Past the TTL, inside the grace.
        while store
            .get_entry("report")
            .await
            .expect("read")
            .and_then(|e| e.expires_in)
            .is_some_and(|left| left > Duration::from_secs(60))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (started, refreshing) = tokio::sync::oneshot::channel();
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let refresher = {
            let compute = compute.clone();
            tokio::spawn(async move {
                compute
                    .get_or_compute(|| async move {
                        let _ = started.send(());
                        let _ = gate.await;
                        Ok::<_, std::io::Error>("v2".to_owned())
                    })
                    .await
            })
        };
        refreshing.await.expect("the refresh started");
        let during = compute
            .get_or_compute(|| async {
                Err::<String, _>(std::io::Error::other("a second refresh ran"))
            })
            .await
            .expect("the stale value");
        assert_eq!(during, "v1");
        let _ = release.send(());
        let refreshed = refresher.await.expect("task").expect("refreshed");
        assert_eq!(refreshed, "v2");
        assert_eq!(
            store
                .get::<String>("report")
                .await
                .expect("read")
                .as_deref(),
            Some("v2")
        );
    }
}
