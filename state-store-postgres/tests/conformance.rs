//! The whole suite against a real PostgreSQL on loopback (`initdb` + `postgres`, started by the
//! test harness). Each handle the suite opens is a new pool (its own connections); worker
//! processes of the multi-process cases get the server's URL in the harness's variable.

use state_store_conformance::{across_processes, StoreFactory};
use state_store_core::{StateStore, StoreConfig};
use state_store_postgres::{PostgresConfig, PostgresStateStore};
use state_store_testkit::harness::postgres::{postgres_url, POSTGRES_URL_VAR};

fn factory(url: String) -> impl StoreFactory {
    let env = vec![(POSTGRES_URL_VAR.to_owned(), url.clone())];
    across_processes(
        move |config: StoreConfig| {
            let url = url.clone();
            async move {
                // Many cases run at once, each opening several handles: small pools.
                let postgres = PostgresConfig::from_url(&url)?.with_pool_size(4)?;
                let store = PostgresStateStore::connect(postgres).await?;
                Ok(StateStore::with_config(store, config))
            }
        },
        env,
    )
}

state_store_conformance::conformance_suite!(optional: postgres_url().map(factory));
