//! Layers that act on every call alike: a check before it, a wrapper around it. Most
//! cross-cutting concerns are one of these; [`Intercepted`] turns one into a backend.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{
    AcquireLease, Backend, CheckRateLimit, Extensions, Increment, ListKeys, SetOptions,
    WatchInvalidations, WatchKeys,
};
use crate::capability::Capabilities;
use crate::change::{InvalidationStream, KeyPage, KeySelector, WatchStart, WatchStream};
use crate::error::{Error, Result};
use crate::native::{LeaseAcquire, LeaseGrant, RateLimitReply, RateLimitRequest};
use crate::version::{Entry, Version};

/// One call through a stack, as an [`Intercept`] sees it before it runs.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Call<'a> {
    /// `get_many` or `get_values`.
    Get {
        /// The keys read.
        keys: &'a [String],
    },
    /// `set`.
    Set {
        /// The key written.
        key: &'a str,
        /// The value (JSON text).
        value: &'a [u8],
        /// Its options.
        options: &'a SetOptions,
    },
    /// `remove`.
    Remove {
        /// The key removed.
        key: &'a str,
        /// The version it must have.
        expected: Option<&'a Version>,
    },
    /// [`Increment::increment`].
    Increment {
        /// The counter.
        key: &'a str,
        /// The TTL a new counter gets.
        ttl: Option<Duration>,
    },
    /// [`ListKeys::list_keys`].
    List {
        /// The key prefix listed.
        prefix: &'a str,
    },
    /// [`WatchKeys::watch`].
    Watch {
        /// What is followed.
        selector: &'a KeySelector,
        /// From where.
        start: &'a WatchStart,
    },
    /// [`WatchInvalidations::invalidations`].
    Invalidations {
        /// The key prefix followed.
        prefix: &'a str,
    },
    /// [`AcquireLease::acquire_lease`].
    Lease {
        /// The request.
        request: &'a LeaseAcquire<'a>,
    },
    /// [`CheckRateLimit::rate_limit`].
    RateLimit {
        /// The request.
        request: &'a RateLimitRequest<'a>,
    },
    /// `close`.
    Close,
}

impl Call<'_> {
    /// What an [`Intercept::around`] gets to know of the call.
    pub fn info(&self) -> CallInfo {
        let (operation, writes, keys) = match self {
            Call::Get { keys } => ("get", false, keys.len()),
            Call::Set { .. } => ("set", true, 1),
            Call::Remove { .. } => ("remove", true, 1),
            Call::Increment { .. } => ("increment", true, 1),
            Call::List { .. } => ("list", false, 0),
            Call::Watch { .. } => ("watch", false, 0),
            Call::Invalidations { .. } => ("invalidations", false, 0),
            Call::Lease { .. } => ("acquire_lease", true, 2),
            Call::RateLimit { request } => ("rate_limit", request.write, 1),
            Call::Close => ("close", false, 0),
        };
        CallInfo {
            operation,
            writes,
            keys,
        }
    }
}

/// The shape of a call, without its arguments: [`Intercept::around`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallInfo {
    /// `get`, `set`, `remove`, `increment`, `list`, `watch`, `acquire_lease`, `rate_limit`
    /// or `close`.
    pub operation: &'static str,
    /// Whether the call may change stored state (so that an answer that never comes leaves
    /// its outcome unknown).
    pub writes: bool,
    /// How many keys it touches.
    pub keys: usize,
}

/// Where an intercepted call runs: the backend below the intercept.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// The backend's name, for errors.
    pub store: &'a str,
    /// What the backend below supports.
    pub capabilities: &'a Capabilities,
    /// The server of the backend below ([`Backend::server`]).
    pub server: Option<(&'a str, u16)>,
}

/// A concern that acts on every call alike: [`Intercept::before`] may refuse a call before it
/// reaches the backend, [`Intercept::around`] wraps the call that runs. [`Intercepted`]
/// applies one to a backend; a pair `(outer, inner)` is one too, so that a stack of them
/// costs one wrapper.
///
/// ```
/// use std::future::Future;
/// use state_store_core::{CallInfo, Intercept, Intercepted, Result, Site, StateStore, DefaultStateStore};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// /// Counts the calls that reach the backend.
/// #[derive(Debug, Default)]
/// struct Count(AtomicU64);
///
/// impl Intercept for Count {
///     fn around<'a, T, F>(&'a self, _: Site<'a>, _: CallInfo, call: F) -> impl Future<Output = Result<T>> + Send + 'a
///     where
///         T: Send + 'a,
///         F: Future<Output = Result<T>> + Send + 'a,
///     {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         call
///     }
/// }
///
/// let store = StateStore::builder(DefaultStateStore::new())
///     .layer(|inner| Arc::new(Intercepted::new(inner, Count::default())) as Arc<_>)
///     .build();
/// # let _ = store;
/// ```
pub trait Intercept: Send + Sync + fmt::Debug + 'static {
    /// What the stack supports with this concern added (the backend's own, by default).
    fn capabilities(&self, inner: Capabilities) -> Capabilities {
        inner
    }

    /// Runs before the call; an error ends the call there, and the backend never sees it.
    ///
    /// # Errors
    ///
    /// Whatever the concern refuses.
    fn before(&self, site: Site<'_>, call: &Call<'_>) -> Result<()> {
        let _ = (site, call);
        Ok(())
    }

    /// Runs the call, wrapped (given a deadline, traced, measured). The default runs it as
    /// it is.
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
        let _ = (site, call);
        inner
    }
}

/// Two intercepts as one: `.0` sees each call first, then `.1`.
impl<A: Intercept, B: Intercept> Intercept for (A, B) {
    fn capabilities(&self, inner: Capabilities) -> Capabilities {
        self.0.capabilities(self.1.capabilities(inner))
    }

