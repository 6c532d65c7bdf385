//! Rate limits shared by every instance of a service: GCRA and fixed windows over any backend.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::backend::{SetMode, SetOptions};
use crate::error::{Error, Operation, Result};
use crate::native::{RateAlgorithm, RateLimitReply, RateLimitRequest};
use crate::retry::Backoff;
use crate::store::StateStore;

/// How many requests a [`Limiter::gcra`] allows: `count` per `period` on average, and at most
/// `burst` at once (default: `count`, the whole quota at once).
///
/// ```
/// use state_store_core::Quota;
/// let quota = Quota::per_minute(100).burst(20); // 100 a minute, 20 at once
/// # let _ = quota;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: u32,
}

impl Quota {
    /// `count` requests per `period` (both at least 1; zero becomes one).
    pub fn new(count: u32, period: Duration) -> Self {
        let count = count.max(1);
        Quota {
            count,
            period: period.max(Duration::from_micros(1)),
            burst: count,
        }
    }

    /// `count` requests per second.
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// At most `burst` requests at once (at least 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// The time one request "costs": `period / count`.
    pub fn emission_interval(&self) -> Duration {
        self.period / self.count
    }
}

/// What a limiter does when the store cannot be reached ([`Error::is_transient`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Allow the request (the default): an outage of the store does not take the service
    /// down, and limits are not enforced while it lasts.
    #[default]
    Open,
    /// Refuse the request, with a `retry_after` of one second: nothing passes unchecked.
    Closed,
}

/// A limiter's answer, with what `RateLimit-*` and `Retry-After` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The most requests that can pass at once (the burst, or the window's limit).
    pub limit: u64,
    /// Requests that would pass right now after this one.
    pub remaining: u64,
    /// When denied: how long until the same request would be allowed. `None` when allowed, and
    /// when the cost exceeds [`Decision::limit`] (it can never pass).
    pub retry_after: Option<Duration>,
    /// How long until the limit is fully restored (the window ends, or the bucket is full).
    pub reset_after: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Algorithm {
    Gcra(Quota),
    FixedWindow { limit: u64, window: Duration },
}

/// A distributed rate limiter over a [`StateStore`]: every instance sharing the store shares
/// the limits, exactly.
///
/// - [`Limiter::gcra`] (the generic cell rate algorithm): one value per key, the time the
///   bucket is next empty. Smooth: `burst` at once, then one request per emission interval.
///   Needs conditional writes and TTL.
/// - [`Limiter::fixed_window`]: an atomic counter per key whose TTL starts with the window's
///   first request; exactly `limit` requests pass per window. Needs increment and TTL.
///
/// State lives under the handle's prefix as `$ratelimit:gcra:<key>` /
/// `$ratelimit:window:<key>` ([reserved](crate::RESERVED_MARKER): no caller's name or
/// `remove_prefix` clears a limit) and expires once the limit is fully restored, so idle keys disappear.
///
/// On Redis each check is one script that takes the time from the server, so instances with
/// skewed clocks agree. Elsewhere GCRA is a compare-and-set loop (with backoff) on the
/// caller's clock — keep instances NTP-synced — and fixed windows are one atomic increment,
/// plus a read of the window's deadline the first time an instance denies a key in a window.
/// On Dapr (compare-and-set by ETag through the sidecar) both are correct but slow under
/// contention: use them for low rates.
///
/// Cheap to clone, like [`StateStore`]: clones share the handle and the cache of window
/// deadlines, so one limiter can be handed to every task.
///
/// ```
/// # use std::time::Duration;
/// # use state_store_core::{DefaultStateStore, Limiter, Quota, StateStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store_core::Error> {
/// let store = StateStore::new(DefaultStateStore::new());
/// let limiter = Limiter::gcra(&store, Quota::per_minute(100).burst(2));
/// assert!(limiter.check("ip:10.0.0.1").await?.allowed);
/// assert!(limiter.check("ip:10.0.0.1").await?.allowed);
/// let third = limiter.check("ip:10.0.0.1").await?;
/// assert!(!third.allowed);
/// assert!(third.retry_after.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Limiter {
    store: StateStore,
    /// The `limiter` label of its metrics.
    name: &'static str,
    algorithm: Algorithm,
    policy: FailurePolicy,
    /// Fixed windows: window deadlines read from the store, per key, so that repeated denials
    /// in one window cost one read. Shared by clones.
    deadlines: Arc<Mutex<HashMap<String, Instant>>>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("store", &self.store.name())
            .field("algorithm", &self.algorithm)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Deadlines kept before the cache is swept of passed ones.
