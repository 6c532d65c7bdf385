//! `NatsStateStore`: state in a NATS JetStream KV bucket over
//! [async-nats](https://docs.rs/async-nats), sharing PURISTA's bucket and wire format.
//!
//! ```no_run
//! use state_store_core::StateStore;
//! use state_store_nats::{NatsConfig, NatsStateStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), state_store_core::Error> {
//! let config = NatsConfig::from_url("nats://127.0.0.1:4222")?;
//! let store = StateStore::from(NatsStateStore::connect(config).await?);
//! store.set_state("session:abc", &serde_json::json!({ "user": "ada" })).await?;
//! store.destroy().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Any UTF-8 key works (see [`key`]); TTL needs nats-server ≥ 2.11 and a bucket with
//! per-message TTL, which buckets this crate creates have.

mod config;
mod error;
pub mod key;
mod link;
mod listing;
mod message;
mod store;
mod watch;

pub use config::{Credentials, NatsConfig, DEFAULT_BUCKET};
pub use store::NatsStateStore;

/// Re-exported so your async-nats version matches ours.
pub use async_nats;
