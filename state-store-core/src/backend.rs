//! The trait an adapter (or your own store) implements: bytes in, bytes out, with versions.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::retry::Backoff;

/// An opaque version of a stored value: a counter, a stream revision or an ETag.
///
/// Read it with [`StateStore::get_entry`](crate::StateStore::get_entry) and hand it back in
/// [`SetMode::Update`] or [`StateStore::remove_if`](crate::StateStore::remove_if). Every write
/// gives a new version. Compare versions only for equality, and only from the same store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// Wraps a backend's version token. For backend implementors.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Version(token.into())
    }

    /// What a write returns when its caller asked for no version
    /// ([`SetOptions::want_version`] is false): one shared empty token, no allocation.
    pub fn unwanted() -> Self {
        static UNWANTED: std::sync::OnceLock<Version> = std::sync::OnceLock::new();
        UNWANTED.get_or_init(|| Version::new("")).clone()
    }

    /// The backend's token. For backend implementors.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A version that also carries its value's deadline (Unix milliseconds), or says it has
    /// none: `<token>@<ms>`, `<token>@`. For backends whose conditional writes must know,
    /// without a read, whether the value a version was read from has expired (NATS, Dapr).
    /// [`Version::token_and_deadline`] reads it back. For backend implementors.
    pub fn with_deadline(token: &str, deadline_ms: Option<i64>) -> Self {
        match deadline_ms {
            None => Version::new(format!("{token}@")),
            Some(at) => Version::new(format!("{token}@{at}")),
        }
    }

    /// The token and deadline of a version made by [`Version::with_deadline`] (the token may
    /// hold `@` itself). Any other version is all token, with no deadline.
    ///
    /// ```
    /// use state_store_core::Version;
    ///
    /// let version = Version::with_deadline("etag@7", Some(1_700_000_000_000));
    /// assert_eq!(version.token_and_deadline(), ("etag@7", Some(1_700_000_000_000)));
    /// assert_eq!(Version::with_deadline("12", None).token_and_deadline(), ("12", None));
    /// assert_eq!(Version::new("plain").token_and_deadline(), ("plain", None));
    /// ```
    pub fn token_and_deadline(&self) -> (&str, Option<i64>) {
        match self.0.rsplit_once('@') {
            Some((token, "")) => (token, None),
            Some((token, at)) => match at.parse() {
                Ok(at) => (token, Some(at)),
                Err(_) => (&self.0, None),
            },
            None => (&self.0, None),
        }
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored value as a backend returns it: JSON text and its version.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value, as UTF-8 JSON text.
    pub value: Vec<u8>,
    /// The version of this value.
    pub version: Version,
    /// Time left before the value expires, where the backend knows it; `None` for no TTL or
    /// unknown. Informational: a rewrite that must keep the deadline says so with
    /// [`SetOptions::keep_ttl`] instead of copying this.
    pub expires_in: Option<Duration>,
}

impl Entry {
    /// An entry without a known TTL.
    pub fn new(value: Vec<u8>, version: Version) -> Self {
        Entry {
            value,
            version,
            expires_in: None,
        }
    }
}

impl fmt::Debug for Entry {
    // State can be confidential: never print the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("version", &self.version)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// When a write may happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SetMode {
    /// Write whether or not the key exists (PURISTA's `setState`).
    #[default]
    Upsert,
    /// Write only if the key does not exist; otherwise [`Error::Conflict`].
    Create,
    /// Write only if the stored version is this one; otherwise (changed, or removed)
    /// [`Error::Conflict`].
    Update(Version),
}

