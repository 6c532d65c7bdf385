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

    /// Sets [`StoreConfig::key_prefix`].
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
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
}
