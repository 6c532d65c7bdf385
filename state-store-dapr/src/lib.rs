//! `DaprStateStore`: state through a [Dapr](https://dapr.io) sidecar's gRPC state API, using
//! the generated client of the [`dapr`] crate (its high-level client hides gRPC status codes and
//! lacks bulk get).
//!
//! ```no_run
//! use state_store_core::StateStore;
//! use state_store_dapr::{DaprConfig, DaprStateStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), state_store_core::Error> {
//! let config = DaprConfig::from_url("dapr://127.0.0.1:50001/statestore")?;
//! let store = StateStore::from(DaprStateStore::connect(config).await?);
//! store.set_state("session:abc", &serde_json::json!({ "user": "ada" })).await?;
//! store.destroy().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Tested against a real `daprd` built from Go modules (`daprd/` in this crate) with the
//! `state.redis` and `state.in-memory` components.

mod config;
mod error;
pub mod key;
mod store;

pub use config::DaprConfig;
pub use store::DaprStateStore;

/// Re-exported so your dapr version matches ours.
pub use dapr;
/// Re-exported for [`DaprStateStore::from_client`]'s channel, so versions match.
pub use tonic;
