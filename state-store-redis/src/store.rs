//! `RedisStateStore`: the backend over a fred client.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{
    ClientLike, ClusterInterface, EventInterface, KeysInterface, PubsubInterface,
};
use fred::types::config::ReconnectPolicy;
use fred::types::scripts::Script;
use fred::types::{Builder, Expiration, SetOptions as FredSetOptions};
use futures_util::future::try_join_all;
use state_store_core::{
    watch_channel, Backend, BackendEvent, Capabilities, CloseFlag, Entry, Error, KeyPage,
    KeySelector, LeaseAcquire, LeaseGrant, RateAlgorithm, RateLimitReply, RateLimitRequest,
    RemoveCause, Result, SetMode, SetOptions, Version, WatchStart, WatchStream, WatchSupport,
};

use crate::config::RedisConfig;
use crate::error::{is_not_an_integer, map, map_write, STORE};

/// `Update(version)`: write only if the digest of the current value is the expected version.
/// `ARGV[4] == '1'` keeps the key's TTL.
static UPDATE: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("lua/update.lua")));

/// Upsert keeping an existing key's TTL, with `PX ARGV[2]` when it creates the key.
static UPSERT_KEEP_TTL: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("lua/upsert_keep_ttl.lua")));

/// Conditional remove: 1 removed, 0 missing, -1 changed.
static REMOVE_IF: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("lua/remove_if.lua")));

/// `INCRBY` whose TTL applies only when it creates the counter, atomically. The counter is
/// created by one `SET … PX`, so a TTL Redis refuses fails the call before anything changed.
/// The new value is returned as the stored text: Lua numbers are doubles, which would round
/// counters beyond 2^53.
static INCREMENT_WITH_TTL: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("lua/increment_with_ttl.lua")));

/// A lease in one call: when the record `KEYS[1]` is absent, `INCR` the token counter
/// `KEYS[2]` and store `ARGV[1] .. token .. ARGV[2]` with `PX ARGV[3]`. Returns
/// `"<token> <sha1 of the record>"`, or nil when the lease is held.
static ACQUIRE_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("lua/acquire_lease.lua")));

/// GCRA on the server's clock: `KEYS[1]` holds the theoretical arrival time (µs since the
/// epoch, as an integer). `ARGV`: emission interval µs, burst, cost, write (`1`/`0`). Returns
/// `{allowed, remaining, retry_after µs (-1: none), reset_after µs}`. The arithmetic is the
/// core's `gcra` (Lua numbers are doubles: exact for µs timestamps until the year 2255).
static GCRA: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("lua/gcra.lua")));

/// A fixed window: `INCRBY KEYS[1] ARGV[1]` (when `ARGV[3] == '1'`), a new window gets
/// `PEXPIRE ARGV[2]`. Returns `{count, ms left in the window}`.
static FIXED_WINDOW: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("lua/fixed_window.lua")));

