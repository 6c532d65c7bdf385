//! Native coordination: the requests and answers of the [`AcquireLease`](crate::AcquireLease)
//! and [`CheckRateLimit`](crate::CheckRateLimit) extensions, in public types only.

use std::time::Duration;

use crate::version::Version;

/// A native rate-limit check: [`CheckRateLimit`](crate::CheckRateLimit).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RateLimitRequest<'a> {
    /// The key holding the limiter's state (prefixed).
    pub key: &'a str,
    /// The algorithm and its parameters.
    pub algorithm: RateAlgorithm,
    /// The request's weight.
    pub cost: u64,
    /// False for a peek: answer, change nothing.
    pub write: bool,
}

impl<'a> RateLimitRequest<'a> {
    /// A check of `cost` against the state at `key` that records it when it passes (set
    /// [`RateLimitRequest::write`] to false for a peek): for tests of a backend's native path.
    pub fn new(key: &'a str, algorithm: RateAlgorithm, cost: u64) -> Self {
        RateLimitRequest {
            key,
            algorithm,
            cost,
            write: true,
        }
    }
}

/// A rate-limit algorithm: [`RateLimitRequest::algorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateAlgorithm {
    /// The generic cell rate algorithm.
    Gcra {
        /// Time one unit of cost takes to restore.
        emission_interval: Duration,
        /// Most units at once.
        burst: u64,
    },
    /// A counter per window, the window starting at its first request.
    FixedWindow {
        /// Units per window.
        limit: u64,
        /// The window's length.
        window: Duration,
    },
}

/// A native rate-limit answer: [`CheckRateLimit`](crate::CheckRateLimit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitReply {
    /// Whether the request passes.
    pub allowed: bool,
    /// Units that would pass now after this request.
    pub remaining: u64,
    /// When denied, the wait until it would pass; `None` when allowed or never.
    pub retry_after: Option<Duration>,
    /// The wait until the limit is fully restored.
    pub reset_after: Duration,
}

impl RateLimitReply {
    /// A reply, for backend implementors.
    pub fn new(
        allowed: bool,
        remaining: u64,
        retry_after: Option<Duration>,
        reset_after: Duration,
    ) -> Self {
        RateLimitReply {
            allowed,
            remaining,
            retry_after,
            reset_after,
        }
    }
}

/// A lease acquisition: [`AcquireLease`](crate::AcquireLease).
///
/// The holder record is public format, built here and nowhere else:
/// `{"holder":<holder>,"nonce":<nonce>,"token":<token>}` (JSON strings, the token a decimal
/// integer, `null` until it is known).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LeaseAcquire<'a> {
    /// The key of the holder record (prefixed, like every key a backend sees).
    pub record_key: &'a str,
    /// The key of the token counter.
    pub counter_key: &'a str,
    /// Who takes the lease.
    pub holder: &'a str,
    /// A random string that tells this acquisition's record from any other.
    pub nonce: &'a str,
    /// The lease's TTL.
    pub ttl: Duration,
}

impl<'a> LeaseAcquire<'a> {
    /// A request, for layers that forward one under other keys.
    pub fn new(
        record_key: &'a str,
        counter_key: &'a str,
        holder: &'a str,
        nonce: &'a str,
        ttl: Duration,
    ) -> Self {
        LeaseAcquire {
            record_key,
            counter_key,
            holder,
            nonce,
            ttl,
        }
    }

    /// The same request for other keys.
    pub fn with_keys<'b>(&self, record_key: &'b str, counter_key: &'b str) -> LeaseAcquire<'b>
    where
        'a: 'b,
    {
        LeaseAcquire {
            record_key,
            counter_key,
            ..*self
        }
    }

    /// The holder record's JSON text before and after the token, for a backend that writes
    /// the record where the token is made (a script): `before`, the token in decimal, then
    /// `after` is [`LeaseAcquire::record`] with that token.
    pub fn record_around_token(&self) -> (String, &'static str) {
        let json = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
        let before = format!(
            "{{\"holder\":{},\"nonce\":{},\"token\":",
            json(self.holder),
            json(self.nonce)
        );
        (before, "}")
    }

    /// The holder record's JSON text, with the token or `null`.
    pub fn record(&self, token: Option<u64>) -> Vec<u8> {
        let (mut record, after) = self.record_around_token();
        match token {
            Some(token) => record.push_str(&token.to_string()),
            None => record.push_str("null"),
        }
        record.push_str(after);
        record.into_bytes()
    }
}

/// What [`AcquireLease`](crate::AcquireLease) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseGrant {
    /// The record was created with this token; `version` is the record's version.
    Granted {
        /// The counter's new value.
        token: u64,
        /// The version of the stored record.
        version: Version,
    },
    /// The record exists: somebody holds the lease. Nothing changed.
    Held,
    /// This backend has no one-call path for this request: compose it.
    NotNative,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_record_is_json_with_the_token_last() {
        let request = LeaseAcquire::new(
            "r",
            "c",
            "ada \"lovelace\" ü",
            "n0nce",
            Duration::from_secs(1),
        );
        let record: serde_json::Value =
            serde_json::from_slice(&request.record(Some(42))).unwrap_or_default();
        assert_eq!(
            record,
            serde_json::json!({ "holder": "ada \"lovelace\" ü", "nonce": "n0nce", "token": 42 })
        );
        let pending: serde_json::Value =
            serde_json::from_slice(&request.record(None)).unwrap_or_default();
        assert_eq!(pending["token"], serde_json::Value::Null);
        let (before, after) = request.record_around_token();
        assert_eq!(
            format!("{before}42{after}").into_bytes(),
            request.record(Some(42))
        );
    }
}
