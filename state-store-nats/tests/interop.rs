//! Wire compatibility with PURISTA's `@purista/nats-state-store`: bucket
//! `purista-state-store`, key = state name (verbatim when NATS allows it), value = JSON bytes,
//! a removed key reads as missing. Raw async-nats plays the PURISTA service here.

use std::time::Duration;

use serde_json::json;
use state_store_core::{Error, SetOptions, StateStore};
use state_store_nats::{async_nats, NatsConfig, NatsStateStore, DEFAULT_BUCKET};
use state_store_testkit::harness::nats::nats_url;

#[tokio::test]
async fn purista_and_rust_read_each_other() {
    let Some(url) = nats_url() else { return };
    let store = StateStore::from(
        NatsStateStore::connect(NatsConfig::new(url.clone()))
            .await
            .expect("connect"),
    );
    let client = async_nats::connect(url).await.expect("raw connect");
    let kv = async_nats::jetstream::new(client)
        .get_key_value(DEFAULT_BUCKET)
        .await
        .expect("PURISTA's bucket");
    let name = format!("interop-{}", std::process::id());

    // PURISTA writes JSON bytes under the plain name; Rust reads them.
    kv.put(&name, r#"{"user":"grace"}"#.into())
        .await
        .expect("raw put");
    assert_eq!(
        store.get_state(&[&name]).await.expect("get")[&name],
        Some(json!({ "user": "grace" }))
    );

    // Rust writes; PURISTA reads JSON text under the same plain key.
    store
        .set_state(&name, &json!({ "user": "ada", "n": 1 }))
        .await
        .expect("set");
    let raw = kv.get(&name).await.expect("raw get").expect("present");
    let parsed: serde_json::Value = serde_json::from_slice(&raw).expect("JSON bytes");
    assert_eq!(parsed, json!({ "user": "ada", "n": 1 }));

    // Rust removes; PURISTA sees it missing.
    store.remove_state(&name).await.expect("remove");
    assert_eq!(kv.get(&name).await.expect("raw get"), None);

    // A name NATS cannot hold still works, under its escaped key.
    store
        .set_state("session:abc", &json!(1))
        .await
        .expect("set");
    assert!(kv.get("_E_.session.abc").await.expect("raw get").is_some());
    store.remove_state("session:abc").await.expect("remove");
    store.destroy().await.expect("destroy");
}

/// PURISTA creates its bucket without per-message TTL: TTL writes are refused there (never
/// stored forever), until the store is opened with `enable_message_ttl`, which turns it on
/// for the existing bucket; PURISTA's plain values stay readable.
#[tokio::test]
async fn a_bucket_made_by_purista_gets_ttl_when_asked() {
    let Some(url) = nats_url() else { return };
    let client = async_nats::connect(url.clone()).await.expect("raw connect");
    let js = async_nats::jetstream::new(client);
    let bucket = format!("purista-made-{}", std::process::id());
    // What nats.js creates with client defaults: history 1, no limit markers.
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: bucket.clone(),
            history: 1,
            ..Default::default()
        })
        .await
        .expect("create bucket as PURISTA does");
    kv.put("plain", "1".into()).await.expect("raw put");

    let config = NatsConfig::new(url).with_bucket(bucket.as_str());
    let store = StateStore::from(
        NatsStateStore::connect(config.clone())
            .await
            .expect("connect"),
    );
    assert!(!store.capabilities().ttl);
    let ttl = SetOptions::new().ttl(Duration::from_secs(1));
    let err = store.set_with("k", &json!(1), ttl.clone()).await;
    assert!(matches!(err, Err(Error::Unsupported { .. })), "{err:?}");
    assert_eq!(store.get_state(&["k"]).await.expect("get")["k"], None);

    let store = StateStore::from(
        NatsStateStore::connect(config.with_message_ttl(true))
            .await
            .expect("connectenablingTTL"),
    );
    assert!(store.capabilities().ttl);
    store
        .set_with("k", &json!(1), ttl)
        .await
        .expect("TTL write");
    assert_eq!(store.get::<i32>("plain").await.expect("get"), Some(1));
    let mut gone = false;
    for _ in 0..100 {
        if store.get::<i32>("k").await.expect("get").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the TTL'd value never expired");
    js.delete_key_value(&bucket).await.expect("delete bucket");
}