/// The Redis state store.
///
/// # Wire format (shared with PURISTA)
///
/// The Redis key is the state name (after the handle's optional prefix) and the value is the
/// JSON text as a plain Redis string — exactly what `@purista/redis-state-store` writes with
/// `SET name JSON.stringify(value)`. A PURISTA service and a Rust service read each other's
/// state in one Redis, and a value another client wrote with a plain `SET` is a valid base for
/// compare-and-set.
///
/// That is why a [`Version`] here is the SHA-1 of the stored value (what Lua's
/// `redis.sha1hex` computes server-side), not a counter in a side key another client would not
/// maintain: rewriting the identical value keeps the version, any change gives a new one.
///
/// # Operations
///
/// One round trip each: `get_state` of N names is one `MGET` (in a cluster one `MGET` per hash
/// slot, sent concurrently, answers in request order); a write is `SET` (`PX` for a TTL,
/// `NX` for `Create`); `Update` and conditional remove are one Lua script each; `increment` is
/// `INCRBY`, or a script making the TTL-on-create atomic with it. Taking a lease is one script
/// (the record and its token counter share a hash slot: `lease:{name}`); renewing and
/// releasing are the `Update` and conditional-remove scripts.
///
/// A client built by this crate does not resend a command after a lost connection (fred's
/// default is to retry up to three times, which could apply an `INCRBY` twice), nor one whose
/// call has timed out. A write that may have reached the server fails with
/// [`Error::OutcomeUnknown`] (a timeout, a lost connection); one that never left the client
/// (backpressure, no connection to route it to) fails with [`Error::Unavailable`], as every
/// failed read does.
///
/// # Example
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store_core::Error> {
/// use state_store_core::StateStore;
/// use state_store_redis::{RedisConfig, RedisStateStore};
///
/// let store = StateStore::from(RedisStateStore::connect(RedisConfig::from_env()?).await?);
/// store.set_state("session:abc", &serde_json::json!({ "user": "ada" })).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisStateStore {
    client: Client,
    clustered: bool,
    /// What [`RedisStateStore::probe_watch`] found at connect.
    watch: WatchSupport,
    closed: CloseFlag,
    /// Tells watch tasks (each with a subscriber connection of its own) that the store closed.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl RedisStateStore {
    /// Refuses to watch when the server (as far as `CONFIG GET` tells) publishes no keyspace
    /// notifications for writes, removals and expiry; a server that denies `CONFIG` is trusted.
    async fn check_notifications(&self) -> Result<()> {
        match notification_flags(&self.client).await {
            Some(flags) if !notifies_enough(&flags) => Err(Error::config(format!(
                "watching needs keyspace notifications: the server has notify-keyspace-events \
                 {flags:?}; set it to include K$gx (CONFIG SET notify-keyspace-events K$gx, or \
                 RedisConfig::with_keyspace_notifications)"
            ))),
            _ => Ok(()),
        }
    }

    /// What a watch can deliver on this server: nothing on a cluster, or when the server
    /// publishes no keyspace notifications (turned on first when `enable` asks, and `CONFIG`
    /// allows).
    async fn probe_watch(client: &Client, enable: bool) -> WatchSupport {
        if client.is_clustered() {
            return WatchSupport::None;
        }
        let Some(flags) = notification_flags(client).await else {
            // `CONFIG` refused (managed services often rename it): trust the server.
            return WatchSupport::Lossy;
        };
        if notifies_enough(&flags) {
            return WatchSupport::Lossy;
        }
        if enable {
            let mut wanted = flags.clone();
            wanted.extend("K$gx".chars().filter(|c| !flags.contains(*c)));
            let set: std::result::Result<(), _> = client
                .custom(
                    fred::cmd!("CONFIG"),
                    vec!["SET", "notify-keyspace-events", &wanted],
                )
                .await;
            if set.is_ok() {
                return WatchSupport::Lossy;
            }
        }
        WatchSupport::None
    }

    /// Connects with `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for refused credentials or settings; [`Error::Unavailable`] when no
    /// server answers within the connect timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let mut builder = Builder::from_config(config.fred.clone());
        builder
            .with_connection_config(|c| {
                c.connection_timeout = config.timeouts.connect;
                c.internal_command_timeout = config.timeouts.request;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.timeouts.request;
            })
            .set_policy(ReconnectPolicy::new_exponential(
                config.reconnect_max_attempts,
                50,
                u32::try_from(config.reconnect_max_delay.as_millis()).unwrap_or(u32::MAX),
                2,
            ));
        let client = builder.build().map_err(map)?;
        let connected = tokio::time::timeout(config.timeouts.connect, client.init()).await;
        match connected {
            Ok(Ok(_)) => {
                let watch = Self::probe_watch(&client, config.enable_notifications).await;
                Ok(Self {
                    watch,
                    ..Self::from_client(client)
                })
            }
            Ok(Err(err)) => {
                let _ = client.quit().await;
                Err(map(err))
            }
            Err(elapsed) => {
                let _ = client.quit().await;
                Err(Error::unavailable(STORE, elapsed))
            }
        }
    }

    /// Wraps a ready, connected fred client (standalone or cluster). Its own timeout and retry
    /// settings apply; see the type docs about command retries. Unlike
    /// [`connect`](Self::connect), it does not ask the server about keyspace notifications:
    /// capabilities report a lossy watch on any standalone server, and `watch` checks when
    /// called.
    pub fn from_client(client: Client) -> Self {
        let clustered = client.is_clustered();
        RedisStateStore {
            client,
            clustered,
            watch: if clustered {
                WatchSupport::None
            } else {
                WatchSupport::Lossy
            },
            closed: CloseFlag::new(),
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }

    /// The fred client, for commands this crate does not offer.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn check_open(&self) -> Result<()> {
        self.closed.check(STORE)
    }

    async fn mget(&self, keys: Vec<&String>) -> Result<Vec<Option<Vec<u8>>>> {
        let values: Vec<Option<fred::bytes::Bytes>> = match keys.as_slice() {
            [key] => {
                let value: Option<fred::bytes::Bytes> =
                    self.client.get(key.as_str()).await.map_err(map)?;
                return Ok(vec![value.map(Vec::from)]);
            }
            _ => {
                let keys: Vec<&str> = keys.into_iter().map(String::as_str).collect();
                self.client.mget(keys).await.map_err(map)?
            }
        };
        // Zero-copy when fred holds the only reference to the buffer.
        Ok(values.into_iter().map(|v| v.map(Vec::from)).collect())
    }
}

