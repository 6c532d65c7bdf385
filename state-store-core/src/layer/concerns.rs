//! The concerns that act on every call alike, each an [`Intercept`] and a [`Layer`]: closed
//! check, limits, capability check, timeout, tracing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::intercept::{Call, CallInfo, Intercept, Intercepted, Site};
use super::Layer;
use crate::backend::{Backend, SetMode, SetOptions, MAX_TTL};
use crate::capability::{Capabilities, WatchSupport};
use crate::cas::CloseFlag;
use crate::change::{KeySelector, WatchStart};
use crate::config::{DEFAULT_MAX_KEY_LEN, DEFAULT_MAX_VALUE_LEN};
use crate::error::{shorten, Error, Result};
use crate::key::{has_reserved_segment, reserved};

macro_rules! intercept_layer {
    ($($layer:ty),*) => {$(
        impl Layer for $layer {
            fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
                Arc::new(Intercepted::new(inner, self.clone()))
            }
        }
    )*};
}

intercept_layer!(
    ClosedLayer,
    LimitLayer,
    CapabilityLayer,
    TimeoutLayer,
    TracingLayer
);

/// After the first `close`, refuses every call with [`Error::Closed`] (a second `close`
/// too), so a backend is closed once and never used after. Clones share the state: layers
/// over one backend cloned from one `ClosedLayer` close together. (A handle, its clones and
/// its [`with_prefix`](crate::StateStore::with_prefix) views share one; handles built
/// separately over one shared backend each have their own, and after one closes the backend
/// the others get what the closed backend answers.)
#[derive(Debug, Clone, Default)]
pub struct ClosedLayer {
    flag: Arc<CloseFlag>,
}

impl ClosedLayer {
    /// An open layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.flag.is_closed()
    }

    /// `Ok` while open; [`Error::Closed`] naming `store` once closed.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once closed.
    pub fn check(&self, store: &str) -> Result<()> {
        self.flag.check(store)
    }
}

impl Intercept for ClosedLayer {
    fn before(&self, site: Site<'_>, call: &Call<'_>) -> Result<()> {
        match call {
            Call::Close if self.flag.close() => Ok(()),
            _ => self.flag.check(site.store),
        }
    }
}

/// The most names one read may ask for ([`StateStore::get_state`](crate::StateStore::get_state)
/// counts distinct names): bounded work for one call. More is [`Error::InvalidKey`], naming
/// the first name beyond the cap; read in batches.
pub const MAX_NAMES_PER_CALL: usize = 10_000;

/// Refuses, before the backend sees them, a key that is empty or too long
/// ([`Error::InvalidKey`]), a read of more than [`MAX_NAMES_PER_CALL`] keys (`InvalidKey`), a
/// value too large ([`Error::ValueTooLarge`]) and a TTL of zero or above [`MAX_TTL`]
/// ([`Error::InvalidTtl`]). The limits are the smaller of this layer's and
/// the backend's ([`Capabilities::max_key_len`], [`Capabilities::max_value_len`]).
///
/// In a [`StateStore`](crate::StateStore)'s own stack it also refuses names, listed prefixes
/// and watched prefixes with a [reserved segment](crate::RESERVED_MARKER) (`InvalidKey`):
/// those keys are the store's own records.
#[derive(Debug, Clone, Copy)]
pub struct LimitLayer {
    max_key_len: usize,
    max_value_len: usize,
    /// Refuse keys with a reserved segment: a caller's handle.
    guard_reserved: bool,
    /// The handle's own prefix has a reserved segment: every key is one (a config prefix
    /// is not checked where it is set).
    prefix_reserved: bool,
}

impl Default for LimitLayer {
    fn default() -> Self {
        LimitLayer::new(DEFAULT_MAX_KEY_LEN, DEFAULT_MAX_VALUE_LEN)
    }
}

impl LimitLayer {
    /// Keys up to `max_key_len` bytes, values up to `max_value_len` bytes (or the backend's
    /// limits, when smaller).
    pub fn new(max_key_len: usize, max_value_len: usize) -> Self {
        LimitLayer {
            max_key_len,
            max_value_len,
            guard_reserved: false,
            prefix_reserved: false,
        }
    }

    /// The layer of a handle under `prefix`: a caller's handle refuses reserved keys, one for
    /// the store's own records ([`StateStore::reserved`](crate::StateStore::reserved)) does not.
    pub(crate) fn for_handle(config: &crate::StoreConfig, caller: bool) -> Self {
        LimitLayer {
            guard_reserved: caller,
            prefix_reserved: caller && has_reserved_segment(&config.key_prefix),
            ..LimitLayer::new(config.max_key_len, config.max_value_len)
        }
    }

