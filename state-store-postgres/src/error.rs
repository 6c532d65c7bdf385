//! The one mapping from tokio-postgres and pool errors into the core [`Error`].

use deadpool_postgres::PoolError;
use state_store_core::Error;
use tokio_postgres::error::SqlState;

pub(crate) const STORE: &str = "postgres";

/// A failure while getting a connection: nothing was sent. A refused login or a missing
/// database is `Config`; a server that cannot be reached, or a pool with no connection free
/// in time, is `Unavailable`.
pub(crate) fn map_pool(err: PoolError) -> Error {
    match err {
        PoolError::Backend(err) if tls_failure(&err) => {
            Error::config_with("TLS with the PostgreSQL server failed", err)
        }
        PoolError::Backend(err) => match setting(&err) {
            Some(config) => config,
            None => Error::unavailable(STORE, err),
        },
        PoolError::Timeout(_) => Error::unavailable(STORE, "no connection came free in time"),
        PoolError::Closed => Error::Closed {
            store: STORE.to_owned(),
        },
        other => Error::backend(STORE, other),
    }
}

/// A statement's failure. An error the server sent is definite: the statement did not
/// commit — `Unavailable` when it passes (a serialization failure, a deadlock, a cancelled
/// statement, a server starting up or out of connections), else `Backend`. A lost connection
/// or a server shutting down under the statement is `Unavailable` for a read and, for a
/// write (`written`), `OutcomeUnknown`: the commit may have happened before the answer was
/// lost.
pub(crate) fn map(err: tokio_postgres::Error, written: bool) -> Error {
    if let Some(config) = setting(&err) {
        return config;
    }
    match err.code() {
        Some(code) if not_committed(code) => Error::unavailable(STORE, err),
        Some(code) if !terminated(code) => Error::backend(STORE, err),
        _ if written => Error::outcome_unknown(STORE, err),
        _ => Error::unavailable(STORE, err),
    }
}

/// Refusals that pass, and mean the statement did not commit.
fn not_committed(code: &SqlState) -> bool {
    [
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::QUERY_CANCELED,
    ]
    .contains(code)
}

/// The session ended under the statement (an administrator or a crash): a commit may have
/// happened first.
fn terminated(code: &SqlState) -> bool {
    [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN].contains(code)
}

/// A failure that a setting must fix: credentials, a database or schema that does not exist,
/// missing privileges.
fn setting(err: &tokio_postgres::Error) -> Option<Error> {
    let code = err.code()?;
    let what = if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        "PostgreSQL refused the credentials"
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        "the PostgreSQL database does not exist"
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        "the PostgreSQL user lacks a privilege the store needs"
    } else {
        return None;
    };
    // The server's message names the user or database, never the password.
    Some(Error::config_with(what, clone_db_error(err)))
}

/// The server's error as a source of our own (tokio-postgres's error is not `Clone`).
fn clone_db_error(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |db| db.message().to_owned())
}

/// A TLS handshake that failed (an untrusted or unusable certificate, a server without TLS
/// where it is required): a setting to fix, not an outage. tokio-postgres has no public
/// error kind for it; its message is fixed. rustls reports a bad certificate as an I/O error
/// of kind `InvalidData`; any other I/O error under the handshake (a reset, an early end) is
/// a connection lost, an outage rather than a setting.
fn tls_failure(err: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    let lost = err
        .source()
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() != std::io::ErrorKind::InvalidData);
    !lost && err.to_string().contains("TLS handshake")
}

/// Whether the statement failed because a value was not an integer or an increment left
/// `bigint`'s range.
pub(crate) fn not_an_integer(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(code) if *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
            || *code == SqlState::INVALID_TEXT_REPRESENTATION
    )
}

pub(crate) fn closed() -> Error {
    Error::Closed {
        store: STORE.to_owned(),
    }
}
