//! `NatsStateStore`: the backend over a JetStream KV bucket.

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE};
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::{self, kv, Context};
use async_nats::HeaderValue;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use state_store_core::{
    Backend, Capabilities, Entry, Error, Extensions, Result, SetMode, SetOptions, Version,
    WatchSupport,
};

use crate::config::NatsConfig;
use crate::error::{self, STORE};
use crate::key::encode;
use crate::link::{self, Links};
use crate::message::{
    deadline_ms, insert_deadline, is_live, millis, now_ms, parse_version, ttl_secs, version,
    HEADER_ROOM, KV_OPERATION, NATS_ROLLUP, NATS_TTL,
};

/// How many gets of one `get_many` are in flight at once.
const READS_IN_FLIGHT: usize = 64;

/// The NATS JetStream KV state store.
///
/// # Wire format (shared with PURISTA)
///
/// Values are JSON text in the bucket (default `purista-state-store`, PURISTA's), under the
/// state name as key. Names NATS cannot hold (`session:abc`, `a b`, `.lead`) are encoded
/// reversibly (see [`crate::key`]); names that are valid NATS keys are stored verbatim, so a
/// PURISTA service sees the same keys. A removed key is a purge marker, which PURISTA reads as
/// missing.
///
/// # Operations
///
/// - A [`Version`] is the KV revision (stream sequence). `Create`, `Update` and conditional
///   remove are one publish with `Nats-Expected-Last-Subject-Sequence`; `Create` over a removed
///   key expects the removal marker.
/// - TTL is per message (`Nats-TTL`, nats-server ≥ 2.11, in whole seconds, rounded up) on new
///   and existing keys alike, plus a `State-Store-Expires-At` header with the exact deadline:
///   a value reads as missing from its deadline on (the server drops it up to a second
///   later), and a rewrite keeping the TTL (`update`, `increment`) carries the deadline over
///   instead of restarting it, so a fixed window closes on time under traffic. Deadlines use
///   the writer's clock: instances with skewed clocks disagree on expiry by that skew. A
///   version carries its value's deadline ([`Version::with_deadline`]), so `Update` and
///   `remove_if` refuse an expired value without a round trip. A bucket without per-message TTL (PURISTA creates it so) declares
///   `ttl: false`, and TTL writes fail with `Unsupported` rather than being stored forever;
///   [`NatsConfig::with_message_ttl`] turns it on.
/// - No write that failed is sent later. The store's connections never reconnect by
///   themselves (async-nats would send what it had queued once reconnected, after the caller
///   was told the write failed, over whatever was written meanwhile): a broken connection is
///   dropped with everything it had not sent, and the next call makes a new one. A write that
///   could not be sent fails with `Unavailable`; one sent without an answer with
///   `OutcomeUnknown` (it may have been stored before the connection broke). With
///   [`NatsStateStore::from_client`] the caller's client reconnects by itself: writes are
///   refused while it is not connected, but a write handed to it in the instant the connection
///   drops can still go out after the reconnect.
/// - `remove` publishes a purge marker with a TTL of [`NatsConfig::with_marker_ttl`], so removed
///   keys leave nothing behind once the marker expires: the stream does not grow without bound.
/// - No native increment: the stack's completion layer increments by compare-and-set on the
///   revision, atomic across processes; a counter created with a TTL keeps its deadline (to
///   within the second NATS rounds to). Likewise an upsert that keeps the TTL is a read and a
///   conditional write there; this store refuses one on its own (`upsert_keep_ttl: false`).
/// - `get_state` of N names sends N gets at once over the one connection: about one round trip
///   of latency, N messages (NATS has no multi-key read before 2.11's batch API). Replicated
///   buckets read through the stream leader rather than with direct gets, which any replica may
///   answer stale: every read sees the writes before it.
///
/// # Example
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store_core::Error> {
/// use state_store_core::StateStore;
/// use state_store_nats::{NatsConfig, NatsStateStore};
///
/// let store = StateStore::from(NatsStateStore::connect(NatsConfig::from_env()?).await?);
/// store.set_state("session:abc", &serde_json::json!({ "user": "ada" })).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsStateStore {
    pub(crate) links: Arc<Links>,
    pub(crate) bucket: Bucket,
    ttl: bool,
    marker_ttl: Option<Duration>,
    persistent: bool,
    /// Replicated buckets read through the stream leader: a direct get may be answered by a
    /// follower that has not applied the latest write yet, and a state store must read its
    /// own writes.
    leader_reads: bool,
    max_value_len: usize,
    /// How long a listing waits for the server's next message.
    pub(crate) request_timeout: Duration,
    /// The bucket keeps one message per key (history 1): a listing can page by stream
    /// sequence. With more history it reads every key's last message on each page.
    pub(crate) single_revision: bool,
    /// The first server configured, for telemetry ([`Backend::server`]).
    server: Option<(String, u16)>,
}

