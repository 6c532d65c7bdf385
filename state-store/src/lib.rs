//! Persistent, shared application state for Rust services — sessions, counters, job status,
//! rate-limit windows, locks, cached computations — that survives restarts and is shared by
//! every instance of a service.
//!
//! This is the crate most services add. It re-exports the contract ([`StateStore`], [`Error`],
//! [`SetOptions`], …) and opens any backend from a URL, one cargo feature per backend:
//!
//! | URL | feature | store |
//! |---|---|---|
//! | `sqlite://./state.db` | `sqlite` (default) | [`sqlite::SqliteStateStore`]: a file, no server |
//! | `memory://` | — | [`DefaultStateStore`]: this process only, lost on exit |
//! | `redis://…`, `redis-cluster://…` (`rediss://…`: `redis-rustls`) | `redis` | `redis::RedisStateStore` |
//! | `nats://…`, `tls://…` | `nats` | `nats::NatsStateStore` (JetStream KV) |
//! | `dapr://host:port/<component>` | `dapr` | `dapr::DaprStateStore` |
//!
//! ```
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), state_store::Error> {
//! # let dir = std::env::temp_dir().join(format!("state-store-doc-{}", std::process::id()));
//! # let url = format!("sqlite://{}/state.db", dir.display());
//! let store = state_store::open(&url).await?; // or "redis://127.0.0.1:6379", "nats://…"
//!
//! store.set_state("session:abc", &json!({ "user": "ada" })).await?;
//! let visits = store.increment("visits", 1, None).await?;
//! let state = store.get_state(&["session:abc", "visits"]).await?;
//! assert_eq!(state["session:abc"], Some(json!({ "user": "ada" })));
//! assert!(visits >= 1);
//! store.destroy().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Each adapter crate is re-exported as a module (`state_store::redis`, …) for its config and
//! bring-your-own-client constructor; `StateStore::from(adapter)` wraps one in a handle.

pub use state_store_core::*;

#[cfg(feature = "dapr")]
pub use state_store_dapr as dapr;
#[cfg(feature = "nats")]
pub use state_store_nats as nats;
#[cfg(feature = "redis")]
pub use state_store_redis as redis;
#[cfg(feature = "sqlite")]
pub use state_store_sqlite as sqlite;

/// Opens the store a URL names, with the default [`StoreConfig`]. See the table in the crate
/// docs for the schemes.
///
/// # Errors
///
/// [`Error::Config`] for an unknown scheme, a scheme whose cargo feature is off (the message
/// names the feature), or a bad URL; whatever connecting to the store reports
/// ([`Error::Unavailable`] when its server does not answer).
pub async fn open(url: &str) -> Result<StateStore> {
    open_with(url, StoreConfig::default()).await
}

/// Opens the store a URL names, with `config` (prefix, enable flags, limits, default TTL).
///
/// # Errors
///
/// As [`open`].
pub async fn open_with(url: &str, config: StoreConfig) -> Result<StateStore> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    match scheme {
        "memory" => Ok(StateStore::with_config(DefaultStateStore::new(), config)),
        "sqlite" => open_sqlite(url, config).await,
        "redis" | "rediss" | "redis-cluster" | "redis-sentinel" => open_redis(url, config).await,
        "nats" | "tls" => open_nats(url, config).await,
        "dapr" => open_dapr(url, config).await,
        _ => Err(Error::config(format!(
            "unknown state store URL scheme {scheme:?}: use sqlite://, memory://, redis://, nats:// or dapr://"
        ))),
    }
}

/// `Config` error for a scheme whose feature is off.
#[allow(dead_code)] // unused when every feature is on
fn feature_off(feature: &str) -> Error {
    Error::config(format!(
        "{feature}:// URLs need the `{feature}` feature of the state-store crate \
         (state-store = {{ version = \"0.1\", features = [\"{feature}\"] }})"
    ))
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(url: &str, config: StoreConfig) -> Result<StateStore> {
    let store = sqlite::SqliteStateStore::connect(sqlite::SqliteConfig::from_url(url)?).await?;
    Ok(StateStore::with_config(store, config))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_: &str, _: StoreConfig) -> Result<StateStore> {
    Err(feature_off("sqlite"))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str, config: StoreConfig) -> Result<StateStore> {
    let store = redis::RedisStateStore::connect(redis::RedisConfig::from_url(url)?).await?;
    Ok(StateStore::with_config(store, config))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_: &str, _: StoreConfig) -> Result<StateStore> {
    Err(feature_off("redis"))
}

#[cfg(feature = "nats")]
async fn open_nats(url: &str, config: StoreConfig) -> Result<StateStore> {
    let store = nats::NatsStateStore::connect(nats::NatsConfig::from_url(url)?).await?;
    Ok(StateStore::with_config(store, config))
}

#[cfg(not(feature = "nats"))]
async fn open_nats(_: &str, _: StoreConfig) -> Result<StateStore> {
    Err(feature_off("nats"))
}

#[cfg(feature = "dapr")]
async fn open_dapr(url: &str, config: StoreConfig) -> Result<StateStore> {
    let store = dapr::DaprStateStore::connect(dapr::DaprConfig::from_url(url)?).await?;
    Ok(StateStore::with_config(store, config))
}

#[cfg(not(feature = "dapr"))]
async fn open_dapr(_: &str, _: StoreConfig) -> Result<StateStore> {
    Err(feature_off("dapr"))
}

/// The crate README, compiled as a doctest so its example stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_and_missing_features_are_config_errors() {
        let err = open("ftp://host/x").await.err();
        assert!(
            matches!(&err, Some(Error::Config { message, .. }) if message.contains("unknown")),
            "{err:?}"
        );
        #[cfg(not(feature = "redis"))]
        {
            let err = open("redis://127.0.0.1:6379").await.err();
            assert!(
                matches!(&err, Some(Error::Config { message, .. }) if message.contains("`redis` feature")),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn memory_urls_open_the_in_memory_store() {
        let store = open_with("memory://", StoreConfig::default().with_prefix("p"))
            .await
            .ok();
        assert_eq!(store.as_ref().map(StateStore::name), Some("memory"));
        assert_eq!(
            store.map(|s| s.config().key_prefix.clone()).as_deref(),
            Some("p")
        );
    }
}
