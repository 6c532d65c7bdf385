//! The whole suite against a real `nats-server -js` on loopback (file storage), on one server
//! and on a 3-node cluster with an R3 bucket. Each handle is its own connection.

use state_store_conformance::{across_processes, StoreFactory};
use state_store_core::{StateStore, StoreConfig};
use state_store_nats::{NatsConfig, NatsStateStore};
use state_store_testkit::harness::nats::{
    nats_cluster_url, nats_url, NATS_CLUSTER_URL_VAR, NATS_URL_VAR,
};

/// Worker processes of the multi-process cases get the server's URL in `var`.
fn factory(config: NatsConfig, url: String, var: &str) -> impl StoreFactory {
    across_processes(
        move |store_config: StoreConfig| {
            let config = config.clone();
            async move {
                Ok(StateStore::with_config(
                    NatsStateStore::connect(config).await?,
                    store_config,
                ))
            }
        },
        vec![(var.to_owned(), url)],
    )
}

mod single {
    use super::*;
    state_store_conformance::conformance_suite!(optional: nats_url().map(|url| factory(NatsConfig::new(url.clone()), url, NATS_URL_VAR)));
}

mod cluster {
    use super::*;

    /// Creates the R3 bucket once and waits until it takes writes: a freshly created replicated
    /// stream elects its leader first, and the cases should measure the store, not the election.
    async fn ready(url: String) -> NatsConfig {
        static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        let config = NatsConfig::new(url)
            .with_bucket("state-store-r3")
            .with_replicas(3);
        READY
            .get_or_init(|| async {
                for _ in 0..100 {
                    if let Ok(store) = NatsStateStore::connect(config.clone()).await {
                        let store = StateStore::from(store);
                        let written = store.set_state("warm-up", &serde_json::json!(1)).await;
                        let _ = store.destroy().await;
                        if written.is_ok() {
                            return;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                panic!("the R3 bucket never accepted a write");
            })
            .await;
        config
    }

    state_store_conformance::conformance_suite!(optional: match nats_cluster_url() {
        Some(url) => Some(factory(ready(url.clone()).await, url, NATS_CLUSTER_URL_VAR)),
        None => None,
    });
}
