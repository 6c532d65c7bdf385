//! Persistent, shared application state for services — the contract.
//!
//! Sessions, counters, job status, rate-limit windows, locks and cached computations that
//! survive restarts and are shared by every instance of a service. The surface mirrors
//! [PURISTA](https://purista.dev)'s state store (`getState(...names)`, `setState`,
//! `removeState`, `destroy`) and adds what it lacks: compare-and-set, atomic increments, TTL per
//! key, any UTF-8 key on every backend, one round trip for many names, and one set of value
//! semantics for every backend.
//!
//! This crate holds:
//! - [`Backend`]: the small trait an adapter implements (six methods: bytes, versions,
//!   options), with the optional operations it has natively as [`Extensions`];
//! - [`layer`]: each cross-cutting concern once, as a layer over any backend (key prefix,
//!   limits, capability and closed checks, completion of what a backend lacks, timeouts,
//!   tracing);
//! - [`StateStore`]: the cheap-to-clone handle services hold, over a stack of layers: the
//!   enable flags and default TTL of its [`StoreConfig`], JSON encoding, typed
//!   `get::<T>` / `set` / `update::<T>`, leases, rate limits, listing and watching;
//! - [`DefaultStateStore`]: the whole contract in memory (lost on restart).
//!
//! Adapters live in their own crates: `state-store-sqlite` (embedded, persistent),
//! `state-store-redis`, `state-store-nats`, `state-store-dapr`. Each is checked by the shared
//! `state-store-conformance` suite, which your own store can run with one macro line.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use state_store_core::{DefaultStateStore, SetMode, SetOptions, StateStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), state_store_core::Error> {
//! let store = StateStore::new(DefaultStateStore::new());
//!
//! // PURISTA's surface.
//! store.set_state("job:42", &json!({ "status": "queued" })).await?;
//! let state = store.get_state(&["job:42", "job:43"]).await?;
//! assert_eq!(state["job:42"], Some(json!({ "status": "queued" })));
//! assert_eq!(state["job:43"], None);
//!
//! // Beyond it: atomic counters with a fixed window, compare-and-set, TTL.
//! let hits = store.increment("rate:ada", 1, Some(Duration::from_secs(60))).await?;
//! assert_eq!(hits, 1);
//! let entry = store.get_entry("job:42").await?.expect("just written");
//! store
//!     .set_with("job:42", &json!({ "status": "running" }), SetOptions::new().mode(SetMode::Update(entry.version)))
//!     .await?;
//! store.remove_state("job:42").await?;
//! # Ok(())
//! # }
//! ```

//!
//! # Locks and leader election
//!
//! [`StateStore::lease`] takes an expiring lock with a [`FencingToken`] that grows strictly per
//! name across holders, releases, expiry and removals (and server restarts on persistent
//! stores); [`StateStore::with_lease`] runs a body while renewing, [`StateStore::elect`]
//! campaigns for leadership, and [`StateStore::set_fenced`] is a write that refuses tokens
//! older than the highest it has seen. They work wherever [`Capabilities::leases`] holds.
//!
//! An expiring lock is an *efficiency* lock: a holder paused past its TTL (GC, swapping, a
//! slow disk) can wake up still acting as the holder while the next one works. For
//! *correctness*, every write a holder makes must carry its token and be checked where it
//! lands — [`StateStore::set_fenced`] here, a token column elsewhere. [`Lease::lost`] fires at
//! a local deadline that starts before the request that took or renewed the lease, so it
//! passes before the server's; what remains assumed is that clocks tick at about the same rate
//! during one TTL (and, on NATS, whose deadlines are written by the writer's clock, that
//! clients' clocks agree). A lease is not released on drop (that would need to wait for the
//! server); its TTL ends it.
//!
//! ```
//! # use std::time::Duration;
//! # use state_store_core::{DefaultStateStore, StateStore};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), state_store_core::Error> {
//! let store = StateStore::new(DefaultStateStore::new());
//! let ran = store
//!     .with_lease("nightly-report", Duration::from_secs(30), |lease| {
//!         let store = store.clone();
//!         async move { store.set_fenced("report:status", &"done", lease.fencing_token()).await }
//!     })
//!     .await?;
//! assert!(matches!(ran, Some(Ok(()))));
//! # Ok(())
//! # }
//! ```

mod backend;
mod capability;
mod cas;
mod change;
mod compute;
mod config;
mod election;
mod error;
mod fenced;
mod key;
pub mod layer;
mod lease;
mod listing;
mod memory;
mod native;
mod ratelimit;
mod retry;
mod store;
mod telemetry;
mod typed;
mod version;

pub use backend::{
    AcquireLease, Backend, CheckRateLimit, Extensions, Increment, ListKeys, SetMode, SetOptions,
    WatchInvalidations, WatchKeys, MAX_TTL,
};
pub use capability::{Capabilities, WatchSupport};
pub use cas::{
    increment_with_cas, parse_counter, retry_lost_races, CloseFlag, CAS_DEADLINE, CAS_RETRIES,
};
pub use change::{
    invalidation_channel, invalidations_of, watch_channel, BackendEvent, Invalidation,
    InvalidationStream, KeyPage, KeySelector, RemoveCause, WatchStart, WatchStream,
};
pub use compute::{Compute, DEFAULT_COMPUTE_WAIT};
pub use config::{
    StoreConfig, Timeouts, DEFAULT_MAX_KEY_LEN, DEFAULT_MAX_VALUE_LEN, DEFAULT_UPDATE_RETRIES,
};
pub use election::{Election, Leader, LeaderEvent, LeaderObserver};
pub use error::{report, BoxError, Error, JsonError, Operation, Result};
pub use fenced::Fenced;
pub use key::{PREFIX_SEPARATOR, RESERVED_MARKER};
#[cfg(feature = "metrics")]
pub use layer::MetricsLayer;
pub use layer::{
    BreakerState, Call, CallInfo, CapabilityLayer, CircuitBreakerLayer, ClosedLayer,
    CompletionLayer, Intercept, Intercepted, Layer, LimitLayer, NamespaceLayer, NearCacheLayer,
    RetryLayer, Site, StateStoreBuilder, TimeoutLayer, TracingLayer, MAX_COOL_DOWN,
    MAX_NAMES_PER_CALL, MAX_RETRY_DEADLINE,
};
pub use lease::{FencingToken, Lease, LeaseRequest, DEFAULT_LEASE_TTL, MIN_LEASE_TTL};
pub use listing::{ListOptions, Page, Selector, Watch, WatchEvent, DEFAULT_PAGE, MAX_PAGE};
pub use memory::DefaultStateStore;
pub use native::{LeaseAcquire, LeaseGrant, RateAlgorithm, RateLimitReply, RateLimitRequest};
pub use ratelimit::{gcra_step, Decision, FailurePolicy, Limiter, Quota};
pub use retry::Backoff;
pub use store::{StateEntry, StateMap, StateStore};
pub use version::{Entry, Version};

/// Re-exported so `async_trait` versions match when you implement [`Backend`].
pub use async_trait::async_trait;
/// Re-exported: values are `serde_json::Value`.
pub use serde_json;