const DEADLINE_CACHE: usize = 4096;

/// Compare-and-set attempts of one GCRA check off Redis before it denies: every lost race is
/// another request spending the same key.
const GCRA_ATTEMPTS: usize = 8;

/// The longest one GCRA check off Redis keeps retrying.
const GCRA_DEADLINE: Duration = Duration::from_secs(1);

/// Where limiter state lives: the [reserved](crate::RESERVED_MARKER) area `$ratelimit` of the
/// caller's handle (`$ratelimit:gcra:<key>`, `$ratelimit:window:<key>`), which no caller's
/// name or prefix reaches.
const AREA: &str = "ratelimit";

impl Limiter {
    /// A GCRA limiter with `quota` per key.
    pub fn gcra(store: &StateStore, quota: Quota) -> Self {
        Self::new(store, Algorithm::Gcra(quota))
    }

    /// A fixed-window limiter: `limit` requests per key per `window` (at least 1 ms), the
    /// window starting at its first request.
    pub fn fixed_window(store: &StateStore, limit: u64, window: Duration) -> Self {
        Self::new(
            store,
            Algorithm::FixedWindow {
                limit,
                window: window.max(Duration::from_millis(1)),
            },
        )
    }

    fn new(store: &StateStore, algorithm: Algorithm) -> Self {
        Limiter {
            store: store.reserved_area(AREA),
            name: "default",
            algorithm,
            policy: FailurePolicy::default(),
            deadlines: Arc::default(),
        }
    }

