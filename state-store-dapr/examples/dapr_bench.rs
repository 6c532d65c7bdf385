//! Adapter vs the raw generated Dapr gRPC client, same process, same sidecar, same JSON work.
//!
//! ```text
//! STATE_STORE_DAPRD_BIN=$(scripts/build-daprd) cargo run --release -p state-store-dapr --example dapr_bench
//! ```
//!
//! Spawns `daprd` with `state.redis` (and a `redis-server`) on loopback, or uses
//! `STATE_STORE_TEST_DAPR_GRPC_ENDPOINT`.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use std::collections::HashMap;

use serde_json::{json, Value};
use state_store_core::StateStore;
use state_store_dapr::dapr::dapr::proto::common::v1::{
    state_options, Etag, StateItem, StateOptions,
};
use state_store_dapr::dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use state_store_dapr::dapr::dapr::proto::runtime::v1::{
    GetBulkStateRequest, GetStateRequest, SaveStateRequest,
};
use state_store_dapr::{DaprConfig, DaprStateStore};
use state_store_testkit::bench::{self, adapter, op, Case};
use state_store_testkit::harness::dapr::{dapr_endpoint, Component, COMPONENT};

const KEYS: u64 = 1000;

fn key(i: u64) -> String {
    format!("bench:k{}", i % KEYS)
}

fn save(key: String, value: Vec<u8>, etag: Option<String>) -> SaveStateRequest {
    let options = etag.as_ref().map(|_| StateOptions {
        concurrency: state_options::StateConcurrency::ConcurrencyFirstWrite as i32,
        ..StateOptions::default()
    });
    SaveStateRequest {
        store_name: COMPONENT.into(),
        states: vec![StateItem {
            key,
            value,
            etag: etag.map(|value| Etag { value }),
            metadata: HashMap::from([("ttlInSeconds".to_owned(), "-1".to_owned())]),
            options,
        }],
    }
}

fn get(key: String) -> GetStateRequest {
    GetStateRequest {
        store_name: COMPONENT.into(),
        key,
        ..GetStateRequest::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = dapr_endpoint(Component::Redis).ok_or("no daprd available")?;
    let store = StateStore::from(
        DaprStateStore::connect(DaprConfig::new(endpoint.clone(), COMPONENT)).await?,
    );
    let raw = DaprClient::connect(endpoint).await?;
    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        store.set_state(&key(i), &value).await?;
    }
    let names10: Vec<String> = (0..10).map(key).collect();

    let get_case = |tasks| {
        let r = raw.clone();
        let raw_get = op(move |i| {
            let mut r = r.clone();
            async move {
                let data = r
                    .get_state(get(key(i)))
                    .await
                    .expect("get")
                    .into_inner()
                    .data;
                let _: Value = serde_json::from_slice(&data).expect("json");
            }
        });
        Case::new("get", tasks, adapter::get(&store, key), raw_get)
    };
    let set_case = |tasks| {
        let (r, v) = (raw.clone(), value.clone());
        let raw_save = op(move |i| {
            let (mut r, v) = (r.clone(), v.clone());
            async move {
                let bytes = serde_json::to_vec(&v).expect("json");
                r.save_state(save(key(i), bytes, None)).await.expect("save");
            }
        });
        Case::new("set", tasks, adapter::set(&store, key, &value), raw_save)
    };
    let (r, n) = (raw.clone(), names10.clone());
    let raw_bulk = op(move |_| {
        let (mut r, n) = (r.clone(), n.clone());
        async move {
            let request = GetBulkStateRequest {
                store_name: COMPONENT.into(),
                keys: n,
                ..GetBulkStateRequest::default()
            };
            for item in r
                .get_bulk_state(request)
                .await
                .expect("bulk")
                .into_inner()
                .items
            {
                let _: Value = serde_json::from_slice(&item.data).expect("json");
            }
        }
    });
    let bulk = Case::new(
        "get_state ×10 vs raw GetBulkState",
        1,
        adapter::get_state(&store, &names10),
        raw_bulk,
    );
    let cases = [get_case(1), set_case(1), get_case(16), set_case(16), bulk];
    bench::run("DaprStateStore vs raw Dapr gRPC (state.redis)", &cases).await;
    store.destroy().await?;
    Ok(())
}
