//! `RedisStateStore`: the backend over a fred client.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface, KeysInterface};
use fred::types::config::ReconnectPolicy;
use fred::types::scripts::Script;
use fred::types::{Builder, Expiration, SetOptions as FredSetOptions};
use futures_util::future::try_join_all;
use state_store_core::{
    Backend, Capabilities, Entry, Error, Extensions, Increment, KeyPage, ListKeys, Result, SetMode,
    SetOptions, Version, WatchSupport,
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
/// (the record and its token counter share a hash slot: `$lease:{name}`); renewing and
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
    pub(crate) client: Client,
    pub(crate) clustered: bool,
    /// What [`RedisStateStore::probe_watch`] found at connect.
    pub(crate) watch: WatchSupport,
    /// Tells watch tasks (each with a subscriber connection of its own) that the store closed.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// The first server configured, for telemetry ([`Backend::server`]).
    server: Option<(String, u16)>,
}

impl RedisStateStore {
    /// Connects with `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for refused credentials or settings; [`Error::Unavailable`] when no
    /// server answers within the connect timeout.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let mut builder = Builder::from_config(config.fred_config()?);
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
        let server = client
            .client_config()
            .server
            .hosts()
            .first()
            .map(|s| (s.host.to_string(), s.port));
        RedisStateStore {
            server,
            client,
            clustered,
            watch: if clustered {
                WatchSupport::None
            } else {
                WatchSupport::Lossy
            },
            shutdown: tokio::sync::watch::channel(false).0,
        }
    }

    /// The fred client, for commands this crate does not offer.
    pub fn client(&self) -> &Client {
        &self.client
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

/// `prefix` with the glob metacharacters of `SCAN … MATCH` escaped.
pub(crate) fn glob_escape(prefix: &str) -> String {
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
pub(crate) fn px(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

#[async_trait]
impl Backend for RedisStateStore {
    fn name(&self) -> &str {
        STORE
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.server
            .as_ref()
            .map(|(host, port)| (host.as_str(), *port))
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

    /// Each value with the time it has left: `GET` and `PTTL` per key, pipelined (one round
    /// trip; on a cluster, each command goes to its key's node). A key holding another type
    /// than a string is no value of ours: `None`, as `MGET` answers.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for key in keys {
            let () = pipeline.get(key.as_str()).await.map_err(map)?;
            let () = pipeline.pttl(key.as_str()).await.map_err(map)?;
        }
        let mut replies = pipeline.try_all::<fred::types::Value>().await;
        if replies.len() != 2 * keys.len() {
            // A pipeline that failed as a whole (a timeout, a lost connection) answers with
            // that one error.
            return Err(match replies.pop() {
                Some(Err(err)) => map(err),
                _ => Error::backend(STORE, "the pipeline lost replies"),
            });
        }
        replies
            .chunks(2)
            .map(|pair| {
                let value = match &pair[0] {
                    Ok(fred::types::Value::Null) => return Ok(None),
                    Ok(value) => value
                        .as_bytes()
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| Error::backend(STORE, "GET gave an unexpected answer"))?,
                    Err(err) if err.details().starts_with("WRONGTYPE") => return Ok(None),
                    Err(err) => return Err(map(err.clone())),
                };
                // -1: no TTL; -2: gone (expired) since the GET — then it is gone.
                let expires_in = match &pair[1] {
                    Ok(fred::types::Value::Integer(-2)) => return Ok(None),
                    Ok(fred::types::Value::Integer(ms)) => {
                        u64::try_from(*ms).ok().map(Duration::from_millis)
                    }
                    Ok(_) => None,
                    Err(err) => return Err(map(err.clone())),
                };
                let version = digest(&value);
                Ok(Some(Entry {
                    expires_in,
                    ..Entry::new(value, version)
                }))
            })
            .collect()
    }

    /// `get_state`: the values only, without a SHA-1 per value.
    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
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

    async fn close(&self) -> Result<()> {
        self.shutdown.send_replace(true);
        self.client.quit().await.map_err(map)
    }

    fn extensions(&self) -> Extensions<'_> {
        let mut extensions = Extensions::none()
            .with_increment(self)
            .with_list(self)
            .with_lease(self)
            .with_rate_limit(self);
        if self.watch != WatchSupport::None {
            extensions = extensions.with_watch(self);
        }
        if !self.clustered {
            extensions = extensions.with_invalidations(self);
        }
        extensions
    }
}

#[async_trait]
impl Increment for RedisStateStore {
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
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
}

#[async_trait]
impl ListKeys for RedisStateStore {
    /// `SCAN` with the prefix's glob metacharacters escaped, on every primary of a cluster in
    /// turn. `limit` is `SCAN`'s `COUNT` hint: a page may hold somewhat more keys; a key may
    /// show up on two pages (the handle's `list_all` deduplicates).
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
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
        // A sparse match in a large keyspace would otherwise scan it all in one call: after
        // a few empty rounds the page is returned empty, with the cursor to go on from.
        let mut rounds = 0;
        while let Some(server) = nodes.get(node) {
            rounds += 1;
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
            if !keys.is_empty() || node >= nodes.len() || rounds >= SCAN_ROUNDS_PER_PAGE {
                break;
            }
        }
        let next = (node < nodes.len()).then(|| format!("{node}:{cursor}"));
        Ok(KeyPage::new(keys, next))
    }
}

/// `SCAN` calls one page makes at most: bounded work per call, each call within the request
/// timeout.
const SCAN_ROUNDS_PER_PAGE: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

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
