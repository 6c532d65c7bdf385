//! How to connect: a URL, the environment, or a ready fred client.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use fred::types::config::{Config, ServerConfig};
use state_store_core::{Error, Result, Timeouts};

use crate::error::map;

/// Settings of a [`RedisStateStore`](crate::RedisStateStore) built by this crate.
///
/// ```
/// use std::time::Duration;
/// use state_store_redis::RedisConfig;
///
/// let config = RedisConfig::from_url("redis://user:s3cret@127.0.0.1:6379/0")?
///     .with_request_timeout(Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), state_store_core::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    pub(crate) fred: Config,
    pub(crate) timeouts: Timeouts,
    pub(crate) reconnect_max_attempts: u32,
    pub(crate) reconnect_max_delay: Duration,
    pub(crate) enable_notifications: bool,
    pub(crate) tls_files: TlsFiles,
}

/// `url` without its `tls_ca`, `tls_cert` and `tls_key` parameters (fred does not know them),
/// and the files they name.
fn take_tls_files(url: &str) -> Result<(String, TlsFiles)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), TlsFiles::default()));
    };
    let mut files = TlsFiles::default();
    let mut client = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let decode = |value: &str| -> Result<PathBuf> {
            Ok(PathBuf::from(
                percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|e| Error::config_with("a TLS file path is not UTF-8", e))?
                    .into_owned(),
            ))
        };
        match pair.split_once('=') {
            Some(("tls_ca", value)) => files.root_certificates = Some(decode(value)?),
            Some(("tls_cert", value)) => client.0 = Some(decode(value)?),
            Some(("tls_key", value)) => client.1 = Some(decode(value)?),
            _ => kept.push(pair),
        }
    }
    files.client_certificate = match client {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(Error::config("tls_cert and tls_key go together")),
    };
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, files))
}

/// Certificate files for servers with a private CA or that verify clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// A PEM file of certificate authorities to trust, besides the system's.
    pub(crate) root_certificates: Option<PathBuf>,
    /// Client certificate and key PEM files (mutual TLS).
    pub(crate) client_certificate: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = match &self.fred.server {
            ServerConfig::Centralized { server } => vec![server.to_string()],
            ServerConfig::Clustered { hosts, .. } => {
                hosts.iter().map(ToString::to_string).collect()
            }
            _ => vec!["(other)".to_owned()],
        };
        f.debug_struct("RedisConfig")
            .field("servers", &servers)
            .field("cluster", &self.fred.server.is_clustered())
            .field("username", &self.fred.username)
            .field(
                "password",
                &self.fred.password.as_ref().map(|_| "<redacted>"),
            )
            .field("database", &self.fred.database)
            .field("tls", &self.tls())
            .field("tls_files", &self.tls_files)
            .field("timeouts", &self.timeouts)
            .field("reconnect_max_attempts", &self.reconnect_max_attempts)
            .field("enable_notifications", &self.enable_notifications)
            .finish()
    }
}

