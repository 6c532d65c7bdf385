//! Adapter vs raw async-nats KV, same process, same server, same JSON work.
//!
//! ```text
//! cargo run --release -p state-store-nats --example nats_bench
//! ```
//!
//! Uses `STATE_STORE_TEST_NATS_URL` if set, else spawns `nats-server -js` on loopback.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use serde_json::{json, Value};
use state_store_conformance::bench::{self, op, Case};
use state_store_conformance::harness::nats::nats_url;
use state_store_nats::{async_nats, NatsConfig, NatsStateStore};

const KEYS: u64 = 1000;

fn key(i: u64) -> String {
    format!("bench.k{}", i % KEYS)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = nats_url().ok_or("no nats-server available")?;
    let config = NatsConfig::new(url.clone()).bucket("bench");
    let store = NatsStateStore::connect(config).await?.into_store();
    let client = async_nats::connect(url).await?;
    let kv = async_nats::jetstream::new(client)
        .get_key_value("bench")
        .await?;
    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        store.set_state(&key(i), &value).await?;
    }
    let names10: Vec<String> = (0..10).map(key).collect();

    let get = |tasks| {
        let (s, r) = (store.clone(), kv.clone());
        Case::new(
            "get",
            tasks,
            op(move |i| {
                let s = s.clone();
                async move {
                    s.get::<Value>(&key(i)).await.expect("get");
                }
            }),
            op(move |i| {
                let r = r.clone();
                async move {
                    let v = r.get(key(i)).await.expect("get").expect("present");
                    let _: Value = serde_json::from_slice(&v).expect("json");
                }
            }),
        )
    };
    let set = |tasks| {
        let (s, r, v1, v2) = (store.clone(), kv.clone(), value.clone(), value.clone());
        Case::new(
            "set",
            tasks,
            op(move |i| {
                let (s, v) = (s.clone(), v1.clone());
                async move { s.set_state(&key(i), &v).await.expect("set") }
            }),
            op(move |i| {
                let (r, v) = (r.clone(), v2.clone());
                async move {
                    let bytes = serde_json::to_vec(&v).expect("json");
                    r.put(key(i), bytes.into()).await.expect("put");
                }
            }),
        )
    };
    let (s, r, n1, n2) = (store.clone(), kv.clone(), names10.clone(), names10.clone());
    let get_state = Case::new(
        "get_state ×10 vs 10 sequential gets",
        1,
        op(move |_| {
            let (s, n) = (s.clone(), n1.clone());
            async move {
                s.get_state(&n).await.expect("get_state");
            }
        }),
        op(move |_| {
            let (r, n) = (r.clone(), n2.clone());
            async move {
                for name in n {
                    let v = r.get(name).await.expect("get").expect("present");
                    let _: Value = serde_json::from_slice(&v).expect("json");
                }
            }
        }),
    );
    let (s, r) = (store.clone(), kv.clone());
    let increment = Case::new(
        "increment vs raw get+update",
        1,
        op(move |i| {
            let s = s.clone();
            async move {
                s.increment(&format!("bench.c{}", i % 10), 1, None)
                    .await
                    .expect("incr");
            }
        }),
        op(move |i| {
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
        }),
    );
    let cases = [get(1), set(1), get(64), set(64), get_state, increment];
    bench::run("NatsStateStore vs raw async-nats KV", &cases).await;
    store.destroy().await?;
    Ok(())
}
