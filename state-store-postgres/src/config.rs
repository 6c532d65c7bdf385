//! How to reach PostgreSQL, and where the state lives there.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use state_store_core::{Error, Result};

/// Env var [`PostgresConfig::from_env`] reads.
pub const POSTGRES_URL_VAR: &str = "STATE_STORE_POSTGRES_URL";

/// Settings of a [`PostgresStateStore`](crate::PostgresStateStore).
///
/// ```
/// use std::time::Duration;
/// use state_store_postgres::PostgresConfig;
///
/// let config = PostgresConfig::from_url(
///     "postgres://app:secret@127.0.0.1:5432/app?schema=state&table=kv&pool_size=8",
/// )?
/// .with_request_timeout(Duration::from_secs(2));
/// assert_eq!(config.table(), "kv");
/// // The password never shows.
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), state_store_core::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) pool_size: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) migrate: bool,
    pub(crate) tls: TlsFiles,
}

/// Certificate files for servers with a private CA or that verify clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// A PEM file of certificate authorities to trust, besides the system's.
    pub(crate) root_certificates: Option<PathBuf>,
    /// Client certificate and key PEM files.
    pub(crate) client_certificate: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        f.debug_struct("PostgresConfig")
            .field("hosts", &hosts)
            .field("ports", &self.pg.get_ports())
            .field("user", &self.pg.get_user())
            .field("dbname", &self.pg.get_dbname())
            .field("password", &self.pg.get_password().map(|_| "<redacted>"))
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("sweep_interval", &self.sweep_interval)
            .field("migrate", &self.migrate)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Query parameters of ours (libpq's names for the TLS files); the rest go to tokio-postgres
/// (libpq's: `sslmode`, `application_name`, `connect_timeout`, …).
const OWN_PARAMETERS: [&str; 8] = [
    "schema",
    "table",
    "pool_size",
    "request_timeout_ms",
    "migrate",
    "sslrootcert",
    "sslcert",
    "sslkey",
];

impl PostgresConfig {
    /// Parses `postgres://` or `postgresql://user:password@host:port/database?…` (libpq's
    /// URL form). Besides libpq's parameters: `schema` (default `public`), `table` (default
    /// `state_store`), `pool_size` (default 16), `request_timeout_ms` (default 5000) and
    /// `migrate=false` (do not create or upgrade the table on connect).
    ///
    /// TLS (the `rustls` feature): `sslmode=require` (libpq's `verify-ca` and `verify-full`
    /// mean the same here: the server's certificate is always verified, name included),
    /// `sslrootcert=<pem file>` for a private CA, `sslcert=<pem>&sslkey=<pem>` for a client
    /// certificate; either file turns `require` on. Otherwise (libpq's default `prefer`,
    /// which would accept any certificate unverified) the connection is plaintext: ask for
    /// `require` where the network is not trusted.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for another scheme, a URL tokio-postgres refuses, a schema or table
    /// name that is not a plain identifier, or a bad parameter.
    pub fn from_url(url: &str) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::config(
                "a PostgreSQL URL starts with postgres:// or postgresql://",
            ));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut own = Vec::new();
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if OWN_PARAMETERS.contains(&name) {
                own.push((name, value));
            } else if let ("sslmode", "verify-ca" | "verify-full") = (name, value) {
                // rustls always verifies, the name too: libpq's strictest modes are ours.
                passed.push("sslmode=require");
            } else {
                passed.push(pair);
            }
        }
        let rest = if passed.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        // tokio-postgres's error would quote the URL, password included: say it without.
        let pg = tokio_postgres::Config::from_str(&rest)
            .map_err(|_| Error::config("not a PostgreSQL URL tokio-postgres understands"))?;
        let mut config = PostgresConfig::new(pg);
        let mut client_files = (None, None);
        for (name, value) in own {
            let path = || -> Result<PathBuf> {
                Ok(PathBuf::from(percent_decode(value).ok_or_else(|| {
                    Error::config(format!("the {name} path is not UTF-8"))
                })?))
            };
            match name {
                "sslrootcert" => {
                    config.tls.root_certificates = Some(path()?);
                    continue;
                }
                "sslcert" => {
                    client_files.0 = Some(path()?);
                    continue;
                }
                "sslkey" => {
                    client_files.1 = Some(path()?);
                    continue;
                }
                _ => {}
            }
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| Error::config(format!("{name} must be a number, not {value:?}")))
            };
            config = match name {
                "schema" => config.with_schema(value)?,
                "table" => config.with_table(value)?,
                "pool_size" => config.with_pool_size(usize::try_from(number()?).unwrap_or(0))?,
                "request_timeout_ms" => {
                    config.with_request_timeout(Duration::from_millis(number()?))
                }
                _ => config.with_migrate(match value {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(Error::config(format!(
                            "migrate is true or false, not {other:?}"
                        )))
                    }
                }),
            };
        }
        config.tls.client_certificate = match client_files {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(Error::config("sslcert and sslkey go together")),
        };
        // Certificate files mean TLS, as `with_root_certificates` does.
        if config.tls != TlsFiles::default() {
            config.pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        config.check_tls()?;
        Ok(config)
    }

    /// Whether this build can do the TLS asked for: without the `rustls` feature, a required
    /// TLS connection or certificate files are refused rather than ignored (the password would
    /// go out in the clear).
    fn check_tls(&self) -> Result<()> {
        let wants_tls = self.pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require
            || self.tls != TlsFiles::default();
        if wants_tls && !cfg!(feature = "rustls") {
            return Err(Error::config(
                "TLS needs the `rustls` feature of state-store-postgres (postgres-rustls in \
                 state-store)",
            ));
        }
        Ok(())
    }

    /// [`PostgresConfig::from_url`] on the URL in `STATE_STORE_POSTGRES_URL`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the variable is missing or its URL is refused.
    pub fn from_env() -> Result<Self> {
        let url = std::env::var(POSTGRES_URL_VAR)
            .map_err(|_| Error::config(format!("{POSTGRES_URL_VAR} is not set")))?;
        Self::from_url(&url)
    }

    /// Settings around a tokio-postgres config, with the defaults: table `public.state_store`,
    /// 16 connections, 5 s per request and per connect, expired rows swept every 60 s, the
    /// table created or upgraded on connect.
    pub fn new(pg: tokio_postgres::Config) -> Self {
        PostgresConfig {
            pg,
            schema: "public".to_owned(),
            table: "state_store".to_owned(),
            pool_size: 16,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(60),
            migrate: true,
            tls: TlsFiles::default(),
        }
    }

    /// The schema the table lives in (created when missing). A plain identifier: ASCII
    /// letters, digits and `_`, not starting with a digit, at most 40 bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for any other name.
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        self.schema = identifier("schema", schema)?;
        Ok(self)
    }

    /// The table (default `state_store`); its sequence and indexes are named after it. A
    /// plain identifier, as for [`PostgresConfig::with_schema`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for any other name.
    pub fn with_table(mut self, table: &str) -> Result<Self> {
        self.table = identifier("table", table)?;
        Ok(self)
    }

    /// Connections in the pool at most (default 16).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for 0.
    pub fn with_pool_size(mut self, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::config("a pool needs at least one connection"));
        }
        self.pool_size = size;
        Ok(self)
    }

    /// How long one call may take, waiting for a connection included (default 5 s). A read
    /// past it is `Unavailable`; a write past it is `OutcomeUnknown` (it may have committed).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long opening a connection may take (default 5 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self.pg.connect_timeout(timeout);
        self
    }

    /// How often expired rows are deleted, in batches of 1000 (default 60 s). Reads never
    /// see an expired row in between.
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Whether `connect` creates the schema, table, sequence and indexes, or upgrades them
    /// (default true). Off: run [`PostgresStateStore::migrate`](crate::PostgresStateStore::migrate)
    /// yourself, say from a deploy step with more privileges.
    pub fn with_migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Trusts the certificate authorities in this PEM file, besides the system's roots, for a
    /// server with a certificate of a private CA (libpq's `sslrootcert`). Turns TLS on
    /// (`sslmode=require`).
    #[cfg(feature = "rustls")]
    pub fn with_root_certificates(mut self, pem: impl Into<PathBuf>) -> Self {
        self.tls.root_certificates = Some(pem.into());
        self.pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        self
    }

    /// Presents this client certificate and key (PEM files) to a server that verifies
    /// clients (libpq's `sslcert` and `sslkey`). Turns TLS on (`sslmode=require`).
    #[cfg(feature = "rustls")]
    pub fn with_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls.client_certificate = Some((cert.into(), key.into()));
        self.pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        self
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The tokio-postgres config (hosts, user, database, TLS mode).
    pub fn pg(&self) -> &tokio_postgres::Config {
        &self.pg
    }
}

