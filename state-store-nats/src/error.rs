//! The one mapping from async-nats errors into the core [`Error`].

use std::fmt::{Debug, Display};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::ConnectErrorKind;
use state_store_core::Error;

pub(crate) const STORE: &str = "nats";

type NatsError<K> = async_nats::error::Error<K>;

/// A failed connect: bad credentials are `Config`; everything else (refused, timed out) is
/// `Unavailable`.
pub(crate) fn connect(err: async_nats::ConnectError) -> Error {
    match err.kind() {
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            Error::config_with("the NATS server refused the credentials", err)
        }
        ConnectErrorKind::ServerParse => Error::config_with("invalid NATS server URL", err),
        _ => Error::unavailable(STORE, err),
    }
}

/// A failed publish: a wrong expected revision is `Conflict`; timeouts and broken connections
/// `Unavailable`; the rest `Backend`.
pub(crate) fn publish(key: &str, err: async_nats::jetstream::context::PublishError) -> Error {
    match err.kind() {
        PublishErrorKind::WrongLastSequence => Error::Conflict {
            key: key.to_owned(),
        },
        // Replicated streams answer with error code 10164, which the client reports as `Other`.
        _ if err.to_string().contains("wrong last sequence") => Error::Conflict {
            key: key.to_owned(),
        },
        // No stream answering (a cluster electing a leader, a server restarting) is transient.
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => Error::unavailable(STORE, err),
        PublishErrorKind::MaxPayloadExceeded => {
            Error::config_with("the value is larger than the NATS server accepts", err)
        }
        _ => Error::backend(STORE, err),
    }
}

/// A failed direct get (not-found is handled by the caller).
pub(crate) fn direct_get(err: async_nats::jetstream::stream::DirectGetError) -> Error {
    match err.kind() {
        DirectGetErrorKind::TimedOut | DirectGetErrorKind::Request => {
            Error::unavailable(STORE, err)
        }
        _ => Error::backend(STORE, err),
    }
}

/// A failed read through the stream leader.
pub(crate) fn leader_get(err: async_nats::jetstream::stream::LastRawMessageError) -> Error {
    if is_unreachable(&err) {
        Error::unavailable(STORE, err)
    } else {
        Error::backend(STORE, err)
    }
}

/// Setting up the bucket: timeouts are `Unavailable`, everything else `Config`.
pub(crate) fn setup<K>(what: &str, err: NatsError<K>) -> Error
where
    K: Clone + Debug + Display + PartialEq + Send + Sync + 'static,
{
    if is_unreachable(&err) {
        Error::unavailable(STORE, err)
    } else {
        Error::config_with(what.to_owned(), err)
    }
}

/// These errors carry their cause only as text: a timeout, a failed request or no responder
/// means the server could not be reached.
fn is_unreachable(err: &dyn std::error::Error) -> bool {
    let text = err.to_string();
    text.contains("timed out") || text.contains("request") || text.contains("no responders")
}
