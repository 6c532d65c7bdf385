//! Leases with fencing tokens, fenced writes and leader election, over any backend that has
//! atomic expiry, conditional writes and atomic increments.
//!
//! # Why a fencing token
//!
//! An expiring lock alone is not safe: a holder paused past its TTL (a GC pause, swapping, a
//! slow disk) wakes up still believing it holds the lock while the next holder already works.
//! Every [`Lease`] therefore carries a [`FencingToken`] that is strictly greater than the token
//! of every earlier holder of the same name — across releases, expiry, removals and (on
//! persistent backends) server restarts. Storage that checks the token refuses the stale
//! holder's writes; [`StateStore::set_fenced`] is such a write for state in this store.
//!
//! # Layout
//!
//! A lease `name` is two records in the [reserved](crate::RESERVED_MARKER) area `$lease`
//! under the handle's prefix: `$lease:{<name>}` holds the current holder (JSON `{"holder",
//! "nonce", "token"}`, with the lease's TTL) and `$lease:{<name>}:token` the token counter
//! (an integer without TTL, never removed by the lease). No caller's name, prefix or
//! [`StateStore::remove_prefix`] reaches them: a counter removed would restart tokens at 1 and
//! void the guarantee. Only clearing the whole store does that. (The braces are a Redis
//! Cluster hash tag: both keys land in one slot.)
//!
//! # How it is built
//!
//! Where the backend has a native path (Redis: one script) acquiring is one call. Otherwise
//! it is three: create the holder record if absent (with the TTL), increment the
//! counter, then write the token into the record with compare-and-set on the version just
//! created. The last step succeeds only if the record was never replaced or expired in
//! between, so the counter was incremented while this holder held the lease, and holders'
//! tenures never overlap on the server: tokens grow in tenure order. (On NATS a record's
//! expiry is judged by the writer's deadline against the reader's clock: a candidate whose
//! clock runs ahead by `s` can take over `s` early. Keep NATS clients' clocks synced.)
//!
//! Renewing is one
//! compare-and-set (which fails once anybody else holds the lease); releasing is one
//! conditional remove.
//!
//! # Waiting
//!
//! A waiting [`LeaseRequest::acquire`], a campaigning [`StateStore::elect`] and a
//! [`StateStore::observe_leader`] follow the holder record with a watch where the backend has
//! one: a release (and an expiry the backend reports) wakes them at once. They still poll
//! with jitter, for expiries a backend reports late or never (SQLite and PostgreSQL report
//! one when their sweeper removes the record) and for events a lossy watch drops.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::{SetMode, SetOptions, MAX_TTL};
use crate::capability::WatchSupport;
use crate::error::{Error, Operation, Result};
use crate::layer::Call;
use crate::listing::{Selector, Watch, WatchEvent};
use crate::native::{LeaseAcquire, LeaseGrant};
use crate::retry::Backoff;
use crate::store::StateStore;
use crate::WatchStart;

/// The TTL of a lease when none is given: 30 seconds.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// The shortest lease TTL: 100 ms. Renewing (every third of the TTL) and clock rounding on
/// second-granular backends make shorter leases meaningless.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(100);

/// A number that grows with every new holder of a lease name; see the crate docs on locks.
///
/// Compare tokens of the same name only. Hand it to whatever the holder writes to, and have
/// that storage refuse tokens lower than the highest it has seen
/// ([`StateStore::set_fenced`] does this for state in this store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a token read from elsewhere (a message, a database column).
    pub const fn new(token: u64) -> Self {
        FencingToken(token)
    }

    /// The token as a number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the holder record of a lease holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    holder: String,
    nonce: String,
    token: Option<u64>,
}

/// Where lease records live: the reserved area `$lease` of the handle that takes them, out
/// of reach of any name a caller passes (a removed counter would restart fencing tokens).
const AREA: &str = "lease";

/// `{<name>}` in [`AREA`]: the braces make it a Redis Cluster hash tag, so the record and
/// the counter share a slot and one script can touch both.
fn record_name(name: &str) -> String {
    format!("{{{name}}}")
}

/// `{<name>}:token` in [`AREA`]. Never equal to a record name: those end with `}`.
fn counter_name(name: &str) -> String {
    format!("{{{name}}}:token")
}

