//! How to connect: a URL, the environment, or a ready JetStream context.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use state_store_core::{Error, Result, Timeouts};

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

/// Settings of a [`NatsStateStore`](crate::NatsStateStore).
///
/// ```
/// use std::time::Duration;
/// use state_store_nats::{Credentials, NatsConfig};
///
/// let config = NatsConfig::from_url("nats://ada:s3cret@127.0.0.1:4222?bucket=orders-state")?
///     .with_request_timeout(Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// let config = NatsConfig::new("nats://127.0.0.1:4222")
///     .with_bucket("orders-state")
///     .with_credentials(Credentials::Token("s3cret".into()));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), state_store_core::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    pub(crate) url: String,
    pub(crate) bucket: String,
    pub(crate) credentials: Credentials,
    pub(crate) require_tls: bool,
    pub(crate) tls: Tls,
    pub(crate) timeouts: Timeouts,
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
            .field("require_tls", &self.requires_tls())
            .field("tls", &self.tls)
            .field("timeouts", &self.timeouts)
            .field("storage", &self.storage)
            .field("replicas", &self.replicas)
            .field("history", &self.history)
            .field("max_value_size", &self.max_value_size)
            .field("marker_ttl", &self.marker_ttl)
            .field("enable_message_ttl", &self.enable_message_ttl)
            .finish()
    }
}

/// TLS files and mode of a [`NatsConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tls {
    /// A PEM file of certificate authorities to trust.
    pub(crate) root_certificates: Option<PathBuf>,
    /// Client certificate and key PEM files.
    pub(crate) client_certificate: Option<(PathBuf, PathBuf)>,
    /// TLS before the server's first message.
    pub(crate) first: bool,
}

