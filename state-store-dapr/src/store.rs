//! `DaprStateStore`: the backend over the sidecar's gRPC state API.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use dapr::dapr::proto::common::v1::{
    state_options::StateConcurrency, Etag, StateItem, StateOptions,
};
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use dapr::dapr::proto::runtime::v1::{
    DeleteStateRequest, GetBulkStateRequest, GetMetadataRequest, GetStateRequest, SaveStateRequest,
};
use state_store_core::{Backend, Capabilities, Entry, Error, Result, SetMode, SetOptions, Version};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::config::DaprConfig;
use crate::error::{map, map_write, STORE};
use crate::key::encode;

const TTL: &str = "ttlInSeconds";
const TTL_EXPIRE_TIME: &str = "ttlExpireTime";

/// Adds `dapr-api-token` to every call when a token is configured.
#[derive(Clone)]
pub(crate) struct Token(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("dapr-api-token", token.clone());
        }
        Ok(request)
    }
}

type Client = DaprClient<InterceptedService<Channel, Token>>;

/// The Dapr state store: state through a sidecar's gRPC API.
///
/// # Contract over Dapr
///
/// - What a component supports is declared from what it can do atomically, never assumed:
///   - `state.in-memory`: everything. A [`Version`] is the component's ETag (a fresh UUID per
///     write, so never reused after a remove); `Update`, `Create` and conditional remove are
///     checked by the component under one lock; TTL is set with the value.
///   - `state.postgresql` v2 and `state.sqlite`: the same, each check one SQL statement (an
///     `UPDATE … WHERE etag = $n` on a live row; a first write that only replaces an expired
///     row); ETags are fresh UUIDs; TTL is an expiry column set with the value.
///   - `state.redis`: plain get/set/remove only. Its ETags are per-key counters that restart
///     at 1 after a remove (an old version would match a re-created value), a write or delete
///     with an ETag succeeds on a missing key (sixteen concurrent conditional removes would all
///     "win"), a first-write save poisons later plain saves of the key, and its TTL is a
///     separate `EXPIRE` after the write. Conditional writes, `increment`, `update` and TTL
///     therefore fail with `Unsupported` rather than give wrong answers.
///   - any other component: plain get/set/remove.
/// - Dapr returns no ETag from a write, so a write reads the key back in the same call and
///   returns its ETag only if the value read is the one written; if another writer got in
///   between, it returns a version that matches nothing, so a compare-and-set based on it
///   fails with `Conflict` and is retried, never applied over the other write.
/// - TTL is the `ttlInSeconds` metadata in whole seconds; the component reports deadlines
///   truncated to the second, so a write asks for one second more than the TTL rounded up and
///   the reported deadline is the exact one: a value reads as missing from then on, and a
///   rewrite that keeps the TTL (`update`, `increment`) carries that deadline over unchanged.
///   A write without TTL sends `-1`, which clears an earlier TTL.
/// - `get_state` is one `GetBulkState`. No native increment: the stack's completion layer
///   increments by ETag compare-and-set, atomic across processes; an upsert that keeps the TTL
///   is a read and a conditional write there too (`upsert_keep_ttl: false` here).
/// - Dapr refuses keys containing `||`; they are stored escaped (see [`crate::key`]).
///
/// # Example
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store_core::Error> {
/// use state_store_core::StateStore;
/// use state_store_dapr::{DaprConfig, DaprStateStore};
///
/// let store = StateStore::from(DaprStateStore::connect(DaprConfig::from_env()?).await?);
/// store.set_state("session:abc", &serde_json::json!({ "user": "ada" })).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DaprStateStore {
    client: Client,
    store_name: String,
    /// Atomic conditional writes with ETags never reused, and TTL set with the value:
    /// `state.in-memory`, `state.postgresql` v2 and `state.sqlite` (see the type docs).
    atomic: bool,
    persistent: bool,
    /// Each call's deadline, from the moment it is made (see [`DaprStateStore::within`]).
    request_timeout: Duration,
    /// The sidecar, for telemetry ([`Backend::server`]).
    server: Option<(String, u16)>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Token(<redacted>)"
        } else {
            "Token(None)"
        })
    }
}

