//! `PostgresStateStore`: the backend over a pool of tokio-postgres connections.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use state_store_core::{
    gcra_step, Backend, Capabilities, CheckRateLimit, Entry, Error, Extensions, Increment, KeyPage,
    KeySelector, ListKeys, RateAlgorithm, RateLimitReply, RateLimitRequest, Result, SetMode,
    SetOptions, Version, WatchKeys, WatchStart, WatchStream, WatchSupport,
};
use tokio::time::Instant;

use crate::config::PostgresConfig;
use crate::error::{closed, map, map_pool, not_an_integer, STORE};
use crate::schema::{check, migrate, Sql};
use crate::watch::{Feed, Listen, Listener, RETENTION};

/// Rows one sweep statement deletes at most, so a sweep never holds many row locks at once.
const SWEEP_BATCH: i64 = 1000;

/// The state store on PostgreSQL: one table, every operation one statement.
///
/// Values are JSON text; versions come from a sequence, so a version is never reused, not even
/// after a delete; expiry is on the server's clock (`now()`), so every instance of a service
/// agrees on it. Reads of many names are one `SELECT … WHERE key = ANY($1)`; increments are one
/// upsert; compare-and-set is an `UPDATE … WHERE version = $n`; listing walks the primary key
/// (keys are `bytea`, so byte order) from a prefix; a watch follows a change feed (see the
/// crate README). Expired rows are invisible to reads and deleted in batches by a background
/// task.
///
/// # Example
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store_core::Error> {
/// use state_store_core::StateStore;
/// use state_store_postgres::{PostgresConfig, PostgresStateStore};
///
/// let config = PostgresConfig::from_url("postgres://app:secret@127.0.0.1/app")?;
/// let store = StateStore::from(PostgresStateStore::connect(config).await?);
/// let visits = store.increment("visits", 1, None).await?;
/// assert!(visits >= 1);
/// # Ok(())
/// # }
/// ```
pub struct PostgresStateStore {
    listen: Option<Arc<dyn Listen>>,
    pool: Pool,
    sql: Arc<Sql>,
    config: PostgresConfig,
    closed: Arc<AtomicBool>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    server: Option<(String, u16)>,
    /// `connect` built the pool, so `close` closes it; a pool of the caller's stays open.
    owns_pool: bool,
}

impl fmt::Debug for PostgresStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStateStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PostgresStateStore {
    /// Opens a pool on `config`, checks that the server answers, and creates or upgrades the
    /// table unless [`PostgresConfig::with_migrate`] turned that off.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for refused credentials, a missing database or missing privileges,
    /// or a table written by a newer release; [`Error::Unavailable`] when no server answers
    /// within the connect timeout.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        // TLS with rustls for `sslmode=require` (the config refused it without the feature).
        // libpq's `prefer` would take an unverified certificate, which rustls never does: it
        // connects in plaintext, as it does without the feature.
        // Watches `LISTEN` on a connection of their own, made the same way.
        #[cfg(feature = "rustls")]
        let (manager, listen): (_, Arc<dyn Listen>) = match config.pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => {
                let tls = crate::tls::connector(&config.tls)?;
                (
                    Manager::from_config(config.pg.clone(), tls.clone(), manager_config),
                    Arc::new(Listener {
                        config: config.pg.clone(),
                        tls,
                    }),
                )
            }
            _ => (
                Manager::from_config(config.pg.clone(), tokio_postgres::NoTls, manager_config),
                Arc::new(Listener {
                    config: config.pg.clone(),
                    tls: tokio_postgres::NoTls,
                }),
            ),
        };
        #[cfg(not(feature = "rustls"))]
        let (manager, listen): (_, Arc<dyn Listen>) = (
            Manager::from_config(config.pg.clone(), tokio_postgres::NoTls, manager_config),
            Arc::new(Listener {
                config: config.pg.clone(),
                tls: tokio_postgres::NoTls,
            }),
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.request_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.request_timeout))
            .build()
            .map_err(|e| Error::config_with("cannot build the connection pool", e))?;
        let mut store = Self::open(pool, config, Some(listen)).await?;
        store.owns_pool = true;
        Ok(store)
    }

    /// A store on a pool of your own (deadpool-postgres), say one your service already has.
    /// `config` gives the schema, table, timeouts and sweep; its connection settings are not
    /// used, except its first host and port as the server named in metrics and spans.
    /// Creates or upgrades the table as [`PostgresStateStore::connect`] does. Closing the
    /// store leaves the pool open. A watch on it polls the change feed four times a second
    /// instead of `LISTEN`ing: it has no connection settings to open a connection outside
    /// the pool with (pooled connections drop notifications).
    ///
    /// # Errors
    ///
    /// As [`PostgresStateStore::connect`].
    pub async fn with_pool(pool: Pool, config: PostgresConfig) -> Result<Self> {
        Self::open(pool, config, None).await
    }

    async fn open(
        pool: Pool,
        config: PostgresConfig,
        listen: Option<Arc<dyn Listen>>,
    ) -> Result<Self> {
        let sql = Arc::new(Sql::new(&config.schema, &config.table));
        let store = PostgresStateStore {
            listen,
            server: server_of(&config),
            pool,
            sql,
            closed: Arc::default(),
            sweeper: Mutex::new(None),
            config,
            owns_pool: false,
        };
        if store.config.migrate {
            store.migrate().await?;
        } else {
            // The server answers, with these credentials, and the table is this release's:
            // every statement names the change feed of schema 2.
            let deadline = store.deadline();
            let client = store.client(deadline).await?;
            let result = tokio::time::timeout_at(deadline, check(&client, &store.sql)).await;
            finish(client, result, false)??;
        }
        store.start_sweeper();
        Ok(store)
    }

    /// Creates the schema, sequence, table and indexes when missing, or upgrades a table an
    /// older release created; several processes may run it at once (it takes an advisory
    /// lock). [`PostgresStateStore::connect`] runs it unless told not to.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the table was written by a newer release (it is left
    /// untouched) or the user may not create it.
    pub async fn migrate(&self) -> Result<()> {
        let deadline = self.deadline();
        let mut client = self.client(deadline).await?;
        let result = tokio::time::timeout_at(deadline, migrate(&mut client, &self.sql)).await;
        // Creating what exists is harmless to repeat: a lost answer is only `Unavailable`.
        finish(client, result, false)?
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    /// A pooled connection, by `deadline`. Nothing has been sent when this fails.
    async fn client(&self, deadline: Instant) -> Result<Object> {
        client(&self.pool, &self.closed, deadline).await
    }

    /// Runs one statement (prepared once per connection) with `params` and returns its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        written: bool,
    ) -> Result<Vec<tokio_postgres::Row>> {
        query(
            &self.pool,
            &self.closed,
            self.deadline(),
            sql,
            params,
            written,
        )
        .await
    }

    /// What a watch needs of this store.
    fn feed(&self) -> Feed {
        Feed {
            pool: self.pool.clone(),
            sql: Arc::clone(&self.sql),
            timeout: self.config.request_timeout,
            closed: Arc::clone(&self.closed),
            listen: self.listen.clone(),
        }
    }

    /// Every sweep interval, deletes expired rows (recording their expiry while the feed is
    /// held) and changes older than the feed keeps, a batch per statement, until the store
    /// closes. Each batch has the request timeout; a connection that timed out or broke
    /// leaves the pool, so a hung server cannot keep a slot.
    fn start_sweeper(&self) {
        let feed = self.feed();
        let interval = self.config.sweep_interval;
        let retention = i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX);
        let task = tokio::spawn(async move {
            while !feed.closed.load(Ordering::Acquire) {
                tokio::time::sleep(interval).await;
                let batches: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]); 2] = [
                    (&feed.sql.sweep, &[&SWEEP_BATCH]),
                    (&feed.sql.trim, &[&SWEEP_BATCH, &retention]),
                ];
                for (sql, params) in batches {
                    loop {
                        let deadline = Instant::now() + feed.timeout;
                        match query(&feed.pool, &feed.closed, deadline, sql, params, false).await {
                            Ok(rows) if count(&rows) >= SWEEP_BATCH => {}
                            Ok(_) => break,
                            Err(err) => {
                                tracing::debug!(error = %err, "postgres sweep failed");
                                break;
                            }
                        }
                    }
                }
            }
        });
        *self.sweeper.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }
}