    fn before(&self, site: Site<'_>, call: &Call<'_>) -> Result<()> {
        self.0.before(site, call)?;
        self.1.before(site, call)
    }

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
        self.0.around(site, call, self.1.around(site, call, inner))
    }
}

/// A backend with an [`Intercept`] applied to every call, its extensions included.
pub struct Intercepted<I> {
    inner: Arc<dyn Backend>,
    intercept: I,
    /// The backend's, as the intercept sees them.
    below: Capabilities,
    /// With the intercept's concern added.
    above: Capabilities,
}

impl<I: fmt::Debug> fmt::Debug for Intercepted<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intercepted")
            .field("intercept", &self.intercept)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<I: Intercept> Intercepted<I> {
    /// `inner` with `intercept` applied.
    pub fn new(inner: Arc<dyn Backend>, intercept: I) -> Self {
        let below = inner.capabilities();
        let above = intercept.capabilities(below.clone());
        Intercepted {
            inner,
            intercept,
            below,
            above,
        }
    }

    /// The backend below. Called through `&dyn Backend`: on the `Arc` itself, method
    /// resolution picks the forwarding `impl Backend for Arc<B>`, which boxes every call's
    /// future a second time.
    fn below(&self) -> &dyn Backend {
        &*self.inner
    }

    fn site(&self) -> Site<'_> {
        Site {
            store: self.below().name(),
            capabilities: &self.below,
            server: self.below().server(),
        }
    }

    fn before(&self, call: &Call<'_>) -> Result<CallInfo> {
        self.intercept.before(self.site(), call)?;
        Ok(call.info())
    }

    fn around<'a, T: Send + 'a>(
        &'a self,
        call: CallInfo,
        work: impl Future<Output = Result<T>> + Send + 'a,
    ) -> impl Future<Output = Result<T>> + Send + 'a {
        self.intercept.around(self.site(), call, work)
    }

    fn missing(&self, feature: &'static str) -> Error {
        Error::unsupported(self.below().name(), feature)
    }

    /// What [`Intercept::before`] says of `call`, without making it.
    pub(crate) fn preflight(&self, call: &Call<'_>) -> Result<()> {
        self.before(call).map(drop)
    }

    /// Why `call`, of an extension the backend below does not offer, fails: what the
    /// intercept refuses first (a closed store, a bad key), else `Unsupported`.
    pub(crate) fn refuse(&self, call: &Call<'_>, feature: &'static str) -> Error {
        match self.before(call) {
            Err(err) => err,
            Ok(_) => self.missing(feature),
        }
    }
}

#[async_trait]
impl<I: Intercept> Backend for Intercepted<I> {
    fn name(&self) -> &str {
        self.below().name()
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.below().server()
    }

    fn capabilities(&self) -> Capabilities {
        self.above.clone()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let call = self.before(&Call::Get { keys })?;
        self.around(call, self.below().get_many(keys)).await
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let call = self.before(&Call::Get { keys })?;
        self.around(call, self.below().get_values(keys)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        let call = self.before(&Call::Set {
            key,
            value: &value,
            options,
        })?;
        self.around(call, self.below().set(key, value, options))
            .await
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        let call = self.before(&Call::Remove { key, expected })?;
        self.around(call, self.below().remove(key, expected)).await
    }

    async fn close(&self) -> Result<()> {
        let call = self.before(&Call::Close)?;
        self.around(call, self.below().close()).await
    }

    fn extensions(&self) -> Extensions<'_> {
        self.below().extensions().served_by(self)
    }
}

#[async_trait]
impl<I: Intercept> Increment for Intercepted<I> {
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let call = self.before(&Call::Increment { key, ttl })?;
        let counter = self
            .inner
            .extensions()
            .increment
            .ok_or_else(|| self.missing("atomic increment"))?;
        self.around(call, counter.increment(key, delta, ttl)).await
    }
}

#[async_trait]
impl<I: Intercept> ListKeys for Intercepted<I> {
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let call = self.before(&Call::List { prefix })?;
        let lister = self
            .inner
            .extensions()
            .list
            .ok_or_else(|| self.missing("listing keys"))?;
        self.around(call, lister.list_keys(prefix, after, limit))
            .await
    }
}

#[async_trait]
impl<I: Intercept> WatchKeys for Intercepted<I> {
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        let call = self.before(&Call::Watch { selector, start })?;
        let watcher = self
            .inner
            .extensions()
            .watch
            .ok_or_else(|| self.missing("watching changes"))?;
        self.around(call, watcher.watch(selector, start)).await
    }
}

#[async_trait]
impl<I: Intercept> WatchInvalidations for Intercepted<I> {
    async fn invalidations(&self, prefix: &str) -> Result<InvalidationStream> {
        let call = self.before(&Call::Invalidations { prefix })?;
        let watcher = self
            .inner
            .extensions()
            .invalidations
            .ok_or_else(|| self.missing("following invalidations"))?;
        self.around(call, watcher.invalidations(prefix)).await
    }
}

#[async_trait]
impl<I: Intercept> AcquireLease for Intercepted<I> {
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        let call = self.before(&Call::Lease { request })?;
        let leases = self
            .inner
            .extensions()
            .lease
            .ok_or_else(|| self.missing("leases"))?;
        self.around(call, leases.acquire_lease(request)).await
    }
}

#[async_trait]
impl<I: Intercept> CheckRateLimit for Intercepted<I> {
    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        let call = self.before(&Call::RateLimit { request })?;
        let limits = self
            .inner
            .extensions()
            .rate_limit
            .ok_or_else(|| self.missing("native rate limits"))?;
        self.around(call, limits.rate_limit(request)).await
    }
}