/// Builds a lease request: [`StateStore::lease`].
#[derive(Debug, Clone)]
#[must_use = "a lease request does nothing until `try_acquire` or `acquire`"]
pub struct LeaseRequest {
    /// The caller's handle's [`AREA`].
    pub(crate) store: StateStore,
    pub(crate) name: String,
    pub(crate) ttl: Duration,
    holder: String,
    pub(crate) wake_on_release: bool,
}

impl LeaseRequest {
    /// How long the lease lasts without renewal (default [`DEFAULT_LEASE_TTL`]; at least
    /// [`MIN_LEASE_TTL`], at most [`MAX_TTL`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Who asks, as [`StateStore::leader`] reports it (default: a random id). Not a secret:
    /// it is stored in clear.
    pub fn holder(mut self, id: impl Into<String>) -> Self {
        self.holder = id.into();
        self
    }

    /// Whether [`LeaseRequest::acquire`] follows the holder record with a watch, to try
    /// again the moment it is released or reported expired (default: true; used only where
    /// the backend can [watch](crate::Capabilities::watch)). Polling with jitter goes on
    /// either way. A watch costs what the backend's costs (on PostgreSQL a connection of its
    /// own, and a change feed kept while it lasts): turn it off for many waiters that can
    /// wait.
    pub fn wake_on_release(mut self, wake: bool) -> Self {
        self.wake_on_release = wake;
        self
    }

    /// Takes the lease if nobody holds it; `None` if somebody does.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] on a backend without atomic expiry, conditional writes or
    /// increments; [`Error::InvalidTtl`] for a TTL outside [`MIN_LEASE_TTL`]..=[`MAX_TTL`];
    /// and what the store's calls return.
    pub async fn try_acquire(&self) -> Result<Option<Lease>> {
        self.check()?;
        let record_name = record_name(&self.name);
        // The local deadline starts before the request leaves: the server's starts later.
        let started = Instant::now();
        let mut record = Record {
            holder: self.holder.clone(),
            nonce: Alphanumeric.sample_string(&mut rand::rng(), 22),
            token: None,
        };
        let (token, version) = match self.acquire_once(&record_name, &record).await? {
            LeaseGrant::Granted { token, version } => (token, version),
            LeaseGrant::Held => return Ok(None),
            _ => {
                return Err(Error::backend(
                    self.store.name(),
                    "the lease extension declined the request",
                ))
            }
        };
        record.token = Some(token);
        let (state, _) = watch::channel(Held {
            version,
            deadline: started + self.ttl,
            lost: false,
        });
        crate::telemetry::lease_event("acquired");
        Ok(Some(Lease {
            inner: Arc::new(LeaseInner {
                store: self.store.clone(),
                name: self.name.clone(),
                record_name,
                record,
                token: FencingToken(token),
                ttl: self.ttl,
                state,
                calls: tokio::sync::Mutex::new(()),
            }),
        }))
    }

