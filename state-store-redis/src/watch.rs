//! Following changes: keyspace notifications, as the `WatchKeys` extension.

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use state_store_core::{
    watch_channel, BackendEvent, Error, KeySelector, RemoveCause, Result, WatchKeys, WatchStart,
    WatchStream, WatchSupport,
};

use crate::error::{map, STORE};
use crate::store::{digest, glob_escape, RedisStateStore};

impl RedisStateStore {
    /// Refuses to watch when the server (as far as `CONFIG GET` tells) publishes no keyspace
    /// notifications for writes, removals and expiry; a server that denies `CONFIG` is trusted.
    pub(crate) async fn check_notifications(&self) -> Result<()> {
        match notification_flags(&self.client).await {
            Some(flags) if !notifies_enough(&flags) => Err(Error::config(format!(
                "watching needs keyspace notifications: the server has notify-keyspace-events \
                 {flags:?}; set it to include K$gx (CONFIG SET notify-keyspace-events K$gx, or \
                 RedisConfig::with_keyspace_notifications)"
            ))),
            _ => Ok(()),
        }
    }

    /// What a watch can deliver on this server: nothing on a cluster, or when the server
    /// publishes no keyspace notifications (turned on first when `enable` asks, and `CONFIG`
    /// allows).
    pub(crate) async fn probe_watch(client: &Client, enable: bool) -> WatchSupport {
        if client.is_clustered() {
            return WatchSupport::None;
        }
        let Some(flags) = notification_flags(client).await else {
            // `CONFIG` refused (managed services often rename it): trust the server.
            return WatchSupport::Lossy;
        };
        if notifies_enough(&flags) {
            return WatchSupport::Lossy;
        }
        if enable {
            let mut wanted = flags.clone();
            wanted.extend("K$gx".chars().filter(|c| !flags.contains(*c)));
            let set: std::result::Result<(), _> = client
                .custom(
                    fred::cmd!("CONFIG"),
                    vec!["SET", "notify-keyspace-events", &wanted],
                )
                .await;
            if set.is_ok() {
                return WatchSupport::Lossy;
            }
        }
        WatchSupport::None
    }
}

/// The server's `notify-keyspace-events`, or `None` when it refuses `CONFIG GET`.
async fn notification_flags(client: &Client) -> Option<String> {
    let reply: Vec<String> = client
        .custom(fred::cmd!("CONFIG"), vec!["GET", "notify-keyspace-events"])
        .await
        .ok()?;
    Some(reply.get(1).cloned().unwrap_or_default())
}

/// Whether `flags` publish keyspace events (`K`) for writes, removals and expiry (`$gx`, or
/// `A` for all).
fn notifies_enough(flags: &str) -> bool {
    flags.contains('K')
        && (flags.contains('A')
            || (flags.contains('$') && flags.contains('g') && flags.contains('x')))
}

/// Returns once the server has run every command sent before on `client`'s connection: fred
/// answers `SUBSCRIBE` and `PSUBSCRIBE` once they are sent, and the server publishes nothing
/// to a connection before it has run them. A `PING` behind them is answered after.
pub(crate) async fn settled(client: &Client) -> Result<()> {
    let _: fred::types::Value = client
        .custom(fred::cmd!("PING"), Vec::<String>::new())
        .await
        .map_err(map)?;
    Ok(())
}

/// Completes once the store is closed (or gone).
pub(crate) async fn closing(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|closed| *closed).await.map(drop);
}

