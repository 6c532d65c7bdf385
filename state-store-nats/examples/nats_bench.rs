//! Adapter vs raw async-nats KV, same process, same server, same JSON work.
//!
//! ```text
//! cargo run --release -p state-store-nats --example nats_bench
//! ```
//!
//! Uses `STATE_STORE_TEST_NATS_URL` if set, else spawns `nats-server -js` on loopback.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use serde_json::{json, Value};
use state_store_core::StateStore;
use state_store_nats::{async_nats, NatsConfig, NatsStateStore};
use state_store_testkit::bench::{self, adapter, op, Case};
use state_store_testkit::harness::nats::nats_url;

const KEYS: u64 = 1000;

fn key(i: u64) -> String {
    format!("bench.k{}", i % KEYS)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = nats_url().ok_or("no nats-server available")?;
    let config = NatsConfig::new(url.clone()).with_bucket("bench");
    let store = StateStore::from(NatsStateStore::connect(config).await?);
    let client = async_nats::connect(url).await?;
    let kv = async_nats::jetstream::new(client)
        .get_key_value("bench")
        .await?;
    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        store.set_state(&key(i), &value).await?;
    }
    let names10: Vec<String> = (0..10).map(key).collect();

    let get = |tasks, name: &str, store: &StateStore, key: fn(u64) -> String| {
        let r = kv.clone();
        let raw_get = op(move |i| {
            let r = r.clone();
            async move {
                let v = r.get(key(i)).await.expect("get").expect("present");
                let _: Value = serde_json::from_slice(&v).expect("json");
            }
        });
        Case::new(name, tasks, adapter::get(store, key), raw_get)
    };
    let set = |tasks| {
        let (r, v) = (kv.clone(), value.clone());
        let raw_put = op(move |i| {
            let (r, v) = (r.clone(), v.clone());
            async move {
                let bytes = serde_json::to_vec(&v).expect("json");
                r.put(key(i), bytes.into()).await.expect("put");
            }
        });
        Case::new("set", tasks, adapter::set(&store, key, &value), raw_put)
    };
    let (r, n) = (kv.clone(), names10.clone());
    let sequential = op(move |_| {
        let (r, n) = (r.clone(), n.clone());
        async move {
            for name in n {
                let v = r.get(name).await.expect("get").expect("present");
                let _: Value = serde_json::from_slice(&v).expect("json");
            }
        }
    });
    let get_state = Case::new(
        "get_state ×10 vs 10 sequential gets",
        1,
        adapter::get_state(&store, &names10),
        sequential,
    );
    let r = kv.clone();
    let raw_increment = op(move |i| {
        let r = r.clone();
        async move {
            let name = format!("bench.r{}", i % 10);
            let entry = r.entry(&name).await.expect("entry");
            match entry.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put) {
                None => {
                    r.put(&name, "1".into()).await.expect("put");
                }
                Some(e) => {
                    let n: i64 = serde_json::from_slice(&e.value).expect("int");
                    r.update(&name, (n + 1).to_string().into(), e.revision)
                        .await
                        .expect("update");
                }
            }
        }
    });
    let counter = |i: u64| format!("bench.c{}", i % 10);
    let increment = Case::new(
        "increment vs raw get+update",
        1,
        adapter::increment(&store, counter),
        raw_increment,
    );
    // One hot name read again and again: the near cache (in process, invalidated by the
    // server's change stream) against the raw client's round trip.
    let near = bench::near_cached(&store);
    let hot = |_| key(0);
    let cases = [
        get(1, "hot get: near cache vs raw", &near, hot),
        get(64, "hot get: near cache vs raw", &near, hot),
        get(1, "get", &store, key),
        set(1),
        get(64, "get", &store, key),
        set(64),
        get_state,
        increment,
    ];
    bench::run("NatsStateStore vs raw async-nats KV", &cases).await;
    store.destroy().await?;
    Ok(())
}
