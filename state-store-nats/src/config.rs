//! How to connect: a URL, the environment, or a ready JetStream context.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use state_store_core::{Error, Result};

/// PURISTA's bucket name, so both share state by default.
pub const DEFAULT_BUCKET: &str = "purista-state-store";

/// How to authenticate.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Credentials {
    /// None (or whatever the URL carries).
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An NKey seed.
    NKey(String),
    /// A `.creds` file (JWT and seed).
    CredsFile(PathBuf),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::NKey(_) => f.write_str("NKey(<redacted>)"),
            Credentials::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
        }
    }
}

/// Settings of a [`NatsStateStore`](crate::NatsStateStore) built by this crate.
///
/// ```
/// use state_store_nats::{Credentials, NatsConfig};
///
/// let config = NatsConfig::new("nats://127.0.0.1:4222")
///     .bucket("orders-state")
///     .credentials(Credentials::Token("s3cret".into()));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    pub(crate) url: String,
    pub(crate) bucket: String,
    pub(crate) credentials: Credentials,
    pub(crate) require_tls: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) storage: StorageType,
    pub(crate) replicas: usize,
    pub(crate) history: i64,
    pub(crate) max_value_size: i32,
    pub(crate) marker_ttl: Duration,
    pub(crate) enable_message_ttl: bool,
}

impl fmt::Debug for NatsConfig {
    // A URL may carry a user and password (`nats://user:secret@host`): never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url))
            .field("bucket", &self.bucket)
            .field("credentials", &self.credentials)
            .field("require_tls", &self.require_tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("storage", &self.storage)
            .field("replicas", &self.replicas)
            .field("history", &self.history)
            .field("max_value_size", &self.max_value_size)
            .field("marker_ttl", &self.marker_ttl)
            .field("enable_message_ttl", &self.enable_message_ttl)
            .finish()
    }
}

/// `url` (comma-separated servers) with the user information of each replaced by `***`.
fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| match server.rsplit_once('@') {
            Some((before, host)) => {
                let scheme = before.split_once("://").map_or("", |(scheme, _)| scheme);
                if scheme.is_empty() {
                    format!("***@{host}")
                } else {
                    format!("{scheme}://***@{host}")
                }
            }
            None => server.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsConfig {
    /// A store on the servers in `url` (`nats://host:4222`, comma-separated for several), in
    /// PURISTA's bucket.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            bucket: DEFAULT_BUCKET.to_owned(),
            credentials: Credentials::None,
            require_tls: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            storage: StorageType::File,
            replicas: 1,
            history: 1,
            max_value_size: 1024 * 1024,
            marker_ttl: Duration::from_secs(60),
            enable_message_ttl: false,
        }
    }

    /// Reads `NATS_URL` (default `nats://127.0.0.1:4222`), `NATS_BUCKET`, and credentials from
    /// `NATS_USER`/`NATS_PASSWORD`, `NATS_TOKEN`, `NATS_NKEY` or `NATS_CREDS` (a file path).
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok();
        let mut config =
            NatsConfig::new(var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()));
        if let Some(bucket) = var("NATS_BUCKET") {
            config.bucket = bucket;
        }
        config.credentials = match (
            var("NATS_USER"),
            var("NATS_PASSWORD"),
            var("NATS_TOKEN"),
            var("NATS_NKEY"),
            var("NATS_CREDS"),
        ) {
            (Some(user), Some(password), ..) => Credentials::UserPassword { user, password },
            (_, _, Some(token), ..) => Credentials::Token(token),
            (_, _, _, Some(seed), _) => Credentials::NKey(seed),
            (.., Some(path)) => Credentials::CredsFile(path.into()),
            _ => Credentials::None,
        };
        config
    }

    /// The KV bucket (default `purista-state-store`, PURISTA's).
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// How to authenticate.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Require TLS.
    pub fn require_tls(mut self, on: bool) -> Self {
        self.require_tls = on;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a read or a write may wait for the server, including while reconnecting,
    /// before it fails with `Unavailable` (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Replicas of a bucket this store creates (default 1; 3 in a cluster).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Keep a bucket this store creates in memory instead of files (default: files).
    pub fn memory_storage(mut self, on: bool) -> Self {
        self.storage = if on {
            StorageType::Memory
        } else {
            StorageType::File
        };
        self
    }

    /// Largest value of a bucket this store creates (default 1 MiB).
    pub fn max_value_size(mut self, bytes: i32) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// How long removal markers (and the markers of expired keys) stay in a bucket this store
    /// creates before the server drops them (default 60 s, at least 1 s). Removing keys then
    /// never grows the stream without bound.
    pub fn marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Turn per-message TTL on when the bucket exists without it (default off). PURISTA creates
    /// its bucket without per-message TTL; on such a bucket TTL writes fail with
    /// `Unsupported` (never stored forever) unless this is on, in which case opening the store
    /// updates the bucket's stream once (`allow_msg_ttl`, and delete markers kept for
    /// [`NatsConfig::marker_ttl`]). nats-server allows turning it on, not off again; PURISTA
    /// keeps working on the updated bucket.
    pub fn enable_message_ttl(mut self, on: bool) -> Self {
        self.enable_message_ttl = on;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let valid_bucket = !self.bucket.is_empty()
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_bucket {
            return Err(Error::config(format!(
                "invalid NATS KV bucket name {:?} (use [A-Za-z0-9_-])",
                self.bucket
            )));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config("NATS timeouts must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords_in_urls() {
        let config =
            NatsConfig::new("nats://ada:hunter2@127.0.0.1:4222,tls://bob:pw@h:1,nats://h:2");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("pw@"),
            "{shown}"
        );
        assert!(shown.contains("nats://***@127.0.0.1:4222"), "{shown}");
        assert!(shown.contains("nats://h:2"), "{shown}");
    }
}
