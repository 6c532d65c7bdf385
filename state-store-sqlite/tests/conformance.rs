//! The whole suite on SQLite; every handle the suite opens is its own connection (and thread)
//! on one file, as separate processes would be. The multi-process cases start copies of this
//! binary on the same file ([`DIR_VAR`] names its directory).

use std::path::PathBuf;
use std::sync::Arc;

use state_store_conformance::across_processes;
use state_store_core::{StateStore, StoreConfig};
use state_store_sqlite::{SqliteConfig, SqliteStateStore};
use state_store_testkit::harness::temp_dir;

/// The directory of the database, for worker processes.
const DIR_VAR: &str = "STATE_STORE_TEST_SQLITE_DIR";

state_store_conformance::conformance_suite!({
    // A worker process opens its parent's file; the parent makes a fresh one.
    let (dir, keep) = match std::env::var_os(DIR_VAR) {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let temp = temp_dir("sqlite-conformance");
            (temp.path().to_owned(), Some(Arc::new(temp)))
        }
    };
    let env = vec![(DIR_VAR.to_owned(), dir.display().to_string())];
    across_processes(
        move |config: StoreConfig| {
            let path = dir.join("state.db");
            let _keep = keep.clone();
            async move {
                let store = SqliteStateStore::connect(SqliteConfig::new(path)).await?;
                Ok(StateStore::with_config(store, config))
            }
        },
        env,
    )
});
