//! Adapter vs raw fred, same process, same server, same JSON work.
//!
//! ```text
//! cargo run --release -p state-store-redis --example redis_bench
//! ```
//!
//! Uses `STATE_STORE_TEST_REDIS_URL` if set, else spawns `redis-server` on loopback.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use std::sync::Arc;

use fred::interfaces::{ClientLike, KeysInterface};
use serde_json::{json, Value};
use state_store_core::StateStore;
use state_store_redis::{fred, RedisConfig, RedisStateStore};
use state_store_testkit::bench::{self, adapter, op, Case};
use state_store_testkit::harness::redis::redis_url;

const KEYS: u64 = 1000;

fn key(i: u64) -> String {
    format!("bench:k{}", i % KEYS)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = redis_url().ok_or("no redis-server available")?;
    let store = StateStore::from(RedisStateStore::connect(RedisConfig::from_url(&url)?).await?);
    let raw = fred::clients::Client::new(
        fred::types::config::Config::from_url(&url)?,
        None,
        None,
        None,
    );
    raw.init().await?;
    let raw = Arc::new(raw);
    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        store.set_state(&key(i), &value).await?;
    }
    let names10: Vec<String> = (0..10).map(key).collect();

    let counter = |i: u64| format!("bench:c{}", i % 10);
    let get = |tasks| {
        let r = raw.clone();
        let raw_get = op(move |i| {
            let r = r.clone();
            async move {
                let v: Option<fred::bytes::Bytes> = r.get(key(i)).await.expect("get");
                let _: Value = serde_json::from_slice(&v.expect("present")).expect("json");
            }
        });
        Case::new("get", tasks, adapter::get(&store, key), raw_get)
    };
    let set = |tasks| {
        let (r, v) = (raw.clone(), value.clone());
        let raw_set = op(move |i| {
            let (r, v) = (r.clone(), v.clone());
            async move {
                let text = serde_json::to_string(&v).expect("json");
                r.set::<(), _, _>(key(i), text, None, None, false)
                    .await
                    .expect("set");
            }
        });
        Case::new("set", tasks, adapter::set(&store, key, &value), raw_set)
    };
    let (r, n) = (raw.clone(), names10.clone());
    let raw_mget = op(move |_| {
        let (r, n) = (r.clone(), n.clone());
        async move {
            let vs: Vec<Option<fred::bytes::Bytes>> = r.mget(n).await.expect("mget");
            for v in vs.into_iter().flatten() {
                let _: Value = serde_json::from_slice(&v).expect("json");
            }
        }
    });
    let get_state = Case::new(
        "get_state ×10 vs raw MGET",
        1,
        adapter::get_state(&store, &names10),
        raw_mget,
    );
    let (r, n) = (raw.clone(), names10.clone());
    let purista = op(move |_| {
        let (r, n) = (r.clone(), n.clone());
        async move {
            for name in n {
                let v: Option<fred::bytes::Bytes> = r.get(name).await.expect("get");
                let _: Value = serde_json::from_slice(&v.expect("present")).expect("json");
            }
        }
    });
    let vs_purista = Case::new(
        "get_state ×10 vs 10 sequential GETs (PURISTA)",
        1,
        adapter::get_state(&store, &names10),
        purista,
    );
    let r = raw.clone();
    let raw_incr = op(move |i| {
        let r = r.clone();
        async move {
            let _: i64 = r.incr_by(counter(i), 1).await.expect("incr");
        }
    });
    let increment = Case::new(
        "increment",
        1,
        adapter::increment(&store, counter),
        raw_incr,
    );
    let cases = [
        get(1),
        set(1),
        get(64),
        set(64),
        get_state,
        vs_purista,
        increment,
    ];
    bench::run("RedisStateStore vs raw fred", &cases).await;
    store.destroy().await?;
    raw.quit().await?;
    Ok(())
}
