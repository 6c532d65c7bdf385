//! Shared by the example programs: choosing a store from the command line or environment.

use state_store_core::{DefaultStateStore, Error, StateStore};
use state_store_sqlite::{SqliteConfig, SqliteStateStore};

/// Where the examples keep state unless told otherwise.
pub const DEFAULT_URL: &str = "sqlite://./state.db";

/// The store URL: `--store <url>` on the command line, else `STATE_STORE_URL`, else
/// [`DEFAULT_URL`].
pub fn store_url() -> String {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--store" {
            if let Some(url) = args.next() {
                return url;
            }
        } else if let Some(url) = arg.strip_prefix("--store=") {
            return url.to_owned();
        }
    }
    std::env::var("STATE_STORE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Opens the store a URL names: `sqlite://<path>` or `memory://`.
///
/// # Errors
///
/// [`Error::Config`] for an unknown scheme; whatever opening the store reports.
pub async fn open(url: &str) -> Result<StateStore, Error> {
    match url.split_once(':').map(|(scheme, _)| scheme) {
        Some("sqlite") => SqliteStateStore::connect(SqliteConfig::from_url(url)?).await,
        Some("memory") => Ok(StateStore::new(DefaultStateStore::new())),
        _ => Err(Error::config(format!(
            "unknown store URL {url:?}; use sqlite://<path> or memory://"
        ))),
    }
}