    /// Takes the lease, waiting up to `timeout` for the holder to release it or for it to
    /// expire; `None` when the time is up. Tries again when a watch on the holder record
    /// reports it removed (released, or expired where the backend reports that; see
    /// [`LeaseRequest::wake_on_release`]), and at the latest after a random pause of a quarter
    /// to a half of the TTL, at most a second.
    ///
    /// # Errors
    ///
    /// As [`LeaseRequest::try_acquire`].
    pub async fn acquire(&self, timeout: Duration) -> Result<Option<Lease>> {
        // `Duration::MAX` waits as good as forever.
        let now = Instant::now();
        let until = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut wake = RecordWatch::default();
        loop {
            if let Some(lease) = self.try_acquire().await? {
                return Ok(Some(lease));
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            if self.wake_on_release && wake.open_once(&self.store, &self.name).await {
                // A release before the watch started is not reported: try again at once.
                continue;
            }
            let pause = poll_pause(self.ttl).min(until - now);
            let _ = wake.wait(pause, Wake::OnRemoval).await;
        }
    }

    fn check(&self) -> Result<()> {
        let caps = self.store.capabilities();
        self.store.require(
            caps.leases(),
            "leases (they need atomic expiry, conditional writes and atomic increments)",
        )?;
        if self.ttl < MIN_LEASE_TTL || self.ttl > MAX_TTL {
            return Err(Error::InvalidTtl {
                key: self.name.clone(),
            });
        }
        Ok(())
    }

    /// One attempt, through the stack's lease extension: native where the backend has one,
    /// composed by the completion layer otherwise.
    async fn acquire_once(&self, record_name: &str, record: &Record) -> Result<LeaseGrant> {
        let store = &self.store;
        store.check(Operation::Set)?;
        let counter = counter_name(&self.name);
        let request = LeaseAcquire::new(
            record_name,
            &counter,
            &record.holder,
            &record.nonce,
            self.ttl,
        );
        let Some(leases) = store.extensions().lease else {
            let call = Call::Lease { request: &request };
            return Err(self.rename(store.refuse(&call, "leases")));
        };
        leases
            .acquire_lease(&request)
            .await
            .map_err(|e| self.rename(e))
    }

    fn rename(&self, err: Error) -> Error {
        rename(&self.name, err)
    }
}

/// Errors about the lease's own state names name the lease.
fn rename(name: &str, err: Error) -> Error {
    let record = record_name(name);
    let counter = counter_name(name);
    err.rename_key(|key| (key == record || key == counter).then(|| name.to_owned()))
}

/// Who holds the lease `name`, read in the lease area `records`.
pub(crate) async fn holder(records: &StateStore, name: &str) -> Result<Option<String>> {
    Ok(holder_and_token(records, name)
        .await?
        .map(|(holder, _)| holder))
}

/// Who holds the lease `name`, and with which token (`None` while the holder is still taking
/// it: its record has no token yet), read in the lease area `records`.
pub(crate) async fn holder_and_token(
    records: &StateStore,
    name: &str,
) -> Result<Option<(String, Option<FencingToken>)>> {
    Ok(records
        .get::<Record>(&record_name(name))
        .await
        .map_err(|e| rename(name, e))?
        .map(Record::holder_and_token))
}

/// The holder and token in a holder record's value, as a watch delivers it; `None` when it
/// does not decode.
pub(crate) fn holder_in(value: &serde_json::Value) -> Option<(String, Option<FencingToken>)> {
    Record::deserialize(value)
        .ok()
        .map(Record::holder_and_token)
}

impl Record {
    fn holder_and_token(self) -> (String, Option<FencingToken>) {
        (self.holder, self.token.map(FencingToken))
    }
}

/// What ends a [`RecordWatch::wait`] early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The record removed (released, expired) or changes missed: a waiter's chance.
    OnRemoval,
    /// Any change of the record: an observer's.
    OnChange,
}

/// A watch on one lease's holder record, where the backend can watch: waiting on it ends at
/// the change that matters instead of at the next poll. Without one (no watch, or it failed
/// or ended) waiting is sleeping.
#[derive(Debug, Default)]
pub(crate) struct RecordWatch {
    watch: Option<Watch>,
    tried: bool,
}

impl RecordWatch {
    /// Opens the watch on the first call; true when it has just been opened (changes before
    /// that are not reported: the caller looks again at once).
    pub(crate) async fn open_once(&mut self, records: &StateStore, name: &str) -> bool {
        if self.tried {
            return false;
        }
        self.tried = true;
        if records.capabilities().watch == WatchSupport::None {
            return false;
        }
        // A store that cannot watch after all leaves the polling.
        self.watch = records
            .watch(Selector::Name(record_name(name)), WatchStart::Now)
            .await
            .ok();
        self.watch.is_some()
    }

    /// Closes the watch (a leader needs none); [`RecordWatch::open_once`] opens it again.
    pub(crate) fn close(&mut self) {
        *self = RecordWatch::default();
    }

    /// Waits `pause`, or less when the watch reports a change `wake` asks for, or a loss;
    /// returns the event that ended the wait (`None`: the pause ran out).
    pub(crate) async fn wait(&mut self, pause: Duration, wake: Wake) -> Option<WatchEvent> {
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        while let Some(watch) = &mut self.watch {
            tokio::select! {
                () = &mut sleep => return None,
                event = watch.next() => match event {
                    Some(Ok(WatchEvent::Put { .. })) if wake == Wake::OnRemoval => {}
                    Some(Ok(event)) => return Some(event),
                    // Broken: poll from here on.
                    Some(Err(_)) | None => self.watch = None,
                },
            }
        }
        sleep.await;
        None
    }
}

/// A random pause between attempts to take a lease held by somebody else.
pub(crate) fn poll_pause(ttl: Duration) -> Duration {
    let base = (ttl / 4).min(Duration::from_millis(500));
    base + base.mul_f64(rand::random::<f64>())
}

