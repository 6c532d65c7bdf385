//! The trait an adapter (or your own store) implements: six required methods, bytes in,
//! bytes out, with versions; optional operations as [`Extensions`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capability::Capabilities;
use crate::change::{InvalidationStream, KeyPage, KeySelector, WatchStart, WatchStream};
use crate::error::Result;
use crate::native::{LeaseAcquire, LeaseGrant, RateLimitReply, RateLimitRequest};
use crate::version::{Entry, Version};

#[cfg(doc)]
use crate::{increment_with_cas, Error};

/// When a write may happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SetMode {
    /// Write whether or not the key exists (PURISTA's `setState`).
    #[default]
    Upsert,
    /// Write only if the key does not exist; otherwise [`Error::Conflict`].
    Create,
    /// Write only if the stored version is this one; otherwise (changed, or removed)
    /// [`Error::Conflict`].
    Update(Version),
}

/// Options of one write.
///
/// ```
/// use std::time::Duration;
/// use state_store_core::{SetMode, SetOptions};
///
/// let opts = SetOptions::new().mode(SetMode::Create).ttl(Duration::from_secs(30));
/// assert_eq!(opts.ttl, Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetOptions {
    /// Condition of the write.
    pub mode: SetMode,
    /// Time to live. `None` keeps the value until it is removed, and clears any TTL an earlier
    /// write set. Backends counting in whole seconds round up. At most [`MAX_TTL`].
    pub ttl: Option<Duration>,
    /// Keep the expiry the key has now (default false). When the write replaces a live value,
    /// that value's deadline stays as it was (or its absence of one), and `ttl` is ignored;
    /// when the write creates the key, `ttl` applies. This is how a read-modify-write
    /// ([`StateStore::update`](crate::StateStore::update), [`increment_with_cas`]) keeps a
    /// session's or a rate-limit window's deadline fixed: rewrites never push it later.
    pub keep_ttl: bool,
    /// Whether the caller uses the returned [`Version`] (default true). The handle clears it
    /// for writes that discard the version (`set_state`, `set`, `update`), so a backend that
    /// needs an extra round trip to learn a write's version (Dapr) may skip it and return
    /// any version.
    pub want_version: bool,
}

impl Default for SetOptions {
    fn default() -> Self {
        SetOptions {
            mode: SetMode::Upsert,
            ttl: None,
            keep_ttl: false,
            want_version: true,
        }
    }
}

impl SetOptions {
    /// An unconditional write without TTL.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the condition.
    pub fn mode(mut self, mode: SetMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets [`SetOptions::keep_ttl`].
    pub fn keep_ttl(mut self, keep: bool) -> Self {
        self.keep_ttl = keep;
        self
    }
}

/// The longest TTL any store accepts: 10 years (365-day years). Longer TTLs are refused with
/// [`Error::InvalidTtl`] on every backend, before anything is written: some servers overflow
/// on larger ones (NATS acknowledges a 1000-year TTL and drops the value at once), and a value
/// meant to live that long should have no TTL.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A storage backend: what an adapter crate or a custom store implements.
///
/// Six required methods — [`name`](Backend::name), [`capabilities`](Backend::capabilities),
/// [`get_many`](Backend::get_many), [`set`](Backend::set), [`remove`](Backend::remove),
/// [`close`](Backend::close) — and the optional operations a backend has natively, offered
/// through [`Backend::extensions`]. Everything cross-cutting is a [`Layer`](crate::Layer)
/// around it: handlers hold a [`StateStore`](crate::StateStore), whose stack checks names,
/// limits, capabilities and the closed state, applies the key prefix, completes what the
/// backend lacks (increments by compare-and-set, TTL-keeping upserts, leases) and traces, once
/// for every backend.
///
/// # Contract
///
/// - Keys arrive non-empty, within [`Capabilities::max_key_len`], already prefixed. A backend
///   whose charset is narrower encodes them reversibly, or returns
///   [`Error::InvalidKey`](crate::Error::InvalidKey).
/// - Values arrive as JSON text within [`Capabilities::max_value_len`]. Store the bytes as
///   they are; return them as they were.
/// - `get_many` returns one slot per requested key, in request order; a missing or expired key
///   is `None`.
/// - A successful write that changes the value returns a new [`Version`]; `get_many` returns
///   the current one. (Rewriting identical bytes may keep the version: Redis derives it from
///   the value so that writes by other clients stay valid bases for compare-and-set.)
/// - `set` with [`SetMode::Create`] fails with [`Error::Conflict`](crate::Error::Conflict) if
///   the key exists; [`SetMode::Update`] fails with `Conflict` if the current version differs
///   or the key is gone. A failed condition writes nothing.
/// - A `ttl` of `None` stores the value without expiry and clears an earlier TTL, unless
///   [`SetOptions::keep_ttl`] asks to keep the current deadline of a live value. An expired
///   key reads as missing. TTLs arrive non-zero and at most [`MAX_TTL`]. A backend that
///   cannot keep a TTL in an upsert declares [`Capabilities::upsert_keep_ttl`] false and may
///   refuse one: the completion layer composes it from a read and an update.
/// - A version never matches a value it was not read from: after a remove or an expiry, a
///   re-created key does not accept an old version (Redis, which derives versions from the
///   value for PURISTA interop, is the documented exception for identical bytes; see
///   [`Capabilities::versions_from_value`]).
/// - `remove` of a missing key is `Ok`; the flag says whether the key existed, where the
///   backend can tell without another round trip (NATS and Dapr report `true`). With
///   `expected`, the removal happens only if the current version is `expected`; otherwise
///   `Conflict` (or `Ok(false)` when the key is missing).
/// - A feature the backend does not declare in [`Capabilities`] returns
///   [`Error::Unsupported`](crate::Error::Unsupported); an extension it offers, it declares.
/// - Network calls have deadlines: a read that runs out fails with
///   [`Error::Unavailable`](crate::Error::Unavailable), a write with
///   [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown) unless it surely never left.
///
/// Not a backend's concern (the layers do it): a closed check, TTL validation, key and value
/// limits, prefixes, retries of lost races in an upsert that keeps a TTL.
///
/// The `state-store-conformance` crate checks all of this against a real instance.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// A short name for messages and tracing (`"memory"`, `"redis"`).
    fn name(&self) -> &str;

