//! The one mapping from fred errors into the core [`Error`].

use fred::error::{Error as FredError, ErrorKind};
use state_store_core::Error;

pub(crate) const STORE: &str = "redis";

/// Maps a read's failure. Lost connections and timeouts are `Unavailable` (transient); a
/// refused login is `Config`; everything else is `Backend`. The fred error stays the source.
pub(crate) fn map(err: FredError) -> Error {
    match err.kind() {
        // rustls reports an untrusted or invalid certificate, or garbage in place of a
        // handshake, as invalid data on the socket: a setting to fix, not an outage.
        _ if is_tls_failure(&err) => Error::config_with("TLS with the Redis server failed", err),
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Cluster
        | ErrorKind::Routing => Error::unavailable(STORE, err),
        ErrorKind::Auth => Error::config_with("Redis refused the credentials", err),
        ErrorKind::Config | ErrorKind::Url => {
            Error::config_with("invalid Redis configuration", err)
        }
        _ if is_auth_failure(&err) => Error::config_with("Redis refused the credentials", err),
        // fred reports a command it could not send to any connection as `Unknown`.
        _ if is_unroutable(&err) => Error::unavailable(STORE, err),
        _ => Error::backend(STORE, err),
    }
}

fn is_tls_failure(err: &FredError) -> bool {
    #[cfg(feature = "rustls")]
    if matches!(err.kind(), ErrorKind::Tls) {
        return true;
    }
    matches!(err.kind(), ErrorKind::IO)
        && [
            "InvalidCertificate",
            "InvalidContentType",
            "InvalidMessage",
            "PeerIncompatible",
        ]
        .iter()
        .any(|what| err.details().contains(what))
}

/// Maps a write's failure: as [`map`], except that a write fred may have sent is
/// [`Error::OutcomeUnknown`]. fred cannot say whether a command that timed out, lost its
/// connection or was canceled reached the server; only backpressure and a command it could
/// not route to any connection, or refused up front while disconnected (its fail-fast
/// check), mean it never left. (Such a command is never sent later: `max_command_attempts` is
/// 1 and fred drops a timed-out command it still holds.)
pub(crate) fn map_write(err: FredError) -> Error {
    let details = err.details();
    let never_sent = matches!(err.kind(), ErrorKind::Backpressure)
        || details.contains("Failed to route")
        || (matches!(err.kind(), ErrorKind::Canceled)
            && details == "Connection closed unexpectedly.");
    let mapped = map(err);
    if never_sent {
        mapped
    } else {
        mapped.after_sending()
    }
}

/// The error code of a Redis error reply: its first word (`WRONGPASS`, `NOAUTH`, `ERR`).
fn reply_code(err: &FredError) -> &str {
    let details = err.details();
    let code = details.split_whitespace().next().unwrap_or_default();
    code.strip_prefix('-').unwrap_or(code)
}

fn is_auth_failure(err: &FredError) -> bool {
    matches!(reply_code(err), "WRONGPASS" | "NOAUTH")
}

/// fred reports a command it could not hand to any connection as `Unknown`, with no other
/// marker than its message.
fn is_unroutable(err: &FredError) -> bool {
    let details = err.details();
    details.contains("Failed to route") || details.contains("onnection closed")
}

/// Redis answers a non-integer or overflowing `INCRBY` with the generic `ERR` code; the
/// message is the protocol's only way to tell it from other errors.
pub(crate) fn is_not_an_integer(err: &FredError) -> bool {
    let details = err.details();
    reply_code(err) == "ERR" && (details.contains("not an integer") || details.contains("overflow"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_the_right_variants() {
        assert!(map(FredError::new(ErrorKind::IO, "reset")).is_transient());
        assert!(map(FredError::new(ErrorKind::Timeout, "slow")).is_transient());
        assert!(matches!(
            map(FredError::new(ErrorKind::Auth, "WRONGPASS")),
            Error::Config { .. }
        ));
        assert!(matches!(
            map(FredError::new(
                ErrorKind::Unknown,
                "WRONGPASS invalid username-password pair"
            )),
            Error::Config { .. }
        ));
        assert!(matches!(
            map(FredError::new(ErrorKind::Unknown, "WRONGTYPE")),
            Error::Backend { .. }
        ));
        assert!(map_write(FredError::new(ErrorKind::Timeout, "slow")).may_have_applied());
        assert!(map_write(FredError::new(ErrorKind::IO, "reset")).may_have_applied());
        let never_sent = map_write(FredError::new(ErrorKind::Backpressure, "full"));
        assert!(never_sent.is_transient() && !never_sent.may_have_applied());
        let unroutable = map_write(FredError::new(
            ErrorKind::Unknown,
            "Failed to route command.",
        ));
        assert!(unroutable.is_transient() && !unroutable.may_have_applied());
        assert!(!map(FredError::new(ErrorKind::Timeout, "slow")).may_have_applied());
        assert!(is_not_an_integer(&FredError::new(
            ErrorKind::Unknown,
            "ERR value is not an integer or out of range"
        )));
    }
}