#[derive(Debug, Clone)]
struct Held {
    version: crate::Version,
    /// Local monotonic deadline: started before the request that set it was sent.
    deadline: Instant,
    lost: bool,
}

struct LeaseInner {
    store: StateStore,
    name: String,
    record_name: String,
    record: Record,
    token: FencingToken,
    ttl: Duration,
    state: watch::Sender<Held>,
    /// Renew and release one at a time: each needs the version the previous one wrote.
    calls: tokio::sync::Mutex<()>,
}

/// A held lease. Cheap to clone; clones are the same lease.
///
/// There is no release in `Drop` (it would have to wait for the server): a lease that is
/// dropped without [`Lease::release`] stays taken until its TTL runs out. That TTL is the
/// safety net for a holder that crashes, too.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.inner.name)
            .field("holder", &self.inner.record.holder)
            .field("token", &self.inner.token)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Lease {
    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The holder id this lease was taken with.
    pub fn holder(&self) -> &str {
        &self.inner.record.holder
    }

    /// The fencing token: greater than every earlier holder's of this name.
    pub fn fencing_token(&self) -> FencingToken {
        self.inner.token
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// True once the lease is known lost: a renew was refused, it was released, or the local
    /// deadline passed without a successful renew.
    pub fn is_lost(&self) -> bool {
        let held = self.inner.state.borrow();
        held.lost || Instant::now() >= held.deadline
    }

    /// Completes when the lease is lost: a renew is refused (somebody else holds it), it is
    /// released, or the local deadline passes — the TTL counted from *before* the last
    /// successful acquire or renew request was sent, so it passes no later than the server's.
    /// Stop acting as the holder then. A renew that fails because the store is unreachable
    /// does not end the lease by itself: the deadline does.
    pub async fn lost(&self) {
        let mut changes = self.inner.state.subscribe();
        loop {
            let (deadline, lost) = {
                let held = changes.borrow_and_update();
                (held.deadline, held.lost)
            };
            if lost {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if self.inner.state.borrow().deadline <= Instant::now() {
                        self.inner.state.send_modify(|held| held.lost = true);
                        crate::telemetry::lease_event("lost");
                        return;
                    }
                }
                changed = changes.changed() => {
                    // The sender lives in `self`: it cannot be dropped while we wait.
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Extends the lease by its TTL from now.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease is no longer this holder's (it expired and somebody
    /// else took it, or it was released or removed); then [`Lease::lost`] completes. Any other
    /// error (say [`Error::Unavailable`]) leaves the lease held until its local deadline:
    /// renew again.
    pub async fn renew(&self) -> Result<()> {
        let _call = self.inner.calls.lock().await;
        let (version, lost) = {
            let held = self.inner.state.borrow();
            (held.version.clone(), held.lost)
        };
        if lost {
            return Err(self.lost_error());
        }
        let started = Instant::now();
        let options = SetOptions::new()
            .mode(SetMode::Update(version))
            .ttl(self.inner.ttl);
        match self
            .inner
            .store
            .set_with(&self.inner.record_name, &self.inner.record, options)
            .await
        {
            Ok(version) => {
                self.inner.state.send_modify(|held| {
                    held.version = version;
                    held.deadline = started + self.inner.ttl;
                });
                crate::telemetry::lease_event("renewed");
                Ok(())
            }
            Err(Error::Conflict { .. }) => {
                self.mark_lost();
                crate::telemetry::lease_event("lost");
                Err(self.lost_error())
            }
            Err(err) => Err(rename(&self.inner.name, err)),
        }
    }

    /// Gives the lease up, so the next holder need not wait for the TTL. `Ok(true)` when it
    /// was still this holder's; `Ok(false)` when it was already lost (expired and maybe taken
    /// by somebody else, whose lease stays untouched). The lease is lost afterwards either way.
    ///
    /// # Errors
    ///
    /// What the store returns (say [`Error::Unavailable`]): the lease may still be held on the
    /// server until its TTL runs out, and counts as lost here.
    pub async fn release(&self) -> Result<bool> {
        let _call = self.inner.calls.lock().await;
        let version = self.inner.state.borrow().version.clone();
        self.mark_lost();
        match self
            .inner
            .store
            .remove_if(&self.inner.record_name, &version)
            .await
        {
            Ok(()) => {
                crate::telemetry::lease_event("released");
                Ok(true)
            }
            Err(Error::Conflict { .. }) => Ok(false),
            Err(err) => Err(rename(&self.inner.name, err)),
        }
    }

    fn mark_lost(&self) {
        self.inner.state.send_modify(|held| held.lost = true);
    }

    pub(crate) fn lost_error(&self) -> Error {
        Error::LeaseLost {
            key: self.inner.name.clone(),
        }
    }

    /// Renews every third of the TTL until the lease is lost; retries failed renews (say, the
    /// store is briefly unreachable) until the local deadline passes.
    pub(crate) async fn keep_alive(&self) {
        let period = self.inner.ttl / 3;
        loop {
            tokio::select! {
                () = self.lost() => return,
                () = tokio::time::sleep(period) => {}
            }
            let mut retry = Backoff::new(usize::MAX, self.inner.ttl);
            loop {
                // A renew can take up to the store's request timeout; the lease ends at its
                // deadline whatever the renew is doing.
                let renewed = tokio::select! {
                    renewed = self.renew() => renewed,
                    () = self.lost() => return,
                };
                match renewed {
                    Ok(()) => break,
                    Err(Error::LeaseLost { .. }) => return,
                    Err(_) if !self.is_lost() && retry.wait().await => {}
                    Err(_) => {
                        self.mark_lost();
                        return;
                    }
                }
            }
        }
    }
}

impl StateStore {
    /// A request for the lease `name` (a state name under this handle's prefix): see
    /// [`LeaseRequest::try_acquire`] and [`LeaseRequest::acquire`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use state_store_core::{DefaultStateStore, StateStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), state_store_core::Error> {
    /// let store = StateStore::new(DefaultStateStore::new());
    /// let lease = store.lease("nightly-report").ttl(Duration::from_secs(10)).try_acquire().await?;
    /// let lease = lease.expect("nobody else holds it");
    /// // A second holder is refused while the first one holds the lease.
    /// assert!(store.lease("nightly-report").try_acquire().await?.is_none());
    /// // Whatever the holder writes carries its token; older tokens are refused.
    /// store.set_fenced("report:status", &"running", lease.fencing_token()).await?;
    /// assert!(lease.release().await?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn lease(&self, name: &str) -> LeaseRequest {
        LeaseRequest {
            store: self.reserved_area(AREA),
            name: name.to_owned(),
            ttl: DEFAULT_LEASE_TTL,
            holder: Alphanumeric.sample_string(&mut rand::rng(), 16),
            wake_on_release: true,
        }
    }

    /// Runs `body` while holding the lease `name`: takes it once (no waiting), renews it every
    /// third of `ttl` while `body` runs, and releases it afterwards. `Ok(None)` when somebody
    /// else holds it.
    ///
    /// If the lease is lost while `body` runs (a renew is refused, or the store stays
    /// unreachable until the lease's local deadline), `body` is cancelled — dropped at its
    /// next `.await` — and the call fails with [`Error::LeaseLost`]. Code between two
    /// `.await`s still runs to the next one: write through [`StateStore::set_fenced`] (or
    /// pass the token on) so that a write after the loss is refused where it lands.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] as above; as [`LeaseRequest::try_acquire`]. A failed release after
    /// `body` is not an error: the lease then ends with its TTL.
    pub async fn with_lease<F, Fut, R>(
        &self,
        name: &str,
        ttl: Duration,
        body: F,
    ) -> Result<Option<R>>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = R>,
    {
        let Some(lease) = self.lease(name).ttl(ttl).try_acquire().await? else {
            return Ok(None);
        };
        let outcome = tokio::select! {
            biased;
            () = lease.keep_alive() => None,
            value = body(lease.clone()) => Some(value),
        };
        match outcome {
            Some(value) => {
                let _ = lease.release().await;
                Ok(Some(value))
            }
            None => {
                let _ = lease.release().await;
                Err(lease.lost_error())
            }
        }
    }

    /// Who holds the lease (or leads the election) `name` now: the holder id, or `None` when
    /// nobody does.
    ///
    /// # Errors
    ///
    /// What the store returns ([`Error::Decode`] if the record was damaged).
    pub async fn leader(&self, name: &str) -> Result<Option<String>> {
        holder(&self.reserved_area(AREA), name).await
    }
}