/// Options of one write.
///
/// ```
/// use std::time::Duration;
/// use state_store_core::{SetMode, SetOptions};
///
/// let opts = SetOptions::new().mode(SetMode::Create).ttl(Duration::from_secs(30));
/// assert_eq!(opts.ttl, Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetOptions {
    /// Condition of the write.
    pub mode: SetMode,
    /// Time to live. `None` keeps the value until it is removed, and clears any TTL an earlier
    /// write set. Backends counting in whole seconds round up. At most [`MAX_TTL`].
    pub ttl: Option<Duration>,
    /// Keep the expiry the key has now (default false). When the write replaces a live value,
    /// that value's deadline stays as it was (or its absence of one), and `ttl` is ignored;
    /// when the write creates the key, `ttl` applies. This is how a read-modify-write
    /// ([`StateStore::update`](crate::StateStore::update), [`increment_with_cas`]) keeps a
    /// session's or a rate-limit window's deadline fixed: rewrites never push it later.
    pub keep_ttl: bool,
    /// Whether the caller uses the returned [`Version`] (default true). The handle clears it
    /// for writes that discard the version (`set_state`, `set`, `update`), so a backend that
    /// needs an extra round trip to learn a write's version (Dapr) may skip it and return
    /// any version.
    pub want_version: bool,
}

impl Default for SetOptions {
    fn default() -> Self {
        SetOptions {
            mode: SetMode::Upsert,
            ttl: None,
            keep_ttl: false,
            want_version: true,
        }
    }
}

