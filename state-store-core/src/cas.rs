//! Compare-and-set helpers for backend implementors and the completion layer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::backend::{Backend, SetMode, SetOptions};
use crate::error::{Error, Result};
use crate::retry::Backoff;

/// Whether something was closed, shared by whoever must know: [`ClosedLayer`](crate::ClosedLayer)
/// holds one for a handle, its clones and its prefixed views; a backend whose background work
/// must not restart after `close` (the NATS store's redialling) holds its own.
#[derive(Debug, Default)]
pub struct CloseFlag(AtomicBool);

impl CloseFlag {
    /// A flag for an open backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Ok` while open; [`Error::Closed`] naming `store` after [`CloseFlag::close`].
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once closed.
    pub fn check(&self, store: &str) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed {
                store: store.to_owned(),
            });
        }
        Ok(())
    }

    /// True after [`CloseFlag::close`].
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Marks the backend closed; true the first time, so only one caller closes connections.
    pub fn close(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }
}

/// How many times [`increment_with_cas`] tries before giving up with [`Error::Conflict`].
pub const CAS_RETRIES: usize = 1000;

/// How long [`increment_with_cas`] keeps retrying lost races before giving up.
pub const CAS_DEADLINE: Duration = Duration::from_secs(30);

/// Atomic increment for a backend that has compare-and-set but no native increment.
///
/// Reads the counter, writes `old + delta` with [`SetMode::Update`] and
/// [`SetOptions::keep_ttl`] (or [`SetMode::Create`] with `ttl` when missing), and on
/// [`Error::Conflict`] backs off (exponentially, with jitter) and tries again. Atomic across
/// processes because every write is conditional; a counter created with a TTL keeps its
/// original deadline (fixed-window rate limits).
///
/// # Errors
///
/// [`Error::NotAnInteger`] for a non-integer value or on overflow; [`Error::Conflict`] after
/// [`CAS_RETRIES`] lost races or [`CAS_DEADLINE`]; anything `get_many` or `set` return.
pub async fn increment_with_cas<B: Backend + ?Sized>(
    backend: &B,
    key: &str,
    delta: i64,
    ttl: Option<Duration>,
) -> Result<i64> {
    let keys = [key.to_owned()];
    let mut backoff = Backoff::new(CAS_RETRIES, CAS_DEADLINE);
    loop {
        let current = backend.get_many(&keys).await?.pop().flatten();
        let (next, mode) = match current {
            None => (delta, SetMode::Create),
            Some(entry) => {
                let old = parse_counter(key, &entry.value)?;
                let next = old.checked_add(delta).ok_or_else(|| Error::NotAnInteger {
                    key: key.to_owned(),
                })?;
                (next, SetMode::Update(entry.version))
            }
        };
        let options = SetOptions {
            mode,
            ttl,
            keep_ttl: true,
            want_version: false,
        };
        match backend
            .set(key, next.to_string().into_bytes(), &options)
            .await
        {
            Ok(_) => return Ok(next),
            Err(Error::Conflict { .. }) if backoff.wait().await => {}
            Err(other) => return Err(other),
        }
    }
}

/// Runs `attempt` — one try of an upsert that keeps the key's TTL by writing conditionally
/// on what it read — again after each lost race ([`Error::Conflict`]): losing it is no
/// conflict for the caller, only a reason to read again. Gives up as [`increment_with_cas`]
/// does. For backend implementors whose store cannot keep a TTL in one write.
///
/// # Errors
///
/// [`Error::Conflict`] after [`CAS_RETRIES`] lost races or [`CAS_DEADLINE`]; any other error
/// of `attempt` at once.
pub async fn retry_lost_races<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = Backoff::new(CAS_RETRIES, CAS_DEADLINE);
    loop {
        match attempt().await {
            Err(Error::Conflict { .. }) if backoff.wait().await => {}
            other => return other,
        }
    }
}

/// Parses a stored counter: JSON text that is an integer within `i64`.
///
/// # Errors
///
/// [`Error::NotAnInteger`] for anything else (floats, strings, objects, invalid JSON).
pub fn parse_counter(key: &str, value: &[u8]) -> Result<i64> {
    match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(serde_json::Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .ok_or_else(|| Error::NotAnInteger {
        key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_only_integers() {
        assert_eq!(parse_counter("k", b"42").ok(), Some(42));
        assert_eq!(parse_counter("k", b" -7 ").ok(), Some(-7));
        for bad in [
            &b"1.5"[..],
            b"\"1\"",
            b"{}",
            b"null",
            b"18446744073709551615",
            b"x",
        ] {
            assert!(matches!(
                parse_counter("k", bad),
                Err(Error::NotAnInteger { .. })
            ));
        }
    }
}
