//! Following which keys change: client tracking, as the `WatchInvalidations` extension.

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Value;
use state_store_core::{
    invalidation_channel, Error, Invalidation, InvalidationStream, Result, WatchInvalidations,
};

use crate::error::{map, STORE};
use crate::store::RedisStateStore;

/// The channel a RESP2 connection hears invalidations on.
const INVALIDATE: &str = "__redis__:invalidate";

/// Turns on broadcast tracking of the keys under `prefix` for `client`'s connection, reported
/// to that same connection, and subscribes it to the invalidations; returns once the server
/// has run all of it.
async fn track(client: &Client, prefix: &str) -> Result<()> {
    let id: i64 = client
        .custom(fred::cmd!("CLIENT"), vec!["ID"])
        .await
        .map_err(map)?;
    let id = id.to_string();
    let mut args = vec!["TRACKING", "ON", "REDIRECT", &id, "BCAST"];
    if !prefix.is_empty() {
        args.extend(["PREFIX", prefix]);
    }
    let _: Value = client
        .custom(fred::cmd!("CLIENT"), args)
        .await
        .map_err(map)?;
    // Redis drops invalidations for a RESP2 connection that has not subscribed yet.
    client.subscribe(INVALIDATE).await.map_err(map)?;
    crate::watch::settled(client).await
}

/// What an invalidation message says: the keys it names (those not UTF-8 are no key of
/// ours), or, for a nil message (`FLUSHALL`, `FLUSHDB`) or one it cannot read, everything.
fn invalidation(value: Value) -> Invalidation {
    match value {
        Value::Array(keys) => {
            Invalidation::Keys(keys.into_iter().filter_map(Value::into_string).collect())
        }
        Value::Null => Invalidation::All {
            reason: "the database was flushed".to_owned(),
        },
        key @ (Value::String(_) | Value::Bytes(_)) => {
            Invalidation::Keys(key.into_string().into_iter().collect())
        }
        _ => Invalidation::All {
            reason: "an invalidation message this client cannot read".to_owned(),
        },
    }
}

#[async_trait]
impl WatchInvalidations for RedisStateStore {
    /// Client tracking in broadcasting mode on a connection of its own, which hears its own
    /// invalidations (`CLIENT TRACKING ON REDIRECT <its id> BCAST PREFIX <prefix>`, then
    /// `SUBSCRIBE __redis__:invalidate`): the server names every key written, removed, expired
    /// or evicted under `prefix`, by any client. Unlike the watch it needs no keyspace
    /// notifications and reads nothing per change. Tracking belongs to a connection: after a
    /// reconnect it is turned on again and the stream reports [`Invalidation::All`]; a failed
    /// reconnect ends the stream with an error. Tracking covers every database of the server
    /// (a write to the same key in another one also invalidates). Redis 6 or later;
    /// standalone only (a cluster tracks per node); RESP2 only (a RESP3 client from
    /// [`RedisStateStore::from_client`] would get invalidations as pushes fred does not pass
    /// on without its `i-tracking` feature). That feature must stay off in the build: with it,
    /// fred hands RESP2 invalidation messages to its own tracking receiver, not to the
    /// subscription this follows.
    async fn invalidations(&self, prefix: &str) -> Result<InvalidationStream> {
        if self.clustered {
            return Err(Error::unsupported(STORE, "client tracking on a cluster"));
        }
        if self.client.protocol_version() != fred::types::RespVersion::RESP2 {
            return Err(Error::unsupported(STORE, "client tracking over RESP3"));
        }
        let subscriber = self.client.clone_new();
        let mut messages = subscriber.message_rx();
        let mut errors = subscriber.error_rx();
        subscriber.init().await.map_err(map)?;
        // After the first connection, which also counts as a "reconnection".
        let mut reconnects = subscriber.reconnect_rx();
        if let Err(err) = track(&subscriber, prefix).await {
            let _ = subscriber.quit().await;
            return Err(err);
        }
        let prefix = prefix.to_owned();
        let mut shutdown = self.shutdown.subscribe();
        let (tx, stream) = invalidation_channel(256);
        tokio::spawn(async move {
            loop {
                let report = tokio::select! {
                    message = messages.recv() => match message {
                        Ok(message) if message.channel == INVALIDATE => Ok(invalidation(message.value)),
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Ok(Invalidation::All {
                            reason: format!("{n} invalidation messages were dropped"),
                        }),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    failed = errors.recv() => match failed {
                        // Reconnecting failed: what the server reports meanwhile is lost.
                        Ok((err, _)) => Err(map(err)),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    reconnected = reconnects.recv() => {
                        if reconnected.is_err() {
                            break;
                        }
                        track(&subscriber, &prefix).await.map(|()| Invalidation::All {
                            reason: "reconnected to Redis: invalidations may have been missed".to_owned(),
                        })
                    }
                    () = tx.closed() => break,
                    () = crate::watch::closing(&mut shutdown) => break,
                };
                let failed = report.is_err();
                if tx.send(report).await.is_err() || failed {
                    break;
                }
            }
            let _ = subscriber.quit().await;
        });
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_name_keys_or_everything() {
        let keys = Value::Array(vec![
            Value::from("a"),
            Value::Bytes(vec![0xff, 0xfe].into()),
            Value::from("b"),
        ]);
        assert_eq!(
            invalidation(keys),
            Invalidation::Keys(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(matches!(
            invalidation(Value::Null),
            Invalidation::All { .. }
        ));
        assert_eq!(
            invalidation(Value::from("k")),
            Invalidation::Keys(vec!["k".to_owned()])
        );
        assert!(matches!(
            invalidation(Value::Queued),
            Invalidation::All { .. }
        ));
    }
}
