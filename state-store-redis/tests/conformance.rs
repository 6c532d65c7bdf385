//! The whole suite against a real `redis-server` on loopback, standalone and as a 3-master
//! cluster. Each handle the suite opens is a new fred client (its own connections); worker
//! processes of the multi-process cases get the server's URL in the harness's variable.

use state_store_conformance::{across_processes, StoreFactory};
use state_store_core::{StateStore, StoreConfig};
use state_store_redis::{RedisConfig, RedisStateStore};
use state_store_testkit::harness::redis::{
    redis_cluster_url, redis_url, REDIS_CLUSTER_URL_VAR, REDIS_URL_VAR,
};

fn factory(url: String, var: &str) -> impl StoreFactory {
    let env = vec![(var.to_owned(), url.clone())];
    across_processes(
        move |config: StoreConfig| {
            let url = url.clone();
            async move {
                let store = RedisStateStore::connect(RedisConfig::from_url(&url)?).await?;
                Ok(StateStore::with_config(store, config))
            }
        },
        env,
    )
}

mod standalone {
    use super::*;
    state_store_conformance::conformance_suite!(optional: redis_url().map(|url| factory(url, REDIS_URL_VAR)));
}

mod cluster {
    use super::*;
    state_store_conformance::conformance_suite!(optional: redis_cluster_url().map(|url| factory(url, REDIS_CLUSTER_URL_VAR)));
}