/// The `count(*)` a sweep answers.
fn count(rows: &[tokio_postgres::Row]) -> i64 {
    rows.first()
        .and_then(|row| row.try_get(0).ok())
        .unwrap_or(0)
}

/// A pooled connection, by `deadline`. Nothing has been sent when this fails.
async fn client(pool: &Pool, closed: &AtomicBool, deadline: Instant) -> Result<Object> {
    if closed.load(Ordering::Acquire) {
        return Err(self::closed());
    }
    match tokio::time::timeout_at(deadline, pool.get()).await {
        Ok(client) => client.map_err(map_pool),
        Err(_) => Err(Error::unavailable(
            STORE,
            "no connection within the request timeout",
        )),
    }
}

/// Runs one statement (prepared once per connection) with `params` by `deadline` and returns
/// its rows; `written`: as [`finish`].
pub(crate) async fn query(
    pool: &Pool,
    closed: &AtomicBool,
    deadline: Instant,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    written: bool,
) -> Result<Vec<tokio_postgres::Row>> {
    let client = client(pool, closed, deadline).await?;
    let result = tokio::time::timeout_at(deadline, async {
        let statement = client.prepare_cached(sql).await?;
        client.query(&statement, params).await
    })
    .await;
    finish(client, result, written)
}

/// The result of work done on `client`: a connection that timed out or broke is dropped
/// from the pool (a hung server would otherwise hand it out again); `written`: the work
/// may have changed data, so a lost answer is `OutcomeUnknown`.
fn finish<T>(
    client: Object,
    result: std::result::Result<
        std::result::Result<T, tokio_postgres::Error>,
        tokio::time::error::Elapsed,
    >,
    written: bool,
) -> Result<T> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            if client.is_closed() {
                drop(Object::take(client));
            }
            Err(map(err, written))
        }
        Err(_) => {
            drop(Object::take(client));
            let why = "no answer within the request timeout";
            Err(if written {
                Error::outcome_unknown(STORE, why)
            } else {
                Error::unavailable(STORE, why)
            })
        }
    }
}