/// A percent-decoded URL value; `None` when it is not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// `name` if it is a plain identifier: quoted in SQL, it means what it says.
fn identifier(what: &str, name: &str) -> Result<String> {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 40;
    if plain {
        Ok(name.to_owned())
    } else {
        Err(Error::config(format!(
            "a {what} name is ASCII letters, digits and _, not starting with a digit, at most \
             40 bytes: {name:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_are_taken_and_the_rest_passed_on() {
        let config = PostgresConfig::from_url(
            "postgresql://u:p@localhost:5433/db?application_name=x&table=t1&pool_size=3",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.table(), "t1");
        assert_eq!(config.pool_size, 3);
        assert_eq!(config.pg.get_application_name(), Some("x"));
        assert_eq!(config.pg.get_ports(), &[5433]);
    }

    #[test]
    fn bad_settings_are_config_errors_that_never_show_the_password() {
        for url in [
            "redis://localhost",
            "postgres://u:hunter2@localhost/db?table=a-b",
            "postgres://u:hunter2@localhost/db?schema=1x",
            "postgres://u:hunter2@localhost/db?pool_size=0",
            "postgres://u:hunter2@localhost/db?pool_size=many",
            "postgres://u:hunter2@localhost/db?migrate=maybe",
            "postgres://u:hunter2@localhost:notaport/db",
        ] {
            match PostgresConfig::from_url(url) {
                Err(err @ Error::Config { .. }) => {
                    assert!(!err.to_string().contains("hunter2"), "{url}: {err}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn tls_files_are_ours_and_verify_modes_mean_require() {
        let parsed = PostgresConfig::from_url(
            "postgres://u@localhost/db?sslmode=verify-full&sslrootcert=/etc/my%20ca.pem",
        );
        if cfg!(feature = "rustls") {
            let config = parsed.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                config.pg.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
            assert_eq!(
                config.tls.root_certificates,
                Some(PathBuf::from("/etc/my ca.pem"))
            );
            assert!(PostgresConfig::from_url("postgres://u@localhost/db?sslcert=/c.pem").is_err());
        } else {
            assert!(
                matches!(parsed, Err(Error::Config { ref message, .. }) if message.contains("rustls")),
                "{parsed:?}"
            );
        }
        // The default (prefer) needs nothing: it falls back to plaintext.
        assert!(PostgresConfig::from_url("postgres://u@localhost/db").is_ok());
    }

    #[test]
    fn debug_redacts_the_password() {
        let config = PostgresConfig::from_url("postgres://u:hunter2@localhost/db")
            .unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
