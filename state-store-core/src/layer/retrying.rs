//! Retrying calls that did not reach the store.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Layer;
use crate::backend::{
    AcquireLease, Backend, CheckRateLimit, Extensions, Increment, ListKeys, SetOptions,
    WatchInvalidations, WatchKeys,
};
use crate::capability::Capabilities;
use crate::change::{InvalidationStream, KeyPage, KeySelector, WatchStart, WatchStream};
use crate::error::{Error, Result};
use crate::native::{LeaseAcquire, LeaseGrant, RateLimitReply, RateLimitRequest};
use crate::retry::Backoff;
use crate::version::{Entry, Version};

/// The longest total time [`RetryLayer::new`] accepts.
pub const MAX_RETRY_DEADLINE: Duration = Duration::from_secs(300);

/// The first wait between attempts is at most this; it doubles with each attempt.
const FIRST_WAIT: Duration = Duration::from_millis(25);
/// The longest wait between two attempts.
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// Tries a call again when it fails with [`Error::Unavailable`] — which means it took no
/// effect and never will (the request never left, or the server refused it) — so a server
/// that blips, restarts or fails over costs a short wait instead of an error. Every operation
/// is retried so, increments and compare-and-set included: their first attempt is known not
/// to have happened. [`Error::OutcomeUnknown`] is never retried (the write may have been
/// applied; repeating an increment would count twice), nor is any other error.
///
/// Waits are exponential with full jitter (a random time up to 25 ms, doubling to 1 s, the
/// hand-written [`Backoff`] of the compare-and-set loops with wider bounds: it is a dozen lines
/// and needs no dependency), for at most `attempts` attempts within `deadline` in all.
///
/// ```
/// use std::time::Duration;
/// use state_store_core::{DefaultStateStore, RetryLayer, StateStore};
///
/// let store = StateStore::builder(DefaultStateStore::new())
///     .layer(RetryLayer::new(5, Duration::from_secs(3))?)
///     .build();
/// # let _ = store;
/// # Ok::<(), state_store_core::Error>(())
/// ```
///
/// Under a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer) (added after it, so outside
/// it), an open breaker's refusals are retried until the deadline; inside it, each retry run
/// counts as one call.
#[derive(Debug, Clone, Copy)]
pub struct RetryLayer {
    attempts: usize,
    deadline: Duration,
}

impl RetryLayer {
    /// At most `attempts` attempts (at least 1; 1 retries nothing) within `deadline` (1 ms to
    /// [`MAX_RETRY_DEADLINE`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for 0 attempts or a deadline outside those bounds.
    pub fn new(attempts: usize, deadline: Duration) -> Result<Self> {
        if attempts == 0 {
            return Err(Error::config("a retry layer makes at least 1 attempt"));
        }
        if deadline < Duration::from_millis(1) || deadline > MAX_RETRY_DEADLINE {
            return Err(Error::config(format!(
                "a retry deadline is 1 ms to {MAX_RETRY_DEADLINE:?}"
            )));
        }
        Ok(RetryLayer { attempts, deadline })
    }
}

impl Layer for RetryLayer {
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(Retrying {
            inner,
            layer: *self,
        })
    }
}

struct Retrying {
    inner: Arc<dyn Backend>,
    layer: RetryLayer,
}

impl fmt::Debug for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retrying")
            .field("layer", &self.layer)
            .field("inner", &self.inner)
            .finish()
    }
}

impl Retrying {
    fn below(&self) -> &dyn Backend {
        &*self.inner
    }

    /// Runs `attempt` until it does not fail with `Unavailable`, or the attempts or the time
    /// are used up (then its last error).
    async fn retry<T, F, Fut>(&self, operation: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = Backoff::new(self.layer.attempts, self.layer.deadline)
            .between(FIRST_WAIT, LONGEST_WAIT);
        loop {
            match attempt().await {
                Err(Error::Unavailable { .. }) if backoff.wait().await => {
                    crate::telemetry::retry(operation);
                }
                other => return other,
            }
        }
    }

    fn missing(&self, feature: &'static str) -> Error {
        Error::unsupported(self.below().name(), feature)
    }
}

#[async_trait]
impl Backend for Retrying {
    fn name(&self) -> &str {
        self.below().name()
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.below().server()
    }

