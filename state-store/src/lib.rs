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
//! | `postgres://…`, `postgresql://…` (`sslmode=require`: `postgres-rustls`) | `postgres` | `postgres::PostgresStateStore` |
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
//! bring-your-own-client constructor; `StateStore::from(adapter)` wraps one in a handle. A
//! backend crate of your own adds its scheme with [`register_scheme`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

pub use state_store_core::*;

#[cfg(feature = "dapr")]
pub use state_store_dapr as dapr;
#[cfg(feature = "nats")]
pub use state_store_nats as nats;
#[cfg(feature = "postgres")]
pub use state_store_postgres as postgres;
#[cfg(feature = "redis")]
pub use state_store_redis as redis;
#[cfg(feature = "sqlite")]
pub use state_store_sqlite as sqlite;

/// What an [`Opener`] returns: the backend the URL names.
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn Backend>>> + Send>>;

/// Opens the backend a URL names; it is given the whole URL. See [`register_scheme`].
pub type Opener = fn(&str) -> OpenFuture;

/// The schemes [`open`] knows: the built-in ones this build has, and the registered ones.
static SCHEMES: LazyLock<RwLock<HashMap<String, Opener>>> =
    LazyLock::new(|| RwLock::new(built_in()));

/// Built-in schemes and the cargo feature each needs, for the error naming a feature that is
/// off.
const FEATURES: [(&str, &str); 10] = [
    ("sqlite", "sqlite"),
    ("redis", "redis"),
    ("rediss", "redis"),
    ("redis-cluster", "redis"),
    ("redis-sentinel", "redis"),
    ("nats", "nats"),
    ("tls", "nats"),
    ("dapr", "dapr"),
    ("postgres", "postgres"),
    ("postgresql", "postgres"),
];

fn built_in() -> HashMap<String, Opener> {
    let mut schemes: HashMap<String, Opener> = HashMap::new();
    schemes.insert("memory".into(), |_| {
        Box::pin(async { Ok(Arc::new(DefaultStateStore::new()) as Arc<dyn Backend>) })
    });
    #[cfg(feature = "sqlite")]
    schemes.insert("sqlite".into(), |url| {
        let config = sqlite::SqliteConfig::from_url(url);
        Box::pin(async move { shared(sqlite::SqliteStateStore::connect(config?).await?) })
    });
    #[cfg(feature = "redis")]
    for scheme in ["redis", "rediss", "redis-cluster", "redis-sentinel"] {
        schemes.insert(scheme.into(), |url| {
            let config = redis::RedisConfig::from_url(url);
            Box::pin(async move { shared(redis::RedisStateStore::connect(config?).await?) })
        });
    }
    #[cfg(feature = "nats")]
    for scheme in ["nats", "tls"] {
        schemes.insert(scheme.into(), |url| {
            let config = nats::NatsConfig::from_url(url);
            Box::pin(async move { shared(nats::NatsStateStore::connect(config?).await?) })
        });
    }
    #[cfg(feature = "dapr")]
    schemes.insert("dapr".into(), |url| {
        let config = dapr::DaprConfig::from_url(url);
        Box::pin(async move { shared(dapr::DaprStateStore::connect(config?).await?) })
    });
    #[cfg(feature = "postgres")]
    for scheme in ["postgres", "postgresql"] {
        schemes.insert(scheme.into(), |url| {
            let config = postgres::PostgresConfig::from_url(url);
            Box::pin(async move { shared(postgres::PostgresStateStore::connect(config?).await?) })
        });
    }
    schemes
}

#[allow(dead_code)] // unused when every backend feature is off
fn shared(backend: impl Backend + 'static) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(backend))
}

/// Makes [`open`] and [`open_with`] open `scheme://…` URLs with `opener` — for a backend crate
/// of your own (a built-in scheme can be replaced too). Call it once at startup, before the
/// first `open` of such a URL.
///
/// ```
/// use std::sync::Arc;
/// use state_store::{Backend, DefaultStateStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store::Error> {
/// state_store::register_scheme("scratch", |_url| {
///     Box::pin(async { Ok(Arc::new(DefaultStateStore::new()) as Arc<dyn Backend>) })
/// });
/// let store = state_store::open("scratch://").await?;
/// assert_eq!(store.name(), "memory");
/// # Ok(())
/// # }
/// ```
pub fn register_scheme(scheme: &str, opener: Opener) {
    SCHEMES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(scheme.to_owned(), opener);
}

/// Opens the store a URL names, with the default [`StoreConfig`]. See the table in the crate
/// docs for the built-in schemes, and [`register_scheme`] for others.
///
/// # Errors
///
/// [`Error::Config`] for an unknown scheme, a built-in scheme whose cargo feature is off (the
/// message names the feature), or a bad URL; whatever connecting to the store reports
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
    let opener = SCHEMES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(scheme)
        .copied();
    match opener {
        Some(opener) => Ok(StateStore::from_arc(opener(url).await?, config)),
        None => Err(unknown_scheme(scheme)),
    }
}

fn unknown_scheme(scheme: &str) -> Error {
    if let Some((_, feature)) = FEATURES.iter().find(|(name, _)| *name == scheme) {
        return Error::config(format!(
            "{scheme}:// URLs need the `{feature}` feature of the state-store crate \
             (state-store = {{ version = \"0.1\", features = [\"{feature}\"] }})"
        ));
    }
    let mut known: Vec<String> = SCHEMES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .map(|scheme| format!("{scheme}://"))
        .collect();
    known.sort();
    Error::config(format!(
        "unknown state store URL scheme {scheme:?}: this build opens {}",
        known.join(", ")
    ))
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