/// Where the bucket's messages live.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    name: String,
    /// The subject prefix of the bucket's keys (`$KV.<bucket>.`).
    pub(crate) prefix: String,
    /// The subject prefix writes go to (differs across JetStream domains).
    put_prefix: String,
}

impl NatsStateStore {
    /// Connects, then opens the bucket (creating it when absent).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for refused credentials or a bucket that cannot honour the contract;
    /// [`Error::Unavailable`] when no server answers in time.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        config.validate()?;
        let servers = link::servers(&config)?;
        let client = link::dial(&config, &servers).await?;
        let js = link::context(&config, client);
        let (mut store, stream_name) = Self::open(&js, &config).await?;
        store.links = Arc::new(Links::owned(js, &stream_name, config, servers).await?);
        Ok(store)
    }

    /// Uses a ready JetStream context (its client's timeouts apply), opening the bucket named in
    /// `config` and creating it with `config`'s settings when absent. [`StateStore::destroy`](state_store_core::StateStore::destroy)
    /// leaves the context's connection open.
    ///
    /// Your client reconnects by itself: writes are refused with `Unavailable` while it is
    /// not connected, but one handed to it in the instant its connection drops can still be
    /// sent after it reconnects, after the call reported a failure. [`NatsStateStore::connect`]
    /// has no such window.
    ///
    /// # Errors
    ///
    /// As [`NatsStateStore::connect`].
    pub async fn from_client(js: Context, config: NatsConfig) -> Result<Self> {
        config.validate()?;
        let (mut store, stream_name) = Self::open(&js, &config).await?;
        store.links = Arc::new(Links::borrowed(js, &stream_name).await?);
        Ok(store)
    }

    /// Opens (or creates) the bucket over `js` and checks it can honour the contract: the
    /// store over `js`, and the name of the bucket's stream.
    async fn open(js: &Context, config: &NatsConfig) -> Result<(Self, String)> {
        let mut kv = match js.get_key_value(&config.bucket).await {
            Ok(kv) => kv,
            Err(_) => match js.create_key_value(bucket_config(config)).await {
                Ok(kv) => kv,
                // Another instance may have created it meanwhile.
                Err(create) => js
                    .get_key_value(&config.bucket)
                    .await
                    .map_err(|_| error::setup("cannot create the NATS KV bucket", create))?,
            },
        };
        if !kv.stream.cached_info().config.allow_message_ttl && config.enable_message_ttl {
            let mut stream = kv.stream.cached_info().config.clone();
            stream.allow_message_ttl = true;
            stream.subject_delete_marker_ttl = Some(config.marker_ttl);
            js.update_stream(stream).await.map_err(|e| {
                error::setup("cannot turn on per-message TTL on the NATS KV bucket", e)
            })?;
            kv = js
                .get_key_value(&config.bucket)
                .await
                .map_err(|e| error::setup("cannot reopen the NATS KV bucket", e))?;
        }
        let stream = &kv.stream.cached_info().config;
        if !stream.allow_direct {
            return Err(Error::config(format!(
                "NATS KV bucket {:?} does not allow direct gets; recreate it with allow_direct",
                config.bucket
            )));
        }
        if !stream.allow_rollup {
            return Err(Error::config(format!(
                "NATS KV bucket {:?} does not allow rollups, which removal needs",
                config.bucket
            )));
        }
        let ttl = stream.allow_message_ttl;
        if !ttl {
            tracing::warn!(
                bucket = config.bucket.as_str(),
                "NATS KV bucket has no per-message TTL (created without limit_markers, as PURISTA does): TTL writes will fail with Unsupported; NatsConfig::with_message_ttl turns it on"
            );
        }
        let server_max = js_max_payload(js);
        let stream_max = usize::try_from(stream.max_message_size).unwrap_or(0);
        let max_value_len = match stream_max {
            0 => server_max,
            n => n.min(server_max),
        }
        .saturating_sub(HEADER_ROOM);
        let store = NatsStateStore {
            links: Arc::new(Links::borrowed(js.clone(), &kv.stream_name).await?),
            bucket: Bucket {
                name: config.bucket.clone(),
                prefix: kv.prefix.clone(),
                put_prefix: kv.put_prefix.clone().unwrap_or_else(|| kv.prefix.clone()),
            },
            persistent: stream.storage == jetstream::stream::StorageType::File,
            leader_reads: stream.num_replicas > 1,
            ttl,
            marker_ttl: ttl.then_some(config.marker_ttl),
            max_value_len,
            request_timeout: config.timeouts.request,
            single_revision: stream.max_messages_per_subject == 1,
            server: link::servers(config)
                .ok()
                .and_then(|servers| servers.into_iter().next())
                .map(|s| (s.host().to_owned(), s.port())),
        };
        Ok((store, kv.stream_name.clone()))
    }

    /// The KV bucket over the current connection, for calls this crate does not offer.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when no server answers; [`Error::Closed`] after close.
    pub async fn kv(&self) -> Result<kv::Store> {
        let link = self.links.get().await?;
        link.js
            .get_key_value(&self.bucket.name)
            .await
            .map_err(|e| Error::unavailable(STORE, e))
    }

    /// The last message on the key's subject, tombstones included.
    async fn last_message(&self, key: &str) -> Result<Option<jetstream::message::StreamMessage>> {
        let link = self.links.get().await?;
        let subject = format!("{}{}", self.bucket.prefix, encode(key));
        if self.leader_reads {
            return match link.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => Ok(Some(message)),
                Err(err) if matches!(err.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                    Ok(None)
                }
                Err(err) => Err(error::leader_get(err)),
            };
        }
        match link.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(err) => Err(error::direct_get(err)),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Entry>> {
        let Some(message) = self.last_message(key).await? else {
            return Ok(None);
        };
        let now = now_ms();
        if !is_live(&message, now) {
            return Ok(None);
        }
        let deadline = deadline_ms(&message);
        Ok(Some(Entry {
            value: message.payload.to_vec(),
            version: version(message.sequence, deadline),
            expires_in: deadline.map(|at| millis(at - now)),
        }))
    }

    /// Publishes one write and waits for its acknowledgement: the new revision.
    async fn publish(&self, key: &str, headers: HeaderMap, payload: Bytes) -> Result<u64> {
        let link = self.links.get().await?;
        let subject = format!("{}{}", self.bucket.put_prefix, encode(key));
        let (size, limit) = (payload.len(), self.max_value_len);
        let ack = link
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| error::publish(key, size, limit, e))?
            .await
            .map_err(|e| error::publish_ack(key, e))?;
        Ok(ack.sequence)
    }

    /// One attempt of [`Backend::set`].
    async fn set_once(&self, key: &str, payload: Bytes, options: &SetOptions) -> Result<Version> {
        let now = now_ms();
        let new_deadline = options
            .ttl
            .map(|ttl| now + i128::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(0));
        let (expected, deadline) = match &options.mode {
            SetMode::Create => (Some(0), new_deadline),
            // An update's version carries the deadline of the value it was read from: past it,
            // the value is gone (the server drops it up to a second later); before it, a
            // rewrite keeping the TTL sends it on.
            SetMode::Update(version) => {
                let (seq, kept) = parse_version(version).ok_or_else(|| Error::Conflict {
                    key: key.to_owned(),
                })?;
                if kept.is_some_and(|at| at <= now) {
                    return Err(Error::Conflict {
                        key: key.to_owned(),
                    });
                }
                let deadline = if options.keep_ttl { kept } else { new_deadline };
                (Some(seq), deadline)
            }
            SetMode::Upsert => (None, new_deadline),
        };
        let mut headers = HeaderMap::new();
        if let Some(at) = deadline {
            insert_deadline(&mut headers, at, now);
        }
        let Some(mut expected) = expected else {
            let seq = self.publish(key, headers, payload).await?;
            return Ok(version(seq, deadline));
        };
        // A `Create` may replace a removal marker, an expiry marker or an expired value: up
        // to a few tries as markers come and go.
        for _ in 0..4 {
            let mut attempt = headers.clone();
            attempt.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                HeaderValue::from(expected),
            );
            match self.publish(key, attempt, payload.clone()).await {
                Ok(seq) => return Ok(version(seq, deadline)),
                Err(Error::Conflict { .. }) if options.mode == SetMode::Create => {
                    match self.last_message(key).await? {
                        Some(message) if !is_live(&message, now_ms()) => {
                            expected = message.sequence;
                        }
                        None => expected = 0,
                        Some(_) => break,
                    }
                }
                Err(other) => return Err(other),
            }
        }
        Err(Error::Conflict {
            key: key.to_owned(),
        })
    }
}

