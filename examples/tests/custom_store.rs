//! A store written outside this workspace's crates, proved with one macro line: a `HashMap`
//! with versions and conditional writes, and no TTL (the suite checks that TTLs are refused
//! with `Unsupported`). Its six required methods are all it writes: the completion layer adds atomic
//! increments from its compare-and-set. It registers a `map://` scheme, and the suite opens it
//! by URL, as a service would with `state_store::open`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use state_store::{
    async_trait, Backend, Capabilities, Entry, Error, SetMode, SetOptions, StateStore, StoreConfig,
    Version,
};

#[derive(Debug, Clone, Default)]
struct MapStore(Arc<Mutex<Map>>);

#[derive(Debug, Default)]
struct Map {
    values: HashMap<String, (Vec<u8>, u64)>,
    last_version: u64,
}

impl MapStore {
    fn lock(&self) -> MutexGuard<'_, Map> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn version(n: u64) -> Version {
    Version::new(n.to_string())
}

#[async_trait]
impl Backend for MapStore {
    fn name(&self) -> &str {
        "map"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::minimal().with_conditional(true)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, Error> {
        let map = self.lock();
        Ok(keys
            .iter()
            .map(|k| {
                map.values
                    .get(k)
                    .map(|(v, n)| Entry::new(v.clone(), version(*n)))
            })
            .collect())
    }

    async fn set(&self, key: &str, value: Vec<u8>, opts: &SetOptions) -> Result<Version, Error> {
        if opts.ttl.is_some() {
            return Err(Error::unsupported("map", "atomic expiry"));
        }
        let mut map = self.lock();
        let current = map.values.get(key).map(|(_, n)| version(*n));
        let allowed = match &opts.mode {
            SetMode::Upsert => true,
            SetMode::Create => current.is_none(),
            SetMode::Update(expected) => current.as_ref() == Some(expected),
        };
        if !allowed {
            return Err(Error::Conflict { key: key.into() });
        }
        map.last_version += 1;
        let n = map.last_version;
        map.values.insert(key.into(), (value, n));
        Ok(version(n))
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool, Error> {
        let mut map = self.lock();
        let current = map.values.get(key).map(|(_, n)| version(*n));
        match (expected, current) {
            (_, None) => Ok(false),
            (Some(expected), Some(current)) if *expected != current => {
                Err(Error::Conflict { key: key.into() })
            }
            _ => Ok(map.values.remove(key).is_some()),
        }
    }

    async fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Every `map://<name>` URL opens the one map of that name, as a server would.
static MAPS: LazyLock<Mutex<HashMap<String, MapStore>>> = LazyLock::new(Mutex::default);

/// What a backend crate offers its users: `map://` URLs for `state_store::open`.
fn register() {
    state_store::register_scheme("map", |url| {
        let store = MAPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(url.to_owned())
            .or_default()
            .clone();
        Box::pin(async move { Ok(Arc::new(store) as Arc<dyn Backend>) })
    });
}

// The one line.
state_store_conformance::conformance_suite!({
    register();
    |config: StoreConfig| state_store::open_with("map://suite", config)
});

#[tokio::test]
async fn the_scheme_opens_the_store_by_url() {
    register();
    let store: StateStore = state_store::open("map://here").await.expect("open");
    assert_eq!(store.name(), "map");
    store
        .set_state("k", &serde_json::json!(1))
        .await
        .expect("set");
    let again = state_store::open("map://here").await.expect("open again");
    assert_eq!(again.get::<i64>("k").await.expect("get"), Some(1));
}