    fn capabilities(&self) -> Capabilities {
        self.below().capabilities()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.retry("get", || self.below().get_many(keys)).await
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.retry("get", || self.below().get_values(keys)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        self.retry("set", || self.below().set(key, value.clone(), options))
            .await
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        self.retry("remove", || self.below().remove(key, expected))
            .await
    }

    async fn close(&self) -> Result<()> {
        self.below().close().await
    }

    fn extensions(&self) -> Extensions<'_> {
        self.below().extensions().served_by(self)
    }
}

#[async_trait]
impl Increment for Retrying {
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let counter = self
            .below()
            .extensions()
            .increment
            .ok_or_else(|| self.missing("atomic increment"))?;
        self.retry("increment", || counter.increment(key, delta, ttl))
            .await
    }
}

#[async_trait]
impl ListKeys for Retrying {
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let lister = self
            .below()
            .extensions()
            .list
            .ok_or_else(|| self.missing("listing keys"))?;
        self.retry("list", || lister.list_keys(prefix, after, limit))
            .await
    }
}

#[async_trait]
impl WatchKeys for Retrying {
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        let watcher = self
            .below()
            .extensions()
            .watch
            .ok_or_else(|| self.missing("watching changes"))?;
        self.retry("watch", || watcher.watch(selector, start)).await
    }
}

#[async_trait]
impl WatchInvalidations for Retrying {
    async fn invalidations(&self, prefix: &str) -> Result<InvalidationStream> {
        let watcher = self
            .below()
            .extensions()
            .invalidations
            .ok_or_else(|| self.missing("following invalidations"))?;
        self.retry("invalidations", || watcher.invalidations(prefix))
            .await
    }
}

#[async_trait]
impl AcquireLease for Retrying {
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        let leases = self
            .below()
            .extensions()
            .lease
            .ok_or_else(|| self.missing("leases"))?;
        self.retry("acquire_lease", || leases.acquire_lease(request))
            .await
    }
}

#[async_trait]
impl CheckRateLimit for Retrying {
    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        let limiter = self
            .below()
            .extensions()
            .rate_limit
            .ok_or_else(|| self.missing("rate limits"))?;
        self.retry("rate_limit", || limiter.rate_limit(request))
            .await
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{DefaultStateStore, StateStore};

    #[test]
    fn misconfiguration_is_a_config_error() {
        for (attempts, deadline) in [
            (0, Duration::from_secs(1)),
            (3, Duration::ZERO),
            (3, MAX_RETRY_DEADLINE + Duration::from_secs(1)),
        ] {
            let made = RetryLayer::new(attempts, deadline);
            assert!(matches!(made, Err(Error::Config { .. })), "{made:?}");
        }
    }

    /// Fails the first `failures` calls with `Unavailable` (or, `unknown`, with
    /// `OutcomeUnknown`), then lets them through.
    #[derive(Debug, Clone)]
    struct Flaky {
        failures: usize,
        calls: Arc<AtomicUsize>,
        unknown: bool,
    }

    impl Flaky {
        fn new(failures: usize, unknown: bool) -> Self {
            Flaky {
                failures,
                calls: Arc::default(),
                unknown,
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        /// A memory store behind this, with a retry layer of `attempts` over it.
        fn store(&self, attempts: usize) -> StateStore {
            let flaky = self.clone();
            StateStore::builder(DefaultStateStore::new())
                .layer(move |inner| {
                    Arc::new(crate::Intercepted::new(inner, flaky.clone())) as Arc<dyn Backend>
                })
                .layer(RetryLayer::new(attempts, Duration::from_secs(10)).expect("valid"))
                .build()
        }
    }

    impl crate::Intercept for Flaky {
        fn before(&self, site: crate::Site<'_>, _: &crate::Call<'_>) -> Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                Err(if self.unknown {
                    Error::outcome_unknown(site.store, "no answer")
                } else {
                    Error::unavailable(site.store, "not sent")
                })
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn unavailable_is_retried_and_outcome_unknown_never() {
        let flaky = Flaky::new(2, false);
        let store = flaky.store(3);
        assert_eq!(store.increment("n", 1, None).await.expect("third try"), 1);
        assert_eq!(flaky.calls(), 3);

        let unknown = Flaky::new(1, true);
        let store = unknown.store(3);
        let err = store
            .increment("n", 1, None)
            .await
            .expect_err("not retried");
        assert!(err.may_have_applied(), "{err:?}");
        assert_eq!(unknown.calls(), 1, "an unknown outcome was retried");

        let stubborn = Flaky::new(usize::MAX, false);
        let store = stubborn.store(4);
        let err = store.get_state(&["k"]).await.expect_err("gives up");
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert_eq!(stubborn.calls(), 4, "attempts are bounded");
    }
}