    /// Names the limiter in its metrics (`state_store.limiter.decisions{limiter=…}`, feature
    /// `metrics`; default `default`). A name per limit, never per client.
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Sets what happens when the store is unreachable (default [`FailurePolicy::Open`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Its name ([`Limiter::named`]; `default` unless named).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its sustained rate: so many requests per period (GCRA: the quota's count and period;
    /// a fixed window: its limit and window) — what an IETF `RateLimit-Policy` header states.
    pub fn rate(&self) -> (u64, Duration) {
        match self.algorithm {
            Algorithm::Gcra(quota) => (u64::from(quota.count), quota.period),
            Algorithm::FixedWindow { limit, window } => (limit, window),
        }
    }

    /// The most requests that pass at once.
    pub fn limit(&self) -> u64 {
        match self.algorithm {
            Algorithm::Gcra(quota) => u64::from(quota.burst),
            Algorithm::FixedWindow { limit, .. } => limit,
        }
    }

    /// Counts one request against `key`.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] when the backend lacks what the algorithm needs;
    /// [`Error::InvalidKey`] for a key the store refuses; store errors that are not transient
    /// (transient ones follow the [`FailurePolicy`]).
    pub async fn check(&self, key: &str) -> Result<Decision> {
        self.check_n(key, 1).await
    }

    /// Counts a request of weight `cost` against `key`. A denied request counts nothing
    /// (GCRA) — or still counts (fixed window: the counter is incremented before it is
    /// compared, so retrying in a loop does not help).
    ///
    /// # Errors
    ///
    /// As [`Limiter::check`].
    pub async fn check_n(&self, key: &str, cost: u64) -> Result<Decision> {
        self.decide(key, cost, true).await
    }

    /// What [`Limiter::check`] would answer now, counting nothing.
    ///
    /// # Errors
    ///
    /// As [`Limiter::check`].
    pub async fn peek(&self, key: &str) -> Result<Decision> {
        self.decide(key, 1, false).await
    }

    async fn decide(&self, key: &str, cost: u64, write: bool) -> Result<Decision> {
        let decision = self.decide_or_fail(key, cost, write).await;
        if let Ok(decision) = &decision {
            if write {
                crate::telemetry::limiter_decision(self.name, decision.allowed);
            }
        }
        decision
    }

    async fn decide_or_fail(&self, key: &str, cost: u64, write: bool) -> Result<Decision> {
        let outcome = match self.algorithm {
            Algorithm::Gcra(quota) => self.gcra_decide(key, quota, cost, write).await,
            Algorithm::FixedWindow { limit, window } => {
                self.window_decide(key, limit, window, cost, write).await
            }
        };
        match outcome {
            Err(err) if err.is_transient() => {
                tracing::warn!(
                    store = self.store.name(),
                    policy = ?self.policy,
                    "rate limiter store unreachable: {err}"
                );
                let limit = self.limit();
                Ok(match self.policy {
                    FailurePolicy::Open => Decision {
                        allowed: true,
                        limit,
                        remaining: limit.saturating_sub(cost),
                        retry_after: None,
                        reset_after: Duration::ZERO,
                    },
                    FailurePolicy::Closed => Decision {
                        allowed: false,
                        limit,
                        remaining: 0,
                        retry_after: Some(Duration::from_secs(1)),
                        reset_after: Duration::from_secs(1),
                    },
                })
            }
            other => other,
        }
    }

    /// A native answer from the backend (Redis), if it has one.
    async fn native(
        &self,
        name: &str,
        algorithm: RateAlgorithm,
        cost: u64,
        write: bool,
    ) -> Result<Option<RateLimitReply>> {
        let store = &self.store;
        store.check(Operation::Get)?;
        if write {
            store.check(Operation::Set)?;
        }
        let Some(native) = store.extensions().rate_limit else {
            return Ok(None);
        };
        let request = RateLimitRequest {
            key: name,
            algorithm,
            cost,
            write,
        };
        native.rate_limit(&request).await
    }

    async fn gcra_decide(
        &self,
        key: &str,
        quota: Quota,
        cost: u64,
        write: bool,
    ) -> Result<Decision> {
        let store = &self.store;
        let caps = store.capabilities();
        store.require(
            caps.conditional && caps.ttl,
            "GCRA rate limits (they need conditional writes and TTL)",
        )?;
        let name = format!("gcra:{key}");
        let interval = quota.emission_interval();
        let burst = u64::from(quota.burst);
        let algorithm = RateAlgorithm::Gcra {
            emission_interval: interval,
            burst,
        };
        if let Some(reply) = self.native(&name, algorithm, cost, write).await? {
            return Ok(decision(burst, reply));
        }
        let result = async {
            // Bounded: a flood on one key must not hold each request for long. Losing every
            // race means the key is being spent right now, so the answer is a denial, not an
            // error (which the failure policy might turn into a pass).
            let mut backoff = Backoff::new(GCRA_ATTEMPTS, GCRA_DEADLINE);
            loop {
                let current = store.get_versioned::<u64>(&name).await?;
                let now = now_micros();
                let tat = current.as_ref().map_or(now, |entry| entry.value);
                let (reply, new_tat) = gcra_step(now, tat, micros(interval), burst, cost);
                if !write || !reply.allowed {
                    return Ok(decision(burst, reply));
                }
                let mode = match current {
                    None => SetMode::Create,
                    Some(entry) => SetMode::Update(entry.version),
                };
                let ttl = Duration::from_micros(new_tat.saturating_sub(now))
                    .max(Duration::from_millis(1));
                let mut options = SetOptions::new().mode(mode).ttl(ttl);
                options.want_version = false;
                match store.set_with(&name, &new_tat, options).await {
                    Ok(_) => return Ok(decision(burst, reply)),
                    Err(Error::Conflict { .. }) if backoff.wait().await => {}
                    Err(Error::Conflict { .. }) => {
                        return Ok(Decision {
                            allowed: false,
                            limit: burst,
                            remaining: 0,
                            retry_after: Some(interval),
                            reset_after: interval
                                .saturating_mul(u32::try_from(burst).unwrap_or(u32::MAX)),
                        })
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        .await;
        result.map_err(|e| rename_limit(key, &name, e))
    }

    async fn window_decide(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        cost: u64,
        write: bool,
    ) -> Result<Decision> {
        let store = &self.store;
        let caps = store.capabilities();
        store.require(
            caps.increment && caps.ttl,
            "fixed-window rate limits (they need atomic increment and TTL)",
        )?;
        let name = format!("window:{key}");
        let algorithm = RateAlgorithm::FixedWindow { limit, window };
        if let Some(reply) = self.native(&name, algorithm, cost, write).await? {
            return Ok(decision(limit, reply));
        }
        let result = async {
            let count = if write {
                let delta = i64::try_from(cost).unwrap_or(i64::MAX);
                let count = store.increment(&name, delta, Some(window)).await?;
                if count == delta {
                    // Created by this call: the window is new.
                    self.forget(&name);
                    let allowed = cost <= limit;
                    return Ok(Decision {
                        allowed,
                        limit,
                        remaining: limit.saturating_sub(cost),
                        // Denied on a fresh window only when the cost exceeds the limit.
                        retry_after: None,
                        reset_after: window,
                    });
                }
                u64::try_from(count).unwrap_or(0)
            } else {
                store.get::<u64>(&name).await?.unwrap_or(0)
            };
            let used = if write { count } else { count + cost };
            let allowed = used <= limit;
            let reset_after = if allowed && write {
                // Allowed: an estimate suffices; never a read on the hot path.
                self.cached(&name).unwrap_or(window)
            } else {
                self.deadline(&name).await?.unwrap_or(window)
            };
            Ok(Decision {
                allowed,
                limit,
                remaining: limit.saturating_sub(used),
                retry_after: (!allowed && cost <= limit).then_some(reset_after),
                reset_after,
            })
        }
        .await;
        result.map_err(|e| rename_limit(key, &name, e))
    }

    fn cached(&self, name: &str) -> Option<Duration> {
        let deadlines = self
            .deadlines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let left = deadlines
            .get(name)?
            .checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    fn forget(&self, name: &str) {
        self.deadlines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// Time left in the current window of `name`, from the cache or the store.
    async fn deadline(&self, name: &str) -> Result<Option<Duration>> {
        if let Some(left) = self.cached(name) {
            return Ok(Some(left));
        }
        let Some(entry) = self.store.fetch_entry(name).await? else {
            return Ok(None);
        };
        let Some(left) = entry.expires_in else {
            return Ok(None);
        };
        let mut deadlines = self
            .deadlines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if deadlines.len() >= DEADLINE_CACHE {
            let now = Instant::now();
            deadlines.retain(|_, at| *at > now);
            if deadlines.len() >= DEADLINE_CACHE {
                deadlines.clear();
            }
        }
        deadlines.insert(name.to_owned(), Instant::now() + left);
        Ok(Some(left))
    }
}

/// Errors about a limiter's state name name the caller's key.
fn rename_limit(key: &str, name: &str, err: Error) -> Error {
    err.rename_key(|stored| (stored == name).then(|| key.to_owned()))
}

fn decision(limit: u64, reply: RateLimitReply) -> Decision {
    Decision {
        allowed: reply.allowed,
        limit,
        remaining: reply.remaining,
        retry_after: reply.retry_after,
        reset_after: reply.reset_after,
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One GCRA step at `now` (µs since the epoch) with the stored theoretical arrival time `tat`
/// (µs; `now` or earlier when nothing is stored), an emission interval of `interval` µs (at
/// least 1), `burst` and `cost`: the answer, and the arrival time to store when allowed (`tat`
/// unchanged when denied).
///
/// The reference arithmetic of [`Limiter::gcra`]: a backend that runs GCRA natively (the
/// Redis script) tests its own against this one on the same inputs.
pub fn gcra_step(
    now: u64,
    tat: u64,
    interval: u64,
    burst: u64,
    cost: u64,
) -> (RateLimitReply, u64) {
    let tolerance = interval.saturating_mul(burst);
    let tat = tat.max(now);
    let new_tat = tat.saturating_add(interval.saturating_mul(cost));
    if new_tat - now <= tolerance {
        let reply = RateLimitReply {
            allowed: true,
            remaining: (tolerance - (new_tat - now)) / interval,
            retry_after: None,
            reset_after: Duration::from_micros(new_tat - now),
        };
        (reply, new_tat)
    } else {
        let reply = RateLimitReply {
            allowed: false,
            remaining: tolerance.saturating_sub(tat - now) / interval,
            retry_after: (cost <= burst).then(|| Duration::from_micros(new_tat - now - tolerance)),
            reset_after: Duration::from_micros(tat - now),
        };
        (reply, tat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every conditional write loses its race, as under a flood on one key.
    #[derive(Debug)]
    struct AlwaysRaced;

    impl crate::Intercept for AlwaysRaced {
        fn before(&self, _: crate::Site<'_>, call: &crate::Call<'_>) -> Result<()> {
            match call {
                crate::Call::Set { key, options, .. } if options.mode != SetMode::Upsert => {
                    Err(Error::Conflict {
                        key: (*key).to_owned(),
                    })
                }
                _ => Ok(()),
            }
        }
    }

    /// A GCRA check that loses every race gives up after a few attempts and denies: it is
    /// neither an error (which an open failure policy would let through) nor a long wait.
    #[tokio::test]
    async fn gcra_under_endless_contention_denies() {
        let store = StateStore::builder(crate::DefaultStateStore::new())
            .layer(|inner| {
                Arc::new(crate::Intercepted::new(inner, AlwaysRaced)) as Arc<dyn crate::Backend>
            })
            .build();
        let limiter = Limiter::gcra(&store, Quota::per_second(10));
        let decision = limiter.check("hot").await.expect("a decision");
        assert!(!decision.allowed, "{decision:?}");
        assert!(decision.retry_after.is_some(), "{decision:?}");
    }

    #[tokio::test]
    async fn clones_share_one_limit() {
        let store = StateStore::new(crate::DefaultStateStore::new());
        let limiter = Limiter::fixed_window(&store, 2, Duration::from_secs(3600));
        let clone = limiter.clone();
        let task = tokio::spawn(async move { clone.check("k").await });
        assert!(task.await.expect("join").expect("check").allowed);
        assert!(limiter.check("k").await.expect("check").allowed);
        let third = limiter.clone().check("k").await.expect("check");
        assert!(!third.allowed, "{third:?}");
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let (interval, burst) = (100, 3);
        let mut tat = 0;
        let now = 1_000;
        for expected_remaining in [2, 1, 0] {
            let (reply, next) = gcra_step(now, tat, interval, burst, 1);
            assert!(reply.allowed);
            assert_eq!(reply.remaining, expected_remaining);
            tat = next;
        }
        let (denied, next) = gcra_step(now, tat, interval, burst, 1);
        assert!(!denied.allowed);
        assert_eq!(next, tat, "a denial stores nothing new");
        assert_eq!(denied.retry_after, Some(Duration::from_micros(100)));
        assert_eq!(denied.reset_after, Duration::from_micros(300));
        // After retry_after, exactly one more passes.
        let (later, _) = gcra_step(now + 100, tat, interval, burst, 1);
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
    }

    #[test]
    fn gcra_cost_above_the_burst_never_passes() {
        let (reply, _) = gcra_step(0, 0, 10, 5, 6);
        assert!(!reply.allowed);
        assert_eq!(reply.retry_after, None);
    }

    #[test]
    fn quota_interval() {
        assert_eq!(
            Quota::per_minute(100).emission_interval(),
            Duration::from_millis(600)
        );
        assert_eq!(
            Quota::per_second(0).emission_interval(),
            Duration::from_secs(1)
        );
    }
}
