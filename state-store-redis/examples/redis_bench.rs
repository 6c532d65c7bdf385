//! Adapter vs raw fred, same process, same server, same JSON work (both sides of `get_state`
//! build the same name → value map).
//!
//! ```text
//! cargo run --release -p state-store-redis --example redis_bench
//! ```
//!
//! Uses `STATE_STORE_TEST_REDIS_URL` if set, else spawns `redis-server` on loopback.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use std::collections::HashMap;
use std::sync::Arc;

use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::PerformanceConfig;
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
    let raw_client = |performance| {
        let config = fred::types::config::Config::from_url(&url);
        async move {
            let raw = fred::clients::Client::new(config?, performance, None, None);
            raw.init().await?;
            Ok::<_, Box<dyn std::error::Error>>(Arc::new(raw))
        }
    };
    // fred as it comes (no request timeout), and fred with the timeout the adapter sets on
    // every request by default, so the cost of that timer shows on its own.
    let raw = raw_client(None).await?;
    let timed = raw_client(Some(PerformanceConfig {
        default_command_timeout: state_store_core::Timeouts::default().request,
        ..PerformanceConfig::default()
    }))
    .await?;
    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        store.set_state(&key(i), &value).await?;
    }
    let names10: Vec<String> = (0..10).map(key).collect();

    let counter = |i: u64| format!("bench:c{}", i % 10);
    let get_with = |tasks,
                    raw: &Arc<fred::clients::Client>,
                    name: &str,
                    store: &StateStore,
                    key: fn(u64) -> String| {
        let r = raw.clone();
        let raw_get = op(move |i| {
            let r = r.clone();
            async move {
                let v: Option<fred::bytes::Bytes> = r.get(key(i)).await.expect("get");
                let _: Value = serde_json::from_slice(&v.expect("present")).expect("json");
            }
        });
        Case::new(name, tasks, adapter::get(store, key), raw_get)
    };
    let get = |tasks, raw: &Arc<fred::clients::Client>, name: &str| {
        get_with(tasks, raw, name, &store, key)
    };
    // One hot name read again and again: the near cache (in process, invalidated by the
    // server's client tracking) against a raw GET's round trip, and against decoding the
    // value alone (the floor of any read that returns it decoded).
    let near = bench::near_cached(&store);
    let hot = |_| key(0);
    let set = |tasks, raw: &Arc<fred::clients::Client>, name: &str| {
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
        Case::new(name, tasks, adapter::set(&store, key, &value), raw_set)
    };
    let (r, n) = (raw.clone(), names10.clone());
    let raw_mget = op(move |_| {
        let (r, n) = (r.clone(), n.clone());
        async move {
            let vs: Vec<Option<fred::bytes::Bytes>> = r.mget(n.clone()).await.expect("mget");
            // The same result as `get_state`: a map from each name to its value or `None`.
            let _state: HashMap<String, Option<Value>> = n
                .into_iter()
                .zip(vs)
                .map(|(name, v)| (name, v.map(|v| serde_json::from_slice(&v).expect("json"))))
                .collect();
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
    let same_timeout = "raw with the adapter's request timeout";
    let cases = [
        get_with(1, &raw, "hot get: near cache vs raw", &near, hot),
        get_with(64, &raw, "hot get: near cache vs raw", &near, hot),
        Case::new(
            "hot get: near cache vs decoding alone",
            1,
            adapter::get(&near, hot),
            bench::decode_only(&value),
        ),
        Case::new(
            "hot get: near cache vs decoding alone",
            64,
            adapter::get(&near, hot),
            bench::decode_only(&value),
        ),
        get(1, &raw, "get"),
        set(1, &raw, "set"),
        get(64, &raw, "get"),
        set(64, &raw, "set"),
        get(64, &timed, &format!("get, {same_timeout}")),
        set(64, &timed, &format!("set, {same_timeout}")),
        get_state,
        vs_purista,
        increment,
    ];
    bench::run("RedisStateStore vs raw fred", &cases).await;
    store.destroy().await?;
    raw.quit().await?;
    timed.quit().await?;
    Ok(())
}
