//! Completion: what a backend lacks natively, composed from what it has.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Layer;
use crate::backend::{AcquireLease, Backend, Extensions, Increment, SetMode, SetOptions};
use crate::capability::Capabilities;
use crate::cas::{increment_with_cas, retry_lost_races};
use crate::error::{Error, Result};
use crate::native::{LeaseAcquire, LeaseGrant};
use crate::version::{Entry, Version};

/// Fills the gaps of a backend that has conditional writes: atomic increments by
/// compare-and-set ([`increment_with_cas`]) where it has no native ones; an upsert that keeps
/// the TTL as a read and a conditional write, retried on a lost race, where it cannot keep one
/// in one write ([`Capabilities::upsert_keep_ttl`]); and leases from a create, an increment
/// and a compare-and-set wherever it has no one-call lease (or declines one). Its
/// capabilities say what the stack can do with these added.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompletionLayer;

impl CompletionLayer {
    /// The layer.
    pub fn new() -> Self {
        CompletionLayer
    }
}

impl Layer for CompletionLayer {
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        let below = inner.capabilities();
        Arc::new(Completion { inner, below })
    }
}

struct Completion {
    inner: Arc<dyn Backend>,
    below: Capabilities,
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Completion {
    /// The backend below, called through `&dyn Backend` (see `Intercepted`).
    fn below(&self) -> &dyn Backend {
        &*self.inner
    }

    /// Native increments, or compare-and-set ones.
    fn counts(&self) -> bool {
        self.below().extensions().increment.is_some() || self.below.conditional
    }

    fn leases(&self) -> bool {
        self.below.ttl && self.below.conditional && self.counts()
    }

    /// An upsert keeping the TTL: the key is read, then written conditionally on what was
    /// read (created when missing), so no other write slips in between.
    async fn upsert_keeping_ttl(
        &self,
        key: &str,
        value: Vec<u8>,
        options: &SetOptions,
    ) -> Result<Version> {
        let keys = [key.to_owned()];
        retry_lost_races(|| async {
            let current: Option<Entry> = self.below().get_many(&keys).await?.pop().flatten();
            let mode = match current {
                None => SetMode::Create,
                Some(entry) => SetMode::Update(entry.version),
            };
            let options = SetOptions {
                mode,
                ..options.clone()
            };
            self.below().set(key, value.clone(), &options).await
        })
        .await
    }

    /// A lease from the contract's operations: create the record if absent, increment the
    /// counter, then write the token into the record if it is still the one created.
    async fn compose_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        let options = |mode| SetOptions::new().mode(mode).ttl(request.ttl);
        let record = request.record_key;
        let created = match self
            .inner
            .set(record, request.record(None), &options(SetMode::Create))
            .await
        {
            Ok(version) => version,
            Err(Error::Conflict { .. }) => return Ok(LeaseGrant::Held),
            Err(err) => return Err(err),
        };
        let counted = self.increment(request.counter_key, 1, None).await;
        let token = match counted.map(u64::try_from) {
            Ok(Ok(token)) if token > 0 => token,
            failed => {
                // Best effort: a record that cannot be completed is removed rather than left
                // to expire.
                let _ = self.below().remove(record, Some(&created)).await;
                return Err(match failed {
                    Err(err) => err,
                    Ok(_) => Error::NotAnInteger {
                        key: request.counter_key.to_owned(),
                    },
                });
            }
        };
        match self
            .inner
            .set(
                record,
                request.record(Some(token)),
                &options(SetMode::Update(created)),
            )
            .await
        {
            Ok(version) => Ok(LeaseGrant::Granted { token, version }),
            // Expired (or was taken over) between the calls: never held.
            Err(Error::Conflict { .. }) => Ok(LeaseGrant::Held),
            Err(err) => Err(err),
        }
    }
}

#[async_trait]
impl Backend for Completion {
    fn name(&self) -> &str {
        self.below().name()
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.below().server()
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.below.clone();
        caps.increment = self.counts();
        caps.upsert_keep_ttl |= caps.conditional;
        caps
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.below().get_many(keys).await
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.below().get_values(keys).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        let composed = options.mode == SetMode::Upsert
            && options.keep_ttl
            && !self.below.upsert_keep_ttl
            && self.below.conditional;
        if composed {
            self.upsert_keeping_ttl(key, value, options).await
        } else {
            self.below().set(key, value, options).await
        }
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        self.below().remove(key, expected).await
    }

    async fn close(&self) -> Result<()> {
        self.below().close().await
    }

    fn extensions(&self) -> Extensions<'_> {
        let inner = self.below().extensions();
        Extensions {
            increment: self.counts().then_some(self as &dyn Increment),
            lease: self.leases().then_some(self as &dyn AcquireLease),
            ..inner
        }
    }
}

#[async_trait]
impl Increment for Completion {
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        match self.below().extensions().increment {
            Some(native) => native.increment(key, delta, ttl).await,
            None => increment_with_cas(&*self.inner, key, delta, ttl).await,
        }
    }
}

#[async_trait]
impl AcquireLease for Completion {
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        if let Some(native) = self.below().extensions().lease {
            match native.acquire_lease(request).await? {
                LeaseGrant::NotNative => {}
                answer => return Ok(answer),
            }
        }
        self.compose_lease(request).await
    }
}