impl RedisConfig {
    /// Parses a Redis URL: `redis://[user[:password]@]host[:port][/db]`,
    /// `redis-cluster://host:port?node=host2:port2` (cluster), `redis-sentinel://…`, and the
    /// same over TLS: `rediss://…`, `rediss-cluster://…`, `rediss-sentinel://…` (with the
    /// `rustls` feature; the server's certificate is verified against the system's roots).
    /// `tls_ca=<pem file>` and `tls_cert=<pem file>&tls_key=<pem file>` are
    /// `with_root_certificates` and `with_client_certificate`. A user or password holding
    /// `@`, `:` or `/` is percent-encoded (`p%40ss` for `p@ss`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL fred cannot parse (the URL is not repeated: it may hold a
    /// password).
    pub fn from_url(url: &str) -> Result<Self> {
        // fred takes any scheme for a plain server; a typo should not silently connect.
        const SCHEMES: [&str; 6] = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
            "redis-sentinel://",
            "rediss-sentinel://",
        ];
        if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(Error::config(
                "a Redis URL starts with redis://, redis-cluster:// or redis-sentinel:// \
                 (rediss… for TLS)",
            ));
        }
        let (url, tls_files) = take_tls_files(url)?;
        let wants_tls = url.starts_with("rediss") || tls_files != TlsFiles::default();
        // Without rustls, fred would connect to a `rediss://` server in the clear (and send the
        // password so): refuse instead.
        if wants_tls && !cfg!(feature = "rustls") {
            return Err(Error::config(
                "TLS needs the `rustls` feature of state-store-redis (redis-rustls in state-store)",
            ));
        }
        let fred = Config::from_url(&url).map_err(map)?;
        Ok(RedisConfig {
            fred,
            timeouts: Timeouts::default(),
            reconnect_max_attempts: 0,
            reconnect_max_delay: Duration::from_secs(2),
            enable_notifications: false,
            tls_files,
        })
    }

    /// Trusts the certificate authorities in this PEM file, besides the system's roots, for
    /// servers with certificates of a private CA. Turns TLS on.
    #[cfg(feature = "rustls")]
    pub fn with_root_certificates(mut self, pem: impl Into<PathBuf>) -> Self {
        self.tls_files.root_certificates = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM files) to servers that verify clients
    /// (`tls-auth-clients yes`). Turns TLS on.
    #[cfg(feature = "rustls")]
    pub fn with_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls_files.client_certificate = Some((cert.into(), key.into()));
        self
    }

    /// The fred config to connect with: the TLS files read into a verifying connector.
    pub(crate) fn fred_config(&self) -> Result<Config> {
        #[cfg(feature = "rustls")]
        if self.tls_files != TlsFiles::default() {
            let mut fred = self.fred.clone();
            fred.tls = Some(crate::tls::connector(&self.tls_files)?.into());
            return Ok(fred);
        }
        Ok(self.fred.clone())
    }

    /// Reads `REDIS_URL`, defaulting to `redis://127.0.0.1:6379`.
    ///
    /// # Errors
    ///
    /// As [`RedisConfig::from_url`].
    pub fn from_env() -> Result<Self> {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        Self::from_url(&url)
    }

    /// Sets the ACL user and password (overriding the URL's).
    pub fn with_credentials(mut self, username: Option<String>, password: Option<String>) -> Self {
        self.fred.username = username;
        self.fred.password = password;
        self
    }

    state_store_core::timeout_setters!();

    /// Reconnect policy after a lost connection: at most `max_attempts` tries (0 = forever, the
    /// default), backing off exponentially up to `max_delay` (default 2 s).
    pub fn with_reconnect(mut self, max_attempts: u32, max_delay: Duration) -> Self {
        self.reconnect_max_attempts = max_attempts;
        self.reconnect_max_delay = max_delay;
        self
    }

    /// Lets [`connect`](crate::RedisStateStore::connect) turn on the keyspace notifications a
    /// watch needs (`CONFIG SET notify-keyspace-events`, adding `K$gx` to the server's flags)
    /// when the server has them off. Off by default: it changes the server for every client,
    /// and costs it a publish per write. Where `CONFIG` is refused, the setting stays as it is.
    pub fn with_keyspace_notifications(mut self, enable: bool) -> Self {
        self.enable_notifications = enable;
        self
    }

    /// True for a cluster URL.
    pub fn is_cluster(&self) -> bool {
        self.fred.server.is_clustered()
    }

    fn tls(&self) -> bool {
        #[cfg(feature = "rustls")]
        {
            self.fred.tls.is_some() || self.tls_files != TlsFiles::default()
        }
        #[cfg(not(feature = "rustls"))]
        {
            false
        }
    }

    /// Checks what this build can do.
    pub(crate) fn validate(&self) -> Result<()> {
        self.timeouts.validate("Redis")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(err: &dyn std::error::Error) -> String {
        let mut out = format!("{err} {err:?}");
        let mut source = err.source();
        while let Some(cause) = source {
            out.push_str(&format!(" {cause} {cause:?}"));
            source = cause.source();
        }
        out
    }

    #[test]
    fn passwords_stay_out_of_debug_and_errors() {
        let config = RedisConfig::from_url("redis://ada:pa55word@127.0.0.1:6379/2").expect("url");
        let shown = format!("{config:?}");
        assert!(!shown.contains("pa55word"), "{shown}");
        assert!(shown.contains("<redacted>"));
        for bad in [
            "redis://ada:pa55word@127.0.0.1:notaport",
            "ftp://ada:pa55word@host",
        ] {
            let err = RedisConfig::from_url(bad).expect_err("bad url");
            assert!(matches!(err, Error::Config { .. }), "{err:?}");
            assert!(!chain(&err).contains("pa55word"), "{}", chain(&err));
        }
    }

    #[test]
    #[cfg(not(feature = "rustls"))]
    fn tls_urls_need_the_rustls_feature() {
        for url in [
            "rediss://:secret@127.0.0.1:6380",
            "rediss-cluster://:secret@127.0.0.1:6380",
            "rediss-sentinel://:secret@127.0.0.1:26379/0?sentinelServiceName=m",
            "redis://:secret@127.0.0.1:6380?tls_ca=/ca.pem",
        ] {
            let err = RedisConfig::from_url(url).expect_err("no TLS");
            assert!(matches!(err, Error::Config { .. }), "{err:?}");
            assert!(!chain(&err).contains("secret"));
        }
    }

    #[test]
    #[cfg(feature = "rustls")]
    fn every_tls_scheme_turns_tls_on() {
        for url in [
            "rediss://127.0.0.1:6380",
            "rediss-cluster://127.0.0.1:7000?node=127.0.0.1:7001",
            "redis://127.0.0.1:6379?tls_ca=%2Fetc%2Fca.pem",
        ] {
            let config = RedisConfig::from_url(url).expect("url");
            assert!(config.tls(), "{url}");
        }
        let config = RedisConfig::from_url("redis://h:1/0?tls_ca=%2Fca.pem").expect("url");
        assert_eq!(
            config.tls_files.root_certificates.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let half = RedisConfig::from_url("rediss://h:1?tls_cert=/c.pem").expect_err("no key");
        assert!(matches!(half, Error::Config { .. }), "{half:?}");
    }

    #[test]
    fn percent_encoded_credentials_are_decoded() {
        let config =
            RedisConfig::from_url("redis://ad%40a:p%40ss%2Fw%3Ard@127.0.0.1:6379").expect("url");
        assert_eq!(config.fred.username.as_deref(), Some("ad@a"));
        assert_eq!(config.fred.password.as_deref(), Some("p@ss/w:rd"));
    }
}
