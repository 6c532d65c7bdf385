//! The one error type every store returns.

use std::fmt;

/// A boxed error from a backend's client library, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every state store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operation a [`StoreConfig`](crate::StoreConfig) flag can disable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Reading state (`get_state`, `get`, `get_entry`).
    Get,
    /// Writing state (`set_state`, `set`, `set_with`, `increment`, `update`).
    Set,
    /// Removing state (`remove_state`, `remove_if`).
    Remove,
}

/// Everything that can go wrong in a state store.
///
/// Messages name the key (a state name) but never contain a stored value: state can be
/// confidential. The cause from the backend's client is kept as [`std::error::Error::source`]
/// and is never repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation is disabled by [`StoreConfig`](crate::StoreConfig). The message is
    /// PURISTA's, word for word.
    #[error("{}", disabled_message(*.operation))]
    OperationDisabled {
        /// The disabled operation.
        operation: Operation,
    },

    /// The key is empty, too long, or not representable on this backend. Nothing was written.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (a state name, shortened when very long).
        key: String,
        /// Why it was refused.
        reason: String,
    },

    /// The encoded value is larger than the configured or backend limit. Nothing was written.
    #[error("value for key {key:?} is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// The state name.
        key: String,
        /// Encoded size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },

    /// The value could not be encoded as JSON (for example a map with non-string keys).
    #[error("value for key {key:?} cannot be encoded as JSON")]
    Serialization {
        /// The state name.
        key: String,
        /// What the encoder reported, with any value fragments removed.
        #[source]
        source: JsonError,
    },

    /// The stored value is not valid JSON, or does not decode into the requested type.
    #[error("stored value for key {key:?} does not decode into {target}")]
    Decode {
        /// The state name.
        key: String,
        /// The type the caller asked for.
        target: &'static str,
        /// What the decoder reported, with any value fragments removed.
        #[source]
        source: JsonError,
    },

    /// A conditional write or remove failed: the key exists (`Create`), or its version is not
    /// the expected one (`Update`, conditional remove), or an update loop kept losing races.
    /// Nothing was written.
    #[error("conflicting write to key {key:?}")]
    Conflict {
        /// The state name.
        key: String,
    },

    /// `increment` found a value that is not a JSON integer, or the result would overflow `i64`.
    #[error("value at key {key:?} is not an integer counter, or the counter would overflow")]
    NotAnInteger {
        /// The state name.
        key: String,
    },

    /// The backend does not support this feature (its [`Capabilities`](crate::Capabilities)
    /// say so). Nothing was written.
    #[error("state store {store:?} does not support {feature}")]
    Unsupported {
        /// The store name.
        store: String,
        /// The missing feature.
        feature: &'static str,
    },

    /// A TTL was zero, or longer than [`MAX_TTL`](crate::MAX_TTL). Use no TTL to keep a value
    /// forever. Nothing was written.
    #[error("invalid TTL for key {key:?}: it must be between one millisecond and 10 years")]
    InvalidTtl {
        /// The state name.
        key: String,
    },

    /// The backend could not be reached, and the call took no effect: the request never left
    /// the client (no connection, the client refused to queue it, the connection could not be
    /// made in time), the server refused it unprocessed, or the call only read. Nothing was
    /// written, and nothing will be later. Usually transient: safe to retry.
    #[error("state store {store:?} is unavailable")]
    Unavailable {
        /// The store name.
        store: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// A write was sent (or may have been) and no answer came: a timeout after sending, or a
    /// connection lost mid-call. It may have taken effect. Read before acting on it; a
    /// compare-and-set write ([`SetMode::Create`](crate::SetMode::Create),
    /// [`SetMode::Update`](crate::SetMode::Update)) can be retried safely after reading.
    ///
    /// Once the call has returned, no reconnect sends the request again (no queued copy goes
    /// out on a new connection). What was already on its way may still be applied later,
    /// though: a frozen server processes its input when it wakes up, including bytes the
    /// connection was still delivering to it. Like FoundationDB's `commit_unknown_result`;
    /// transient ([`Error::is_transient`]).
    #[error("state store {store:?} did not answer: the write may or may not have taken effect")]
    OutcomeUnknown {
        /// The store name.
        store: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// The backend answered with an error this crate has no better variant for.
    #[error("state store {store:?} failed")]
    Backend {
        /// The store name.
        store: String,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// The store is misconfigured: bad URL, wrong credentials, missing bucket or component,
    /// settings that cannot honour the contract.
    #[error("state store configuration: {message}")]
    Config {
        /// What is wrong, without secrets.
        message: String,
        /// The underlying failure, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A fenced write ([`StateStore::set_fenced`](crate::StateStore::set_fenced)) carried a
    /// token older than one the name has already seen: a newer lease holder wrote since.
    /// Nothing was written; stop acting as the holder.
    #[error("write to key {key:?} refused: fencing token {token} is older than {highest}")]
    Fenced {
        /// The state name.
        key: String,
        /// The token the write carried.
        token: u64,
        /// The highest token the name has seen.
        highest: u64,
    },

    /// The lease is no longer held: it expired, was released, or another holder took it.
    #[error("lease {key:?} was lost")]
    LeaseLost {
        /// The lease name.
        key: String,
    },

    /// The store was destroyed; create a new one.
    #[error("state store {store:?} is closed")]
    Closed {
        /// The store name.
        store: String,
    },

    /// The loader of a cached computation ([`StateStore::compute`](crate::StateStore::compute))
    /// failed, or no value came within the wait; nothing was cached. The loader's error is the
    /// source.
    #[error("computing {key:?} failed; nothing was cached")]
    Compute {
        /// The state name.
        key: String,
        /// The loader's error (or why waiting ended).
        source: BoxError,
    },
}

fn disabled_message(operation: Operation) -> &'static str {
    match operation {
        Operation::Get => "get state from store is disabled by config",
        Operation::Set => "set state at store is disabled by config",
        Operation::Remove => "remove state from store is disabled by config",
    }
}

impl Error {
    /// The kind of error as a short, stable, low-cardinality name (`unavailable`,
    /// `outcome_unknown`, `conflict`, …): what metrics record as `error.type`. Never a key or
    /// a value.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::OperationDisabled { .. } => "operation_disabled",
            Error::InvalidKey { .. } => "invalid_key",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::Serialization { .. } => "serialization",
            Error::Decode { .. } => "decode",
            Error::Conflict { .. } => "conflict",
            Error::NotAnInteger { .. } => "not_an_integer",
            Error::Unsupported { .. } => "unsupported",
            Error::InvalidTtl { .. } => "invalid_ttl",
            Error::Unavailable { .. } => "unavailable",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::Backend { .. } => "backend",
            Error::Config { .. } => "config",
            Error::Fenced { .. } => "fenced",
            Error::LeaseLost { .. } => "lease_lost",
            Error::Closed { .. } => "closed",
            Error::Compute { .. } => "compute",
        }
    }

    /// True when retrying the same call later may succeed: the backend was unreachable
    /// ([`Error::Unavailable`]) or did not answer a write ([`Error::OutcomeUnknown`]). Before
    /// retrying a write blindly, see [`Error::may_have_applied`].
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::OutcomeUnknown { .. }
        )
    }

    /// True for [`Error::OutcomeUnknown`]: a write that failed but may have taken effect.
    /// Every other error means the call changed nothing.
    pub fn may_have_applied(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// True for [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// Builds [`Error::Unavailable`] from a client error.
    pub fn unavailable(store: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            store: store.into(),
            source: source.into(),
        }
    }

    /// Builds [`Error::OutcomeUnknown`] from a client error.
    pub fn outcome_unknown(store: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::OutcomeUnknown {
            store: store.into(),
            source: source.into(),
        }
    }

    /// For a write: the same error, except that [`Error::Unavailable`] becomes
    /// [`Error::OutcomeUnknown`]. For adapters whose client cannot tell a request that never
    /// left from one that got no answer.
    pub fn after_sending(self) -> Self {
        match self {
            Error::Unavailable { store, source } => Error::OutcomeUnknown { store, source },
            other => other,
        }
    }

    /// Builds [`Error::Backend`] from a client error.
    pub fn backend(store: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            store: store.into(),
            source: source.into(),
        }
    }

    /// Builds [`Error::Config`] without a source.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
            source: None,
        }
    }

    /// Builds [`Error::Config`] keeping the cause.
    pub fn config_with(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Config {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Builds [`Error::Unsupported`].
    pub fn unsupported(store: impl Into<String>, feature: &'static str) -> Self {
        Error::Unsupported {
            store: store.into(),
            feature,
        }
    }

    /// Builds [`Error::InvalidKey`], shortening a very long key so messages stay readable.
    pub fn invalid_key(key: &str, reason: impl Into<String>) -> Self {
        Error::InvalidKey {
            key: shorten(key),
            reason: reason.into(),
        }
    }

    /// The same error naming `rename(key)` instead of `key`, for the variants that name one.
    pub(crate) fn rename_key(mut self, rename: impl FnOnce(&str) -> Option<String>) -> Self {
        match &mut self {
            Error::InvalidKey { key, .. }
            | Error::ValueTooLarge { key, .. }
            | Error::Serialization { key, .. }
            | Error::Decode { key, .. }
            | Error::Conflict { key }
            | Error::NotAnInteger { key }
            | Error::InvalidTtl { key }
            | Error::Fenced { key, .. }
            | Error::LeaseLost { key }
            | Error::Compute { key, .. } => {
                if let Some(name) = rename(key) {
                    *key = shorten(&name);
                }
            }
            _ => {}
        }
        self
    }

    pub(crate) fn decode(key: &str, target: &'static str, source: &serde_json::Error) -> Self {
        Error::Decode {
            key: shorten(key),
            target,
            source: JsonError::redacted(source),
        }
    }

    pub(crate) fn serialization(key: &str, source: &serde_json::Error) -> Self {
        Error::Serialization {
            key: shorten(key),
            source: JsonError::redacted(source),
        }
    }
}

/// An error with its whole `source` chain on one line (`a: b: c`), for logs, command-line
/// tools and assertion messages. Safe to show: this crate's errors never carry values.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Keys longer than this are shortened in error messages.
const KEY_IN_MESSAGE: usize = 80;

pub(crate) fn shorten(key: &str) -> String {
    if key.len() <= KEY_IN_MESSAGE {
        return key.to_owned();
    }
    let mut end = KEY_IN_MESSAGE;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &key[..end], key.len())
}

