//! Listing and following changes: the types of the [`ListKeys`](crate::ListKeys) and
//! [`WatchKeys`](crate::WatchKeys) extensions.

use std::fmt;

use crate::error::Result;
use crate::version::Version;

#[cfg(doc)]
use crate::WatchSupport;

/// A page of stored keys: [`ListKeys`](crate::ListKeys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyPage {
    /// Stored keys (full, prefixed; backend escaping undone), live ones only.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

impl KeyPage {
    /// A page, for backend implementors.
    pub fn new(keys: Vec<String>, next: Option<String>) -> Self {
        KeyPage { keys, next }
    }
}

/// What a watch follows: [`WatchKeys`](crate::WatchKeys).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySelector {
    /// One stored key.
    Key(String),
    /// Every stored key starting with this (may be empty: all keys).
    Prefix(String),
}

impl KeySelector {
    /// Whether `key` is selected.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeySelector::Key(k) => k == key,
            KeySelector::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    /// Whether a watcher with this selector gets `event` (a `Resync` always).
    pub fn selects(&self, event: &BackendEvent) -> bool {
        match event {
            BackendEvent::Put { key, .. } | BackendEvent::Removed { key, .. } => self.matches(key),
            BackendEvent::Resync { .. } => true,
        }
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchStart {
    /// With the next change.
    Now,
    /// With the first change after this version (a version a watch event carried);
    /// [`WatchSupport::Resumable`] backends only.
    AfterVersion(Version),
}

/// Why a key went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoveCause {
    /// Removed by a caller.
    Removed,
    /// Its TTL ran out.
    Expired,
}

/// A change as a backend reports it: [`WatchKeys`](crate::WatchKeys).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendEvent {
    /// `key` now holds `value`.
    Put {
        /// The stored key.
        key: String,
        /// The new value (JSON text).
        value: Vec<u8>,
        /// Its version; resume after it with [`WatchStart::AfterVersion`].
        version: Version,
    },
    /// `key` is gone.
    Removed {
        /// The stored key.
        key: String,
        /// Why.
        cause: RemoveCause,
        /// The version of the removal, where the backend has one (resume after it).
        version: Option<Version>,
    },
    /// Events were missed: re-read what you cache.
    Resync {
        /// Why (a lagging consumer, a reconnect).
        reason: String,
    },
}

impl fmt::Debug for BackendEvent {
    // Values can be confidential: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendEvent::Put {
                key,
                value,
                version,
            } => f
                .debug_struct("Put")
                .field("key", key)
                .field("value", &format_args!("<{} bytes>", value.len()))
                .field("version", version)
                .finish(),
            BackendEvent::Removed {
                key,
                cause,
                version,
            } => f
                .debug_struct("Removed")
                .field("key", key)
                .field("cause", cause)
                .field("version", version)
                .finish(),
            BackendEvent::Resync { reason } => {
                f.debug_struct("Resync").field("reason", reason).finish()
            }
        }
    }
}

/// The stream [`WatchKeys`](crate::WatchKeys) returns.
pub type WatchStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<BackendEvent>> + Send>>;

/// A [`WatchStream`] fed through a channel, for backends that watch from a task: send events
/// into the sender; when the stream is dropped, sends fail (and `closed()` completes), which
/// tells the task to stop.
pub fn watch_channel(
    buffer: usize,
) -> (tokio::sync::mpsc::Sender<Result<BackendEvent>>, WatchStream) {
    let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
    (tx, Box::pin(ChannelStream(rx)))
}

/// What a [`WatchInvalidations`](crate::WatchInvalidations) stream reports: which keys
/// changed, not what they now hold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// These keys were written, removed or expired.
    Keys(Vec<String>),
    /// Changes may have been missed (a reconnect, a flushed database): forget every key.
    All {
        /// Why.
        reason: String,
    },
}

/// The stream [`WatchInvalidations`](crate::WatchInvalidations) returns.
pub type InvalidationStream =
    std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<Invalidation>> + Send>>;

/// An [`InvalidationStream`] fed through a channel, as [`watch_channel`] feeds a watch.
pub fn invalidation_channel(
    buffer: usize,
) -> (
    tokio::sync::mpsc::Sender<Result<Invalidation>>,
    InvalidationStream,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
    (tx, Box::pin(ChannelStream(rx)))
}

/// A watch as invalidations: each event's key, without its value; `Resync` as
/// [`Invalidation::All`]. For a backend whose invalidations are its watch (values dropped).
pub fn invalidations_of(watch: WatchStream) -> InvalidationStream {
    Box::pin(WatchedKeys(watch))
}

struct WatchedKeys(WatchStream);

impl futures_core::Stream for WatchedKeys {
    type Item = Result<Invalidation>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx).map(|event| {
            event.map(|event| {
                event.map(|event| match event {
                    BackendEvent::Put { key, .. } | BackendEvent::Removed { key, .. } => {
                        Invalidation::Keys(vec![key])
                    }
                    BackendEvent::Resync { reason } => Invalidation::All { reason },
                })
            })
        })
    }
}

/// `tokio_stream::wrappers::ReceiverStream`, in the five lines it takes: core does not take a
/// dependency (and its own `Stream` trait version to keep in step) for one `poll_recv`.
struct ChannelStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ChannelStream<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