    /// What this backend supports natively.
    fn capabilities(&self) -> Capabilities;

    /// The server this backend talks to, as host and port (OpenTelemetry's `server.address`
    /// and `server.port`), for metrics and spans; `None` for an embedded store (the default).
    /// Where a client knows several servers, the first one configured.
    fn server(&self) -> Option<(&str, u16)> {
        None
    }

    /// Reads many keys, one slot per key in request order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>>;

    /// Writes one key and returns the new version.
    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version>;

    /// Removes one key; `Ok(true)` if it existed (or the backend cannot tell cheaply).
    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool>;

    /// Closes connections and stops background work.
    async fn close(&self) -> Result<()>;

    /// Reads many keys' values without their versions, one slot per key in request order:
    /// what `get_state` and typed reads need. The default calls [`Backend::get_many`];
    /// override it where a version costs work a plain read can skip (Redis computes a
    /// SHA-1 per value).
    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self
            .get_many(keys)
            .await?
            .into_iter()
            .map(|entry| entry.map(|e| e.value))
            .collect())
    }

    /// The optional operations this backend has natively (none by default). A layer offers
    /// those of the backend it wraps, wrapped in its own concern.
    fn extensions(&self) -> Extensions<'_> {
        Extensions::none()
    }
}

/// Atomic increments, natively: [`Extensions::increment`]. Without it the completion layer
/// composes them from compare-and-set ([`increment_with_cas`](crate::increment_with_cas)).
#[async_trait]
pub trait Increment: Send + Sync {
    /// Adds `delta` to the integer at `key` and returns the new value. Atomic across
    /// processes; a missing key starts at 0 and, only then, gets `ttl`. A value that is not a
    /// JSON integer, or an overflow, is [`Error::NotAnInteger`](crate::Error::NotAnInteger).
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64>;
}

/// Listing stored keys: [`Extensions::list`], declared as [`Capabilities::list`].
#[async_trait]
pub trait ListKeys: Send + Sync {
    /// Lists live stored keys starting with `prefix`, at most `limit` per page, from where
    /// `after` (a previous page's [`KeyPage::next`]) left off. Ordered backends return keys in
    /// byte order and use the last key as the cursor.
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage>;
}

/// Following changes: [`Extensions::watch`], declared as [`Capabilities::watch`].
#[async_trait]
pub trait WatchKeys: Send + Sync {
    /// Follows changes of the selected keys. A [`WatchSupport::Lossy`](crate::WatchSupport)
    /// backend refuses [`WatchStart::AfterVersion`] with
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream>;
}

/// Following which keys change, without their values: [`Extensions::invalidations`]. What a
/// near cache needs from a backend that can tell it more cheaply than a watch (Redis: client
/// tracking, which needs neither keyspace notifications nor a read per change). Without it
/// the [`NearCacheLayer`](crate::NearCacheLayer) follows [`WatchKeys`].
#[async_trait]
pub trait WatchInvalidations: Send + Sync {
    /// Reports every change of a key starting with `prefix` from when it returns, and
    /// [`Invalidation::All`](crate::Invalidation::All) whenever changes may have been missed.
    async fn invalidations(&self, prefix: &str) -> Result<InvalidationStream>;
}