/// `url` (comma-separated servers) with the user information of each replaced by `***`.
fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| match server.rsplit_once('@') {
            Some((before, host)) => match before.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://***@{host}"),
                None => format!("***@{host}"),
            },
            None => server.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsConfig {
    /// A store on the servers in `url` (`nats://host:4222`, comma-separated for several), in
    /// PURISTA's bucket. Credentials in the URL are left to the client; [`NatsConfig::from_url`]
    /// parses them.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            bucket: DEFAULT_BUCKET.to_owned(),
            credentials: Credentials::None,
            require_tls: false,
            tls: Tls::default(),
            timeouts: Timeouts::default(),
            storage: StorageType::File,
            replicas: 1,
            history: 1,
            max_value_size: 1024 * 1024,
            marker_ttl: Duration::from_secs(60),
            enable_message_ttl: false,
        }
    }

    /// Parses `nats://[user:password@|token@]host[:port][,nats://host2:port…][?bucket=name]`
    /// (also `tls://`, which makes TLS required on every server). Credentials are
    /// percent-decoded (`p%40ss` for `p@ss`) and taken out of the server list; `bucket`
    /// chooses the KV bucket; `tls_ca=<pem file>`, `tls_cert=<pem file>&tls_key=<pem file>`
    /// and `tls_first=true` are [`NatsConfig::with_root_certificates`],
    /// [`NatsConfig::with_client_certificate`] and [`NatsConfig::with_tls_first`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for another scheme, a server that does not parse, or an unknown
    /// parameter (the URL is not repeated: it may hold a password).
    pub fn from_url(url: &str) -> Result<Self> {
        let mut servers = Vec::new();
        let mut credentials = Credentials::None;
        let mut bucket = None;
        let mut tls = Tls::default();
        let mut client = (None, None);
        for server in url.split(',').map(str::trim) {
            let parsed = url::Url::parse(server)
                .map_err(|e| Error::config_with("invalid NATS server URL", e))?;
            // WebSocket URLs would need async-nats' `websockets` feature, not built here.
            if !matches!(parsed.scheme(), "nats" | "tls") {
                return Err(Error::config("a NATS URL starts with nats:// or tls://"));
            }
            let host = parsed
                .host_str()
                .ok_or_else(|| Error::config("a NATS URL needs a host"))?;
            let user = decode(parsed.username())?;
            match (user.is_empty(), parsed.password().map(decode).transpose()?) {
                (true, _) => {}
                (false, Some(password)) => {
                    credentials = Credentials::UserPassword { user, password }
                }
                (false, None) => credentials = Credentials::Token(user),
            }
            for (name, value) in parsed.query_pairs() {
                match name.as_ref() {
                    "bucket" => bucket = Some(value.into_owned()),
                    "tls_ca" => tls.root_certificates = Some(value.into_owned().into()),
                    "tls_cert" => client.0 = Some(PathBuf::from(value.into_owned())),
                    "tls_key" => client.1 = Some(PathBuf::from(value.into_owned())),
                    "tls_first" => tls.first = value == "true",
                    _ => return Err(Error::config("unknown NATS URL parameter")),
                }
            }
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            servers.push(format!("{}://{host}{port}", parsed.scheme()));
        }
        tls.client_certificate = match client {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(Error::config("tls_cert and tls_key go together")),
        };
        let mut config = NatsConfig::new(servers.join(",")).with_credentials(credentials);
        config.tls = tls;
        if let Some(bucket) = bucket {
            config.bucket = bucket;
        }
        Ok(config)
    }

    /// [`NatsConfig::from_url`] of `NATS_URL` (default `nats://127.0.0.1:4222`), then
    /// `NATS_BUCKET`, and credentials from `NATS_USER`/`NATS_PASSWORD`, `NATS_TOKEN`,
    /// `NATS_NKEY` or `NATS_CREDS` (a file path) when set.
    ///
    /// # Errors
    ///
    /// As [`NatsConfig::from_url`].
    pub fn from_env() -> Result<Self> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let url = var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into());
        let mut config = NatsConfig::from_url(&url)?;
        if let Some(bucket) = var("NATS_BUCKET") {
            config.bucket = bucket;
        }
        let credentials = match (
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
            _ => return Ok(config),
        };
        Ok(config.with_credentials(credentials))
    }

    /// The KV bucket (default `purista-state-store`, PURISTA's).
    pub fn with_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// How to authenticate.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Require TLS on every server, those the cluster announces included. Always on when a
    /// server URL is `tls://` or a TLS option below is set: turning it off then changes
    /// nothing.
    pub fn with_require_tls(mut self, on: bool) -> Self {
        self.require_tls = on;
        self
    }

    /// Trust the certificate authorities in this PEM file (besides the system's roots), for
    /// servers with certificates of a private CA. Makes TLS required.
    pub fn with_root_certificates(mut self, pem: impl Into<PathBuf>) -> Self {
        self.tls.root_certificates = Some(pem.into());
        self
    }

    /// Present this client certificate and key (PEM files) to servers that verify clients
    /// (mutual TLS). Makes TLS required.
    pub fn with_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// Start TLS before the server's first message (servers with `handshake_first`), instead
    /// of upgrading after it. Makes TLS required.
    pub fn with_tls_first(mut self, on: bool) -> Self {
        self.tls.first = on;
        self
    }

    /// Whether connections must be TLS: asked for, implied by a `tls://` server or a TLS
    /// option. A server that cannot do it is refused with `Config`, never used in the clear.
    pub(crate) fn requires_tls(&self) -> bool {
        self.require_tls
            || self.tls != Tls::default()
            || self.url.split(',').any(|server| {
                server
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("tls://")
            })
    }

    state_store_core::timeout_setters!();

    /// Replicas of a bucket this store creates (default 1; 3 in a cluster).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Keep a bucket this store creates in memory instead of files (default: files).
    pub fn with_memory_storage(mut self, on: bool) -> Self {
        self.storage = if on {
            StorageType::Memory
        } else {
            StorageType::File
        };
        self
    }

    /// Largest value of a bucket this store creates (default 1 MiB).
    pub fn with_max_value_size(mut self, bytes: i32) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// How long removal markers (and the markers of expired keys) stay in a bucket this store
    /// creates before the server drops them (default 60 s, at least 1 s). Removing keys then
    /// never grows the stream without bound.
    pub fn with_marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Turn per-message TTL on when the bucket exists without it (default off). PURISTA creates
    /// its bucket without per-message TTL; on such a bucket TTL writes fail with
    /// `Unsupported` (never stored forever) unless this is on, in which case opening the store
    /// updates the bucket's stream once (`allow_msg_ttl`, and delete markers kept for
    /// [`NatsConfig::with_marker_ttl`]). nats-server allows turning it on, not off again;
    /// PURISTA keeps working on the updated bucket.
    pub fn with_message_ttl(mut self, on: bool) -> Self {
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
        self.timeouts.validate("NATS")
    }
}

/// Percent-decodes a URL's user information.
fn decode(text: &str) -> Result<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| Error::config_with("NATS URL credentials are not UTF-8", e))
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

    #[test]
    fn urls_carry_decoded_credentials_and_the_bucket() {
        let config =
            NatsConfig::from_url("nats://ad%40a:p%40ss%2Fw@127.0.0.1:4222?bucket=b1").expect("url");
        assert!(matches!(
            &config.credentials,
            Credentials::UserPassword { user, password } if user == "ad@a" && password == "p@ss/w"
        ));
        assert_eq!(config.url, "nats://127.0.0.1:4222");
        assert_eq!(config.bucket, "b1");
        let config = NatsConfig::from_url("tls://t0k3n@h:1,nats://h:2").expect("url");
        assert!(matches!(&config.credentials, Credentials::Token(t) if t == "t0k3n"));
        assert_eq!(config.url, "tls://h:1,nats://h:2");
        for bad in ["redis://h:1", "nats://h:1?what=1", "nats://", "ws://h:1"] {
            let err = NatsConfig::from_url(bad).expect_err(bad);
            assert!(matches!(err, Error::Config { .. }), "{err:?}");
        }
    }
}
