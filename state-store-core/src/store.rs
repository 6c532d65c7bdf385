//! The handle every service holds.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::backend::{Backend, Extensions, SetMode, SetOptions};
use crate::capability::Capabilities;
use crate::config::StoreConfig;
use crate::error::{Error, Operation, Result};
use crate::key::{caller_prefix, join_prefix, normalize_prefix, PREFIX_SEPARATOR, RESERVED_MARKER};
use crate::layer::{handle_stack, Call, ClosedLayer, HandleStack, Layer};
use crate::version::{Entry, Version};

/// The answer of [`StateStore::get_state`]: one entry per requested name; `None` when the name
/// is not stored, `Some(Value::Null)` when a JSON `null` is.
pub type StateMap = HashMap<String, Option<Value>>;

/// A value together with its version, for compare-and-set.
#[derive(Clone, PartialEq)]
pub struct StateEntry<T = Value> {
    /// The decoded value.
    pub value: T,
    /// Its version; pass it to [`SetMode::Update`] or [`StateStore::remove_if`].
    pub version: Version,
    /// The time it had left before expiring when it was read, where the backend reports it
    /// (every backend here does, Dapr where the component returns `ttlExpireTime`); `None`:
    /// no TTL, or unknown. To keep a deadline on a rewrite, use
    /// [`SetOptions::keep_ttl`](crate::SetOptions::keep_ttl) rather than this: it is already
    /// stale by a round trip.
    pub expires_in: Option<std::time::Duration>,
}

impl<T> fmt::Debug for StateEntry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateEntry")
            .field("value", &"<redacted>")
            .field("version", &self.version)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The state store handle: what request handlers hold.
///
/// Cheap to clone (an `Arc`); clones share the backend and its connections. It is the typed,
/// PURISTA-shaped face of a stack of [layers](crate::layer) over the backend: it applies the
/// enable flags and the default TTL of its [`StoreConfig`] and encodes values as JSON text;
/// the layers below check names, limits, capabilities and the closed state, apply the key
/// prefix, complete what the backend lacks and trace, the same way for every backend.
///
/// # Contract
///
/// - A name is any non-empty UTF-8 string within the key limit; it round-trips on every
///   backend. Without a prefix the stored key is the name (what PURISTA stores); with one it
///   is `prefix:name`, and handles whose prefixes are not nested never see each other's keys
///   (see [`StoreConfig::key_prefix`]). Errors name the caller's name, never the stored key.
/// - Values are JSON. A missing name reads as `None`; a stored `null` as `Some(Value::Null)`.
///   Reads return copies, never live references.
/// - Removing a missing name is `Ok`.
/// - Conditional writes ([`SetMode::Create`], [`SetMode::Update`], [`StateStore::remove_if`])
///   and [`StateStore::increment`] are atomic across processes sharing the backend.
/// - A feature the backend does not declare in [`Capabilities`] fails with
///   [`Error::Unsupported`] and writes nothing; a TTL is never silently dropped.
///
/// # Errors
///
/// Every method can return [`Error::OperationDisabled`] (by config), [`Error::InvalidKey`],
/// [`Error::Unavailable`] (backend unreachable: the call changed nothing), [`Error::Backend`]
/// and [`Error::Closed`] (after [`StateStore::destroy`]); writes also [`Error::ValueTooLarge`],
/// [`Error::Serialization`] and [`Error::OutcomeUnknown`] (sent, no answer: it may have taken
/// effect, and will not be sent again); reads [`Error::Decode`] when a stored value is not
/// JSON.
///
/// # Examples
///
/// ```
/// use serde_json::json;
/// use state_store_core::{DefaultStateStore, StateStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store_core::Error> {
/// let store = StateStore::new(DefaultStateStore::new());
/// store.set_state("session:abc", &json!({ "user": "ada" })).await?;
/// let visits = store.increment("visits", 1, None).await?;
///
/// let state = store.get_state(&["session:abc", "visits", "missing"]).await?;
/// assert_eq!(state["session:abc"], Some(json!({ "user": "ada" })));
/// assert_eq!(state["visits"], Some(json!(visits)));
/// assert_eq!(state["missing"], None);
/// store.destroy().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// What calls go through: the handle's layers over `base`.
    stack: Arc<dyn Backend>,
    /// The same, typed: its top intercept.
    top: Arc<HandleStack>,
    /// The backend with the completion layer and the builder's layers: what
    /// [`StateStore::with_prefix`] stacks another namespace on.
    base: Arc<dyn Backend>,
    /// The backend under every layer.
    raw: Arc<dyn Backend>,
    closed: ClosedLayer,
    config: StoreConfig,
    capabilities: Capabilities,
    /// A caller's handle: reserved keys are refused, and left out of listings and watches.
    caller: bool,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("backend", &self.inner.base)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<B: Backend + 'static> From<B> for StateStore {
    /// A handle over `backend` with the default [`StoreConfig`].
    fn from(backend: B) -> Self {
        StateStore::new(backend)
    }
}

