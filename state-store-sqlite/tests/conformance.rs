//! The whole suite on SQLite; every handle the suite opens is its own connection (and thread)
//! on one file, as separate processes would be.

use std::sync::Arc;

use state_store_core::{StateStore, StoreConfig};
use state_store_sqlite::{SqliteConfig, SqliteStateStore};
use state_store_testkit::harness::temp_dir;

state_store_conformance::conformance_suite!({
    let dir = Arc::new(temp_dir("sqlite-conformance"));
    move |config: StoreConfig| {
        let dir = Arc::clone(&dir);
        async move {
            let store =
                SqliteStateStore::connect(SqliteConfig::new(dir.path().join("state.db"))).await?;
            Ok(StateStore::with_config(store, config))
        }
    }
});
