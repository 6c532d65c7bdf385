//! [tower](https://docs.rs/tower) and [axum](https://docs.rs/axum) integration for
//! state-store: limits and sessions shared by every instance of a service, on any backend.
//!
//! - [`RateLimitLayer`] (feature `ratelimit`): a distributed rate limit per client IP (the
//!   peer's, or behind trusted proxies the one they forward: [`ClientIp`]), header or
//!   globally, or a limit chosen per request (route, tier); IETF `RateLimit` headers, and
//!   `429` with `Retry-After` and an RFC 9457 problem-details body; exact across instances
//!   because the count lives in the store ([`state_store_core::Limiter`]).
//! - [`SessionStore`] (features `sessions` for tower-sessions 0.15, `sessions-014` for 0.14):
//!   tower-sessions over Redis, NATS, Dapr, SQLite or memory.
//!
//! ```
//! # #[cfg(all(feature = "ratelimit", feature = "sessions"))]
//! # fn wire() {
//! use state_store_core::{DefaultStateStore, Limiter, Quota, StateStore};
//! use state_store_tower::{PeerIp, RateLimitLayer, SessionStore};
//!
//! let store = StateStore::new(DefaultStateStore::new());
//! let limits = RateLimitLayer::new(Limiter::gcra(&store, Quota::per_minute(60)), PeerIp);
//! let sessions = SessionStore::new(&store);
//! # let _ = (limits, sessions);
//! # }
//! ```

#[cfg(feature = "ratelimit")]
mod ratelimit;
#[cfg(any(feature = "sessions", feature = "sessions-014"))]
mod sessions;

#[cfg(feature = "ratelimit")]
pub use ratelimit::{
    ClientIp, Global, Header, InvalidNetwork, IpNetwork, KeyExtractor, Limit, MissingKey, PeerIp,
    RateLimit, RateLimitLayer, RequestHead, TrustedProxies, WeakSecret, MIN_SECRET_LEN,
};
#[cfg(any(feature = "sessions", feature = "sessions-014"))]
pub use sessions::SessionStore;
/// Re-exported so versions match.
pub use state_store_core;

/// The crate README, compiled as a doctest so its example stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
