//! `PostgresStateStore`: state-store on PostgreSQL.
//!
//! Many teams already run PostgreSQL and would rather not add Redis or NATS for sessions,
//! counters, locks and rate limits. This adapter keeps the whole `state-store` contract in one
//! table — versions that are never reused, `Create`/`Update` conflicts, atomic `increment`,
//! TTL on the server's clock, one query for many names, listing by prefix, and a resumable
//! watch that sees every change in order (a change feed written in each write's statement while
//! a watch holds it, woken by `LISTEN`/`NOTIFY`) — each operation one statement, checked by the
//! shared conformance suite against a real server.
//!
//! ```no_run
//! use serde_json::json;
//! use state_store_core::StateStore;
//! use state_store_postgres::{PostgresConfig, PostgresStateStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), state_store_core::Error> {
//! let config = PostgresConfig::from_url("postgres://app:secret@127.0.0.1/app")?;
//! let store = StateStore::from(PostgresStateStore::connect(config).await?);
//! store.set_state("session:abc", &json!({ "user": "ada" })).await?;
//! println!("visit #{}", store.increment("visits", 1, None).await?);
//! store.destroy().await?;
//! # Ok(())
//! # }
//! ```
//!
//! tokio-postgres with a deadpool pool rather than sqlx: a smaller dependency tree (no query
//! macros, no drivers for other databases), statements prepared once per connection and
//! cached, and a pool that drops a connection which broke or timed out instead of handing it
//! out again.

mod config;
mod error;
mod schema;
mod store;
#[cfg(feature = "rustls")]
mod tls;
mod watch;

pub use config::{PostgresConfig, POSTGRES_URL_VAR};
pub use store::PostgresStateStore;

/// Re-exported so versions match (bring-your-own pool: [`PostgresStateStore::with_pool`]).
pub use deadpool_postgres;
/// Re-exported so versions match ([`PostgresConfig::new`] takes its config).
pub use tokio_postgres;