impl DaprStateStore {
    /// Connects to the sidecar and checks that it has the state store component.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown component, a component that is not a state store, or a
    /// refused token; [`Error::Unavailable`] when the sidecar does not answer in time.
    pub async fn connect(config: DaprConfig) -> Result<Self> {
        config.validate()?;
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| Error::config_with("invalid Dapr gRPC endpoint", e))?
            .connect_timeout(config.timeouts.connect)
            .timeout(config.timeouts.request)
            .tcp_nodelay(true);
        // Lazy: the channel connects on first use and reconnects by itself after a restart.
        Self::from_client(endpoint.connect_lazy(), config).await
    }

    /// Uses a ready gRPC channel to the sidecar (its own timeouts apply), with `config`'s
    /// component, token and timeouts, and checks that the sidecar has the component.
    ///
    /// # Errors
    ///
    /// As [`DaprStateStore::connect`].
    pub async fn from_client(channel: Channel, config: DaprConfig) -> Result<Self> {
        config.validate()?;
        let token = match &config.api_token {
            None => None,
            Some(token) => Some(
                token
                    .parse()
                    .map_err(|e| Error::config_with("the Dapr API token is not valid ASCII", e))?,
            ),
        };
        let mut client = DaprClient::with_interceptor(channel, Token(token));
        let metadata = tokio::time::timeout(
            config.timeouts.connect + config.timeouts.request,
            client.get_metadata(GetMetadataRequest {}),
        )
        .await
        .map_err(|elapsed| Error::unavailable(STORE, elapsed))?
        .map_err(|status| map("", status))?
        .into_inner();
        let component = metadata
            .registered_components
            .iter()
            .find(|c| c.name == config.store_name)
            .ok_or_else(|| {
                Error::config(format!(
                    "the Dapr sidecar has no component named {:?}",
                    config.store_name
                ))
            })?;
        if !component.r#type.starts_with("state.") {
            return Err(Error::config(format!(
                "Dapr component {:?} is a {}, not a state store",
                config.store_name, component.r#type
            )));
        }
        let declares = |feature: &str| component.capabilities.iter().any(|c| c == feature);
        let atomic = atomic_component(&component.r#type, &component.version)
            && declares("ETAG")
            && declares("TTL");
        let server = config
            .endpoint
            .parse::<tonic::codegen::http::Uri>()
            .ok()
            .and_then(|uri| {
                // An IPv6 host without its brackets, as `server.address` wants it.
                let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
                Some((host.to_owned(), uri.port_u16()?))
            });
        Ok(DaprStateStore {
            server,
            client,
            store_name: config.store_name,
            atomic,
            persistent: component.r#type != "state.in-memory",
            request_timeout: config.timeouts.request,
        })
    }

    /// Runs one gRPC call within the request timeout. tonic's own deadline starts only when
    /// its buffer hands the call to a connection: a call queued behind a reconnect would
    /// otherwise wait through several connect timeouts. A call given up here is dropped from
    /// that queue too, so it is never sent after it failed.
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<Response<T>, Status>>,
    ) -> std::result::Result<T, Status> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(reply) => reply.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(
                "the Dapr sidecar did not answer within the request timeout",
            )),
        }
    }

    /// One `SaveState` (conditional per `mode`). With `want_version` it reads the key back for
    /// the new ETag.
    async fn write(
        &self,
        key: &str,
        value: Vec<u8>,
        mode: &SetMode,
        ttl: TtlChange,
        want_version: bool,
    ) -> Result<Version> {
        let (etag, options) = match mode {
            SetMode::Upsert => (None, None),
            _ if !self.atomic => return Err(Error::unsupported(STORE, "conditional writes")),
            SetMode::Create => match self.read_raw(key).await? {
                // An expired value the component has not dropped yet (it reports deadlines
                // to the second): replace exactly that one.
                Some(stored) if !stored.live() => first_write(Some(stored.etag)),
                Some(_) => {
                    return Err(Error::Conflict {
                        key: key.to_owned(),
                    })
                }
                None => first_write(None),
            },
            SetMode::Update(version) => first_write(Some(live_etag(key, version)?.to_owned())),
        };
        let written = want_version.then(|| value.clone());
        let item = StateItem {
            key: encode(key),
            value,
            etag,
            metadata: ttl.metadata(),
            options,
        };
        let mut client = self.client.clone();
        self.within(client.save_state(SaveStateRequest {
            store_name: self.store_name.clone(),
            states: vec![item],
        }))
        .await
        .map_err(|s| map_write(key, s))?;
        let Some(written) = written else {
            return Ok(Version::new(UNKNOWN_VERSION));
        };
        // Dapr does not return the new ETag: read it back, and trust it only if the value is
        // still ours. The write succeeded whatever the read gives: a failed read is no error.
        match self.read(key).await {
            Ok(Some(entry)) if entry.value == written => Ok(entry.version),
            _ => Ok(Version::new(UNKNOWN_VERSION)),
        }
    }

    /// A write keeping the key's deadline: an update takes it from its version. An upsert
    /// cannot in one write (the completion layer reads, then updates).
    async fn write_keeping_ttl(
        &self,
        key: &str,
        value: Vec<u8>,
        options: &SetOptions,
    ) -> Result<Version> {
        let conflict = || Error::Conflict {
            key: key.to_owned(),
        };
        let (mode, ttl) = match &options.mode {
            // Nothing to keep: a create that finds the key must conflict, not overwrite it.
            SetMode::Create => (SetMode::Create, TtlChange::from_write(options.ttl)),
            SetMode::Update(version) => {
                let (_, deadline) = parse_version(version);
                let ttl = match deadline {
                    None => TtlChange::Clear,
                    Some(at) => TtlChange::Until(settle(at).await.ok_or_else(conflict)?),
                };
                (SetMode::Update(version.clone()), ttl)
            }
            SetMode::Upsert => {
                return Err(Error::unsupported(STORE, "keeping the TTL in an upsert"));
            }
        };
        self.write(key, value, &mode, ttl, options.want_version)
            .await
    }

    async fn read(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self
            .read_raw(key)
            .await?
            .filter(Stored::live)
            .map(Stored::into_entry))
    }

    async fn read_raw(&self, key: &str) -> Result<Option<Stored>> {
        let mut client = self.client.clone();
        let response = self
            .within(client.get_state(GetStateRequest {
                store_name: self.store_name.clone(),
                key: encode(key),
                ..GetStateRequest::default()
            }))
            .await
            .map_err(|s| map(key, s))?;
        Stored::new(response.data, response.etag, &response.metadata)
    }
}