/// A JSON encode or decode failure with every fragment of the value removed.
///
/// `serde_json`'s messages quote the data they choke on (`invalid type: string "hunter2"`);
/// stored state can be confidential, so only the shape of the problem is kept: the category,
/// the position, and the message with quoted data replaced by `…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    message: String,
    line: usize,
    column: usize,
}

impl JsonError {
    fn redacted(err: &serde_json::Error) -> Self {
        JsonError {
            message: redact(&err.to_string()),
            line: err.line(),
            column: err.column(),
        }
    }

    /// The message, with quoted data from the value removed.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JsonError {}

/// Removes data from a `serde_json` message.
///
/// Double-quoted strings, single-quoted chars and backticked data after `invalid type`,
/// `invalid value` and `unknown variant` are data; backticked names after `missing field`,
/// `unknown field` and `expected` are schema and stay.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let closing = match c {
            '"' => Some('"'),
            '\'' => Some('\''),
            '`' if backtick_is_data(&message[..i]) => Some('`'),
            _ => None,
        };
        match closing {
            Some(close) => {
                // Skip to the closing quote (honouring backslash escapes inside strings).
                let mut escaped = false;
                for (_, d) in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == close {
                        break;
                    }
                }
                out.push('…');
            }
            None => out.push(c),
        }
    }
    out
}

