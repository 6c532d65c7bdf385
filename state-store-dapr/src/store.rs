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
use state_store_core::{
    parse_counter, Backend, Capabilities, CloseFlag, Entry, Error, Result, SetMode, SetOptions,
    StateStore, StoreConfig, Version, CAS_RETRIES,
};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::config::DaprConfig;
use crate::error::{map, STORE};
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

/// How `SetMode::Create` is made a real create-if-absent on a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateWith {
    /// `state.in-memory`: first-write concurrency without an ETag refuses an existing key.
    FirstWriteWithoutEtag,
    /// `state.redis`: first-write without an ETag overwrites keys written last-write, so send
    /// an ETag no key ever has (versions start at 1): the component's script then writes only
    /// when the key is absent.
    ImpossibleEtag,
}

/// The Dapr state store: state through a sidecar's gRPC API.
///
/// # Contract over Dapr
///
/// - A [`Version`] is the component's ETag. `Update` and conditional remove send it with
///   first-write concurrency (the Redis component ignores ETags under last-write).
/// - `Create` is a real create-if-absent for the components this crate knows, `state.redis`
///   and `state.in-memory` (each needs its own mapping; see the crate README). For any other
///   component type conditional writes (and so `increment` and `update`) are declared
///   unsupported rather than risked.
/// - Dapr returns no ETag from a write, so a write reads the key back in the same call and
///   returns its ETag only if the value read is the one written; if another writer got in
///   between, it returns a version that matches nothing, so a compare-and-set based on it
///   fails with `Conflict` and is retried, never applied over the other write.
/// - TTL is the `ttlInSeconds` metadata, rounded up to whole seconds; a write without TTL sends
///   `-1`, which clears an earlier TTL.
/// - `get_state` is one `GetBulkState`. `increment` is an ETag compare-and-set loop, atomic
///   across processes.
/// - Dapr refuses keys containing `||`; they are stored escaped (see [`crate::key`]).
///
/// # Example
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store_core::Error> {
/// use state_store_dapr::{DaprConfig, DaprStateStore};
///
/// let store = DaprStateStore::connect(DaprConfig::from_env("statestore")).await?.into_store();
/// store.set_state("session:abc", &serde_json::json!({ "user": "ada" })).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DaprStateStore {
    client: Client,
    store_name: String,
    create: Option<CreateWith>,
    persistent: bool,
    closed: CloseFlag,
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
        let token = match &config.api_token {
            None => None,
            Some(token) => Some(
                token
                    .parse()
                    .map_err(|e| Error::config_with("the Dapr API token is not valid ASCII", e))?,
            ),
        };
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| Error::config_with("invalid Dapr gRPC endpoint", e))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .tcp_nodelay(true);
        // Lazy: the channel connects on first use and reconnects by itself after a restart.
        let channel = endpoint.connect_lazy();
        let mut client = DaprClient::with_interceptor(channel, Token(token));
        let metadata = tokio::time::timeout(
            config.connect_timeout + config.request_timeout,
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
        let create = match component.r#type.as_str() {
            "state.in-memory" => Some(CreateWith::FirstWriteWithoutEtag),
            "state.redis" => Some(CreateWith::ImpossibleEtag),
            other if other.starts_with("state.") => None,
            other => {
                return Err(Error::config(format!(
                    "Dapr component {:?} is a {other}, not a state store",
                    config.store_name
                )))
            }
        };
        Ok(DaprStateStore {
            client,
            store_name: config.store_name,
            create,
            persistent: component.r#type != "state.in-memory",
            closed: CloseFlag::new(),
        })
    }

    /// A [`StateStore`] handle with the default config.
    pub fn into_store(self) -> StateStore {
        StateStore::new(self)
    }

    /// A [`StateStore`] handle with `config`.
    pub fn into_store_with(self, config: StoreConfig) -> StateStore {
        StateStore::with_config(self, config)
    }

    fn check_open(&self) -> Result<()> {
        self.closed.check(STORE)
    }

    /// One `SaveState`. With `want_version` it reads the key back for the new ETag.
    /// `just_read` says the caller read the key's version a moment ago, so re-checking that the
    /// key exists would cost a round trip without narrowing the race it guards against.
    async fn write(
        &self,
        key: &str,
        value: Vec<u8>,
        mode: &SetMode,
        ttl: TtlChange,
        want_version: bool,
        just_read: bool,
    ) -> Result<Version> {
        let (etag, options) = match (mode, self.create) {
            (SetMode::Upsert, _) => (None, None),
            (_, None) => return Err(Error::unsupported(STORE, "conditional writes")),
            (SetMode::Create, Some(CreateWith::FirstWriteWithoutEtag)) => first_write(None),
            (SetMode::Create, Some(CreateWith::ImpossibleEtag)) => first_write(Some("-1".into())),
            (SetMode::Update(version), Some(create)) => {
                // The Redis component writes a missing key whatever the ETag: refuse an update
                // of a key that is gone. (A removal landing between this read and the write
                // can still be undone by it; the component offers nothing atomic for that.)
                let check = create == CreateWith::ImpossibleEtag && !just_read;
                if check && self.read(key).await?.is_none() {
                    return Err(Error::Conflict {
                        key: key.to_owned(),
                    });
                }
                first_write(Some(version.as_str().to_owned()))
            }
        };
        let written = want_version.then(|| value.clone());
        let item = StateItem {
            key: encode(key),
            value,
            etag,
            metadata: ttl.metadata(),
            options,
        };
        self.client
            .clone()
            .save_state(SaveStateRequest {
                store_name: self.store_name.clone(),
                states: vec![item],
            })
            .await
            .map_err(|s| map(key, s))?;
        let Some(written) = written else {
            return Ok(Version::new(UNKNOWN_VERSION));
        };
        // Dapr does not return the new ETag: read it back, and trust it only if the value is
        // still ours.
        match self.read(key).await? {
            Some(entry) if entry.value == written => Ok(entry.version),
            _ => Ok(Version::new(UNKNOWN_VERSION)),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Entry>> {
        let response = self
            .client
            .clone()
            .get_state(GetStateRequest {
                store_name: self.store_name.clone(),
                key: encode(key),
                ..GetStateRequest::default()
            })
            .await
            .map_err(|s| map(key, s))?
            .into_inner();
        Ok(entry(response.data, response.etag, &response.metadata))
    }
}

/// A missing key reads as empty data and an empty ETag.
fn entry(data: Vec<u8>, etag: String, metadata: &HashMap<String, String>) -> Option<Entry> {
    if data.is_empty() && etag.is_empty() {
        return None;
    }
    let expires_in = metadata.get(TTL_EXPIRE_TIME).and_then(|at| {
        let at =
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
        let left = at - time::OffsetDateTime::now_utc();
        Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
    });
    Some(Entry {
        value: data,
        version: Version::new(etag),
        expires_in,
    })
}

/// What a write does to the key's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TtlChange {
    /// Expire after this long (`ttlInSeconds`, whole seconds rounded up).
    Set(Duration),
    /// Keep forever (`ttlInSeconds: -1`), clearing an earlier TTL.
    Clear,
    /// Send no TTL: the Redis component then leaves the key's deadline as it is. Used to
    /// rewrite a counter whose deadline the component does not report.
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
            TtlChange::Set(ttl) => ttl.as_nanos().div_ceil(1_000_000_000).max(1).to_string(),
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

    fn capabilities(&self) -> Capabilities {
        let conditional = self.create.is_some();
        Capabilities::full()
            .with_conditional(conditional)
            .with_increment(conditional)
            .with_persistent(self.persistent)
            .with_max_value_len(3 * 1024 * 1024)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.check_open()?;
        if let [key] = keys {
            return Ok(vec![self.read(key).await?]);
        }
        let encoded: Vec<String> = keys.iter().map(|k| encode(k)).collect();
        let items = self
            .client
            .clone()
            .get_bulk_state(GetBulkStateRequest {
                store_name: self.store_name.clone(),
                keys: encoded.clone(),
                ..GetBulkStateRequest::default()
            })
            .await
            .map_err(|s| map("", s))?
            .into_inner()
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
        Ok(encoded
            .iter()
            .map(|k| {
                by_key
                    .remove(k)
                    .and_then(|item| entry(item.data, item.etag, &item.metadata))
            })
            .collect())
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        self.check_open()?;
        let ttl = TtlChange::from_write(options.ttl);
        self.write(key, value, &options.mode, ttl, options.want_version, false)
            .await
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        self.check_open()?;
        let (etag, options) = match expected {
            None => (None, None),
            Some(_) if self.create.is_none() => {
                return Err(Error::unsupported(STORE, "conditional writes"))
            }
            // The Redis component deletes a missing key without complaint even with an ETag,
            // so a conditional removal checks that the key exists first.
            Some(version) => match self.read(key).await? {
                None => return Ok(false),
                Some(_) => first_write(Some(version.as_str().to_owned())),
            },
        };
        self.client
            .clone()
            .delete_state(DeleteStateRequest {
                store_name: self.store_name.clone(),
                key: encode(key),
                etag,
                options,
                ..DeleteStateRequest::default()
            })
            .await
            .map_err(|s| map(key, s))?;
        Ok(true)
    }

    /// A compare-and-set loop on the ETag. Unlike the core helper it can rewrite a counter
    /// without touching its TTL, which the Redis component needs: it does not report deadlines.
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        self.check_open()?;
        if self.create.is_none() {
            return Err(Error::unsupported(STORE, "atomic increment"));
        }
        for _ in 0..CAS_RETRIES {
            let (next, mode, ttl) = match self.read(key).await? {
                None => (delta, SetMode::Create, TtlChange::from_write(ttl)),
                Some(entry) => {
                    let next = parse_counter(key, &entry.value)?
                        .checked_add(delta)
                        .ok_or_else(|| Error::NotAnInteger {
                            key: key.to_owned(),
                        })?;
                    let ttl = entry.expires_in.map_or(TtlChange::Keep, |left| {
                        TtlChange::Set(left.max(Duration::from_millis(1)))
                    });
                    (next, SetMode::Update(entry.version), ttl)
                }
            };
            let bytes = next.to_string().into_bytes();
            match self.write(key, bytes, &mode, ttl, false, true).await {
                Ok(_) => return Ok(next),
                Err(Error::Conflict { .. }) => tokio::task::yield_now().await,
                Err(other) => return Err(other),
            }
        }
        Err(Error::Conflict {
            key: key.to_owned(),
        })
    }

    async fn close(&self) -> Result<()> {
        self.closed.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_clear_with_minus_one_and_keep_by_omission() {
        let secs = |change: TtlChange| change.metadata().get(TTL).cloned();
        assert_eq!(secs(TtlChange::Clear).as_deref(), Some("-1"));
        assert_eq!(
            secs(TtlChange::Set(Duration::from_millis(200))).as_deref(),
            Some("1")
        );
        assert_eq!(
            secs(TtlChange::Set(Duration::from_millis(1500))).as_deref(),
            Some("2")
        );
        assert_eq!(secs(TtlChange::Keep), None);
    }

    #[test]
    fn empty_data_and_etag_is_missing() {
        assert!(entry(Vec::new(), String::new(), &HashMap::new()).is_none());
        let e = entry(b"1".to_vec(), "3".into(), &HashMap::new()).expect("present");
        assert_eq!(e.version.as_str(), "3");
    }
}
