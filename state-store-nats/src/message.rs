//! What a stored message says: its headers (TTL, deadline, removal markers), its version, its
//! change for a watch.

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream;
use async_nats::HeaderValue;
use state_store_core::{BackendEvent, RemoveCause, Version};

pub(crate) const KV_OPERATION: &str = "KV-Operation";
pub(crate) const NATS_TTL: &str = "Nats-TTL";
pub(crate) const NATS_ROLLUP: &str = "Nats-Rollup";
pub(crate) const MARKER_REASON: &str = "Nats-Marker-Reason";
/// Our own header on a value written with a TTL: its deadline in Unix milliseconds. NATS
/// keeps TTLs in whole seconds and restarts them on every write; this keeps a deadline exact
/// and fixed across rewrites ([`SetOptions::keep_ttl`]).
pub(crate) const EXPIRES_AT: &str = "State-Store-Expires-At";
/// Room left for headers below the server's payload limit.
pub(crate) const HEADER_ROOM: usize = 1024;

/// A watched message as a change: `None` for subjects that are not our keys.
pub(crate) fn change(kv_prefix: &str, message: &jetstream::Message) -> Option<BackendEvent> {
    let key = crate::key::decode(message.subject.strip_prefix(kv_prefix)?)?;
    let info = message.info().ok()?;
    let revision = info.stream_sequence;
    let headers = message.headers.as_ref();
    if headers.is_some_and(is_tombstone) {
        let expired = headers
            .and_then(|h| h.get(MARKER_REASON))
            .is_some_and(|reason| reason.as_str() == "MaxAge");
        return Some(BackendEvent::Removed {
            key,
            cause: if expired {
                RemoveCause::Expired
            } else {
                RemoveCause::Removed
            },
            version: Some(Version::new(revision.to_string())),
        });
    }
    let deadline = headers.and_then(|h| {
        h.get(EXPIRES_AT)
            .and_then(|v| v.as_str().parse::<i128>().ok())
    });
    Some(BackendEvent::Put {
        key,
        value: message.payload.to_vec(),
        version: version(revision, deadline),
    })
}

/// [`is_live`] from a message's headers and publish time.
pub(crate) fn headers_live(
    headers: &HeaderMap,
    published: time::OffsetDateTime,
    now: i128,
) -> bool {
    if is_tombstone(headers) {
        return false;
    }
    let deadline = headers
        .get(EXPIRES_AT)
        .and_then(|v| v.as_str().parse::<i128>().ok())
        .or_else(|| {
            let ttl = message_ttl(headers)?;
            let written = published.unix_timestamp_nanos() / 1_000_000;
            Some(written + i128::try_from(ttl.as_millis()).unwrap_or(i128::MAX))
        });
    deadline.is_none_or(|at| at > now)
}

pub(crate) fn is_tombstone(headers: &HeaderMap) -> bool {
    headers.get(MARKER_REASON).is_some()
        || headers
            .get(KV_OPERATION)
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
}

/// The client clock in Unix milliseconds.
pub(crate) fn now_ms() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
}

/// When a stored value expires, in Unix milliseconds: our exact deadline header, else the
/// server's `Nats-TTL` from the message's time (values PURISTA or older releases wrote).
pub(crate) fn deadline_ms(message: &jetstream::message::StreamMessage) -> Option<i128> {
    if let Some(at) = message
        .headers
        .get(EXPIRES_AT)
        .and_then(|v| v.as_str().parse::<i128>().ok())
    {
        return Some(at);
    }
    let ttl = message_ttl(&message.headers)?;
    let written = message.time.unix_timestamp_nanos() / 1_000_000;
    Some(written + i128::try_from(ttl.as_millis()).unwrap_or(i128::MAX))
}

/// A value that has not been removed and whose deadline has not passed. The server drops an
/// expired message up to a second or so after its deadline; until then it reads as missing.
pub(crate) fn is_live(message: &jetstream::message::StreamMessage, now: i128) -> bool {
    !is_tombstone(&message.headers) && deadline_ms(message).is_none_or(|at| at > now)
}

/// Headers giving a value the deadline `at` (Unix ms): ours, exact, and the server's
/// `Nats-TTL`, rounded up to whole seconds (at least one) so the server never drops it early.
pub(crate) fn insert_deadline(headers: &mut HeaderMap, at: i128, now: i128) {
    headers.insert(NATS_TTL, HeaderValue::from(ttl_secs(millis(at - now))));
    headers.insert(EXPIRES_AT, HeaderValue::from(at.to_string().as_str()));
}

/// The `Nats-TTL` of a message: whole seconds (`"5"`) or a Go duration (`"1m30s"`, `"500ms"`).
pub(crate) fn message_ttl(headers: &HeaderMap) -> Option<Duration> {
    parse_ttl(headers.get(NATS_TTL)?.as_str())
}

pub(crate) fn parse_ttl(text: &str) -> Option<Duration> {
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(value * scale).ok()?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Whole seconds for `Nats-TTL`, rounded up: the client's own `as_secs()` would turn 500 ms
/// into 0, which never expires.
pub(crate) fn ttl_secs(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A version: the revision, and the value's deadline (Unix ms) when it has one, so that a
/// compare-and-set knows without a read whether the value it was read from has expired.
pub(crate) fn version(revision: u64, deadline: Option<i128>) -> Version {
    let deadline = deadline.map(|at| i64::try_from(at).unwrap_or(i64::MAX));
    Version::with_deadline(&revision.to_string(), deadline)
}

/// The revision and deadline of a version this store gave; `None` for any other.
pub(crate) fn parse_version(version: &Version) -> Option<(u64, Option<i128>)> {
    let (revision, deadline) = version.token_and_deadline();
    Some((revision.parse().ok()?, deadline.map(i128::from)))
}

/// A span in milliseconds as a `Duration`: zero when negative, saturating when huge.
pub(crate) fn millis(ms: i128) -> Duration {
    Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(500)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(60)), 60);
        assert_eq!(ttl_secs(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn ttl_headers_parse() {
        assert_eq!(parse_ttl("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_ttl("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_ttl("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_ttl("never"), None);
    }
}