/// The version of a stored value: its SHA-1 in lower-case hex, as `redis.sha1hex` computes it.
pub(crate) fn digest(value: &[u8]) -> Version {
    Version::new(sha1_smol::Sha1::from(value).digest().to_string())
}

/// The server's `notify-keyspace-events`, or `None` when it refuses `CONFIG GET`.
async fn notification_flags(client: &Client) -> Option<String> {
    let reply: Vec<String> = client
        .custom(fred::cmd!("CONFIG"), vec!["GET", "notify-keyspace-events"])
        .await
        .ok()?;
    Some(reply.get(1).cloned().unwrap_or_default())
}

/// Whether `flags` publish keyspace events (`K`) for writes, removals and expiry (`$gx`, or
/// `A` for all).
fn notifies_enough(flags: &str) -> bool {
    flags.contains('K')
        && (flags.contains('A')
            || (flags.contains('$') && flags.contains('g') && flags.contains('x')))
}

/// Completes once the store is closed (or gone).
async fn closing(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|closed| *closed).await.map(drop);
}

/// A keyspace notification as a change; `None` for operations that change no value (an
/// `EXPIRE`), keys that are not UTF-8, and writes whose key is gone by the time it is read
/// (its removal follows).
async fn keyspace_change(
    client: &Client,
    event: fred::types::KeyspaceEvent,
) -> Result<Option<BackendEvent>> {
    let Some(key) = event.key.as_str().map(str::to_owned) else {
        return Ok(None);
    };
    let cause = match event.operation.as_str() {
        "del" | "unlink" | "rename_from" | "move_from" => RemoveCause::Removed,
        "expired" | "evicted" => RemoveCause::Expired,
        "set" | "incrby" | "incrbyfloat" | "append" | "setrange" | "rename_to" | "restore"
        | "copy_to" | "move_to" => {
            let value: Option<fred::bytes::Bytes> = client.get(key.as_str()).await.map_err(map)?;
            return Ok(value.map(|value| {
                let value = value.to_vec();
                let version = digest(&value);
                BackendEvent::Put {
                    key,
                    value,
                    version,
                }
            }));
        }
        _ => return Ok(None),
    };
    Ok(Some(BackendEvent::Removed {
        key,
        cause,
        version: None,
    }))
}

/// `prefix` with the glob metacharacters of `SCAN … MATCH` escaped.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `SCAN`'s answer: the next cursor and the keys (keys that are not UTF-8 are no state names
/// of ours and are skipped).
fn scan_reply(reply: fred::types::Value) -> Result<(String, Vec<String>)> {
    let unexpected = || Error::backend(STORE, "SCAN gave an unexpected answer");
    let fred::types::Value::Array(mut parts) = reply else {
        return Err(unexpected());
    };
    if parts.len() != 2 {
        return Err(unexpected());
    }
    let keys = parts.pop().ok_or_else(unexpected)?;
    let cursor = parts
        .pop()
        .ok_or_else(unexpected)?
        .as_string()
        .ok_or_else(unexpected)?;
    let fred::types::Value::Array(keys) = keys else {
        return Err(unexpected());
    };
    let keys = keys
        .into_iter()
        .filter_map(|key| match key {
            fred::types::Value::Bytes(bytes) => String::from_utf8(bytes.to_vec()).ok(),
            fred::types::Value::String(text) => Some(text.to_string()),
            _ => None,
        })
        .collect();
    Ok((cursor, keys))
}