fn backtick_is_data(before: &str) -> bool {
    let clause = before.rsplit(", ").next().unwrap_or(before);
    let clause = clause.rsplit(": ").next().unwrap_or(clause);
    let leading = before.rsplit(", ").next().unwrap_or(before);
    !(clause.starts_with("expected")
        || leading.starts_with("missing field")
        || leading.starts_with("unknown field")
        || leading.starts_with("duplicate field")
        || leading.starts_with("expected"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_err<T: serde::de::DeserializeOwned + fmt::Debug>(json: &str) -> String {
        let err = serde_json::from_str::<T>(json).unwrap_err();
        JsonError::redacted(&err).to_string()
    }

    #[test]
    fn disabled_messages_are_purista_s() {
        let msg = |operation| Error::OperationDisabled { operation }.to_string();
        assert_eq!(
            msg(Operation::Get),
            "get state from store is disabled by config"
        );
        assert_eq!(
            msg(Operation::Set),
            "set state at store is disabled by config"
        );
        assert_eq!(
            msg(Operation::Remove),
            "remove state from store is disabled by config"
        );
    }

    #[test]
    fn decode_messages_never_carry_the_value() {
        let m = decode_err::<u32>(r#""hunter2""#);
        assert!(!m.contains("hunter2"), "{m}");
        assert!(m.contains("invalid type"), "{m}");
        let m = decode_err::<u8>("31337");
        assert!(!m.contains("31337"), "{m}");
        let m = decode_err::<char>(r#""secretsecret""#);
        assert!(!m.contains("secret"), "{m}");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        enum Kind {
            A,
        }
        let m = decode_err::<Kind>(r#""topsecret""#);
        assert!(!m.contains("topsecret"), "{m}");
        let m = decode_err::<Vec<u8>>(r#"["a\"b hidden"]"#);
        assert!(!m.contains("hidden"), "{m}");
    }

    #[test]
    fn decode_messages_keep_the_schema() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Session {
            user: String,
        }
        let m = decode_err::<Session>("{}");
        assert!(m.contains("missing field `user`"), "{m}");
    }

    #[test]
    fn long_keys_are_shortened_on_a_char_boundary() {
        let key = "ü".repeat(100);
        let short = shorten(&key);
        assert!(short.len() < key.len());
        assert!(short.ends_with("(200 bytes)"));
    }

    #[test]
    fn only_unreachable_backends_are_transient() {
        assert!(Error::unavailable("s", "down").is_transient());
        assert!(!Error::unavailable("s", "down").may_have_applied());
        let unknown = Error::unavailable("s", "no answer").after_sending();
        assert!(unknown.is_transient());
        assert!(unknown.may_have_applied());
        assert!(!Error::backend("s", "bad")
            .after_sending()
            .may_have_applied());
        assert!(!Error::backend("s", "bad").is_transient());
        assert!(!Error::Conflict { key: "k".into() }.is_transient());
    }
}