/// A lease taken in one atomic call (Redis: one script): [`Extensions::lease`]. Without it
/// the completion layer composes the same from `set` (create, then compare-and-set) and an
/// increment.
#[async_trait]
pub trait AcquireLease: Send + Sync {
    /// If `request.record_key` is absent, increments the integer at `request.counter_key` (no
    /// TTL; missing counts as 0) and stores [`LeaseAcquire::record`] with the new value at
    /// `record_key` with `request.ttl`; answers [`LeaseGrant::NotNative`] for a request it
    /// cannot take in one call (Redis Cluster: keys in two slots).
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant>;
}

/// A rate-limit check in one atomic call, on the server's clock (Redis: one script):
/// [`Extensions::rate_limit`]. Without it (or when it answers `None`), the
/// [`Limiter`](crate::Limiter) composes the check from compare-and-set (GCRA) or an increment
/// (fixed window). A native answer must match the composed one: GCRA stores the theoretical
/// arrival time as a JSON integer of microseconds since the Unix epoch, with a TTL until it is
/// reached (core's [`gcra_step`](crate::gcra_step) is the reference); a fixed window is an
/// integer counter whose TTL starts with the window.
#[async_trait]
pub trait CheckRateLimit: Send + Sync {
    /// The answer, or `None` for an algorithm this backend has no native path for.
    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>>;
}

/// The optional operations of a backend: [`Backend::extensions`].
///
/// ```
/// use state_store_core::{Backend, DefaultStateStore};
///
/// let memory = DefaultStateStore::new();
/// let extensions = memory.extensions();
/// assert!(extensions.increment.is_some() && extensions.lease.is_none());
/// ```
#[derive(Clone, Copy, Default)]
#[non_exhaustive]
pub struct Extensions<'a> {
    /// Atomic increments.
    pub increment: Option<&'a dyn Increment>,
    /// Listing keys.
    pub list: Option<&'a dyn ListKeys>,
    /// Following changes.
    pub watch: Option<&'a dyn WatchKeys>,
    /// Taking a lease in one call.
    pub lease: Option<&'a dyn AcquireLease>,
    /// Checking a rate limit in one call.
    pub rate_limit: Option<&'a dyn CheckRateLimit>,
    /// Following which keys change.
    pub invalidations: Option<&'a dyn WatchInvalidations>,
}

impl<'a> Extensions<'a> {
    /// No optional operations.
    pub fn none() -> Self {
        Self::default()
    }

    /// With atomic increments.
    pub fn with_increment(mut self, increment: &'a dyn Increment) -> Self {
        self.increment = Some(increment);
        self
    }

    /// With listing.
    pub fn with_list(mut self, list: &'a dyn ListKeys) -> Self {
        self.list = Some(list);
        self
    }

    /// With watching.
    pub fn with_watch(mut self, watch: &'a dyn WatchKeys) -> Self {
        self.watch = Some(watch);
        self
    }

    /// With one-call leases.
    pub fn with_lease(mut self, lease: &'a dyn AcquireLease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// With one-call rate-limit checks.
    pub fn with_rate_limit(mut self, rate_limit: &'a dyn CheckRateLimit) -> Self {
        self.rate_limit = Some(rate_limit);
        self
    }

    /// With invalidations.
    pub fn with_invalidations(mut self, invalidations: &'a dyn WatchInvalidations) -> Self {
        self.invalidations = Some(invalidations);
        self
    }

    /// The same extensions, each served by `layer` instead: for a layer that wraps every
    /// call of the backend these came from, and forwards to them.
    pub fn served_by<L>(self, layer: &'a L) -> Self
    where
        L: Increment + ListKeys + WatchKeys + AcquireLease + CheckRateLimit + WatchInvalidations,
    {
        Extensions {
            increment: self.increment.map(|_| layer as &dyn Increment),
            list: self.list.map(|_| layer as &dyn ListKeys),
            watch: self.watch.map(|_| layer as &dyn WatchKeys),
            lease: self.lease.map(|_| layer as &dyn AcquireLease),
            rate_limit: self.rate_limit.map(|_| layer as &dyn CheckRateLimit),
            invalidations: self.invalidations.map(|_| layer as &dyn WatchInvalidations),
        }
    }
}

impl fmt::Debug for Extensions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("increment", &self.increment.is_some())
            .field("list", &self.list.is_some())
            .field("watch", &self.watch.is_some())
            .field("lease", &self.lease.is_some())
            .field("rate_limit", &self.rate_limit.is_some())
            .field("invalidations", &self.invalidations.is_some())
            .finish()
    }
}

macro_rules! forward_backend {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<B: Backend + ?Sized> Backend for $ptr<B> {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            fn server(&self) -> Option<(&str, u16)> {
                (**self).server()
            }
            async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
                (**self).get_many(keys).await
            }
            async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
                (**self).set(key, value, options).await
            }
            async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
                (**self).remove(key, expected).await
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
            async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
                (**self).get_values(keys).await
            }
            fn extensions(&self) -> Extensions<'_> {
                (**self).extensions()
            }
        }
    )*};
}

forward_backend!(Box, Arc);
