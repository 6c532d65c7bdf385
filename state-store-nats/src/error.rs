//! The one mapping from async-nats errors into the core [`Error`].

use std::fmt::{Debug, Display};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::ErrorCode;
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
        // An untrusted certificate, or a server that cannot do the TLS asked for: a setting
        // to fix, never a reason to go on in the clear.
        ConnectErrorKind::Tls => Error::config_with("TLS with the NATS server failed", err),
        // rustls reports an untrusted certificate, or a plaintext answer to a handshake, as
        // invalid data on the socket.
        ConnectErrorKind::Io if invalid_data(&err) => Error::config_with(
            "TLS with the NATS server failed (an untrusted certificate, or a server without TLS)",
            err,
        ),
        _ => Error::unavailable(STORE, err),
    }
}

fn invalid_data(err: &async_nats::ConnectError) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
}

/// A publish that could not be handed to the connection: nothing was sent, so a lost or
/// congested connection is `Unavailable`; a message over the server's limit `ValueTooLarge`.
pub(crate) fn publish(
    key: &str,
    size: usize,
    limit: usize,
    err: async_nats::jetstream::context::PublishError,
) -> Error {
    match err.kind() {
        PublishErrorKind::MaxPayloadExceeded => Error::ValueTooLarge {
            key: key.to_owned(),
            size,
            limit,
        },
        _ => Error::unavailable(STORE, err),
    }
}

/// A publish that was sent and did not succeed: a wrong expected revision is `Conflict`; no
/// stream answering (a cluster electing a leader, a server restarting) is `Unavailable`, as
/// nothing stored it; no answer in time or a connection lost before the answer is
/// `OutcomeUnknown` (the server may have stored it); the server's other errors `Backend`.
pub(crate) fn publish_ack(key: &str, err: async_nats::jetstream::context::PublishError) -> Error {
    match err.kind() {
        PublishErrorKind::WrongLastSequence => Error::Conflict {
            key: key.to_owned(),
        },
        // Replicated streams answer a CAS miss with error code 10164, which the client
        // reports as `Other` with the server's error as the source.
        PublishErrorKind::Other
            if jetstream_code(&err) == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT) =>
        {
            Error::Conflict {
                key: key.to_owned(),
            }
        }
        PublishErrorKind::StreamNotFound => Error::unavailable(STORE, err),
        // The server refused it for now (503: a replicated stream electing its leader):
        // nothing was stored.
        PublishErrorKind::Other if jetstream_status(&err) == Some(SERVICE_UNAVAILABLE) => {
            Error::unavailable(STORE, err)
        }
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            Error::outcome_unknown(STORE, err)
        }
        // No answer from the server at all: the connection ended while the acknowledgement
        // was awaited (its task drops the reply channel).
        PublishErrorKind::Other if jetstream_code(&err).is_none() => {
            Error::outcome_unknown(STORE, err)
        }
        _ => Error::backend(STORE, err),
    }
}

/// The JetStream error code an error carries as its source, if any.
fn jetstream_code(err: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    err.source()?
        .downcast_ref::<async_nats::jetstream::Error>()
        .map(async_nats::jetstream::Error::error_code)
}

/// The status of the JetStream error an error carries as its source, if any.
fn jetstream_status(err: &(dyn std::error::Error + 'static)) -> Option<usize> {
    err.source()?
        .downcast_ref::<async_nats::jetstream::Error>()
        .map(async_nats::jetstream::Error::code)
}

/// JetStream's "not now" status (`JetStream system temporarily unavailable`, a stream
/// without a leader): the request was refused, not run, so it is `Unavailable`.
const SERVICE_UNAVAILABLE: usize = 503;

/// A failed direct get (not-found is handled by the caller).
pub(crate) fn direct_get(err: async_nats::jetstream::stream::DirectGetError) -> Error {
    match err.kind() {
        DirectGetErrorKind::ErrorResponse(status, _)
            if usize::from(status.as_u16()) == SERVICE_UNAVAILABLE =>
        {
            Error::unavailable(STORE, err)
        }
        DirectGetErrorKind::InvalidSubject | DirectGetErrorKind::ErrorResponse(..) => {
            Error::backend(STORE, err)
        }
        // A timeout, a failed request, or a connection that ended before the answer.
        _ => Error::unavailable(STORE, err),
    }
}

/// A failed read through the stream leader (not-found is handled by the caller): the server's
/// own JetStream errors are `Backend`, except its "not now" (503: no leader yet); failing to
/// get an answer at all is `Unavailable`.
pub(crate) fn leader_get(err: async_nats::jetstream::stream::LastRawMessageError) -> Error {
    match err.kind() {
        LastRawMessageErrorKind::JetStream(e) if e.code() == SERVICE_UNAVAILABLE => {
            Error::unavailable(STORE, err)
        }
        LastRawMessageErrorKind::JetStream(_) | LastRawMessageErrorKind::InvalidSubject => {
            Error::backend(STORE, err)
        }
        _ => Error::unavailable(STORE, err),
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

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;

    fn jetstream(code: usize, err_code: u64) -> async_nats::jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code,
            "err_code": err_code,
            "description": "JetStream system temporarily unavailable",
        }))
        .expect("a JetStream error")
    }

    /// A replicated stream without a leader answers 503: reads and writes it refused are
    /// `Unavailable` (transient, not applied), never a `Backend` error a caller gives up on.
    #[test]
    fn not_now_from_jetstream_is_unavailable() {
        let read = async_nats::error::Error::new(LastRawMessageErrorKind::JetStream(jetstream(
            503, 10008,
        )));
        let read = leader_get(read);
        assert!(matches!(read, Error::Unavailable { .. }), "{read:?}");
        let write =
            async_nats::error::Error::with_source(PublishErrorKind::Other, jetstream(503, 10008));
        let write = publish_ack("k", write);
        assert!(
            matches!(write, Error::Unavailable { .. }) && !write.may_have_applied(),
            "{write:?}"
        );
        // Other JetStream errors stay what they are.
        let other = leader_get(async_nats::error::Error::new(
            LastRawMessageErrorKind::JetStream(jetstream(400, 10059)),
        ));
        assert!(matches!(other, Error::Backend { .. }), "{other:?}");
    }
}
