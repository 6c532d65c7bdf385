//! Listing names by prefix and watching changes, through the handle.

use std::collections::HashSet;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde_json::Value;

use crate::backend::{
    BackendEvent, KeySelector, RemoveCause, Version, WatchStart, WatchStream, WatchSupport,
};
use crate::error::{Error, Operation, Result};
use crate::key::PREFIX_SEPARATOR;
use crate::store::{decode, StateStore};

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
    /// Names as the caller wrote them (the handle's prefix removed). In byte order on
    /// ordered backends (memory, SQLite, NATS); in no particular order on Redis.
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
    strip: String,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("prefix", &self.strip)
            .finish()
    }
}

impl Watch {
    /// The next event; `None` when the watch ended (the store was closed).
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    fn name(&self, key: &str) -> Option<String> {
        key.strip_prefix(self.strip.as_str()).map(str::to_owned)
    }

    fn convert(&self, event: BackendEvent) -> Option<Result<WatchEvent>> {
        Some(Ok(match event {
            BackendEvent::Put {
                key,
                value,
                version,
            } => {
                let name = self.name(&key)?;
                match decode::<Value>(&name, &value) {
                    Ok(value) => WatchEvent::Put {
                        name,
                        value,
                        version,
                    },
                    Err(err) => return Some(Err(err)),
                }
            }
            BackendEvent::Removed {
                key,
                cause,
                version,
            } => WatchEvent::Removed {
                name: self.name(&key)?,
                cause,
                version,
            },
            BackendEvent::Resync { reason } => WatchEvent::Resync { reason },
        }))
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let event = match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(Some(Ok(event))) => event,
            };
            // Keys outside the handle's prefix (a backend filtering coarsely) are skipped.
            if let Some(item) = self.convert(event) {
                return Poll::Ready(Some(item));
            }
        }
    }
}

impl StateStore {
    /// The stored-key prefix of this handle's names: `prefix:` (empty without a prefix).
    fn name_root(&self) -> String {
        let prefix = &self.config().key_prefix;
        if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}{PREFIX_SEPARATOR}")
        }
    }

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
        self.require(self.capabilities().list, "listing keys")?;
        let limit = options.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::invalid_key(
                prefix,
                format!("a page holds 1 to {MAX_PAGE} names"),
            ));
        }
        let root = self.name_root();
        let page = self
            .dispatch()
            .list_keys(&format!("{root}{prefix}"), options.cursor.as_deref(), limit)
            .await?;
        let names = page
            .keys
            .into_iter()
            .filter_map(|key| key.strip_prefix(root.as_str()).map(str::to_owned))
            .collect();
        Ok(Page {
            names,
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
    /// returns how many were removed. Names written meanwhile may stay. A prefix covering
    /// `lease:` removes lease token counters too (tokens restart; see
    /// [`StateStore::lease`]).
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
    /// ([`WatchSupport::Lossy`]) and `start` is [`WatchStart::AfterVersion`]; and see
    /// [`StateStore`].
    pub async fn watch(&self, selector: Selector, start: WatchStart) -> Result<Watch> {
        self.check(Operation::Get)?;
        let support = self.capabilities().watch;
        self.require(support != WatchSupport::None, "watching changes")?;
        if matches!(start, WatchStart::AfterVersion(_)) {
            self.require(
                support.resumes(),
                "resuming a watch from a version (its watch is lossy)",
            )?;
        }
        let root = self.name_root();
        let selector = match selector {
            Selector::Name(name) => KeySelector::Key(self.key(&name)?),
            Selector::Prefix(prefix) => KeySelector::Prefix(format!("{root}{prefix}")),
            Selector::All => KeySelector::Prefix(root.clone()),
        };
        let inner = self.dispatch().watch(&selector, &start).await?;
        Ok(Watch { inner, strip: root })
    }
}
