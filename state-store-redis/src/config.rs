//! How to connect: a URL, the environment, or a ready fred client.

use std::fmt;
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
            .field("timeouts", &self.timeouts)
            .field("reconnect_max_attempts", &self.reconnect_max_attempts)
            .field("enable_notifications", &self.enable_notifications)
            .finish()
    }
}

impl RedisConfig {
    /// Parses a Redis URL: `redis://[user[:password]@]host[:port][/db]`, `rediss://…` (TLS, with
    /// the `rustls` feature), or `redis-cluster://host:port?node=host2:port2` (cluster). A user
    /// or password holding `@`, `:` or `/` is percent-encoded (`p%40ss` for `p@ss`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL fred cannot parse (the URL is not repeated: it may hold a
    /// password).
    pub fn from_url(url: &str) -> Result<Self> {
        // fred takes any scheme for a plain server; a typo should not silently connect.
        const SCHEMES: [&str; 4] = [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "redis-sentinel://",
        ];
        if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(Error::config(
                "a Redis URL starts with redis://, rediss://, redis-cluster:// or redis-sentinel://",
            ));
        }
        // Without rustls, fred would connect to a `rediss://` server in the clear (and send the
        // password so): refuse instead.
        if url.starts_with("rediss://") && !cfg!(feature = "rustls") {
            return Err(Error::config(
                "rediss:// needs the `rustls` feature of state-store-redis (redis-rustls in state-store)",
            ));
        }
        let fred = Config::from_url(url).map_err(map)?;
        Ok(RedisConfig {
            fred,
            timeouts: Timeouts::default(),
            reconnect_max_attempts: 0,
            reconnect_max_delay: Duration::from_secs(2),
            enable_notifications: false,
        })
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
            self.fred.tls.is_some()
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
        let err = RedisConfig::from_url("rediss://:secret@127.0.0.1:6380").expect_err("no TLS");
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        assert!(!chain(&err).contains("secret"));
    }

    #[test]
    fn percent_encoded_credentials_are_decoded() {
        let config =
            RedisConfig::from_url("redis://ad%40a:p%40ss%2Fw%3Ard@127.0.0.1:6379").expect("url");
        assert_eq!(config.fred.username.as_deref(), Some("ad@a"));
        assert_eq!(config.fred.password.as_deref(), Some("p@ss/w:rd"));
    }
}
