//! `RedisStateStore`: state in Redis over [fred](https://docs.rs/fred), wire-compatible with
//! PURISTA's `@purista/redis-state-store`.
//!
//! ```no_run
//! use state_store_core::StateStore;
//! use state_store_redis::{RedisConfig, RedisStateStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), state_store_core::Error> {
//! let config = RedisConfig::from_url("redis://127.0.0.1:6379")?;
//! let store = StateStore::from(RedisStateStore::connect(config).await?);
//! let hits = store.increment("rate:ada", 1, Some(std::time::Duration::from_secs(60))).await?;
//! println!("{hits} requests this minute");
//! store.destroy().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Build from a URL or `REDIS_URL` with [`RedisConfig`], or wrap your own fred client with
//! [`RedisStateStore::from_client`]. Standalone and cluster (`redis-cluster://`) both pass the
//! conformance suite; TLS (`rediss://`) needs the `rustls` feature.

mod config;
mod error;
mod native;
mod store;
#[cfg(feature = "rustls")]
mod tls;
mod tracking;
mod watch;

pub use config::RedisConfig;
pub use store::RedisStateStore;

/// Re-exported so your fred version matches ours.
pub use fred;
