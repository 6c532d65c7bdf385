//! The whole suite on SQLite; every handle the suite opens is its own connection (and thread)
//! on one file, as separate processes would be.

use std::sync::Arc;

use state_store_conformance::harness::TempDir;
use state_store_core::StoreConfig;
use state_store_sqlite::{SqliteConfig, SqliteStateStore};

state_store_conformance::conformance_suite!({
    let dir = Arc::new(TempDir::new("sqlite-conformance"));
    move |config: StoreConfig| {
        let dir = Arc::clone(&dir);
        async move {
            let store =
                SqliteStateStore::open(SqliteConfig::new(dir.path().join("state.db"))).await?;
            Ok(store.into_store_with(config))
        }
    }
});