/// Whether a component (type and version) writes atomically: an ETag that is a fresh UUID per
/// write (never reused, not even after a delete), a compare-and-set and a conditional delete
/// that are one statement refusing a missing key, a first write that refuses a live value, and
/// TTL set with the value. `state.postgresql` v1 is left out: its ETag is the row's `xmin`.
fn atomic_component(kind: &str, version: &str) -> bool {
    matches!(
        (kind, version),
        ("state.in-memory" | "state.sqlite", _) | ("state.postgresql", "v2")
    )
}

/// A value as the component holds it, expired or not.
struct Stored {
    data: Vec<u8>,
    etag: String,
    /// The reported deadline (whole seconds): the value's exact deadline, see [`TtlChange`].
    expires_at: Option<time::OffsetDateTime>,
}

impl Stored {
    /// A missing key reads as empty data and an empty ETag.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] for a deadline that does not parse: taking the value for one without
    /// a deadline would make it permanent on its next rewrite.
    fn new(
        data: Vec<u8>,
        etag: String,
        metadata: &HashMap<String, String>,
    ) -> Result<Option<Self>> {
        if data.is_empty() && etag.is_empty() {
            return Ok(None);
        }
        let expires_at = match metadata.get(TTL_EXPIRE_TIME) {
            None => None,
            Some(at) => Some(
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| Error::backend(STORE, e))?,
            ),
        };
        Ok(Some(Stored {
            data,
            etag,
            expires_at,
        }))
    }

    fn live(&self) -> bool {
        self.expires_at
            .is_none_or(|at| at > time::OffsetDateTime::now_utc())
    }

    fn version(&self) -> Version {
        let deadline = self
            .expires_at
            .map(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX));
        Version::with_deadline(&self.etag, deadline)
    }

    fn into_entry(self) -> Entry {
        let expires_in = self.expires_at.map(|at| {
            Duration::try_from(at - time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
        });
        Entry {
            version: self.version(),
            value: self.data,
            expires_in,
        }
    }
}