impl SetOptions {
    /// An unconditional write without TTL.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the condition.
    pub fn mode(mut self, mode: SetMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets [`SetOptions::keep_ttl`].
    pub fn keep_ttl(mut self, keep: bool) -> Self {
        self.keep_ttl = keep;
        self
    }
}

/// The longest TTL any store accepts: 10 years (365-day years). Longer TTLs are refused with
/// [`Error::InvalidTtl`] on every backend, before anything is written: some servers overflow
/// on larger ones (NATS acknowledges a 1000-year TTL and drops the value at once), and a value
/// meant to live that long should have no TTL.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// What a backend supports natively. The [`StateStore`](crate::StateStore) handle refuses an
/// undeclared feature with [`Error::Unsupported`] before calling the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Per-key TTL, applied atomically with the write.
    pub ttl: bool,
    /// `SetMode::Create`, `SetMode::Update` and conditional remove.
    pub conditional: bool,
    /// Atomic `increment`.
    pub increment: bool,
    /// `get_many` costs one round trip, whatever the number of keys.
    pub batch_get: bool,
    /// Data outlives the process (a server or a file).
    pub persistent: bool,
    /// Versions are derived from the stored bytes (Redis: the SHA-1 of the value, so that a
    /// value written by another client is a valid compare-and-set base). Rewriting identical
    /// bytes, or removing and re-creating them, gives the same version again. False
    /// everywhere else: a version then never matches a value it was not read from.
    pub versions_from_value: bool,
    /// [`Backend::list_keys`]: listing stored keys by prefix.
    pub list: bool,
    /// [`Backend::watch`]: following changes, and how faithfully.
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

/// How a backend follows changes ([`Backend::watch`]).
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

/// A page of stored keys: [`Backend::list_keys`].
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

/// What a watch follows: [`Backend::watch`].
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

/// A change as a backend reports it: [`Backend::watch`].
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

/// The stream [`Backend::watch`] returns.
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

struct ChannelStream(tokio::sync::mpsc::Receiver<Result<BackendEvent>>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<BackendEvent>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A storage backend: what an adapter crate or a custom store implements.
///
/// Handlers never call this directly; they hold a [`StateStore`](crate::StateStore), which
/// applies the key prefix, the enable flags, the limits, JSON encoding and tracing once for every
/// backend, and then calls these methods with full keys and encoded values.
///
/// # Contract
///
/// - Keys arrive non-empty, within [`Capabilities::max_key_len`], already prefixed. A backend
///   whose charset is narrower encodes them reversibly, or returns [`Error::InvalidKey`].
/// - Values arrive as JSON text within [`Capabilities::max_value_len`]. Store the bytes as
///   they are; return them as they were.
/// - `get_many` returns one slot per requested key, in request order; a missing or expired key
///   is `None`.
/// - A successful write that changes the value returns a new [`Version`]; `get_many` returns
///   the current one. (Rewriting identical bytes may keep the version: Redis derives it from
///   the value so that writes by other clients stay valid bases for compare-and-set.)
/// - `set` with [`SetMode::Create`] fails with [`Error::Conflict`] if the key exists;
///   [`SetMode::Update`] fails with `Conflict` if the current version differs or the key is
///   gone. A failed condition writes nothing.
/// - A `ttl` of `None` stores the value without expiry and clears an earlier TTL, unless
///   [`SetOptions::keep_ttl`] asks to keep the current deadline of a live value. An expired
///   key reads as missing. TTLs arrive non-zero and at most [`MAX_TTL`].
/// - A version never matches a value it was not read from: after a remove or an expiry, a
///   re-created key does not accept an old version (Redis, which derives versions from the
///   value for PURISTA interop, is the documented exception for identical bytes; see
///   [`Capabilities::versions_from_value`]).
/// - `remove` of a missing key is `Ok`; the flag says whether the key existed, where the
///   backend can tell without another round trip (NATS and Dapr report `true`). With
///   `expected`, the removal happens only if the current version is `expected`; otherwise
///   `Conflict` (or `Ok(false)` when the key is missing).
/// - `increment` is atomic across processes; a missing key starts at 0 and, only then, gets
///   `ttl`. A value that is not a JSON integer, or an overflow, is [`Error::NotAnInteger`].
/// - A feature the backend does not declare in [`Capabilities`] returns
///   [`Error::Unsupported`].
/// - No call blocks forever: network calls have timeouts and fail with
///   [`Error::Unavailable`].
/// - After `close`, every call fails with [`Error::Closed`] or [`Error::Unavailable`].
///
/// The `state-store-conformance` crate checks all of this against a real instance.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// A short name for messages and tracing (`"memory"`, `"redis"`).
    fn name(&self) -> &str;

    /// What this backend supports natively.
    fn capabilities(&self) -> Capabilities;

    /// Reads many keys, one slot per key in request order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>>;

    /// Reads many keys' values without their versions, one slot per key in request order:
    /// what `get_state` and typed reads need. The default calls [`Backend::get_many`];
    /// override it where a version costs work a plain read can skip (Redis computes a
    /// SHA-1 per value).
    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self
            .get_many(keys)
            .await?
            .into_iter()
            .map(|entry| entry.map(|e| e.value))
            .collect())
    }

    /// Reads one key's value without its version: what a typed `get` needs. It takes the
    /// key by value, so a client that wants an owned key needs no copy. The default calls
    /// [`Backend::get_values`]; override it where one key has a cheaper path than a list.
    async fn get_value(&self, key: String) -> Result<Option<Vec<u8>>> {
        let mut values = self.get_values(std::slice::from_ref(&key)).await?;
        match values.len() {
            1 => Ok(values.pop().flatten()),
            slots => Err(Error::backend(
                self.name(),
                format!("the backend returned {slots} slots for 1 key"),
            )),
        }
    }

    /// Writes one key and returns the new version.
    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version>;

    /// Removes one key; `Ok(true)` if it existed (or the backend cannot tell cheaply).
    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool>;

    /// Adds `delta` to the integer at `key` and returns the new value.
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64>;

    /// Lists live stored keys starting with `prefix`, at most `limit` per page, from where
    /// `after` (a previous page's [`KeyPage::next`]) left off. Ordered backends return keys in
    /// byte order and use the last key as the cursor. The default is
    /// [`Error::Unsupported`]; a backend that lists declares [`Capabilities::list`].
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let _ = (prefix, after, limit);
        Err(Error::unsupported(self.name(), "listing keys"))
    }

    /// Follows changes of the selected keys. The default is [`Error::Unsupported`]; a backend
    /// that watches declares [`Capabilities::watch`], and a [`WatchSupport::Lossy`] one
    /// refuses [`WatchStart::AfterVersion`] with [`Error::Unsupported`].
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        let _ = (selector, start);
        Err(Error::unsupported(self.name(), "watching changes"))
    }

    /// Takes a lease in one atomic call, where the backend can (Redis: one script): if
    /// `request.record_key` is absent, increment the integer at `request.counter_key` (no
    /// TTL; missing counts as 0) and store `before_token`, the new value in decimal, and
    /// `after_token` at `record_key` with `ttl`. The default answers
    /// [`LeaseGrant::NotNative`], and [`StateStore::lease`](crate::StateStore::lease) composes
    /// the same from `set` (create, then compare-and-set) and `increment`.
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        let _ = request;
        Ok(LeaseGrant::NotNative)
    }

    /// Answers a rate-limit check in one atomic call, where the backend can (Redis: one
    /// script, on the server's clock). `Ok(None)` (the default): the
    /// [`Limiter`](crate::Limiter) composes it from compare-and-set (GCRA) or `increment`
    /// (fixed window). A native answer must match the composed one: GCRA stores the
    /// theoretical arrival time as a JSON integer of microseconds since the Unix epoch, with a
    /// TTL until it is reached; a fixed window is an integer counter whose TTL starts with
    /// the window.
    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        let _ = request;
        Ok(None)
    }

    /// Closes connections and stops background work. Later calls fail.
    async fn close(&self) -> Result<()>;
}

