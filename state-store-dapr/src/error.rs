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
        // `state.postgresql` v2 refusing a first write over a live value.
        _ if status.message().contains("no item was updated") => Error::Conflict {
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

/// Maps a failed write: as [`map`], except that a transient failure is
/// [`Error::OutcomeUnknown`] unless the channel could not connect (then the request never left:
/// `Unavailable`). A timeout, a reset connection or a sidecar answering `Unavailable` may come
/// after the sidecar, or its component, received the write.
pub(crate) fn map_write(key: &str, status: Status) -> Error {
    let never_sent = connect_failed(&status);
    let mapped = map(key, status);
    if never_sent {
        mapped
    } else {
        mapped.after_sending()
    }
}

/// Whether tonic failed to connect: a [`tonic::ConnectError`] somewhere in the source chain.
fn connect_failed(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
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

    #[test]
    fn only_a_write_that_could_not_connect_is_known_not_applied() {
        assert!(!map("k", Status::deadline_exceeded("slow")).may_have_applied());
        assert!(map_write("k", Status::deadline_exceeded("slow")).may_have_applied());
        assert!(map_write("k", Status::unavailable("reset")).may_have_applied());
        let refused = Status::from_error(Box::new(tonic::ConnectError("refused".into())));
        let never_sent = map_write("k", refused);
        assert!(
            never_sent.is_transient() && !never_sent.may_have_applied(),
            "{never_sent:?}"
        );
        assert!(map_write("k", Status::aborted("etag mismatch")).is_conflict());
    }
}
