//! `SqliteStateStore`: persistent state without a server.
//!
//! PURISTA's only server-less store is in memory and forgets everything on restart. This one
//! keeps state in a SQLite file (bundled SQLite, nothing to install): it survives restarts, and
//! several processes on one host can share it (WAL mode with a busy timeout). It implements the
//! whole `state-store` contract — versions, `Create`/`Update` conflicts, atomic `increment`, TTL,
//! one query for many names — and is checked by the shared conformance suite.
//!
//! ```no_run
//! use serde_json::json;
//! use state_store_core::StateStore;
//! use state_store_sqlite::{SqliteConfig, SqliteStateStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), state_store_core::Error> {
//! let store = StateStore::from(SqliteStateStore::connect(SqliteConfig::new("./state.db")).await?);
//! store.set_state("session:abc", &json!({ "user": "ada" })).await?;
//! println!("visit #{}", store.increment("visits", 1, None).await?);
//! store.destroy().await?;
//! # Ok(())
//! # }
//! ```
//!
//! See [`SqliteStateStore`] for threading and [`SqliteConfig`] for durability.

mod config;
mod error;
mod store;

pub use config::{Durability, SqliteConfig, MAX_BUSY_TIMEOUT, MAX_SWEEP_INTERVAL};
#[doc(hidden)]
pub use store::sql;
pub use store::SqliteStateStore;

/// Re-exported so versions match.
pub use rusqlite;