/// A native rate-limit check: [`Backend::rate_limit`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RateLimitRequest<'a> {
    /// The key holding the limiter's state (prefixed).
    pub key: &'a str,
    /// The algorithm and its parameters.
    pub algorithm: RateAlgorithm,
    /// The request's weight.
    pub cost: u64,
    /// False for a peek: answer, change nothing.
    pub write: bool,
}

/// A rate-limit algorithm: [`RateLimitRequest::algorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateAlgorithm {
    /// The generic cell rate algorithm.
    Gcra {
        /// Time one unit of cost takes to restore.
        emission_interval: Duration,
        /// Most units at once.
        burst: u64,
    },
    /// A counter per window, the window starting at its first request.
    FixedWindow {
        /// Units per window.
        limit: u64,
        /// The window's length.
        window: Duration,
    },
}

/// A native rate-limit answer: [`Backend::rate_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitReply {
    /// Whether the request passes.
    pub allowed: bool,
    /// Units that would pass now after this request.
    pub remaining: u64,
    /// When denied, the wait until it would pass; `None` when allowed or never.
    pub retry_after: Option<Duration>,
    /// The wait until the limit is fully restored.
    pub reset_after: Duration,
}

impl RateLimitReply {
    /// A reply, for backend implementors.
    pub fn new(
        allowed: bool,
        remaining: u64,
        retry_after: Option<Duration>,
        reset_after: Duration,
    ) -> Self {
        RateLimitReply {
            allowed,
            remaining,
            retry_after,
            reset_after,
        }
    }
}

/// A native lease acquisition: [`Backend::acquire_lease`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LeaseAcquire<'a> {
    /// The key of the holder record (prefixed, like every key a backend sees).
    pub record_key: &'a str,
    /// The key of the token counter.
    pub counter_key: &'a str,
    /// The record's JSON text up to the token.
    pub before_token: &'a [u8],
    /// The record's JSON text after the token.
    pub after_token: &'a [u8],
    /// The lease's TTL.
    pub ttl: Duration,
}

/// What [`Backend::acquire_lease`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseGrant {
    /// The record was created with this token; `version` is the record's version.
    Granted {
        /// The counter's new value.
        token: u64,
        /// The version of the stored record.
        version: Version,
    },
    /// The record exists: somebody holds the lease. Nothing changed.
    Held,
    /// This backend has no native path.
    NotNative,
}

macro_rules! forward_backend {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<B: Backend + ?Sized> Backend for $ptr<B> {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
                (**self).get_many(keys).await
            }
            async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
                (**self).get_values(keys).await
            }
            async fn get_value(&self, key: String) -> Result<Option<Vec<u8>>> {
                (**self).get_value(key).await
            }
            async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
                (**self).set(key, value, options).await
            }
            async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
                (**self).remove(key, expected).await
            }
            async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
                (**self).increment(key, delta, ttl).await
            }
            async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
                (**self).acquire_lease(request).await
            }
            async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
                (**self).rate_limit(request).await
            }
            async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
                (**self).list_keys(prefix, after, limit).await
            }
            async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
                (**self).watch(selector, start).await
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
        }
    )*};
}

forward_backend!(Box, Arc);

/// Whether a backend was closed: for [`Backend`] implementors, so that every handle sharing a
/// backend fails with [`Error::Closed`] after one of them closes it.
#[derive(Debug, Default)]
pub struct CloseFlag(AtomicBool);

