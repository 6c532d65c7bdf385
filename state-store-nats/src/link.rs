//! Connections to NATS that are dropped, never resumed, once they break.
//!
//! async-nats reconnects by itself and, once reconnected, sends what its callers had handed it
//! in the meantime, even when a caller has long been told that its write failed: a write
//! reported as failed would land later, over newer data. So the store makes its own
//! connections with no automatic reconnect: when one breaks, its connection task ends and
//! whatever it still held is dropped with it; the next call makes a new connection.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};
use state_store_core::{CloseFlag, Error, Result};

use crate::config::{Credentials, NatsConfig};
use crate::error::{self, STORE};

/// The first wait after a failed attempt to connect; it doubles up to [`MAX_REDIAL_PAUSE`].
/// Calls in between fail at once with `Unavailable` instead of each waiting for a connect.
const FIRST_REDIAL_PAUSE: Duration = Duration::from_millis(50);
const MAX_REDIAL_PAUSE: Duration = Duration::from_secs(1);

/// One connection and the JetStream context over it.
#[derive(Debug)]
pub(crate) struct Link {
    client: async_nats::Client,
    pub(crate) js: Context,
    /// The bucket's stream, for direct gets and consumers.
    pub(crate) stream: jetstream::stream::Stream<()>,
}

impl Link {
    async fn new(js: Context, stream_name: &str) -> Result<Self> {
        let stream = js
            .get_stream_no_info(stream_name)
            .await
            .map_err(|e| Error::config_with("invalid NATS KV stream name", e))?;
        Ok(Link {
            client: js.client(),
            js,
            stream,
        })
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn is_connected(&self) -> bool {
        self.client().connection_state() == State::Connected
    }
}

/// Where new connections come from.
#[derive(Debug)]
enum Source {
    /// Made here, from the config: one attempt per connection, no automatic reconnect.
    Owned {
        config: Box<NatsConfig>,
        servers: Vec<ServerAddr>,
    },
    /// The caller's context ([`NatsStateStore::from_client`](crate::NatsStateStore::from_client)):
    /// its client reconnects by itself, so writes are refused while it is not connected.
    Borrowed,
}

/// The connection calls go through now, replaced when it breaks.
#[derive(Debug)]
pub(crate) struct Links {
    current: RwLock<Arc<Link>>,
    source: Source,
    stream_name: String,
    /// Held while a new connection is made: one attempt at a time.
    redial: tokio::sync::Mutex<Redial>,
    pub(crate) closed: CloseFlag,
}

#[derive(Debug, Default)]
struct Redial {
    /// No new attempt before this, after a failed one.
    not_before: Option<Instant>,
    pause: Duration,
}

impl Links {
    /// Connections made from `config`, starting with `first` (from [`dial`]).
    pub(crate) async fn owned(
        first: Context,
        stream_name: &str,
        config: NatsConfig,
        servers: Vec<ServerAddr>,
    ) -> Result<Self> {
        let source = Source::Owned {
            config: Box::new(config),
            servers,
        };
        Self::new(first, stream_name, source).await
    }

    /// The caller's context, used as it is.
    pub(crate) async fn borrowed(js: Context, stream_name: &str) -> Result<Self> {
        Self::new(js, stream_name, Source::Borrowed).await
    }

    async fn new(js: Context, stream_name: &str, source: Source) -> Result<Self> {
        Ok(Links {
            current: RwLock::new(Arc::new(Link::new(js, stream_name).await?)),
            source,
            stream_name: stream_name.to_owned(),
            redial: tokio::sync::Mutex::default(),
            closed: CloseFlag::new(),
        })
    }

    fn current(&self) -> Arc<Link> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A connected link: the current one, or a new one when it broke.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after close; [`Error::Unavailable`] when no server can be reached
    /// (nothing was sent).
    pub(crate) async fn get(&self) -> Result<Arc<Link>> {
        self.closed.check(STORE)?;
        let link = self.current();
        if link.is_connected() {
            return Ok(link);
        }
        match &self.source {
            Source::Borrowed => Err(Error::unavailable(
                STORE,
                "not connected to the NATS server (reconnecting)",
            )),
            Source::Owned { config, servers } => {
                // Servers the cluster announced (for a client given one seed URL), after ours.
                let mut servers = servers.clone();
                for url in link.client().server_info().connect_urls {
                    if let Ok(server) = url.parse::<ServerAddr>() {
                        if !servers.contains(&server) {
                            servers.push(server);
                        }
                    }
                }
                self.replace(&link, config, &servers).await
            }
        }
    }