fn bucket_config(config: &NatsConfig) -> kv::Config {
    kv::Config {
        bucket: config.bucket.clone(),
        description: "state-store (PURISTA-compatible state)".to_owned(),
        history: config.history,
        storage: config.storage,
        num_replicas: config.replicas,
        max_value_size: config.max_value_size,
        limit_markers: Some(config.marker_ttl),
        ..kv::Config::default()
    }
}

fn js_max_payload(js: &Context) -> usize {
    js.client().server_info().max_payload
}

#[async_trait]
impl Backend for NatsStateStore {
    fn name(&self) -> &str {
        STORE
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.server
            .as_ref()
            .map(|(host, port)| (host.as_str(), *port))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
            .with_list(true)
            .with_watch(WatchSupport::Compacted)
            .with_ttl(self.ttl)
            .with_increment(false)
            // Without TTLs in the bucket there is no TTL to keep.
            .with_upsert_keep_ttl(!self.ttl)
            .with_batch_get(false)
            .with_persistent(self.persistent)
            .with_max_value_len(self.max_value_len)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        // Sent at once, at most `READS_IN_FLIGHT` at a time, answers in request order.
        let reads: Vec<_> = keys.iter().map(|key| self.read(key)).collect();
        futures_util::stream::iter(reads)
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        if options.ttl.is_some() && !self.ttl {
            return Err(Error::unsupported(STORE, "atomic expiry"));
        }
        if options.mode == SetMode::Upsert && options.keep_ttl && self.ttl {
            // Not one write here: the completion layer reads, then updates.
            return Err(Error::unsupported(STORE, "keeping the TTL in an upsert"));
        }
        self.set_once(key, Bytes::from(value), options).await
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "PURGE");
        headers.insert(NATS_ROLLUP, "sub");
        if let Some(ttl) = self.marker_ttl {
            headers.insert(NATS_TTL, HeaderValue::from(ttl_secs(ttl)));
        }
        if let Some(version) = expected {
            let (revision, deadline) = parse_version(version).ok_or_else(|| Error::Conflict {
                key: key.to_owned(),
            })?;
            if deadline.is_some_and(|at| at <= now_ms()) {
                // The value it was read from has expired: nothing to remove.
                return Ok(false);
            }
            headers.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                HeaderValue::from(revision),
            );
        }
        self.publish(key, headers, Bytes::new()).await?;
        // Without a read first NATS cannot tell whether the key existed; the handle does not
        // need to know for an unconditional removal.
        Ok(true)
    }

    async fn close(&self) -> Result<()> {
        self.links.close().await
    }

    fn extensions(&self) -> Extensions<'_> {
        Extensions::none()
            .with_list(self)
            .with_watch(self)
            .with_invalidations(self)
    }
}