    /// Refuses a caller's key, name or prefix, with a reserved segment.
    fn not_reserved(&self, key: &str) -> Result<()> {
        if self.guard_reserved && (self.prefix_reserved || has_reserved_segment(key)) {
            Err(reserved(key))
        } else {
            Ok(())
        }
    }

    fn key(&self, site: Site<'_>, key: &str) -> Result<()> {
        let limit = self.max_key_len.min(site.capabilities.max_key_len);
        self.not_reserved(key)?;
        if key.is_empty() {
            Err(Error::invalid_key(key, "a state name must not be empty"))
        } else if key.len() > limit {
            Err(Error::invalid_key(
                key,
                format!("longer than the limit of {limit} bytes"),
            ))
        } else {
            Ok(())
        }
    }

    fn value(&self, site: Site<'_>, key: &str, value: &[u8]) -> Result<()> {
        let limit = self.max_value_len.min(site.capabilities.max_value_len);
        if value.len() > limit {
            return Err(Error::ValueTooLarge {
                key: shorten(key),
                size: value.len(),
                limit,
            });
        }
        Ok(())
    }
}

fn valid_ttl(key: &str, ttl: Option<Duration>) -> Result<()> {
    match ttl {
        Some(ttl) if ttl.is_zero() || ttl > MAX_TTL => Err(Error::InvalidTtl {
            key: key.to_owned(),
        }),
        _ => Ok(()),
    }
}

impl Intercept for LimitLayer {
    fn capabilities(&self, mut inner: Capabilities) -> Capabilities {
        inner.max_key_len = inner.max_key_len.min(self.max_key_len);
        inner.max_value_len = inner.max_value_len.min(self.max_value_len);
        inner
    }

    fn before(&self, site: Site<'_>, call: &Call<'_>) -> Result<()> {
        match call {
            Call::Get { keys } => {
                if let Some(beyond) = keys.get(MAX_NAMES_PER_CALL) {
                    return Err(Error::invalid_key(
                        beyond,
                        format!("one read asks for at most {MAX_NAMES_PER_CALL} names"),
                    ));
                }
                keys.iter().try_for_each(|key| self.key(site, key))
            }
            Call::Set {
                key,
                value,
                options,
            } => {
                self.key(site, key)?;
                valid_ttl(key, options.ttl)?;
                self.value(site, key, value)
            }
            Call::Remove { key, .. } => self.key(site, key),
            Call::Increment { key, ttl } => {
                self.key(site, key)?;
                valid_ttl(key, *ttl)
            }
            Call::Watch {
                selector: KeySelector::Key(key),
                ..
            } => self.key(site, key),
            Call::Watch {
                selector: KeySelector::Prefix(prefix),
                ..
            } => self.not_reserved(prefix),
            Call::List { prefix } | Call::Invalidations { prefix } => self.not_reserved(prefix),
            Call::Lease { request } => {
                self.key(site, request.record_key)?;
                self.key(site, request.counter_key)?;
                valid_ttl(request.record_key, Some(request.ttl))
            }
            Call::RateLimit { request } => self.key(site, request.key),
            _ => Ok(()),
        }
    }
}

/// Refuses, with [`Error::Unsupported`] and before the backend sees it, a call that needs a
/// feature the backend does not declare in its [`Capabilities`]: a conditional write or
/// removal, a TTL, an increment, a listing, a watch (resumed, on a lossy one), a lease.
/// Nothing is written and no TTL is silently dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapabilityLayer;

impl CapabilityLayer {
    /// The layer.
    pub fn new() -> Self {
        CapabilityLayer
    }
}

fn require(site: Site<'_>, supported: bool, feature: &'static str) -> Result<()> {
    if supported {
        Ok(())
    } else {
        Err(Error::unsupported(site.store, feature))
    }
}

fn require_ttl(site: Site<'_>, ttl: Option<Duration>) -> Result<()> {
    require(
        site,
        ttl.is_none() || site.capabilities.ttl,
        "atomic expiry",
    )
}

