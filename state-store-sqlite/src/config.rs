//! How to open a SQLite state store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use state_store_core::{Error, Result};

/// The longest [`SqliteConfig::busy_timeout`]: SQLite counts it in `int` milliseconds.
pub const MAX_BUSY_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// The longest [`SqliteConfig::sweep_interval`].
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
///     .durability(Durability::Full)
///     .busy_timeout(Duration::from_secs(2));
/// assert_eq!(config.path().to_str(), Some("./state.db"));
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
            sweep_interval: Duration::from_secs(30),
            create_dirs: true,
        }
    }

    /// Parses `sqlite://<path>` (`sqlite://./state.db`, `sqlite:///var/lib/app/state.db`) or
    /// `sqlite:<path>`. Query parameters: `durability=normal|full`, `busy_timeout_ms=<n>`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for another scheme, an empty path or a bad parameter.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| Error::config(format!("not a sqlite URL: {url:?}")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(Error::config("a sqlite URL needs a file path"));
        }
        let mut config = SqliteConfig::new(path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("durability", "normal")) => config.durability = Durability::Normal,
                Some(("durability", "full")) => config.durability = Durability::Full,
                Some(("busy_timeout_ms", ms)) => {
                    let ms = ms
                        .parse()
                        .map_err(|_| Error::config(format!("bad busy_timeout_ms: {ms:?}")))?;
                    config = config.busy_timeout(Duration::from_millis(ms));
                }
                _ => {
                    return Err(Error::config(format!(
                        "unknown sqlite URL parameter {pair:?}"
                    )))
                }
            }
        }
        Ok(config)
    }

    /// Reads `STATE_STORE_SQLITE_PATH`, defaulting to `./state.db`.
    pub fn from_env() -> Self {
        let path =
            std::env::var_os("STATE_STORE_SQLITE_PATH").unwrap_or_else(|| "./state.db".into());
        SqliteConfig::new(PathBuf::from(path))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the [`Durability`] (default [`Durability::Normal`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a call waits for another process's write lock before failing with
    /// `Unavailable` (default 5 s; at most [`MAX_BUSY_TIMEOUT`], SQLite's own limit).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout.min(MAX_BUSY_TIMEOUT);
        self
    }

    /// How often expired rows are deleted in the background (default 30 s, between 10 ms and
    /// a day). Each sweep deletes every row expired by then, in batches between calls. Expired
    /// rows are invisible to reads either way.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every.clamp(Duration::from_millis(10), MAX_SWEEP_INTERVAL);
        self
    }

    /// Whether missing parent directories are created (default on).
    pub fn create_dirs(mut self, on: bool) -> Self {
        self.create_dirs = on;
        self
    }
}
