//! Following changes: the bucket's own change stream, as the `WatchKeys` extension.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use async_trait::async_trait;
use futures_util::StreamExt;
use state_store_core::{
    invalidations_of, watch_channel, BackendEvent, Backoff, Error, InvalidationStream, KeySelector,
    Result, WatchInvalidations, WatchKeys, WatchStart, WatchStream,
};
use tokio::sync::mpsc;

use crate::error::STORE;
use crate::link::{Link, Links};
use crate::listing::consumer;
use crate::message::{change, parse_version};
use crate::store::{Bucket, NatsStateStore};

#[async_trait]
impl WatchKeys for NatsStateStore {
    /// The bucket's own change stream, resumable by revision (the KV revision a version
    /// carries); removals and expiry (the server's TTL marker, up to a second after the
    /// deadline) are reported. The bucket keeps one message per key
    /// ([`WatchSupport::Compacted`](state_store_core::WatchSupport::Compacted)): a resumed watch starts with `Resync`, then delivers what
    /// the bucket still holds after the revision, in order: the latest change of each key
    /// changed since, and removal markers younger than the marker TTL (60 s by default). When
    /// the subscription is lost (a broken connection), the watch says `Resync` and follows on
    /// from the last revision it delivered, over a new connection.
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        let after = match start {
            WatchStart::Now => None,
            WatchStart::AfterVersion(version) => Some(
                parse_version(version)
                    .ok_or_else(|| {
                        Error::invalid_key(version.as_str(), "not a version of this store")
                    })?
                    .0,
            ),
            _ => return Err(Error::unsupported(STORE, "this watch start")),
        };
        let prefix = match selector {
            KeySelector::Key(key) | KeySelector::Prefix(key) => key.clone(),
            _ => String::new(),
        };
        let link = self.links.get().await?;
        let policy = match after {
            None => DeliverPolicy::New,
            Some(revision) => DeliverPolicy::ByStartSequence {
                start_sequence: revision.saturating_add(1),
            },
        };
        let messages = subscribe(&link, &self.bucket, &prefix, policy, false).await?;
        let (tx, stream) = watch_channel(256);
        if after.is_some() {
            let reason = "the NATS KV bucket keeps only the latest change of each key: \
                          changes after that version may have been replaced"
                .to_owned();
            let _ = tx.send(Ok(BackendEvent::Resync { reason })).await;
        }
        let follower = Follower {
            links: self.links.clone(),
            bucket: self.bucket.clone(),
            selector: selector.clone(),
            prefix,
            next: after.map(|revision| revision.saturating_add(1)),
            headers_only: false,
            tx,
        };
        tokio::spawn(follower.run(messages));
        Ok(stream)
    }
}

#[async_trait]
impl WatchInvalidations for NatsStateStore {
    /// The watch's consumer with `headers_only`: the server sends each change's subject and
    /// headers, not its value, so a near cache costs no value traffic. Like the watch, it
    /// follows on after a lost subscription (reporting `Invalidation::All`).
    async fn invalidations(&self, prefix: &str) -> Result<InvalidationStream> {
        let link = self.links.get().await?;
        let messages = subscribe(&link, &self.bucket, prefix, DeliverPolicy::New, true).await?;
        let (tx, stream) = watch_channel(256);
        let follower = Follower {
            links: self.links.clone(),
            bucket: self.bucket.clone(),
            selector: KeySelector::Prefix(prefix.to_owned()),
            prefix: prefix.to_owned(),
            next: None,
            headers_only: true,
            tx,
        };
        tokio::spawn(follower.run(messages));
        // Its `Put`s carry no value; only their keys leave this function.
        Ok(invalidations_of(stream))
    }
}

/// The messages of an ordered push consumer.
type Messages = jetstream::consumer::push::Ordered;

/// The messages under `prefix` from `policy` on (without their payloads: `headers_only`).
async fn subscribe(
    link: &Link,
    bucket: &Bucket,
    prefix: &str,
    policy: DeliverPolicy,
    headers_only: bool,
) -> Result<Messages> {
    consumer(link, bucket, prefix, policy, headers_only)
        .await?
        .messages()
        .await
        .map_err(|e| Error::unavailable(STORE, e))
}

/// The task behind a watch: forwards the bucket's changes and, when its subscription ends
/// (the connection broke), says `Resync` and subscribes again after the last revision it saw.
struct Follower {
    links: Arc<Links>,
    bucket: Bucket,
    selector: KeySelector,
    prefix: String,
    /// The revision to follow on from: one past the last delivered.
    next: Option<u64>,
    /// Whether its messages come without their values (invalidations).
    headers_only: bool,
    tx: mpsc::Sender<Result<BackendEvent>>,
}

impl Follower {
    async fn run(mut self, mut messages: Messages) {
        loop {
            if !self.forward(&mut messages).await {
                return;
            }
            // Resync only once the new subscription runs: a watcher that re-reads on it then
            // misses nothing between its read and the events that follow.
            match self.resubscribe().await {
                Some(renewed) => messages = renewed,
                None => return,
            }
            let reason = "the watch lost its NATS subscription: changes may have been missed";
            let resync = BackendEvent::Resync {
                reason: reason.to_owned(),
            };
            if self.tx.send(Ok(resync)).await.is_err() {
                return;
            }
        }
    }

    /// Forwards events until the subscription ends (true) or the watcher is gone (false).
    async fn forward(&mut self, messages: &mut Messages) -> bool {
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                () = self.tx.closed() => return false,
            };
            let Some(Ok(message)) = message else {
                // An error of an ordered consumer (missed heartbeats, a deleted consumer) or
                // its end: it may have skipped messages, so it is not trusted further.
                return true;
            };
            if let Ok(info) = message.info() {
                self.next = Some(info.stream_sequence.saturating_add(1));
            }
            let Some(event) = change(&self.bucket.prefix, &message) else {
                continue;
            };
            if self.selector.selects(&event) && self.tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
    }

    /// A new subscription after the last delivered revision, retried until it works; `None`
    /// when the watcher is gone or the store closed.
    async fn resubscribe(&mut self) -> Option<Messages> {
        let mut backoff = Backoff::new(usize::MAX, Duration::MAX);
        loop {
            let policy = match self.next {
                Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
                None => DeliverPolicy::New,
            };
            let attempt = async {
                let link = self.links.get().await?;
                subscribe(&link, &self.bucket, &self.prefix, policy, self.headers_only).await
            };
            match attempt.await {
                Ok(messages) => return Some(messages),
                Err(err @ Error::Closed { .. }) => {
                    let _ = self.tx.send(Err(err)).await;
                    return None;
                }
                Err(err) => tracing::debug!("NATS watch cannot resubscribe yet: {err}"),
            }
            tokio::select! {
                _ = backoff.wait() => {}
                () = self.tx.closed() => return None,
            }
        }
    }
}