/// A store dropped without `close` stops its sweep, so the pool (and its connections) goes
/// with it.
impl Drop for PostgresStateStore {
    fn drop(&mut self) {
        if let Some(task) = self
            .sweeper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// The first host and port, for metrics and spans.
fn server_of(config: &PostgresConfig) -> Option<(String, u16)> {
    let host = match config.pg.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(name) => name.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    let port = config.pg.get_ports().first().copied().unwrap_or(5432);
    Some((host, port))
}

impl PostgresStateStore {
    /// The live rows among `keys`: one key by equality (`one`), more in one `= ANY` query
    /// (`many`).
    async fn read(
        &self,
        keys: &[String],
        one: &str,
        many: &str,
    ) -> Result<Vec<tokio_postgres::Row>> {
        match keys {
            [key] => self.query(one, &[&key.as_bytes()], false).await,
            _ => {
                let wanted: Vec<&[u8]> = keys.iter().map(String::as_bytes).collect();
                self.query(many, &[&wanted], false).await
            }
        }
    }
}

/// `decode(row)` for each of `keys` that has a row (first column: the key), in request
/// order; a name asked twice is answered twice.
fn by_key<T: Clone>(
    keys: &[String],
    rows: &[tokio_postgres::Row],
    decode: impl Fn(&tokio_postgres::Row) -> Result<T>,
) -> Result<Vec<Option<T>>> {
    let mut found: HashMap<Vec<u8>, T> = HashMap::with_capacity(rows.len());
    for row in rows {
        let key: Vec<u8> = row.try_get(0).map_err(|e| Error::backend(STORE, e))?;
        found.insert(key, decode(row)?);
    }
    Ok(keys
        .iter()
        .map(|key| found.get(key.as_bytes()).cloned())
        .collect())
}

/// A deadline `ttl` from now in whole milliseconds, rounded up; `None` for no TTL.
fn ttl_ms(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| i64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX))
}

/// The version a caller expects; one that cannot be ours (not a number) matches no row
/// (the sequence starts at 1).
fn expected(version: &Version) -> i64 {
    version.as_str().parse().unwrap_or(0)
}

fn text(value: Vec<u8>) -> Result<String> {
    String::from_utf8(value).map_err(|e| Error::backend(STORE, e))
}