impl StateStore {
    /// A handle over `backend` with the default [`StoreConfig`]. The same as
    /// `StateStore::from(backend)`.
    pub fn new(backend: impl Backend + 'static) -> Self {
        Self::with_config(backend, StoreConfig::default())
    }

    /// Starts a handle over `backend` wrapped in [`Layer`](crate::Layer)s:
    /// `StateStore::builder(backend).layer(…).config(…).build()`.
    pub fn builder(backend: impl Backend + 'static) -> crate::StateStoreBuilder {
        crate::StateStoreBuilder::new(Arc::new(backend))
    }

    /// A handle over `backend` with `config`.
    pub fn with_config(backend: impl Backend + 'static, config: StoreConfig) -> Self {
        Self::from_arc(Arc::new(backend), config)
    }

    /// A handle over a shared backend, for several handles (say, with different configs) over
    /// one set of connections.
    pub fn from_arc(backend: Arc<dyn Backend>, config: StoreConfig) -> Self {
        Self::over(Arc::clone(&backend), backend, config)
    }

    /// A handle over `layered` (the builder's layers over `raw`), with the default stack on
    /// top.
    pub(crate) fn over(
        raw: Arc<dyn Backend>,
        layered: Arc<dyn Backend>,
        config: StoreConfig,
    ) -> Self {
        let base = crate::CompletionLayer.layer(layered);
        Self::assemble(raw, base, config, ClosedLayer::new(), true)
    }

    fn assemble(
        raw: Arc<dyn Backend>,
        base: Arc<dyn Backend>,
        mut config: StoreConfig,
        closed: ClosedLayer,
        caller: bool,
    ) -> Self {
        config.key_prefix = normalize_prefix(&config.key_prefix);
        let top = handle_stack(&base, &config, &closed, caller);
        let capabilities = top.capabilities();
        StateStore {
            inner: Arc::new(Inner {
                stack: Arc::clone(&top) as Arc<dyn Backend>,
                top,
                base,
                raw,
                closed,
                config,
                capabilities,
                caller,
            }),
        }
    }

    /// Another handle over the same backend whose names live under `prefix`, nested inside
    /// this handle's prefix: `store.with_prefix("a").with_prefix("b")` is
    /// `store.with_prefix("a:b")`. Destroying either destroys both.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a prefix without a segment (`""`, `":"`), which would give
    /// back this very namespace, and for a [reserved segment](crate::RESERVED_MARKER).
    pub fn with_prefix(&self, prefix: &str) -> Result<Self> {
        let prefix = caller_prefix(prefix)?;
        Ok(self.nested(&prefix, self.inner.caller))
    }

