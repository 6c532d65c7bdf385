//! How to open a SQLite state store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use state_store_core::{Error, Result};

/// The longest [`SqliteConfig::with_busy_timeout`]: SQLite counts it in `int` milliseconds.
pub const MAX_BUSY_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// The longest [`SqliteConfig::with_sweep_interval`].
pub const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// How hard SQLite works to survive a power cut (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `NORMAL`: in WAL mode a commit survives a process crash; a power cut may lose the last
    /// commits, never corrupt the file. The default, and what most services want.
    #[default]
    Normal,
    /// `FULL`: every commit is synced to disk before it returns; survives a power cut, slower.
    Full,
}

/// Settings of a [`SqliteStateStore`](crate::SqliteStateStore).
///
/// ```
/// use std::time::Duration;
/// use state_store_sqlite::{Durability, SqliteConfig};
///
/// let config = SqliteConfig::new("./state.db")
///     .with_durability(Durability::Full)
///     .with_busy_timeout(Duration::from_secs(2));
/// assert_eq!(config.path().to_str(), Some("./state.db"));
/// let config = SqliteConfig::from_url("sqlite://./my%20state.db?durability=full")?;
/// assert_eq!(config.path().to_str(), Some("./my state.db"));
/// # Ok::<(), state_store_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    pub(crate) path: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) busy_timeout: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) create_dirs: bool,
}

impl SqliteConfig {
    /// A store in the file at `path` (created with its parent directories when missing).
    pub fn new(path: impl AsRef<Path>) -> Self {
        SqliteConfig {
            path: path.as_ref().to_owned(),
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            create_dirs: true,
        }
    }

    /// Parses `sqlite://<path>` (`sqlite://./state.db`, `sqlite:///var/lib/app/state.db`) or
    /// `sqlite:<path>`; the path is percent-decoded (`my%20state.db`). Query parameters:
    /// `durability=normal|full`, `busy_timeout_ms=<n>`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for another scheme, an empty path or a bad parameter.
    pub fn from_url(url: &str) -> Result<Self> {
        // Split by hand rather than with `url::Url`: `sqlite://./state.db` carries a relative
        // path where a URL has its host.
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| Error::config("a SQLite URL starts with sqlite://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .map_err(|e| Error::config_with("the SQLite path is not UTF-8", e))?;
        if path.is_empty() {
            return Err(Error::config("a sqlite URL needs a file path"));
        }
        let mut config = SqliteConfig::new(path.as_ref());
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match (name.as_ref(), value.as_ref()) {
                ("durability", "normal") => config.durability = Durability::Normal,
                ("durability", "full") => config.durability = Durability::Full,
                ("busy_timeout_ms", ms) => {
                    let ms = ms
                        .parse()
                        .map_err(|_| Error::config(format!("bad busy_timeout_ms: {ms:?}")))?;
                    config = config.with_busy_timeout(Duration::from_millis(ms));
                }
                (name, _) => {
                    return Err(Error::config(format!(
                        "unknown sqlite URL parameter {name:?}"
                    )))
                }
            }
        }
        Ok(config)
    }

    /// The file in `STATE_STORE_SQLITE_PATH`, defaulting to `./state.db`.
    ///
    /// # Errors
    ///
    /// None today; a `Result` like every adapter's `from_env`.
    pub fn from_env() -> Result<Self> {
        let path =
            std::env::var_os("STATE_STORE_SQLITE_PATH").unwrap_or_else(|| "./state.db".into());
        Ok(SqliteConfig::new(PathBuf::from(path)))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the [`Durability`] (default [`Durability::Normal`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a call waits for another process's write lock before failing with
    /// `Unavailable` (default 5 s; at most [`MAX_BUSY_TIMEOUT`], SQLite's own limit).
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout.min(MAX_BUSY_TIMEOUT);
        self
    }

    /// How often expired rows are deleted in the background (default 1 s, between 10 ms and
    /// a day). Each sweep deletes every row expired by then, in batches between calls. A sweep
    /// that finds another process holding the write lock gives up after 2 ms and tries at the
    /// next interval; after ten such sweeps in a row one waits the busy timeout. Expired rows
    /// are invisible to reads either way.
    pub fn with_sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every.clamp(Duration::from_millis(10), MAX_SWEEP_INTERVAL);
        self
    }

    /// Whether missing parent directories are created (default on).
    pub fn with_create_dirs(mut self, on: bool) -> Self {
        self.create_dirs = on;
        self
    }
}