impl CloseFlag {
    /// A flag for an open backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Ok` while open; [`Error::Closed`] naming `store` after [`CloseFlag::close`].
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once closed.
    pub fn check(&self, store: &str) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed {
                store: store.to_owned(),
            });
        }
        Ok(())
    }

    /// True after [`CloseFlag::close`].
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Marks the backend closed; true the first time, so only one caller closes connections.
    pub fn close(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }
}

/// How many times [`increment_with_cas`] tries before giving up with [`Error::Conflict`].
pub const CAS_RETRIES: usize = 1000;

/// How long [`increment_with_cas`] keeps retrying lost races before giving up.
pub const CAS_DEADLINE: Duration = Duration::from_secs(30);

/// Atomic increment for a backend that has compare-and-set but no native increment.
///
/// Reads the counter, writes `old + delta` with [`SetMode::Update`] and
/// [`SetOptions::keep_ttl`] (or [`SetMode::Create`] with `ttl` when missing), and on
/// [`Error::Conflict`] backs off (exponentially, with jitter) and tries again. Atomic across
/// processes because every write is conditional; a counter created with a TTL keeps its
/// original deadline (fixed-window rate limits).
///
/// # Errors
///
/// [`Error::NotAnInteger`] for a non-integer value or on overflow; [`Error::Conflict`] after
/// [`CAS_RETRIES`] lost races or [`CAS_DEADLINE`]; anything `get_many` or `set` return.
pub async fn increment_with_cas<B: Backend + ?Sized>(
    backend: &B,
    key: &str,
    delta: i64,
    ttl: Option<Duration>,
) -> Result<i64> {
    let keys = [key.to_owned()];
    let mut backoff = Backoff::new(CAS_RETRIES, CAS_DEADLINE);
    loop {
        let current = backend.get_many(&keys).await?.pop().flatten();
        let (next, mode) = match current {
            None => (delta, SetMode::Create),
            Some(entry) => {
                let old = parse_counter(key, &entry.value)?;
                let next = old.checked_add(delta).ok_or_else(|| Error::NotAnInteger {
                    key: key.to_owned(),
                })?;
                (next, SetMode::Update(entry.version))
            }
        };
        let options = SetOptions {
            mode,
            ttl,
            keep_ttl: true,
            want_version: false,
        };
        match backend
            .set(key, next.to_string().into_bytes(), &options)
            .await
        {
            Ok(_) => return Ok(next),
            Err(Error::Conflict { .. }) if backoff.wait().await => {}
            Err(other) => return Err(other),
        }
    }
}

/// Runs `attempt` — one try of an upsert that keeps the key's TTL by writing conditionally
/// on what it read — again after each lost race ([`Error::Conflict`]): losing it is no
/// conflict for the caller, only a reason to read again. Gives up as [`increment_with_cas`]
/// does. For backend implementors whose store cannot keep a TTL in one write.
///
/// # Errors
///
/// [`Error::Conflict`] after [`CAS_RETRIES`] lost races or [`CAS_DEADLINE`]; any other error
/// of `attempt` at once.
pub async fn retry_lost_races<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = Backoff::new(CAS_RETRIES, CAS_DEADLINE);
    loop {
        match attempt().await {
            Err(Error::Conflict { .. }) if backoff.wait().await => {}
            other => return other,
        }
    }
}

/// Parses a stored counter: JSON text that is an integer within `i64`.
///
/// # Errors
///
/// [`Error::NotAnInteger`] for anything else (floats, strings, objects, invalid JSON).
pub fn parse_counter(key: &str, value: &[u8]) -> Result<i64> {
    match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(serde_json::Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .ok_or_else(|| Error::NotAnInteger {
        key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_only_integers() {
        assert_eq!(parse_counter("k", b"42").ok(), Some(42));
        assert_eq!(parse_counter("k", b" -7 ").ok(), Some(-7));
        for bad in [
            &b"1.5"[..],
            b"\"1\"",
            b"{}",
            b"null",
            b"18446744073709551615",
            b"x",
        ] {
            assert!(matches!(
                parse_counter("k", bad),
                Err(Error::NotAnInteger { .. })
            ));
        }
    }

    #[test]
    fn entry_debug_hides_the_value() {
        let entry = Entry::new(b"\"secret\"".to_vec(), Version::new("3"));
        let shown = format!("{entry:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("8 bytes"));
    }
}