/// A version's ETag, and the value's reported deadline when it has one
/// ([`Version::with_deadline`]), so that a compare-and-set knows without a read whether its
/// value has expired, and a rewrite keeping the TTL knows the deadline to keep.
fn parse_version(version: &Version) -> (&str, Option<time::OffsetDateTime>) {
    let (etag, deadline) = version.token_and_deadline();
    let at = deadline.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    });
    match at {
        Some(at) => (etag, Some(at)),
        // No deadline, or one out of range: all of it is the ETag.
        None if deadline.is_some() => (version.as_str(), None),
        None => (etag, None),
    }
}

/// The ETag of a version whose value has not expired; `Conflict` otherwise (the component may
/// not have dropped the value yet, but it reads as missing).
fn live_etag<'v>(key: &str, version: &'v Version) -> Result<&'v str> {
    match parse_version(version) {
        (etag, at) if at.is_none_or(|at| at > time::OffsetDateTime::now_utc()) => Ok(etag),
        _ => Err(Error::Conflict {
            key: key.to_owned(),
        }),
    }
}

/// How close to a whole second of time left a rewrite may be sent (see [`TtlChange`]).
const SECOND_MARGIN: Duration = Duration::from_millis(250);

/// The time left until `at`, waiting first if it is within [`SECOND_MARGIN`] above a whole
/// second; `None` once `at` has passed.
async fn settle(at: time::OffsetDateTime) -> Option<Duration> {
    for _ in 0..3 {
        let left = Duration::try_from(at - time::OffsetDateTime::now_utc()).ok()?;
        if left.is_zero() {
            return None;
        }
        let fraction = Duration::from_nanos(u64::from(left.subsec_nanos()));
        if fraction >= SECOND_MARGIN {
            return Some(left);
        }
        tokio::time::sleep(fraction + Duration::from_millis(10)).await;
    }
    None
}

/// What a write does to the key's TTL.
///
/// The component stores `now + ttlInSeconds` and reports it truncated to the second. Asking
/// for one second more than needed makes the reported (truncated) deadline never earlier than
/// the one wanted, so it can serve as the exact deadline. A rewrite with `left` until the
/// reported deadline asks for `floor(left) + 1` seconds, which lands in the same second as
/// long as the write reaches the component within the fraction of a second in `left`; so a
/// rewrite waits out the last [`SECOND_MARGIN`] before a whole second of `left` ([`settle`]).
/// The reported deadline then never moves, however often the value is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TtlChange {
    /// Expire after this long, rounded up to whole seconds.
    Set(Duration),
    /// Keep the reported deadline, this far away.
    Until(Duration),
    /// Keep forever (`ttlInSeconds: -1`), clearing an earlier TTL.
    Clear,
    /// Send no TTL: the component leaves the key's deadline alone (used where the deadline is
    /// not known, so that a rewrite does not clear a TTL another client set).
    Keep,
}

impl TtlChange {
    fn from_write(ttl: Option<Duration>) -> Self {
        ttl.map_or(TtlChange::Clear, TtlChange::Set)
    }

    fn metadata(self) -> HashMap<String, String> {
        let seconds = match self {
            TtlChange::Keep => return HashMap::new(),
            TtlChange::Clear => "-1".to_owned(),
            TtlChange::Set(ttl) => (ttl.as_nanos().div_ceil(1_000_000_000) + 1).to_string(),
            TtlChange::Until(left) => (left.as_secs() + 1).to_string(),
        };
        HashMap::from([(TTL.to_owned(), seconds)])
    }
}

fn first_write(etag: Option<String>) -> (Option<Etag>, Option<StateOptions>) {
    let options = StateOptions {
        concurrency: StateConcurrency::ConcurrencyFirstWrite as i32,
        ..StateOptions::default()
    };
    (etag.map(|value| Etag { value }), Some(options))
}

/// Matches no ETag of any component: returned when a write's own version cannot be known.
const UNKNOWN_VERSION: &str = "state-store:unknown-version";

