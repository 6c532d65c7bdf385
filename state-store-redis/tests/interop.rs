//! Wire compatibility with PURISTA's `@purista/redis-state-store`: the key is the state name,
//! the value a plain string of JSON text. Raw fred plays the PURISTA service here.

use fred::interfaces::{ClientLike, KeysInterface};
use serde_json::json;
use state_store_core::{SetMode, SetOptions, StateStore};
use state_store_redis::{fred, RedisConfig, RedisStateStore};
use state_store_testkit::harness::redis::redis_url;

#[tokio::test]
async fn purista_and_rust_read_each_other_and_cas_works_on_foreign_writes() {
    let Some(url) = redis_url() else { return };
    let raw = fred::clients::Client::new(
        fred::types::config::Config::from_url(&url).expect("url"),
        None,
        None,
        None,
    );
    raw.init().await.expect("raw connect");
    let store = StateStore::from(
        RedisStateStore::connect(RedisConfig::from_url(&url).expect("url"))
            .await
            .expect("connect"),
    );
    let name = format!("interop:{}", std::process::id());

    // Rust writes, PURISTA reads: GET name, JSON.parse.
    store
        .set_state(&name, &json!({ "user": "ada", "n": 1 }))
        .await
        .expect("set");
    let raw_value: String = raw.get(&name).await.expect("raw get");
    let parsed: serde_json::Value = serde_json::from_str(&raw_value).expect("plain JSON text");
    assert_eq!(parsed, json!({ "user": "ada", "n": 1 }));

    // PURISTA writes (SET name JSON.stringify(value)), Rust reads.
    raw.set::<(), _, _>(&name, r#"{"user":"grace","n":2}"#, None, None, false)
        .await
        .expect("raw set");
    let entry = store.get_entry(&name).await.expect("get").expect("present");
    assert_eq!(entry.value, json!({ "user": "grace", "n": 2 }));

    // That foreign write is a valid base for compare-and-set...
    let update = SetOptions::new().mode(SetMode::Update(entry.version.clone()));
    store
        .set_with(&name, &json!({ "n": 3 }), update.clone())
        .await
        .expect("cas");
    // ...and a foreign write in between makes the stale version conflict.
    let entry = store.get_entry(&name).await.expect("get").expect("present");
    raw.set::<(), _, _>(&name, r#"{"n":99}"#, None, None, false)
        .await
        .expect("raw set");
    let stale = SetOptions::new().mode(SetMode::Update(entry.version));
    let err = store
        .set_with(&name, &json!({ "n": 4 }), stale)
        .await
        .expect_err("stale");
    assert!(err.is_conflict());
    let raw_value: String = raw.get(&name).await.expect("raw get");
    assert_eq!(raw_value, r#"{"n":99}"#);

    // A PURISTA counter is a JSON number: INCRBY works on it.
    raw.set::<(), _, _>(format!("{name}:count"), "41", None, None, false)
        .await
        .expect("raw set");
    assert_eq!(
        store
            .increment(&format!("{name}:count"), 1, None)
            .await
            .expect("incr"),
        42
    );

    store.remove_state(&name).await.expect("remove");
    let gone: Option<String> = raw.get(&name).await.expect("raw get");
    assert_eq!(gone, None);
    let _ = raw.del::<i64, _>(format!("{name}:count")).await;
    raw.quit().await.expect("quit");
    store.destroy().await.expect("destroy");
}
