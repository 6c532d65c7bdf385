//! The whole suite against a real `redis-server` on loopback, standalone and as a 3-master
//! cluster. Each handle the suite opens is a new fred client (its own connections).

use state_store_core::{StateStore, StoreConfig};
use state_store_redis::{RedisConfig, RedisStateStore};
use state_store_testkit::harness::redis::{redis_cluster_url, redis_url};

fn factory(url: String) -> impl state_store_conformance::StoreFactory {
    move |config: StoreConfig| {
        let url = url.clone();
        async move {
            let store = RedisStateStore::connect(RedisConfig::from_url(&url)?).await?;
            Ok(StateStore::with_config(store, config))
        }
    }
}

mod standalone {
    use super::*;
    state_store_conformance::conformance_suite!(optional: redis_url().map(factory));
}

mod cluster {
    use super::*;
    state_store_conformance::conformance_suite!(optional: redis_cluster_url().map(factory));
}