#[async_trait]
impl Backend for DaprStateStore {
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
            .with_ttl(self.atomic)
            .with_conditional(self.atomic)
            .with_increment(false)
            // Without TTLs there is no TTL to keep.
            .with_upsert_keep_ttl(!self.atomic)
            .with_persistent(self.persistent)
            .with_max_value_len(3 * 1024 * 1024)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        if let [key] = keys {
            return Ok(vec![self.read(key).await?]);
        }
        let encoded: Vec<String> = keys.iter().map(|k| encode(k)).collect();
        let mut client = self.client.clone();
        let items = self
            .within(client.get_bulk_state(GetBulkStateRequest {
                store_name: self.store_name.clone(),
                keys: encoded.clone(),
                ..GetBulkStateRequest::default()
            }))
            .await
            .map_err(|s| map("", s))?
            .items;
        let mut by_key: HashMap<String, _> = HashMap::with_capacity(items.len());
        for item in items {
            if !item.error.is_empty() {
                return Err(Error::backend(
                    STORE,
                    format!("bulk get failed for one key: {}", item.error),
                ));
            }
            by_key.insert(item.key.clone(), item);
        }
        // A key asked twice is answered twice: copy, do not take.
        encoded
            .iter()
            .map(|k| {
                let stored = match by_key.get(k) {
                    None => None,
                    Some(item) => {
                        Stored::new(item.data.clone(), item.etag.clone(), &item.metadata)?
                    }
                };
                Ok(stored.filter(Stored::live).map(Stored::into_entry))
            })
            .collect()
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        if options.ttl.is_some() && !self.atomic {
            return Err(Error::unsupported(STORE, "atomic expiry"));
        }
        if !options.keep_ttl || !self.atomic {
            let ttl = if options.keep_ttl {
                TtlChange::Keep
            } else {
                TtlChange::from_write(options.ttl)
            };
            return self
                .write(key, value, &options.mode, ttl, options.want_version)
                .await;
        }
        self.write_keeping_ttl(key, value, options).await
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        let (etag, options) = match expected {
            None => (None, None),
            Some(_) if !self.atomic => return Err(Error::unsupported(STORE, "conditional writes")),
            Some(version) => match live_etag(key, version) {
                Ok(etag) => first_write(Some(etag.to_owned())),
                // The value it was read from has expired: nothing to remove.
                Err(_) => return Ok(false),
            },
        };
        let mut client = self.client.clone();
        self.within(client.delete_state(DeleteStateRequest {
            store_name: self.store_name.clone(),
            key: encode(key),
            etag,
            options,
            ..DeleteStateRequest::default()
        }))
        .await
        .map_err(|s| map_write(key, s))?;
        Ok(true)
    }

    async fn close(&self) -> Result<()> {
        // The gRPC channel closes with the last clone of the client.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_plus_a_second_and_clear_with_minus_one() {
        let secs = |change: TtlChange| change.metadata().get(TTL).cloned();
        assert_eq!(secs(TtlChange::Clear).as_deref(), Some("-1"));
        assert_eq!(
            secs(TtlChange::Set(Duration::from_millis(200))).as_deref(),
            Some("2")
        );
        assert_eq!(
            secs(TtlChange::Set(Duration::from_millis(1500))).as_deref(),
            Some("3")
        );
        assert_eq!(
            secs(TtlChange::Until(Duration::from_millis(1500))).as_deref(),
            Some("2")
        );
    }

    #[test]
    fn empty_data_and_etag_is_missing() {
        assert!(matches!(
            Stored::new(Vec::new(), String::new(), &HashMap::new()),
            Ok(None)
        ));
        let e = Stored::new(b"1".to_vec(), "3".into(), &HashMap::new());
        let e = e.ok().flatten().map(Stored::into_entry);
        assert_eq!(
            e.map(|e| e.version),
            Some(Version::with_deadline("3", None))
        );
        let bad = HashMap::from([(TTL_EXPIRE_TIME.to_owned(), "soon".to_owned())]);
        assert!(Stored::new(b"1".to_vec(), "3".into(), &bad).is_err());
    }

    #[test]
    fn versions_carry_the_deadline() {
        let at = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).ok();
        let stored = Stored {
            data: b"1".to_vec(),
            etag: "e-1".into(),
            expires_at: at,
        };
        let version = stored.version();
        assert_eq!(version.as_str(), "e-1@2000000000000");
        assert_eq!(parse_version(&version), ("e-1", at));
        assert_eq!(parse_version(&Version::new("plain")), ("plain", None));
        assert_eq!(parse_version(&Version::new("a@b")), ("a@b", None));
        let no_deadline = Stored {
            data: b"1".to_vec(),
            etag: "e@2".into(),
            expires_at: None,
        };
        assert_eq!(parse_version(&no_deadline.version()), ("e@2", None));
    }
}
