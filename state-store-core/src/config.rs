//! What the [`StateStore`](crate::StateStore) handle applies to every backend alike.

use std::time::Duration;

/// Default longest state name in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 1024;
/// Default largest encoded value in bytes (1 MiB).
pub const DEFAULT_MAX_VALUE_LEN: usize = 1024 * 1024;
/// Default number of attempts of [`StateStore::update`](crate::StateStore::update).
pub const DEFAULT_UPDATE_RETRIES: usize = 100;

/// Settings the handle applies once, for every backend.
///
/// Mirrors PURISTA's state store config (`enableGet`, `enableSet`, `enableRemove`, all on by
/// default) and adds a key prefix, limits and a default TTL.
///
/// ```
/// use std::time::Duration;
/// use state_store_core::StoreConfig;
///
/// let config = StoreConfig::default()
///     .with_prefix("billing:")
///     .with_default_ttl(Duration::from_secs(3600))
///     .with_enable_remove(false);
/// assert!(config.enable_get);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Allow reads. Off: [`Error::OperationDisabled`](crate::Error::OperationDisabled).
    pub enable_get: bool,
    /// Allow writes (including `increment` and `update`).
    pub enable_set: bool,
    /// Allow removals.
    pub enable_remove: bool,
    /// A namespace per service or tenant: a path of segments separated by `:`
    /// ([`PREFIX_SEPARATOR`](crate::PREFIX_SEPARATOR)), empty segments ignored (`"billing:"`
    /// is `"billing"`). The stored key is `prefix:name`, so handles whose prefixes are not
    /// nested never see each other's keys (`t1` + `2:x` and `t12` + `:x` are different keys).
    /// Empty by default: the stored key is then the state name, as in PURISTA.
    pub key_prefix: String,
    /// Longest state name in bytes (without the prefix). The backend's own limit on the full
    /// key applies as well.
    pub max_key_len: usize,
    /// Largest encoded value in bytes. The backend's own limit applies as well.
    pub max_value_len: usize,
    /// TTL of writes that do not choose one: `set_state`, `set` and `update`. Writes through
    /// `set_with` use exactly their [`SetOptions`](crate::SetOptions).
    pub default_ttl: Option<Duration>,
    /// Attempts of an [`update`](crate::StateStore::update) loop before it gives up with
    /// [`Error::Conflict`](crate::Error::Conflict).
    pub update_retries: usize,
    /// The level of the span each call opens (`state_store`, see
    /// [`TracingLayer`](crate::TracingLayer)): `DEBUG` by default, `INFO` to keep them under a
    /// subscriber that filters debug out.
    pub span_level: tracing::Level,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            enable_get: true,
            enable_set: true,
            enable_remove: true,
            key_prefix: String::new(),
            max_key_len: DEFAULT_MAX_KEY_LEN,
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            default_ttl: None,
            update_retries: DEFAULT_UPDATE_RETRIES,
            span_level: tracing::Level::DEBUG,
        }
    }
}

impl StoreConfig {
    /// Sets [`StoreConfig::enable_get`].
    pub fn with_enable_get(mut self, on: bool) -> Self {
        self.enable_get = on;
        self
    }

    /// Sets [`StoreConfig::enable_set`].
    pub fn with_enable_set(mut self, on: bool) -> Self {
        self.enable_set = on;
        self
    }

    /// Sets [`StoreConfig::enable_remove`].
    pub fn with_enable_remove(mut self, on: bool) -> Self {
        self.enable_remove = on;
        self
    }

    /// Nests [`StoreConfig::key_prefix`] under `prefix`, as
    /// [`StateStore::with_prefix`](crate::StateStore::with_prefix) does:
    /// `with_prefix("a").with_prefix("b")` is `with_prefix("a:b")`. On the default config it
    /// simply sets the prefix.
    pub fn with_prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.key_prefix = crate::key::join_prefix(
            &crate::key::normalize_prefix(&self.key_prefix),
            prefix.as_ref(),
        );
        self
    }

    /// Sets [`StoreConfig::max_key_len`].
    pub fn with_max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// Sets [`StoreConfig::max_value_len`].
    pub fn with_max_value_len(mut self, bytes: usize) -> Self {
        self.max_value_len = bytes;
        self
    }

    /// Sets [`StoreConfig::default_ttl`].
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Sets [`StoreConfig::update_retries`] (at least 1).
    pub fn with_update_retries(mut self, attempts: usize) -> Self {
        self.update_retries = attempts.max(1);
        self
    }

    /// Sets [`StoreConfig::span_level`].
    pub fn with_span_level(mut self, level: tracing::Level) -> Self {
        self.span_level = level;
        self
    }
}

/// How long connecting, and each call, may take before failing with
/// [`Error::Unavailable`](crate::Error::Unavailable) (or, for a write that may have been sent,
/// [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown)). Every adapter's config holds one and
/// offers `with_connect_timeout` / `with_request_timeout` ([`timeout_setters!`](crate::timeout_setters)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Connecting (default 5 s).
    pub connect: Duration,
    /// One call, including waiting for a reconnect (default 5 s).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(5),
        }
    }
}

impl Timeouts {
    /// `Ok` when both are positive.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) naming `store` otherwise.
    pub fn validate(&self, store: &str) -> crate::Result<()> {
        if self.connect.is_zero() || self.request.is_zero() {
            return Err(crate::Error::config(format!(
                "{store} timeouts must be positive"
            )));
        }
        Ok(())
    }
}

/// Adds `with_connect_timeout` and `with_request_timeout` to an adapter's config that holds a
/// `timeouts: Timeouts` field, so every adapter offers them with the same names and docs.
/// Use inside the config's `impl` block.
#[macro_export]
macro_rules! timeout_setters {
    () => {
        /// How long connecting may take (default 5 s).
        pub fn with_connect_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.timeouts.connect = timeout;
            self
        }

        /// How long one call may take, including waiting for a reconnect, before it fails
        /// with `Unavailable` (default 5 s).
        pub fn with_request_timeout(mut self, timeout: ::std::time::Duration) -> Self {
            self.timeouts.request = timeout;
            self
        }
    };
}