/// A keyspace notification as a change; `None` for operations that change no value (an
/// `EXPIRE`), keys that are not UTF-8, and writes whose key is gone by the time it is read
/// (its removal follows).
async fn keyspace_change(
    client: &Client,
    event: fred::types::KeyspaceEvent,
) -> Result<Option<BackendEvent>> {
    let Some(key) = event.key.as_str().map(str::to_owned) else {
        return Ok(None);
    };
    let cause = match event.operation.as_str() {
        "del" | "unlink" | "rename_from" | "move_from" => RemoveCause::Removed,
        "expired" | "evicted" => RemoveCause::Expired,
        "set" | "incrby" | "incrbyfloat" | "append" | "setrange" | "rename_to" | "restore"
        | "copy_to" | "move_to" => {
            let value: Option<fred::bytes::Bytes> = client.get(key.as_str()).await.map_err(map)?;
            return Ok(value.map(|value| {
                let value = value.to_vec();
                let version = digest(&value);
                BackendEvent::Put {
                    key,
                    value,
                    version,
                }
            }));
        }
        _ => return Ok(None),
    };
    Ok(Some(BackendEvent::Removed {
        key,
        cause,
        version: None,
    }))
}

#[async_trait]
impl WatchKeys for RedisStateStore {
    /// Keyspace notifications on a connection of its own (`PSUBSCRIBE
    /// __keyspace@<db>__:<prefix>*`): lossy — a reconnect or a slow consumer gives `Resync`,
    /// and a `Put` carries the value read when the notification arrives (a later one, if the
    /// key changed again meanwhile). The server must publish them: `notify-keyspace-events`
    /// with `K` and `$gx` (or `A`). Standalone only: a cluster publishes per node.
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        if self.clustered {
            return Err(Error::unsupported(STORE, "watching changes on a cluster"));
        }
        if !matches!(start, WatchStart::Now) {
            return Err(Error::unsupported(STORE, "resuming a watch from a version"));
        }
        self.check_notifications().await?;
        let db = self.client.client_config().database.unwrap_or(0);
        let pattern = match selector {
            KeySelector::Key(key) => format!("__keyspace@{db}__:{}", glob_escape(key)),
            KeySelector::Prefix(prefix) => format!("__keyspace@{db}__:{}*", glob_escape(prefix)),
            _ => return Err(Error::unsupported(STORE, "this selector")),
        };
        let subscriber = self.client.clone_new();
        let mut events = subscriber.keyspace_event_rx();
        subscriber.init().await.map_err(map)?;
        // After the first connection, which also counts as a "reconnection".
        let mut reconnects = subscriber.reconnect_rx();
        let subscribed = match subscriber.psubscribe(pattern.clone()).await {
            Ok(()) => settled(&subscriber).await,
            Err(err) => Err(map(err)),
        };
        if let Err(err) = subscribed {
            let _ = subscriber.quit().await;
            return Err(err);
        }
        let mut shutdown = self.shutdown.subscribe();
        let (tx, stream) = watch_channel(256);
        let reader = self.client.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = events.recv() => {
                        let change = match event {
                            Ok(event) => match keyspace_change(&reader, event).await {
                                Ok(Some(change)) => Ok(change),
                                Ok(None) => continue,
                                Err(err) => Err(err),
                            },
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                Ok(BackendEvent::Resync { reason: format!("{n} notifications were dropped") })
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        };
                        if tx.send(change).await.is_err() {
                            break;
                        }
                    }
                    reconnected = reconnects.recv() => {
                        if reconnected.is_err() {
                            break;
                        }
                        // Notifications published while disconnected are gone.
                        if subscriber.psubscribe(pattern.clone()).await.is_ok() {
                            let _ = settled(&subscriber).await;
                        }
                        let reason = "reconnected to Redis: notifications may have been missed".to_owned();
                        if tx.send(Ok(BackendEvent::Resync { reason })).await.is_err() {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                    () = closing(&mut shutdown) => break,
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
    fn notifications_need_keyspace_events_for_writes_removals_and_expiry() {
        for enough in ["K$gx", "KEA", "AK", "xgK$E"] {
            assert!(notifies_enough(enough), "{enough}");
        }
        for short in ["", "E$gx", "K$g", "Kx", "KEl"] {
            assert!(!notifies_enough(short), "{short}");
        }
    }
}