fn version(row: &tokio_postgres::Row) -> Result<Version> {
    let version: i64 = row.try_get(0).map_err(|e| Error::backend(STORE, e))?;
    Ok(Version::new(version.to_string()))
}

#[async_trait]
impl Backend for PostgresStateStore {
    fn name(&self) -> &str {
        STORE
    }

    fn capabilities(&self) -> Capabilities {
        // Keys are bytea in a B-tree, whose entries must fit a third of a page.
        Capabilities::full()
            .with_list(true)
            .with_watch(WatchSupport::Resumable)
            .with_max_key_len(2048)
            .with_max_value_len(64 * 1024 * 1024)
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.server
            .as_ref()
            .map(|(host, port)| (host.as_str(), *port))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let rows = self.read(keys, &self.sql.get_one, &self.sql.get).await?;
        let decode = |e| Error::backend(STORE, e);
        by_key(keys, &rows, |row| {
            let value: String = row.try_get(1).map_err(decode)?;
            let version: i64 = row.try_get(2).map_err(decode)?;
            let left: Option<i64> = row.try_get(3).map_err(decode)?;
            Ok(Entry {
                value: value.into_bytes(),
                version: Version::new(version.to_string()),
                expires_in: left.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            })
        })
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let rows = self
            .read(keys, &self.sql.value_one, &self.sql.values)
            .await?;
        by_key(keys, &rows, |row| {
            let value: String = row.try_get(1).map_err(|e| Error::backend(STORE, e))?;
            Ok(value.into_bytes())
        })
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        let value = text(value)?;
        let ttl = ttl_ms(options.ttl);
        let key_bytes = key.as_bytes();
        let rows = match &options.mode {
            SetMode::Upsert if options.keep_ttl => {
                self.query(&self.sql.upsert_keep_ttl, &[&key_bytes, &value, &ttl], true)
                    .await?
            }
            SetMode::Upsert => {
                self.query(&self.sql.upsert, &[&key_bytes, &value, &ttl], true)
                    .await?
            }
            SetMode::Create => {
                self.query(&self.sql.create, &[&key_bytes, &value, &ttl], true)
                    .await?
            }
            SetMode::Update(version) => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                    &key_bytes,
                    &value,
                    &ttl,
                    &expected(version),
                    &options.keep_ttl,
                ];
                self.query(&self.sql.update, &params, true).await?
            }
        };
        match rows.first() {
            Some(row) => version(row),
            None => Err(Error::Conflict {
                key: key.to_owned(),
            }),
        }
    }

    async fn remove(&self, key: &str, expected_version: Option<&Version>) -> Result<bool> {
        let key_bytes = key.as_bytes();
        let rows = match expected_version {
            None => self.query(&self.sql.remove, &[&key_bytes], true).await?,
            Some(version) => {
                self.query(&self.sql.remove_if, &[&key_bytes, &expected(version)], true)
                    .await?
            }
        };
        match rows.first() {
            Some(row) => row.try_get(0).map_err(|e| Error::backend(STORE, e)),
            None => Ok(false),
        }
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        if let Some(task) = self
            .sweeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        if self.owns_pool {
            self.pool.close();
        }
        Ok(())
    }

    fn extensions(&self) -> Extensions<'_> {
        Extensions::none()
            .with_increment(self)
            .with_list(self)
            .with_watch(self)
            .with_rate_limit(self)
    }
}

impl PostgresStateStore {
    /// Runs a write that reads the stored value as an integer: a value that is not one (or a
    /// sum out of range) is `NotAnInteger` for `key`, whichever way the server says it.
    async fn counter_write(
        &self,
        key: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let deadline = self.deadline();
        let client = self.client(deadline).await?;
        let result = tokio::time::timeout_at(deadline, async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await;
        if let Ok(Err(err)) = &result {
            if not_an_integer(err) {
                return Err(Error::NotAnInteger {
                    key: key.to_owned(),
                });
            }
        }
        finish(client, result, true)
    }
}

#[async_trait]
impl Increment for PostgresStateStore {
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let rows = self
            .counter_write(
                key,
                &self.sql.increment,
                &[&key.as_bytes(), &delta, &ttl_ms(ttl)],
            )
            .await?;
        match rows.first() {
            Some(row) => row.try_get(0).map_err(|e| Error::backend(STORE, e)),
            None => Err(Error::NotAnInteger {
                key: key.to_owned(),
            }),
        }
    }
}

