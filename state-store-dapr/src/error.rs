//! The one mapping from gRPC statuses into the core [`Error`].

use state_store_core::Error;
use tonic::{Code, Status};

pub(crate) const STORE: &str = "dapr";

/// Maps a failed call. An ETag mismatch (`Aborted`, or `InvalidArgument` for a malformed
/// ETag) is `Conflict`; an unreachable or slow sidecar `Unavailable`; a refused token or an
/// unknown component `Config`; the rest `Backend`. The status stays the source.
pub(crate) fn map(key: &str, status: Status) -> Error {
    match status.code() {
        Code::Aborted => Error::Conflict {
            key: key.to_owned(),
        },
        Code::InvalidArgument if mentions_etag(&status) => Error::Conflict {
            key: key.to_owned(),
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            Error::unavailable(STORE, status)
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            Error::config_with("the Dapr sidecar refused the API token", status)
        }
        Code::Unknown if status.message().contains("transport") => {
            Error::unavailable(STORE, status)
        }
        _ if status.message().contains("is not found")
            || status.message().contains("not configured") =>
        {
            Error::config_with(
                "the Dapr sidecar does not know this state store component",
                status,
            )
        }
        _ => Error::backend(STORE, status),
    }
}

fn mentions_etag(status: &Status) -> bool {
    let message = status.message().to_ascii_lowercase();
    message.contains("etag") || message.contains("possible etag mismatch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_right_variants() {
        assert!(map("k", Status::aborted("etag mismatch")).is_conflict());
        assert!(map("k", Status::invalid_argument("invalid etag value")).is_conflict());
        assert!(map("k", Status::unavailable("down")).is_transient());
        assert!(map("k", Status::deadline_exceeded("slow")).is_transient());
        assert!(matches!(
            map("k", Status::unauthenticated("bad token")),
            Error::Config { .. }
        ));
        assert!(matches!(
            map(
                "k",
                Status::invalid_argument("state store nope is not found")
            ),
            Error::Config { .. }
        ));
        assert!(matches!(
            map("k", Status::internal("boom")),
            Error::Backend { .. }
        ));
    }
}
