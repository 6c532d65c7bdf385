//! The key namespace: a prefix in front of every key, taken off every key that comes back.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use super::Layer;
use crate::backend::{
    AcquireLease, Backend, CheckRateLimit, Extensions, Increment, ListKeys, SetOptions,
    WatchInvalidations, WatchKeys,
};
use crate::capability::Capabilities;
use crate::change::{
    BackendEvent, Invalidation, InvalidationStream, KeyPage, KeySelector, WatchStart, WatchStream,
};
use crate::error::{Error, Result};
use crate::key::{normalize_prefix, PREFIX_SEPARATOR};
use crate::native::{LeaseAcquire, LeaseGrant, RateLimitReply, RateLimitRequest};
use crate::version::{Entry, Version};

/// Puts every key under a prefix: `billing` makes `invoice:7` the stored key
/// `billing:invoice:7` (see the key layout in the crate docs). Keys coming back (listings,
/// watch events, errors) lose the prefix again; keys outside it never come back. The
/// backend's key limit shrinks by the prefix. An empty prefix adds no layer.
#[derive(Debug, Clone, Default)]
pub struct NamespaceLayer {
    /// The canonical prefix.
    prefix: String,
}

impl NamespaceLayer {
    /// Keys under `prefix` (segments separated by `:`; empty segments dropped).
    pub fn new(prefix: &str) -> Self {
        NamespaceLayer {
            prefix: normalize_prefix(prefix),
        }
    }
}

impl Layer for NamespaceLayer {
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        if self.prefix.is_empty() {
            return inner;
        }
        Arc::new(Namespace {
            inner,
            root: format!("{}{PREFIX_SEPARATOR}", self.prefix),
        })
    }
}

struct Namespace {
    inner: Arc<dyn Backend>,
    /// `prefix:`.
    root: String,
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("root", &self.root)
            .field("inner", &self.inner)
            .finish()
    }
}

impl Namespace {
    /// The backend below, called through `&dyn Backend` (see `Intercepted`).
    fn below(&self) -> &dyn Backend {
        &*self.inner
    }

    fn key(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.root.len() + name.len());
        key.push_str(&self.root);
        key.push_str(name);
        key
    }

    fn keys(&self, names: &[String]) -> Vec<String> {
        names.iter().map(|name| self.key(name)).collect()
    }

    /// A backend error naming a stored key, made to name the caller's name: another
    /// tenant's prefix never shows in this handle's errors.
    fn rename(&self, error: Error) -> Error {
        error.rename_key(|key| key.strip_prefix(self.root.as_str()).map(str::to_owned))
    }

    fn missing(&self, feature: &'static str) -> Error {
        Error::unsupported(self.below().name(), feature)
    }
}

#[async_trait]
impl Backend for Namespace {
    fn name(&self) -> &str {
        self.below().name()
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.below().server()
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.below().capabilities();
        caps.max_key_len = caps.max_key_len.saturating_sub(self.root.len());
        caps
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let keys = self.keys(keys);
        self.below()
            .get_many(&keys)
            .await
            .map_err(|e| self.rename(e))
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let keys = self.keys(keys);
        self.inner
            .get_values(&keys)
            .await
            .map_err(|e| self.rename(e))
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        self.inner
            .set(&self.key(key), value, options)
            .await
            .map_err(|e| self.rename(e))
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        self.inner
            .remove(&self.key(key), expected)
            .await
            .map_err(|e| self.rename(e))
    }

    async fn close(&self) -> Result<()> {
        self.below().close().await
    }

    fn extensions(&self) -> Extensions<'_> {
        self.below().extensions().served_by(self)
    }
}

#[async_trait]
impl Increment for Namespace {
    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let counter = self
            .inner
            .extensions()
            .increment
            .ok_or_else(|| self.missing("atomic increment"))?;
        counter
            .increment(&self.key(key), delta, ttl)
            .await
            .map_err(|e| self.rename(e))
    }
}