    /// A handle for a component's own records (a lease's holder and fencing counter, rate
    /// limit state, sessions), under this handle's prefix in the reserved segment `$<area>`
    /// (see [`RESERVED_MARKER`](crate::RESERVED_MARKER)). No caller's name, prefix, listing
    /// or watch reaches it: a name that comes from a request can never be one of these
    /// records. Names inside are not restricted. Destroying it destroys this handle too.
    ///
    /// For crates that keep records beside their caller's data, as `state-store-tower`'s
    /// `SessionStore` does under `$sessions`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] unless `area` is one segment that is not empty and not reserved
    /// (`"sessions"`, not `""`, `"a:b"` or `"$x"`).
    pub fn reserved(&self, area: &str) -> Result<Self> {
        if area.is_empty() || area.contains(PREFIX_SEPARATOR) || area.starts_with(RESERVED_MARKER) {
            return Err(Error::invalid_key(
                area,
                "a reserved area is one segment, not empty, not itself reserved",
            ));
        }
        Ok(self.reserved_area(area))
    }

    /// [`StateStore::reserved`] of an area known to be valid.
    pub(crate) fn reserved_area(&self, area: &str) -> Self {
        self.nested(&format!("{RESERVED_MARKER}{area}"), false)
    }

    /// A handle under this one's prefix and then `segments` (canonical).
    fn nested(&self, segments: &str, caller: bool) -> Self {
        let mut config = self.inner.config.clone();
        config.key_prefix = join_prefix(&config.key_prefix, segments);
        Self::assemble(
            Arc::clone(&self.inner.raw),
            Arc::clone(&self.inner.base),
            config,
            self.inner.closed.clone(),
            caller,
        )
    }

    /// The backend's name (`"memory"`, `"redis"`, …).
    pub fn name(&self) -> &str {
        self.inner.stack.name()
    }

    /// What the stack supports: the backend's features, with what the completion layer adds,
    /// and the limits this handle applies.
    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    /// The config this handle applies.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The longest name (in bytes) this handle accepts: the config's limit, or what the
    /// backend's key limit leaves after the prefix, whichever is smaller.
    pub fn max_name_len(&self) -> usize {
        self.inner.capabilities.max_key_len
    }