#[async_trait]
impl CheckRateLimit for PostgresStateStore {
    /// GCRA in one statement on the server's clock (see `schema::gcra`); the reply is core's
    /// [`gcra_step`] on what the statement read, so the two cannot disagree. A fixed window
    /// is left to the limiter (one `increment` already).
    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        let RateAlgorithm::Gcra {
            emission_interval,
            burst,
        } = request.algorithm
        else {
            return Ok(None);
        };
        let interval = u64::try_from(emission_interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let cost = request.cost;
        // Parameters whose products leave bigint go the composed way (saturating in core).
        let (Ok(i), Ok(b), Ok(c)) = (
            i64::try_from(interval),
            i64::try_from(burst),
            i64::try_from(cost),
        ) else {
            return Ok(None);
        };
        if i.checked_mul(b).is_none() || i.checked_mul(c).is_none() {
            return Ok(None);
        }
        let micros = |v: i64| u64::try_from(v).unwrap_or(0);
        let key = request.key.as_bytes();
        let decode = |e| Error::backend(STORE, e);
        let not_an_integer = || Error::NotAnInteger {
            key: request.key.to_owned(),
        };
        if !request.write || cost > burst {
            // Nothing is written: a peek, or a cost no TAT lets through.
            let rows = self.query(&self.sql.gcra_peek, &[&key], false).await?;
            let row = rows
                .first()
                .ok_or_else(|| Error::backend(STORE, "no row"))?;
            let stored: Option<String> = row.try_get(0).map_err(decode)?;
            let now: i64 = row.try_get(1).map_err(decode)?;
            let tat = match stored {
                None => 0,
                Some(text) => text.parse::<i64>().map_err(|_| not_an_integer())?,
            };
            let (reply, _) = gcra_step(micros(now), micros(tat), interval, burst, cost);
            return Ok(Some(reply));
        }
        let rows = self
            .counter_write(request.key, &self.sql.gcra, &[&key, &i, &b, &c])
            .await?;
        let row = rows.first().ok_or_else(not_an_integer)?;
        let stored: i64 = row.try_get(0).map_err(decode)?;
        let passed: bool = row.try_get(1).map_err(decode)?;
        let now: i64 = row.try_get(2).map_err(decode)?;
        // Passed: `stored` is the new TAT, `max(TAT, now) + interval × cost`; the step from
        // what it was gives the same reply.
        let before = if passed { stored - i * c } else { stored };
        let (reply, _) = gcra_step(micros(now), micros(before), interval, burst, cost);
        if reply.allowed != passed {
            return Err(Error::backend(
                STORE,
                "the server's GCRA decision differs from core's",
            ));
        }
        Ok(Some(reply))
    }
}

#[async_trait]
impl ListKeys for PostgresStateStore {
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let from = prefix.as_bytes();
        let below = upper_bound(prefix);
        let after = after.map(str::as_bytes);
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self
            .query(&self.sql.list, &[&from, &below, &after, &fetch], false)
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let key: Vec<u8> = row.try_get(0).map_err(|e| Error::backend(STORE, e))?;
            keys.push(String::from_utf8(key).map_err(|e| Error::backend(STORE, e))?);
        }
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next = more.then(|| keys.last().cloned()).flatten();
        Ok(KeyPage::new(keys, next))
    }
}

#[async_trait]
impl WatchKeys for PostgresStateStore {
    /// The change feed (see the crate docs), held open while the watch runs: resumable from
    /// any event's version for as long as changes are kept (5 minutes) and some watch held
    /// the feed since; otherwise the watch starts with `Resync`.
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        self.feed().watch(selector, start).await
    }
}

/// The smallest byte string above every string starting with `prefix` (UTF-8 never holds
/// 0xFF, so bumping the last byte suffices); `None` for an empty prefix.
fn upper_bound(prefix: &str) -> Option<Vec<u8>> {
    let mut bound = prefix.as_bytes().to_vec();
    let last = bound.last_mut()?;
    *last = last.saturating_add(1);
    Some(bound)
}
