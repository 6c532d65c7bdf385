//! Listing does bounded work per page: a page of `limit` names costs about `limit` messages
//! from the server, not one per key under the prefix.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use serde_json::json;
use state_store_core::{ListOptions, StateStore};
use state_store_nats::{NatsConfig, NatsStateStore};
use state_store_testkit::harness::nats::NatsServer;
use state_store_testkit::harness::{http_get, unavailable};

/// Messages the server has sent to clients so far (`/varz` `out_msgs`).
fn out_msgs(server: &NatsServer) -> u64 {
    let (_, body) = http_get(server.monitor_port(), "/varz").expect("/varz");
    let varz: serde_json::Value = serde_json::from_str(&body).expect("json");
    varz["out_msgs"].as_u64().expect("out_msgs")
}

#[tokio::test]
async fn a_listing_page_reads_about_its_own_keys() {
    let Some(server) =
        NatsServer::spawn(&[]).map_or_else(|why| unavailable("nats-server", &why), Some)
    else {
        return;
    };
    let store = StateStore::from(
        NatsStateStore::connect(NatsConfig::new(server.url()))
            .await
            .expect("connect"),
    );
    let total = 2000;
    for i in 0..total {
        store
            .set_state(&format!("p:{i:04}"), &json!(i))
            .await
            .expect("set");
    }
    let before = out_msgs(&server);
    let page = store
        .list("p:", ListOptions::new().limit(10))
        .await
        .expect("list");
    let sent = out_msgs(&server) - before;
    assert_eq!(page.names.len(), 10);
    assert!(page.next.is_some());
    // The page's 10 keys, plus a few API replies: far from the 2000 keys under `p:`.
    assert!(sent < 200, "one page of 10 cost {sent} messages");
    let all = store.list_all("p:").await.expect("list_all");
    assert_eq!(all.len(), total, "every key, once");
    store.destroy().await.expect("destroy");
}