    /// The layered backend this handle calls (names in, its prefix applied below), for calls
    /// the handle does not offer. Its checks refuse reserved names as the handle does, but its
    /// listings and watches include the store's own records ([reserved](crate::RESERVED_MARKER)
    /// keys, which only the handle's `list` and `watch` leave out): do not hand it to code
    /// that takes names or prefixes from requests.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.stack
    }

    /// The backend under every layer, as it was given: for tests of the backend itself
    /// (keys as stored, no checks, no completion).
    pub fn raw_backend(&self) -> &Arc<dyn Backend> {
        &self.inner.raw
    }

    /// The stack to call. Calls go through `&dyn Backend`: on the `Arc` itself, method
    /// resolution picks the forwarding `impl Backend for Arc<B>`, which boxes every call's
    /// future a second time.
    pub(crate) fn dispatch(&self) -> &dyn Backend {
        &*self.inner.stack
    }

    /// Whether this is a caller's handle (not [`StateStore::reserved`]): reserved keys stay
    /// out of its listings and watches.
    pub(crate) fn is_caller(&self) -> bool {
        self.inner.caller
    }

    /// The stack's optional operations.
    pub(crate) fn extensions(&self) -> Extensions<'_> {
        self.inner.stack.extensions()
    }

    /// What the stack's checks say of `call`, without making it: for a loop that would do
    /// work before its first write reaches them.
    pub(crate) fn preflight(&self, call: &Call<'_>) -> Result<()> {
        self.inner.top.preflight(call)
    }

    /// Why `call`, of an extension the stack does not offer, fails: what the layers refuse
    /// first (a closed store, a bad name), else `Unsupported` for `feature`.
    pub(crate) fn refuse(&self, call: &Call<'_>, feature: &'static str) -> Error {
        self.inner.top.refuse(call, feature)
    }

    /// Reads every requested name in one backend call (one round trip where the backend
    /// batches). The map has one entry per distinct name: `None` when missing. No names give
    /// an empty map.
    ///
    /// # Errors
    ///
    /// See [`StateStore`]; [`Error::Decode`] names the first key whose stored value is not JSON.
    pub async fn get_state<S: AsRef<str>>(&self, names: &[S]) -> Result<StateMap> {
        self.check(Operation::Get)?;
        let unique = distinct(names);
        let values = self.fetch_values(&unique).await?;
        // Sized up front: collecting `Result`s would grow the map from nothing.
        let mut state = StateMap::with_capacity(unique.len());
        for (name, value) in unique.into_iter().zip(values) {
            let value = value.map(|v| decode(name, &v)).transpose()?;
            state.insert(name.to_owned(), value);
        }
        Ok(state)
    }

    /// Reads one name with its version, for compare-and-set.
    ///
    /// # Errors
    ///
    /// See [`StateStore`].
    pub async fn get_entry(&self, name: &str) -> Result<Option<StateEntry>> {
        self.get_entry_as(name).await
    }

    /// Writes `value` under `name`, replacing what was there (PURISTA's `setState`). Uses the
    /// config's default TTL, if any; otherwise the value never expires.
    ///
    /// # Errors
    ///
    /// See [`StateStore`].
    pub async fn set_state(&self, name: &str, value: &Value) -> Result<()> {
        let options = SetOptions {
            mode: SetMode::Upsert,
            ttl: self.inner.config.default_ttl,
            keep_ttl: false,
            want_version: false,
        };
        self.set_with(name, value, options).await.map(drop)
    }

    /// Writes with a condition and a TTL, returning the new version.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when the condition fails (nothing written); [`Error::Unsupported`]
    /// when the backend lacks conditional writes or TTL; [`Error::InvalidTtl`] for a zero TTL;
    /// and see [`StateStore`].
    pub async fn set_with<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
        options: SetOptions,
    ) -> Result<Version> {
        self.check(Operation::Set)?;
        let bytes = encode(name, value)?;
        self.dispatch().set(name, bytes, &options).await
    }

    /// Removes `name` (PURISTA's `removeState`). Removing a missing name is `Ok`.
    ///
    /// # Errors
    ///
    /// See [`StateStore`].
    pub async fn remove_state(&self, name: &str) -> Result<()> {
        self.check(Operation::Remove)?;
        self.dispatch().remove(name, None).await.map(drop)
    }

    /// Removes `name` only if its current version is `expected`.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when the value changed or is gone (nothing removed);
    /// [`Error::Unsupported`] without conditional writes; and see [`StateStore`].
    pub async fn remove_if(&self, name: &str, expected: &Version) -> Result<()> {
        self.check(Operation::Remove)?;
        match self.dispatch().remove(name, Some(expected)).await? {
            true => Ok(()),
            false => Err(Error::Conflict {
                key: name.to_owned(),
            }),
        }
    }

    /// Adds `delta` to the integer counter at `name` atomically and returns the new value. A
    /// missing counter starts at 0 and, only when created here, gets `ttl_on_create` (a fixed
    /// window for rate limits). The counter is a JSON integer that `get_state` reads.
    ///
    /// # Errors
    ///
    /// [`Error::NotAnInteger`] when the stored value is not an integer or would overflow;
    /// [`Error::Unsupported`] without increment (or TTL, when one is given); and see
    /// [`StateStore`].
    pub async fn increment(
        &self,
        name: &str,
        delta: i64,
        ttl_on_create: Option<Duration>,
    ) -> Result<i64> {
        self.check(Operation::Set)?;
        let Some(counter) = self.extensions().increment else {
            let call = Call::Increment {
                key: name,
                ttl: ttl_on_create,
            };
            return Err(self.refuse(&call, "atomic increment"));
        };
        counter.increment(name, delta, ttl_on_create).await
    }

    /// Closes the backend gracefully. Every later call on this handle, its clones and its
    /// prefixed views fails with [`Error::Closed`]. Calling it twice is `Ok`.
    ///
    /// # Errors
    ///
    /// What the backend reports while closing.
    pub async fn destroy(&self) -> Result<()> {
        if self.inner.closed.is_closed() {
            return Ok(());
        }
        match self.dispatch().close().await {
            // Another clone closed it first.
            Err(Error::Closed { .. }) => Ok(()),
            other => other,
        }
    }

    pub(crate) async fn get_entry_as<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<StateEntry<T>>> {
        self.check(Operation::Get)?;
        let entry = self.fetch_entry(name).await?;
        entry
            .map(|e| {
                Ok(StateEntry {
                    value: decode(name, &e.value)?,
                    version: e.version,
                    expires_in: e.expires_in,
                })
            })
            .transpose()
    }

    /// A destroyed handle first (the closed layer's state, consulted before the handle does
    /// any work of its own), then the enable flags (PURISTA's `enableGet`, `enableSet`,
    /// `enableRemove`).
    pub(crate) fn check(&self, operation: Operation) -> Result<()> {
        self.inner.closed.check(self.name())?;
        let config = &self.inner.config;
        let enabled = match operation {
            Operation::Get => config.enable_get,
            Operation::Set => config.enable_set,
            Operation::Remove => config.enable_remove,
        };
        if enabled {
            Ok(())
        } else {
            Err(Error::OperationDisabled { operation })
        }
    }

    pub(crate) fn require(&self, supported: bool, feature: &'static str) -> Result<()> {
        if supported {
            Ok(())
        } else {
            Err(Error::unsupported(self.name(), feature))
        }
    }

    /// One name's entry, and the check that the backend kept its promise of one slot.
    pub(crate) async fn fetch_entry(&self, name: &str) -> Result<Option<Entry>> {
        let slots = self.dispatch().get_many(&[name.to_owned()]).await?;
        Ok(self.one_slot_per_key(slots, 1)?.pop().flatten())
    }

    /// Reads the values of `names` with one `get_values`, and checks the backend kept its
    /// promise of one slot per key.
    pub(crate) async fn fetch_values(&self, names: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let values = match names {
            [] => return Ok(Vec::new()),
            // One name (a typed `get`): its key on the stack, no list to allocate.
            [name] => self.dispatch().get_values(&[(*name).to_owned()]).await?,
            _ => {
                let keys: Vec<String> = names.iter().map(|&name| name.to_owned()).collect();
                self.dispatch().get_values(&keys).await?
            }
        };
        self.one_slot_per_key(values, names.len())
    }

    fn one_slot_per_key<T>(&self, slots: Vec<T>, keys: usize) -> Result<Vec<T>> {
        if slots.len() != keys {
            return Err(Error::backend(
                self.name(),
                format!("the backend returned {} slots for {keys} keys", slots.len()),
            ));
        }
        Ok(slots)
    }
}

/// `names` without repeats, in first-seen order: compared pairwise when few (no hashing, no
/// set to allocate), through a set otherwise.
fn distinct<S: AsRef<str>>(names: &[S]) -> Vec<&str> {
    const PAIRWISE: usize = 16;
    let mut unique: Vec<&str> = Vec::with_capacity(names.len());
    if names.len() <= PAIRWISE {
        for name in names.iter().map(AsRef::as_ref) {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
    } else {
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        unique.extend(
            names
                .iter()
                .map(AsRef::as_ref)
                .filter(|name| seen.insert(*name)),
        );
    }
    unique
}

/// `value` as JSON text. The limit on its size is the limit layer's.
pub(crate) fn encode<T: Serialize + ?Sized>(name: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::serialization(name, &e))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::decode(name, std::any::type_name::<T>(), &e))
}