    async fn replace(
        &self,
        broken: &Arc<Link>,
        config: &NatsConfig,
        servers: &[ServerAddr],
    ) -> Result<Arc<Link>> {
        // A redial in progress is waited for, up to the request timeout (a call's whole
        // budget); then the call fails rather than queue behind a slow dial.
        let Ok(mut redial) =
            tokio::time::timeout(config.timeouts.request, self.redial.lock()).await
        else {
            return Err(Error::unavailable(
                STORE,
                "not connected to the NATS server (reconnecting)",
            ));
        };
        let link = self.current();
        if !Arc::ptr_eq(&link, broken) && link.is_connected() {
            // Another call reconnected while this one waited.
            return Ok(link);
        }
        self.closed.check(STORE)?;
        if redial.not_before.is_some_and(|at| Instant::now() < at) {
            return Err(Error::unavailable(
                STORE,
                "not connected to the NATS server (the last attempt to reconnect failed)",
            ));
        }
        match dial(config, servers).await {
            Ok(client) => {
                let js = context(config, client);
                let link = Arc::new(Link::new(js, &self.stream_name).await?);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = link.clone();
                *redial = Redial::default();
                tracing::debug!("reconnected to NATS on a new connection");
                Ok(link)
            }
            Err(err) => {
                redial.pause = (redial.pause * 2).clamp(FIRST_REDIAL_PAUSE, MAX_REDIAL_PAUSE);
                redial.not_before = Some(Instant::now() + redial.pause);
                Err(err)
            }
        }
    }

    /// Marks the links closed and drains the connection this store made (a caller's context
    /// stays open).
    pub(crate) async fn close(&self) -> Result<()> {
        if !self.closed.close() {
            return Ok(());
        }
        if matches!(self.source, Source::Owned { .. }) {
            let link = self.current();
            if link.is_connected() {
                link.client()
                    .drain()
                    .await
                    .map_err(|e| Error::unavailable(STORE, e))?;
            }
        }
        Ok(())
    }
}

/// The servers of `config`'s URL.
pub(crate) fn servers(config: &NatsConfig) -> Result<Vec<ServerAddr>> {
    config
        .url
        .split(',')
        .map(|url| url.trim().parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::config_with("invalid NATS server URL", e))
}

/// A JetStream context over `client` with `config`'s request timeout.
pub(crate) fn context(config: &NatsConfig, client: async_nats::Client) -> Context {
    jetstream::ContextBuilder::new()
        .timeout(config.timeouts.request)
        .build(client)
}

/// Where a connection that broke is sent to die: nothing listens on port 0 (and no packet
/// leaves the host), so the connection's one reconnect attempt fails at once.
const NOWHERE: &str = "nats://127.0.0.1:0";

/// A new connection to the first of `servers` that answers, that never reconnects: when it
/// breaks, its connection task ends and drops every publish it had not sent.
///
/// async-nats allows at least one reconnect attempt after each successful connection
/// (`max_reconnects(1)`; 0 means unlimited), and it would send what it still holds to
/// whichever server it reaches — a peer of the cluster, or the same server back up — after
/// the calls that handed it over have failed. So that attempt is aimed at [`NOWHERE`]: it
/// fails, the next exceeds the limit, and the task ends. Discovered servers are left out of
/// the client's pool (the store redials them itself, on a new connection).
///
/// # Errors
///
/// [`Error::Config`] for refused credentials; [`Error::Unavailable`] when no server answers.
pub(crate) async fn dial(
    config: &NatsConfig,
    servers: &[ServerAddr],
) -> Result<async_nats::Client> {
    let nowhere: ServerAddr = NOWHERE
        .parse()
        .map_err(|e| Error::config_with("invalid NATS server URL", e))?;
    let mut last = None;
    for server in servers {
        let (first, dead_end) = (server.clone(), nowhere.clone());
        let options = options(config)
            .await?
            .max_reconnects(1)
            .ignore_discovered_servers()
            .reconnect_to_server_callback(move |pool: Vec<async_nats::Server>, _| {
                // The first connection goes to `server`; any later one nowhere.
                let reconnecting = pool.iter().any(|s| s.did_connect);
                let addr = if reconnecting {
                    dead_end.clone()
                } else {
                    first.clone()
                };
                async move {
                    Some(async_nats::ReconnectToServer {
                        addr,
                        delay: Some(Duration::ZERO),
                    })
                }
            });
        match options.connect(vec![server.clone(), nowhere.clone()]).await {
            Ok(client) => return Ok(client),
            Err(err)
                if matches!(
                    err.kind(),
                    ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation
                ) =>
            {
                return Err(error::connect(err))
            }
            Err(err) => last = Some(err),
        }
    }
    Err(last.map_or_else(|| Error::config("no NATS server URL"), error::connect))
}

async fn options(config: &NatsConfig) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .connection_timeout(config.timeouts.connect)
        .request_timeout(Some(config.timeouts.request))
        .require_tls(config.requires_tls());
    if let Some(pem) = &config.tls.root_certificates {
        options = options.add_root_certificates(pem.clone());
    }
    if let Some((cert, key)) = &config.tls.client_certificate {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls.first {
        options = options.tls_first();
    }
    Ok(match &config.credentials {
        Credentials::None => options,
        Credentials::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
        Credentials::Token(token) => options.token(token.clone()),
        Credentials::NKey(seed) => options.nkey(seed.clone()),
        Credentials::CredsFile(path) => options
            .credentials_file(path)
            .await
            .map_err(|e| Error::config_with("cannot read the NATS credentials file", e))?,
    })
}
