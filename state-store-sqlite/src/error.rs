//! The one mapping from `rusqlite` errors into the core [`Error`].

use rusqlite::ErrorCode;
use state_store_core::Error;

pub(crate) const STORE: &str = "sqlite";

/// Maps a SQLite failure: a lock held past the busy timeout is transient (`Unavailable`); a
/// file that is not a database, or cannot be opened, is `Config`; the rest is `Backend`.
pub(crate) fn map(err: rusqlite::Error) -> Error {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::unavailable(STORE, err),
        Some(ErrorCode::NotADatabase) => {
            Error::config_with("the file is not a SQLite database (left untouched)", err)
        }
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            Error::config_with("cannot open the database file for writing", err)
        }
        _ => Error::backend(STORE, err),
    }
}

/// The worker thread is gone (the store was closed, or the thread died).
pub(crate) fn closed() -> Error {
    Error::Closed {
        store: STORE.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn busy_is_transient_and_garbage_is_config() {
        assert!(map(sqlite(rusqlite::ffi::SQLITE_BUSY)).is_transient());
        assert!(matches!(
            map(sqlite(rusqlite::ffi::SQLITE_NOTADB)),
            Error::Config { .. }
        ));
        assert!(matches!(
            map(sqlite(rusqlite::ffi::SQLITE_CORRUPT)),
            Error::Backend { .. }
        ));
    }
}
