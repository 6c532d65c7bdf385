//! Listing names by prefix and watching changes, through the handle.

use std::collections::HashSet;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde_json::Value;

use crate::change::{BackendEvent, KeySelector, RemoveCause, WatchStart, WatchStream};
use crate::error::{Error, Operation, Result};
use crate::key::has_reserved_segment;

use crate::layer::Call;
use crate::store::{decode, StateStore};
use crate::version::Version;

/// The default page size of [`StateStore::list`].
pub const DEFAULT_PAGE: usize = 1000;
/// The largest page size [`StateStore::list`] accepts.
pub const MAX_PAGE: usize = 10_000;

/// Options of one [`StateStore::list`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListOptions {
    /// Most names per page (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// Where to go on: a previous page's [`Page::next`].
    pub cursor: Option<String>,
}

impl ListOptions {
    /// The first page, default size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Goes on from a previous page.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }
}

/// One page of names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page {
    /// Names as the caller wrote them (the handle's prefix removed). In byte order on memory
    /// and SQLite; on NATS in the order they were last written (byte order in a bucket that
    /// keeps more than one revision); in no particular order on Redis. A name written during
    /// a listing can come twice on NATS and Redis ([`StateStore::list_all`] deduplicates). A page
    /// before the last may hold fewer names than asked, even none (Redis `SCAN`, and the
    /// store's own records, which are left out): go on while [`Page::next`] is `Some`.
    pub names: Vec<String>,
    /// The cursor of the next page (opaque); `None` on the last one.
    pub next: Option<String>,
}

/// What [`StateStore::watch`] follows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selector {
    /// One name.
    Name(String),
    /// Every name starting with this.
    Prefix(String),
    /// Every name under the handle's prefix.
    All,
}

/// A change of a watched name.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// `name` now holds `value`.
    Put {
        /// The name.
        name: String,
        /// The new value.
        value: Value,
        /// Its version: resume after it with [`WatchStart::AfterVersion`].
        version: Version,
    },
    /// `name` is gone.
    Removed {
        /// The name.
        name: String,
        /// Removed by a caller, or expired.
        cause: RemoveCause,
        /// The removal's version where the backend has one.
        version: Option<Version>,
    },
    /// Changes were missed (a slow consumer, a reconnect): re-read what you cache.
    Resync {
        /// Why.
        reason: String,
    },
}

impl fmt::Debug for WatchEvent {
    // Values can be confidential: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchEvent::Put { name, version, .. } => f
                .debug_struct("Put")
                .field("name", name)
                .field("value", &"<redacted>")
                .field("version", version)
                .finish(),
            WatchEvent::Removed {
                name,
                cause,
                version,
            } => f
                .debug_struct("Removed")
                .field("name", name)
                .field("cause", cause)
                .field("version", version)
                .finish(),
            WatchEvent::Resync { reason } => {
                f.debug_struct("Resync").field("reason", reason).finish()
            }
        }
    }
}

/// A running watch: a stream of [`WatchEvent`]s (use [`Watch::next`] or `futures::Stream`).
/// A value that is not JSON arrives as an [`Error::Decode`] item; the watch goes on.
pub struct Watch {
    inner: WatchStream,
    /// Skip events of reserved keys: a caller's handle watching a prefix.
    hide_reserved: bool,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// The next event; `None` when the watch ended (the store was closed).
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The handle's event for a backend's (whose keys the namespace layer made names).
    fn convert(event: BackendEvent) -> Result<WatchEvent> {
        Ok(match event {
            BackendEvent::Put {
                key: name,
                value,
                version,
            } => match decode::<Value>(&name, &value) {
                Ok(value) => WatchEvent::Put {
                    name,
                    value,
                    version,
                },
                Err(err) => return Err(err),
            },
            BackendEvent::Removed {
                key: name,
                cause,
                version,
            } => WatchEvent::Removed {
                name,
                cause,
                version,
            },
            BackendEvent::Resync { reason } => {
                crate::telemetry::watch_resync();
                WatchEvent::Resync { reason }
            }
        })
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let event = std::task::ready!(self.inner.as_mut().poll_next(cx));
            if let Some(Ok(BackendEvent::Put { key, .. } | BackendEvent::Removed { key, .. })) =
                &event
            {
                if self.hide_reserved && has_reserved_segment(key) {
                    continue;
                }
            }
            return Poll::Ready(event.map(|event| event.and_then(Watch::convert)));
        }
    }
}

/// For a cursor that is a key with a reserved segment (`app:$sessions:<id>`), a cursor after
/// every key of that reserved area (`app:$sessions` and U+10FFFF, which sorts after `:` and
/// any other character): it names the area, not the record. `None` for any other cursor.
fn past_reserved(cursor: &str) -> Option<String> {
    let mut start = 0;
    for segment in cursor.split(crate::PREFIX_SEPARATOR) {
        if segment.starts_with(crate::RESERVED_MARKER) {
            return Some(format!("{}{segment}\u{10FFFF}", &cursor[..start]));
        }
        start += segment.len() + crate::PREFIX_SEPARATOR.len_utf8();
    }
    None
}

