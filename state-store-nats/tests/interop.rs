//! Wire compatibility with PURISTA's `@purista/nats-state-store`: bucket
//! `purista-state-store`, key = state name (verbatim when NATS allows it), value = JSON bytes,
//! a removed key reads as missing. Raw async-nats plays the PURISTA service here.

use serde_json::json;
use state_store_conformance::harness::nats::nats_url;
use state_store_nats::{async_nats, NatsConfig, NatsStateStore, DEFAULT_BUCKET};

#[tokio::test]
async fn purista_and_rust_read_each_other() {
    let Some(url) = nats_url() else { return };
    let store = NatsStateStore::connect(NatsConfig::new(url.clone()))
        .await
        .expect("connect")
        .into_store();
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
