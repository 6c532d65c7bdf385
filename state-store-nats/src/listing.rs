//! Listing keys: pages by stream sequence in a bucket of history 1, else every key's last
//! message sorted; and the consumers listings and watches read through.

use async_nats::jetstream;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_trait::async_trait;
use futures_util::StreamExt;
use state_store_core::{Error, KeyPage, ListKeys, Result, PREFIX_SEPARATOR};
use std::time::Duration;

use crate::error::STORE;
use crate::link::Link;
use crate::message::{headers_live, now_ms};
use crate::store::{Bucket, NatsStateStore};

#[async_trait]
impl ListKeys for NatsStateStore {
    /// An ordered consumer on the keys below `prefix`'s whole segments (a server-side subject
    /// filter, `_E_.tenant.sessions.>`), keys read back and matched exactly here. In a bucket
    /// of history 1 (this crate's, and PURISTA's default) a page starts after the stream
    /// sequence the last one ended at, so each costs its own keys: keys come in the order they
    /// were last written, and one written during a listing can come again (`list_all`
    /// deduplicates). With more history every page reads each key's last message and sorts.
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        if self.single_revision {
            self.list_by_sequence(prefix, after, limit).await
        } else {
            self.list_sorted(prefix, after, limit).await
        }
    }
}

impl NatsStateStore {
    /// A page from the stream sequence after `after` (`@<seq>`, what the last page gave):
    /// a pull consumer fetches what the page needs, so the server sends about that many.
    async fn list_by_sequence(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage> {
        let link = self.links.get().await?;
        let (start, stop) = match after {
            // Where the listing ends, fixed at its start: past the stream's last message by
            // as many messages as the stream held. A key rewritten during the listing moves
            // to the stream's end and is still found there, unless more than that were
            // written meanwhile; keys rewritten over and over cannot keep it going forever.
            None => {
                let info = link
                    .stream
                    .get_info()
                    .await
                    .map_err(|e| Error::unavailable(STORE, e))?;
                let stop = info
                    .state
                    .last_sequence
                    .saturating_add(info.state.messages.max(1000));
                (1, stop)
            }
            Some(cursor) => cursor
                .strip_prefix('@')
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(seq, stop)| Some((seq.parse::<u64>().ok()?, stop.parse().ok()?)))
                .map(|(seq, stop)| (seq.saturating_add(1), stop))
                .ok_or_else(|| Error::invalid_key(prefix, "not a cursor this store gave"))?,
        };
        if start > stop {
            return Ok(KeyPage::new(Vec::new(), None));
        }
        let consumer = link
            .stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: format!("{}{}", self.bucket.prefix, subject_filter(prefix)),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: jetstream::consumer::AckPolicy::None,
                headers_only: true,
                memory_storage: true,
                inactive_threshold: Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::unavailable(STORE, e))?;
        let mut keys = Vec::new();
        // Removal markers are messages too: past this many a page ends, fewer keys or none.
        let most_read = limit.saturating_mul(4).max(1000);
        let mut read = 0;
        let now = now_ms();
        // Messages after the last one read. The consumer's count at its creation is exact;
        // the count each message carries is the consumer's running tally, which falls short
        // while keys ahead of it are rewritten (a rewrite removes the old message), so it
        // can say 0 with messages still to come: a hint to look, never the end by itself.
        let mut pending = consumer.cached_info().num_pending;
        let next = loop {
            if pending == 0 {
                break None;
            }
            let want = limit
                .saturating_sub(keys.len())
                .min(most_read.saturating_sub(read))
                .max(1);
            let mut last_seq = 0;
            for message in self.fetch_batch(&consumer, want).await? {
                let info = message
                    .info()
                    .map_err(|e| Error::backend(STORE, e.to_string()))?;
                (last_seq, pending) = (info.stream_sequence, info.pending);
                read += 1;
                let live = message
                    .headers
                    .as_ref()
                    .is_none_or(|h| headers_live(h, info.published, now));
                if let Some(key) = key_of(&self.bucket.prefix, &message.subject) {
                    if live && key.starts_with(prefix) {
                        keys.push(key);
                    }
                }
            }
            if last_seq >= stop {
                // The end fixed when the listing started.
                break None;
            }
            let cursor = format!("@{last_seq}/{stop}");
            if pending == 0 {
                // The end only if nothing was written after the last message read; else the
                // next page's consumer counts afresh what is left.
                let info = link
                    .stream
                    .get_info()
                    .await
                    .map_err(|e| Error::unavailable(STORE, e))?;
                break (info.state.last_sequence > last_seq).then_some(cursor);
            }
            if keys.len() >= limit || read >= most_read {
                break Some(cursor);
            }
        };
        // The consumer would linger until its inactivity threshold: remove it now, without
        // making the caller wait for that.
        let (stream, name) = (link.stream.clone(), consumer.cached_info().name.clone());
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        Ok(KeyPage::new(keys, next))
    }

    /// Up to `want` messages of a listing's consumer, which has some. In a cluster a consumer
    /// just created may not answer yet (no responders) or answer with nothing: tried again,
    /// within the request timeout.
    async fn fetch_batch(
        &self,
        consumer: &jetstream::consumer::PullConsumer,
        want: usize,
    ) -> Result<Vec<jetstream::Message>> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let attempt = async {
                let mut batch = consumer
                    .fetch()
                    .max_messages(want)
                    .messages()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut messages = Vec::new();
                while let Some(message) = batch.next().await {
                    match message {
                        Ok(message) => messages.push(message),
                        // What arrived is kept: the consumer does not send it again.
                        Err(_) if !messages.is_empty() => break,
                        Err(err) => return Err(err.to_string()),
                    }
                }
                Ok(messages)
            };
            let outcome = tokio::time::timeout_at(deadline, attempt)
                .await
                .map_err(|e| Error::unavailable(STORE, e))?;
            match outcome {
                Ok(messages) if !messages.is_empty() => return Ok(messages),
                Ok(_) => {}
                Err(err) if err.contains("503") || err.contains("no responders") => {}
                Err(err) => return Err(Error::unavailable(STORE, err)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(
                    STORE,
                    "the listing's consumer sent nothing in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A page of the keys after `after` in byte order: every page reads each key's last
    /// message (headers only).
    async fn list_sorted(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage> {
        let link = self.links.get().await?;
        let consumer = consumer(
            &link,
            &self.bucket,
            prefix,
            DeliverPolicy::LastPerSubject,
            true,
        )
        .await?;
        let mut keys = Vec::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| Error::unavailable(STORE, e))?;
            let now = now_ms();
            loop {
                let message = self.next_message(&mut messages).await?;
                let Some(message) = message else { break };
                let info = message
                    .info()
                    .map_err(|e| Error::backend(STORE, e.to_string()))?;
                let (pending, published) = (info.pending, info.published);
                let live = message
                    .headers
                    .as_ref()
                    .is_none_or(|h| headers_live(h, published, now));
                if let Some(key) = key_of(&self.bucket.prefix, &message.subject) {
                    if live && key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                        keys.push(key);
                    }
                }
                if pending == 0 {
                    break;
                }
            }
        }
        keys.sort_unstable();
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next = more.then(|| keys.last().cloned()).flatten();
        Ok(KeyPage::new(keys, next))
    }

    /// The listing consumer's next message, within the request timeout; `None` when it ended.
    async fn next_message(
        &self,
        messages: &mut jetstream::consumer::push::Ordered,
    ) -> Result<Option<jetstream::Message>> {
        match tokio::time::timeout(self.request_timeout, messages.next()).await {
            Ok(Some(Ok(message))) => Ok(Some(message)),
            Ok(Some(Err(err))) => Err(Error::unavailable(STORE, err)),
            Ok(None) => Ok(None),
            Err(elapsed) => Err(Error::unavailable(STORE, elapsed)),
        }
    }
}

/// An ordered push consumer on the keys under `prefix`'s whole `:` segments.
pub(crate) async fn consumer(
    link: &Link,
    bucket: &Bucket,
    prefix: &str,
    deliver_policy: DeliverPolicy,
    headers_only: bool,
) -> Result<jetstream::consumer::Consumer<OrderedConfig>> {
    link.stream
        .create_consumer(OrderedConfig {
            deliver_subject: link.client().new_inbox(),
            filter_subject: format!("{}{}", bucket.prefix, subject_filter(prefix)),
            headers_only,
            replay_policy: ReplayPolicy::Instant,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::unavailable(STORE, e))
}

/// The subject filter of the keys under `prefix`'s whole `:` segments (`_E_.tenant.>`).
fn subject_filter(prefix: &str) -> String {
    match prefix.rfind(PREFIX_SEPARATOR) {
        Some(end) => crate::key::prefix_filter(&prefix[..end]),
        None => ">".to_owned(),
    }
}

/// The stored key of a message subject in the bucket with subject prefix `kv_prefix`.
pub(crate) fn key_of(kv_prefix: &str, subject: &str) -> Option<String> {
    crate::key::decode(subject.strip_prefix(kv_prefix)?)
}