impl StateStore {
    /// One page of the names starting with `prefix` (an empty prefix: every name under this
    /// handle, including those of nested prefixes, as `inner:name`). Expired names are not
    /// listed.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] where the backend cannot list (Dapr); [`Error::InvalidKey`] for
    /// a page size of 0 or above [`MAX_PAGE`]; and see [`StateStore`].
    pub async fn list(&self, prefix: &str, options: ListOptions) -> Result<Page> {
        self.check(Operation::Get)?;
        let Some(lister) = self.extensions().list else {
            return Err(self.refuse(&Call::List { prefix }, "listing keys"));
        };
        let limit = options.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::invalid_key(
                prefix,
                format!("a page holds 1 to {MAX_PAGE} names"),
            ));
        }
        let mut page = lister
            .list_keys(prefix, options.cursor.as_deref(), limit)
            .await?;
        if self.is_caller() {
            // The store's own records (a nested handle's leases, say) are not the caller's,
            // nor is a cursor that names one (ordered backends' cursors are keys): it jumps
            // past the whole reserved area instead.
            page.keys.retain(|key| !has_reserved_segment(key));
            page.next = page.next.map(|next| past_reserved(&next).unwrap_or(next));
        }
        Ok(Page {
            names: page.keys,
            next: page.next,
        })
    }

    /// Every name starting with `prefix`, page by page, each name once (backends whose
    /// listing can repeat a key, like Redis `SCAN`, are deduplicated here).
    ///
    /// # Errors
    ///
    /// As [`StateStore::list`].
    pub async fn list_all(&self, prefix: &str) -> Result<Vec<String>> {
        let mut seen = HashSet::new();
        let mut names = Vec::new();
        let mut options = ListOptions::new();
        loop {
            let page = self.list(prefix, options.clone()).await?;
            names.extend(page.names.into_iter().filter(|n| seen.insert(n.clone())));
            match page.next {
                Some(next) => options.cursor = Some(next),
                None => return Ok(names),
            }
        }
    }

    /// Removes every name starting with `prefix` (listed first, then removed in turn) and
    /// returns how many were removed. Names written meanwhile may stay. The store's own
    /// records ([reserved](crate::RESERVED_MARKER): lease fencing counters, rate limits,
    /// sessions) are not names and stay.
    ///
    /// # Errors
    ///
    /// As [`StateStore::list`] and [`StateStore::remove_state`].
    pub async fn remove_prefix(&self, prefix: &str) -> Result<usize> {
        self.check(Operation::Remove)?;
        let names = self.list_all(prefix).await?;
        for name in &names {
            self.remove_state(name).await?;
        }
        Ok(names.len())
    }

    /// Follows changes of the selected names from now, or after a version a previous watch
    /// reported ([`Capabilities::watch`](crate::Capabilities::watch) says which).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] where the backend cannot watch, or cannot resume
    /// ([`WatchSupport::Lossy`](crate::WatchSupport::Lossy)) and `start` is [`WatchStart::AfterVersion`]; and see
    /// [`StateStore`].
    pub async fn watch(&self, selector: Selector, start: WatchStart) -> Result<Watch> {
        self.check(Operation::Get)?;
        let selector = match selector {
            Selector::Name(name) => KeySelector::Key(name),
            Selector::Prefix(prefix) => KeySelector::Prefix(prefix),
            Selector::All => KeySelector::Prefix(String::new()),
        };
        let Some(watcher) = self.extensions().watch else {
            let call = Call::Watch {
                selector: &selector,
                start: &start,
            };
            return Err(self.refuse(&call, "watching changes"));
        };
        let hide_reserved = self.is_caller() && matches!(selector, KeySelector::Prefix(_));
        let inner = watcher.watch(&selector, &start).await?;
        Ok(Watch {
            inner,
            hide_reserved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::past_reserved;

    #[test]
    fn a_cursor_in_a_reserved_area_skips_the_area_and_names_no_record() {
        assert_eq!(
            past_reserved("app:$sessions:abc").as_deref(),
            Some("app:$sessions\u{10FFFF}")
        );
        assert_eq!(
            past_reserved("$lease:{x}:token").as_deref(),
            Some("$lease\u{10FFFF}")
        );
        for key in [
            "app:$sessions:",
            "app:$sessions:zzz",
            "app:$sessions:\u{10FFFF}",
        ] {
            assert!(key < "app:$sessions\u{10FFFF}", "{key}");
        }
        assert!("app:$sessionsz" < "app:$sessions\u{10FFFF}");
        assert_eq!(past_reserved("app:plain"), None);
        assert_eq!(past_reserved("3:1234"), None);
    }
}