impl Intercept for CapabilityLayer {
    fn before(&self, site: Site<'_>, call: &Call<'_>) -> Result<()> {
        let caps = site.capabilities;
        match call {
            Call::Set { options, .. } => {
                let SetOptions { mode, ttl, .. } = options;
                require(
                    site,
                    *mode == SetMode::Upsert || caps.conditional,
                    "conditional writes",
                )?;
                require_ttl(site, *ttl)
            }
            Call::Remove {
                expected: Some(_), ..
            } => require(site, caps.conditional, "conditional writes"),
            Call::Increment { ttl, .. } => {
                require(site, caps.increment, "atomic increment")?;
                require_ttl(site, *ttl)
            }
            Call::List { .. } => require(site, caps.list, "listing keys"),
            Call::Watch { start, .. } => {
                require(site, caps.watch != WatchSupport::None, "watching changes")?;
                require(
                    site,
                    !matches!(start, WatchStart::AfterVersion(_)) || caps.watch.resumes(),
                    "resuming a watch from a version (its watch is lossy)",
                )
            }
            Call::Lease { .. } => require(
                site,
                caps.leases(),
                "leases (they need atomic expiry, conditional writes and atomic increments)",
            ),
            _ => Ok(()),
        }
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

impl Intercept for TimeoutLayer {
    async fn around<'a, T, F>(&'a self, site: Site<'a>, call: CallInfo, inner: F) -> Result<T>
    where
        T: Send + 'a,
        F: Future<Output = Result<T>> + Send + 'a,
    {
        match tokio::time::timeout(self.limit, inner).await {
            Ok(result) => result,
            Err(elapsed) if call.writes => Err(Error::outcome_unknown(site.store, elapsed)),
            Err(elapsed) => Err(Error::unavailable(site.store, elapsed)),
        }
    }
}

/// A span per call that reaches the backend, named `state_store`, at `DEBUG` unless
/// [`TracingLayer::with_level`] (on a handle: [`StoreConfig::span_level`]) says otherwise, with
/// OpenTelemetry's database fields — `db.system.name` (the store's name),
/// `db.operation.name` (`get`, `set`, …), `db.operation.batch.size` (names in the call),
/// `server.address` and `server.port` (where the backend has a server) — and `db.namespace`
/// (the handle's prefix): never keys, values or session ids. With `tracing-opentelemetry` these
/// become OpenTelemetry client spans (`examples/src/bin/traced.rs`).
///
/// [`StoreConfig::span_level`]: crate::StoreConfig::span_level
#[derive(Debug, Clone)]
pub struct TracingLayer {
    prefix: Arc<str>,
    level: tracing::Level,
}

impl Default for TracingLayer {
    fn default() -> Self {
        TracingLayer {
            prefix: Arc::from(""),
            level: tracing::Level::DEBUG,
        }
    }
}

impl TracingLayer {
    /// `DEBUG` spans without a prefix.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spans that name the handle's prefix.
    pub fn with_prefix(prefix: &str) -> Self {
        TracingLayer {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// Spans at `level`.
    #[must_use]
    pub fn with_level(mut self, level: tracing::Level) -> Self {
        self.level = level;
        self
    }
}

/// The call's span at a level chosen at run time (a callsite's level is fixed: one each).
macro_rules! call_span {
    ($level:expr, $($fields:tt)*) => {
        match $level {
            tracing::Level::ERROR => tracing::error_span!($($fields)*),
            tracing::Level::WARN => tracing::warn_span!($($fields)*),
            tracing::Level::INFO => tracing::info_span!($($fields)*),
            tracing::Level::DEBUG => tracing::debug_span!($($fields)*),
            tracing::Level::TRACE => tracing::trace_span!($($fields)*),
        }
    };
}

impl Intercept for TracingLayer {
    fn around<'a, T, F>(
        &'a self,
        site: Site<'a>,
        call: CallInfo,
        inner: F,
    ) -> impl Future<Output = Result<T>> + Send + 'a
    where
        T: Send + 'a,
        F: Future<Output = Result<T>> + Send + 'a,
    {
        let (address, port) = site.server.unzip();
        // Integers as i64: OpenTelemetry has no unsigned attribute (tracing-opentelemetry
        // would turn a u64 into a string). `otel.kind`: a database call is a client span.
        inner.instrument(call_span!(
            self.level,
            "state_store",
            otel.kind = "client",
            db.system.name = site.store,
            db.operation.name = call.operation,
            db.operation.batch.size = i64::try_from(call.keys).unwrap_or(i64::MAX),
            db.namespace = &*self.prefix,
            server.address = address,
            server.port = port.map(i64::from)
        ))
    }
}