/// Milliseconds for `PX`, rounded up so a sub-millisecond TTL still expires.
fn px(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

fn text(value: &[u8]) -> Result<&str> {
    std::str::from_utf8(value).map_err(|e| Error::backend(STORE, e))
}

#[async_trait]
impl Backend for RedisStateStore {
    fn name(&self) -> &str {
        STORE
    }

    /// `watch` is lossy on a standalone server that publishes keyspace notifications (`K$gx`
    /// in `notify-keyspace-events`, as read at connect), none otherwise: on a cluster, or on a
    /// server with the default `""` (see [`RedisConfig::with_keyspace_notifications`]).
    ///
    /// [`RedisConfig::with_keyspace_notifications`]: crate::RedisConfig::with_keyspace_notifications
    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
            .with_list(true)
            .with_watch(self.watch)
            .with_versions_from_value(true)
            .with_max_value_len(512 * 1024 * 1024)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        Ok(self
            .get_values(keys)
            .await?
            .into_iter()
            .map(|v| {
                v.map(|value| {
                    let version = digest(&value);
                    Entry::new(value, version)
                })
            })
            .collect())
    }

    /// A typed read: one `GET`; the key moves into fred without a copy.
    async fn get_value(&self, key: String) -> Result<Option<Vec<u8>>> {
        self.check_open()?;
        let value: Option<fred::bytes::Bytes> = self.client.get(key).await.map_err(map)?;
        Ok(value.map(Vec::from))
    }

    /// `get_state`: the values only, without a SHA-1 per value.
    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.check_open()?;
        if self.clustered && keys.len() > 1 {
            // MGET across hash slots fails with CROSSSLOT: one MGET per slot, concurrently.
            let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let slot = fred::util::redis_keyslot(key.as_bytes());
                match groups.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((slot, vec![i])),
                }
            }
            let answers = try_join_all(
                groups
                    .iter()
                    .map(|(_, members)| self.mget(members.iter().map(|&i| &keys[i]).collect())),
            )
            .await?;
            let mut values = vec![None; keys.len()];
            for ((_, members), answer) in groups.iter().zip(answers) {
                for (&i, value) in members.iter().zip(answer) {
                    values[i] = value;
                }
            }
            Ok(values)
        } else {
            self.mget(keys.iter().collect()).await
        }
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        self.check_open()?;
        // The digest costs a SHA-1 of the value: only when the caller uses the version.
        let version = if options.want_version {
            digest(&value)
        } else {
            Version::unwanted()
        };
        // Owned, so the plain `SET` hands fred the buffer instead of a copy.
        let value = String::from_utf8(value).map_err(|e| Error::backend(STORE, e.utf8_error()))?;
        let expire = options.ttl.map(|ttl| Expiration::PX(px(ttl)));
        match &options.mode {
            SetMode::Upsert if options.keep_ttl => match options.ttl {
                None => {
                    self.client
                        .set::<(), _, _>(key, value, Some(Expiration::KEEPTTL), None, false)
                        .await
                        .map_err(map_write)?;
                }
                Some(ttl) => {
                    UPSERT_KEEP_TTL
                        .evalsha_with_reload::<(), _, _>(
                            &self.client,
                            key,
                            vec![value.as_str(), &px(ttl).to_string()],
                        )
                        .await
                        .map_err(map_write)?;
                }
            },
            SetMode::Upsert => {
                self.client
                    .set::<(), _, _>(key, value, expire, None, false)
                    .await
                    .map_err(map_write)?;
            }
            SetMode::Create => {
                let written: Option<String> = self
                    .client
                    .set(key, value, expire, Some(FredSetOptions::NX), false)
                    .await
                    .map_err(map_write)?;
                if written.is_none() {
                    return Err(Error::Conflict {
                        key: key.to_owned(),
                    });
                }
            }
            SetMode::Update(expected) => {
                let ttl = options.ttl.map(|t| px(t).to_string()).unwrap_or_default();
                let keep = if options.keep_ttl { "1" } else { "0" };
                let written: i64 = UPDATE
                    .evalsha_with_reload(
                        &self.client,
                        key,
                        vec![value.as_str(), expected.as_str(), &ttl, keep],
                    )
                    .await
                    .map_err(map_write)?;
                if written == 0 {
                    return Err(Error::Conflict {
                        key: key.to_owned(),
                    });
                }
            }
        }
        Ok(version)
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        self.check_open()?;
        match expected {
            None => {
                let removed: i64 = self.client.del(key).await.map_err(map_write)?;
                Ok(removed > 0)
            }
            Some(expected) => {
                let outcome: i64 = REMOVE_IF
                    .evalsha_with_reload(&self.client, key, expected.as_str())
                    .await
                    .map_err(map_write)?;
                match outcome {
                    1 => Ok(true),
                    0 => Ok(false),
                    _ => Err(Error::Conflict {
                        key: key.to_owned(),
                    }),
                }
            }
        }
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        self.check_open()?;
        let result = match ttl {
            None => self.client.incr_by(key, delta).await,
            Some(ttl) => INCREMENT_WITH_TTL
                .evalsha_with_reload::<String, _, _>(&self.client, key, vec![delta, px(ttl)])
                .await
                .and_then(|text| {
                    text.parse().map_err(|_| {
                        fred::error::Error::new(
                            fred::error::ErrorKind::Parse,
                            "INCRBY left a non-integer",
                        )
                    })
                }),
        };
        result.map_err(|err| {
            if is_not_an_integer(&err) {
                Error::NotAnInteger {
                    key: key.to_owned(),
                }
            } else {
                map_write(err)
            }
        })
    }

    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        self.check_open()?;
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        if self.clustered && slot(request.record_key) != slot(request.counter_key) {
            // A prefix or name that defeats the hash tag (say `{}`): the composed path works
            // on any keys.
            return Ok(LeaseGrant::NotNative);
        }
        let granted: Option<String> = ACQUIRE_LEASE
            .evalsha_with_reload(
                &self.client,
                vec![request.record_key, request.counter_key],
                vec![
                    text(request.before_token)?,
                    text(request.after_token)?,
                    &px(request.ttl).to_string(),
                ],
            )
            .await
            .map_err(|err| {
                if is_not_an_integer(&err) {
                    Error::NotAnInteger {
                        key: request.counter_key.to_owned(),
                    }
                } else {
                    map_write(err)
                }
            })?;
        let Some(granted) = granted else {
            return Ok(LeaseGrant::Held);
        };
        let parsed = granted
            .split_once(' ')
            .and_then(|(token, sha)| Some((token.parse().ok()?, Version::new(sha))));
        match parsed {
            Some((token, version)) => Ok(LeaseGrant::Granted { token, version }),
            None => Err(Error::backend(
                STORE,
                "the lease script gave an unreadable answer",
            )),
        }
    }

    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        self.check_open()?;
        let not_an_integer = |err: fred::error::Error| {
            if is_not_an_integer(&err) {
                Error::NotAnInteger {
                    key: request.key.to_owned(),
                }
            } else if request.write {
                map_write(err)
            } else {
                map(err)
            }
        };
        let write = if request.write { "1" } else { "0" };
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        match request.algorithm {
            RateAlgorithm::Gcra {
                emission_interval,
                burst,
            } => {
                let (allowed, remaining, retry, reset): (i64, i64, i64, i64) = GCRA
                    .evalsha_with_reload(
                        &self.client,
                        request.key,
                        vec![
                            micros(emission_interval).max(1).to_string(),
                            burst.to_string(),
                            request.cost.to_string(),
                            write.to_owned(),
                        ],
                    )
                    .await
                    .map_err(not_an_integer)?;
                let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
                Ok(Some(RateLimitReply::new(
                    allowed == 1,
                    u64::try_from(remaining).unwrap_or(0),
                    (retry >= 0).then(|| us(retry)),
                    us(reset),
                )))
            }
            RateAlgorithm::FixedWindow { limit, window } => {
                let (count, left): (i64, i64) = FIXED_WINDOW
                    .evalsha_with_reload(
                        &self.client,
                        request.key,
                        vec![
                            request.cost.to_string(),
                            px(window).to_string(),
                            write.to_owned(),
                        ],
                    )
                    .await
                    .map_err(not_an_integer)?;
                let used = u64::try_from(count).unwrap_or(0)
                    + if request.write { 0 } else { request.cost };
                let allowed = used <= limit;
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                Ok(Some(RateLimitReply::new(
                    allowed,
                    limit.saturating_sub(used),
                    (!allowed && request.cost <= limit).then_some(left),
                    left,
                )))
            }
            _ => Ok(None),
        }
    }

    /// `SCAN` with the prefix's glob metacharacters escaped, on every primary of a cluster in
    /// turn. `limit` is `SCAN`'s `COUNT` hint: a page may hold somewhat more keys; a key may
    /// show up on two pages (the handle's `list_all` deduplicates).
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        self.check_open()?;
        let pattern = format!("{}*", glob_escape(prefix));
        let nodes: Vec<Option<fred::types::config::Server>> = if self.clustered {
            let mut nodes = self
                .client
                .cached_cluster_state()
                .map(|state| state.unique_primary_nodes())
                .unwrap_or_default();
            nodes.sort_by_key(ToString::to_string);
            nodes.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let (mut node, mut cursor) = match after.and_then(|a| a.split_once(':')) {
            Some((node, cursor)) => (
                node.parse::<usize>()
                    .map_err(|_| Error::invalid_key(prefix, "not a cursor this store gave"))?,
                cursor.to_owned(),
            ),
            None => (0, "0".to_owned()),
        };
        let count = limit.clamp(1, 10_000).to_string();
        let mut keys = Vec::new();
        while let Some(server) = nodes.get(node) {
            let args = vec![cursor.as_str(), "MATCH", &pattern, "COUNT", &count];
            let reply: fred::types::Value = match server {
                Some(server) => {
                    self.client
                        .with_cluster_node(server.clone())
                        .custom(fred::cmd!("SCAN"), args)
                        .await
                }
                None => self.client.custom(fred::cmd!("SCAN"), args).await,
            }
            .map_err(map)?;
            let (next, found) = scan_reply(reply)?;
            keys.extend(found);
            cursor = next;
            if cursor == "0" {
                node += 1;
            }
            if !keys.is_empty() || node >= nodes.len() {
                break;
            }
        }
        let next = (node < nodes.len()).then(|| format!("{node}:{cursor}"));
        Ok(KeyPage::new(keys, next))
    }

    /// Keyspace notifications on a connection of its own (`PSUBSCRIBE
    /// __keyspace@<db>__:<prefix>*`): lossy — a reconnect or a slow consumer gives `Resync`,
    /// and a `Put` carries the value read when the notification arrives (a later one, if the
    /// key changed again meanwhile). The server must publish them: `notify-keyspace-events`
    /// with `K` and `$gx` (or `A`). Standalone only: a cluster publishes per node.
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        self.check_open()?;
        if self.clustered {
            return Err(Error::unsupported(STORE, "watching changes on a cluster"));
        }
        if !matches!(start, WatchStart::Now) {
            return Err(Error::unsupported(STORE, "resuming a watch from a version"));
        }
        self.check_notifications().await?;
        let db = self.client.client_config().database.unwrap_or(0);
        let pattern = match selector {
            KeySelector::Key(key) => format!("__keyspace@{db}__:{}", glob_escape(key)),
            KeySelector::Prefix(prefix) => format!("__keyspace@{db}__:{}*", glob_escape(prefix)),
            _ => return Err(Error::unsupported(STORE, "this selector")),
        };
        let subscriber = self.client.clone_new();
        let mut events = subscriber.keyspace_event_rx();
        subscriber.init().await.map_err(map)?;
        // After the first connection, which also counts as a "reconnection".
        let mut reconnects = subscriber.reconnect_rx();
        if let Err(err) = subscriber.psubscribe(pattern.clone()).await {
            let _ = subscriber.quit().await;
            return Err(map(err));
        }
        let mut shutdown = self.shutdown.subscribe();
        let (tx, stream) = watch_channel(256);
        let reader = self.client.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = events.recv() => {
                        let change = match event {
                            Ok(event) => match keyspace_change(&reader, event).await {
                                Ok(Some(change)) => Ok(change),
                                Ok(None) => continue,
                                Err(err) => Err(err),
                            },
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                Ok(BackendEvent::Resync { reason: format!("{n} notifications were dropped") })
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        };
                        if tx.send(change).await.is_err() {
                            break;
                        }
                    }
                    reconnected = reconnects.recv() => {
                        if reconnected.is_err() {
                            break;
                        }
                        // Notifications published while disconnected are gone.
                        let _ = subscriber.psubscribe(pattern.clone()).await;
                        let reason = "reconnected to Redis: notifications may have been missed".to_owned();
                        if tx.send(Ok(BackendEvent::Resync { reason })).await.is_err() {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                    () = closing(&mut shutdown) => break,
                }
            }
            let _ = subscriber.quit().await;
        });
        Ok(stream)
    }

    async fn close(&self) -> Result<()> {
        if !self.closed.close() {
            return Ok(());
        }
        self.shutdown.send_replace(true);
        self.client.quit().await.map_err(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_need_keyspace_events_for_writes_removals_and_expiry() {
        for enough in ["K$gx", "KEA", "AK", "xgK$E"] {
            assert!(notifies_enough(enough), "{enough}");
        }
        for short in ["", "E$gx", "K$g", "Kx", "KEl"] {
            assert!(!notifies_enough(short), "{short}");
        }
    }

    /// The GCRA script and the core's `gcra_step` give the same answers and store the same
    /// arrival time, on 500 generated inputs (a fixed seed, so a failure replays) against a
    /// real server: the one algorithm in two languages cannot drift apart.
    #[tokio::test]
    async fn the_gcra_script_computes_what_core_computes() {
        use crate::RedisConfig;
        use state_store_core::gcra_step;

        let Some(url) = state_store_testkit::harness::redis::redis_url() else {
            return;
        };
        let config = RedisConfig::from_url(&url).expect("url");
        let store = RedisStateStore::connect(config).await.expect("connect");
        let client = store.client();
        let mut seed: u64 = 0x5eed_6c7a;
        let mut next = |bound: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound.max(1)
        };
        for case in 0..500 {
            let now = 1_700_000_000_000_000 + next(1_000_000_000_000_000);
            // Intervals from 1 µs to 1000 s, on a log scale.
            let digits = u32::try_from(next(10)).unwrap_or(0);
            let interval = 1 + next(10u64.pow(digits));
            let burst = 1 + next(1000);
            // Now and then above the burst: never passes.
            let cost = 1 + next(burst + burst / 10 + 1);
            let tolerance = interval * burst;
            let stored = match next(3) {
                0 => None,
                1 => Some(now - next(3 * tolerance + 1)),
                _ => Some(now + next(2 * tolerance + 1)),
            };
            let key = format!("gcra-check:{case}");
            match stored {
                Some(tat) => client
                    .set::<(), _, _>(key.as_str(), tat.to_string(), None, None, false)
                    .await
                    .expect("plant the arrival time"),
                None => client.del::<(), _>(key.as_str()).await.expect("clear"),
            }
            let args = [interval, burst, cost, 1, now].map(|n| n.to_string());
            let (allowed, remaining, retry, reset): (i64, i64, i64, i64) = GCRA
                .evalsha_with_reload(client, key.as_str(), args.to_vec())
                .await
                .expect("the script");
            let (expected, new_tat) = gcra_step(now, stored.unwrap_or(now), interval, burst, cost);
            let inputs = format!(
                "case {case}: now {now}, stored {stored:?}, interval {interval}, burst {burst}, cost {cost}"
            );
            let micros = |d: Duration| i64::try_from(d.as_micros()).expect("fits");
            assert_eq!(allowed == 1, expected.allowed, "{inputs}");
            assert_eq!(
                u64::try_from(remaining).ok(),
                Some(expected.remaining),
                "{inputs}"
            );
            assert_eq!(retry, expected.retry_after.map_or(-1, micros), "{inputs}");
            assert_eq!(reset, micros(expected.reset_after), "{inputs}");
            // What it stored (when its TTL cannot have run out since).
            if expected.allowed && new_tat - now >= 1_000_000 {
                let after: Option<String> = client.get(key.as_str()).await.expect("read");
                assert_eq!(after, Some(new_tat.to_string()), "{inputs}");
            }
            client.del::<(), _>(key.as_str()).await.expect("clean up");
        }
    }

    #[test]
    fn the_version_is_the_sha1_redis_computes() {
        // redis-cli EVAL "return redis.sha1hex(ARGV[1])" 0 '{"a":1}'
        assert_eq!(
            digest(br#"{"a":1}"#).as_str(),
            "9f89c740ceb46d7418c924a78ac57941d5e96520"
        );
        assert_eq!(
            digest(b"").as_str(),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
    }
}
