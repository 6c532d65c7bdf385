//! What a backend declares it supports.

#[cfg(doc)]
use crate::Error;
#[cfg(doc)]
use crate::{BackendEvent, WatchStart};

/// What a backend supports. A backend declares what it does itself; a layer declares what
/// the stack under it does (the completion layer adds what it composes). The capability
/// layer refuses an undeclared feature with [`Error::Unsupported`] before calling the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Per-key TTL, applied atomically with the write.
    pub ttl: bool,
    /// `SetMode::Create`, `SetMode::Update` and conditional remove.
    pub conditional: bool,
    /// Atomic increments ([`Increment`](crate::Increment)).
    pub increment: bool,
    /// An upsert with [`SetOptions::keep_ttl`](crate::SetOptions::keep_ttl) is one atomic
    /// write. Where it is not (NATS, Dapr), the completion layer composes it from a read and a
    /// conditional write, retried on a lost race.
    pub upsert_keep_ttl: bool,
    /// `get_many` costs one round trip, whatever the number of keys.
    pub batch_get: bool,
    /// Data outlives the process (a server or a file).
    pub persistent: bool,
    /// Versions are derived from the stored bytes (Redis: the SHA-1 of the value, so that a
    /// value written by another client is a valid compare-and-set base). Rewriting identical
    /// bytes, or removing and re-creating them, gives the same version again. False
    /// everywhere else: a version then never matches a value it was not read from.
    pub versions_from_value: bool,
    /// [`ListKeys`](crate::ListKeys): listing stored keys by prefix.
    pub list: bool,
    /// [`WatchKeys`](crate::WatchKeys): following changes, and how faithfully.
    pub watch: WatchSupport,
    /// Longest key in bytes, after the prefix is applied.
    pub max_key_len: usize,
    /// Largest value in bytes (JSON text).
    pub max_value_len: usize,
}

impl Capabilities {
    /// Nothing beyond plain get/set/remove; limits of 1 KiB keys and 1 MiB values.
    pub fn minimal() -> Self {
        Capabilities {
            ttl: false,
            conditional: false,
            increment: false,
            upsert_keep_ttl: false,
            batch_get: false,
            persistent: false,
            versions_from_value: false,
            list: false,
            watch: WatchSupport::None,
            max_key_len: 1024,
            max_value_len: 1024 * 1024,
        }
    }

    /// Sets [`Capabilities::list`].
    pub fn with_list(mut self, on: bool) -> Self {
        self.list = on;
        self
    }

    /// Sets [`Capabilities::watch`].
    pub fn with_watch(mut self, watch: WatchSupport) -> Self {
        self.watch = watch;
        self
    }

    /// Sets [`Capabilities::ttl`].
    pub fn with_ttl(mut self, on: bool) -> Self {
        self.ttl = on;
        self
    }

    /// Sets [`Capabilities::conditional`].
    pub fn with_conditional(mut self, on: bool) -> Self {
        self.conditional = on;
        self
    }

    /// Sets [`Capabilities::increment`].
    pub fn with_increment(mut self, on: bool) -> Self {
        self.increment = on;
        self
    }

    /// Sets [`Capabilities::upsert_keep_ttl`].
    pub fn with_upsert_keep_ttl(mut self, on: bool) -> Self {
        self.upsert_keep_ttl = on;
        self
    }

    /// Sets [`Capabilities::batch_get`].
    pub fn with_batch_get(mut self, on: bool) -> Self {
        self.batch_get = on;
        self
    }

    /// Sets [`Capabilities::persistent`].
    pub fn with_persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }

    /// Sets [`Capabilities::versions_from_value`].
    pub fn with_versions_from_value(mut self, on: bool) -> Self {
        self.versions_from_value = on;
        self
    }

    /// Sets [`Capabilities::max_key_len`].
    pub fn with_max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// Sets [`Capabilities::max_value_len`].
    pub fn with_max_value_len(mut self, bytes: usize) -> Self {
        self.max_value_len = bytes;
        self
    }

    /// Whether [`StateStore::lease`](crate::StateStore::lease) and
    /// [`StateStore::elect`](crate::StateStore::elect) work: they need atomic expiry,
    /// conditional writes and atomic increments. Tokens survive a server restart where the
    /// store is [`persistent`](Capabilities::persistent) (and, on Redis, persists each write:
    /// see the crate docs).
    pub fn leases(&self) -> bool {
        self.ttl && self.conditional && self.increment
    }

    /// Every data operation supported (not [`Capabilities::list`] or
    /// [`Capabilities::watch`], which a backend declares itself); limits of 1 KiB keys and
    /// 1 MiB values.
    pub fn full() -> Self {
        Capabilities {
            ttl: true,
            conditional: true,
            increment: true,
            upsert_keep_ttl: true,
            batch_get: true,
            persistent: true,
            versions_from_value: false,
            list: false,
            watch: WatchSupport::None,
            max_key_len: 1024,
            max_value_len: 1024 * 1024,
        }
    }
}

/// How a backend follows changes ([`WatchKeys`](crate::WatchKeys)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchSupport {
    /// No watch: [`Error::Unsupported`].
    #[default]
    None,
    /// Events can be missed (a slow consumer, a reconnect); every loss is reported as
    /// [`BackendEvent::Resync`], and watching from a version is refused.
    Lossy,
    /// Every change is delivered in order, and a watch can resume after a version without
    /// gaps: it delivers every change after that version, or, when the backend no longer
    /// holds them all, starts with [`BackendEvent::Resync`].
    Resumable,
    /// Changes are delivered in order and a watch can resume after a version, but the backend
    /// keeps only the latest change of each key, like a compacted log (a NATS KV bucket):
    /// a resumed watch starts with [`BackendEvent::Resync`] and then delivers the latest
    /// change of each key changed since the version, in order. A watcher that falls behind
    /// may see only a key's latest change where it changed several times; a lost
    /// connection gives a `Resync`.
    Compacted,
}

impl WatchSupport {
    /// Whether a watch can start after a version ([`WatchStart::AfterVersion`]).
    pub fn resumes(self) -> bool {
        matches!(self, WatchSupport::Resumable | WatchSupport::Compacted)
    }
}