#[async_trait]
impl ListKeys for Namespace {
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let lister = self
            .inner
            .extensions()
            .list
            .ok_or_else(|| self.missing("listing keys"))?;
        let page = lister
            .list_keys(&self.key(prefix), after, limit)
            .await
            .map_err(|e| self.rename(e))?;
        let keys = page
            .keys
            .into_iter()
            .filter_map(|key| key.strip_prefix(self.root.as_str()).map(str::to_owned))
            .collect();
        Ok(KeyPage::new(keys, page.next))
    }
}

#[async_trait]
impl WatchKeys for Namespace {
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        let watcher = self
            .inner
            .extensions()
            .watch
            .ok_or_else(|| self.missing("watching changes"))?;
        let selector = match selector {
            KeySelector::Key(key) => KeySelector::Key(self.key(key)),
            KeySelector::Prefix(prefix) => KeySelector::Prefix(self.key(prefix)),
        };
        let inner = watcher
            .watch(&selector, start)
            .await
            .map_err(|e| self.rename(e))?;
        Ok(Box::pin(Unprefixed {
            inner,
            root: self.root.clone(),
        }))
    }
}

#[async_trait]
impl WatchInvalidations for Namespace {
    async fn invalidations(&self, prefix: &str) -> Result<InvalidationStream> {
        let watcher = self
            .inner
            .extensions()
            .invalidations
            .ok_or_else(|| self.missing("following invalidations"))?;
        let inner = watcher
            .invalidations(&self.key(prefix))
            .await
            .map_err(|e| self.rename(e))?;
        Ok(Box::pin(UnprefixedKeys {
            inner,
            root: self.root.clone(),
        }))
    }
}

#[async_trait]
impl AcquireLease for Namespace {
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        let leases = self
            .inner
            .extensions()
            .lease
            .ok_or_else(|| self.missing("leases"))?;
        let (record, counter) = (self.key(request.record_key), self.key(request.counter_key));
        leases
            .acquire_lease(&request.with_keys(&record, &counter))
            .await
            .map_err(|e| self.rename(e))
    }
}

#[async_trait]
impl CheckRateLimit for Namespace {
    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        let limits = self
            .inner
            .extensions()
            .rate_limit
            .ok_or_else(|| self.missing("native rate limits"))?;
        let key = self.key(request.key);
        limits
            .rate_limit(&RateLimitRequest {
                key: &key,
                ..*request
            })
            .await
            .map_err(|e| self.rename(e))
    }
}

/// Watch events with the prefix taken off their keys; events for keys outside it (a backend
/// filtering coarsely) are skipped.
struct Unprefixed {
    inner: WatchStream,
    root: String,
}

impl Unprefixed {
    fn strip(&self, key: &str) -> Option<String> {
        key.strip_prefix(self.root.as_str()).map(str::to_owned)
    }
}

impl Stream for Unprefixed {
    type Item = Result<BackendEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let event = match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => event,
                other => return other,
            };
            let event = match event {
                BackendEvent::Put {
                    key,
                    value,
                    version,
                } => self.strip(&key).map(|key| BackendEvent::Put {
                    key,
                    value,
                    version,
                }),
                BackendEvent::Removed {
                    key,
                    cause,
                    version,
                } => self.strip(&key).map(|key| BackendEvent::Removed {
                    key,
                    cause,
                    version,
                }),
                resync => Some(resync),
            };
            if let Some(event) = event {
                return Poll::Ready(Some(Ok(event)));
            }
        }
    }
}

/// An invalidation stream with the namespace taken off its keys (keys outside it dropped).
struct UnprefixedKeys {
    inner: InvalidationStream,
    root: String,
}

impl Stream for UnprefixedKeys {
    type Item = Result<Invalidation>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let keys = match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(Invalidation::Keys(keys)))) => keys,
                other => return other,
            };
            let keys: Vec<String> = keys
                .iter()
                .filter_map(|key| key.strip_prefix(self.root.as_str()).map(str::to_owned))
                .collect();
            if !keys.is_empty() {
                return Poll::Ready(Some(Ok(Invalidation::Keys(keys))));
            }
        }
    }
}
