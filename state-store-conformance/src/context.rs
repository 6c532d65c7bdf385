//! How a case gets its stores: a factory, a fresh prefix, and a runner.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rand::distr::{Alphanumeric, SampleString};
use state_store_core::{Error, StateStore, StoreConfig};

/// Opens handles on the store under test.
///
/// Every call must return a handle on the **same** data (a new connection where the backend
/// has connections), configured with `config` — the suite passes a fresh random key prefix and,
/// in some cases, disabled operations or limits. Closures work:
///
/// ```
/// use state_store_core::{DefaultStateStore, StateStore, StoreConfig};
///
/// let data = DefaultStateStore::new();
/// let factory = move |config: StoreConfig| {
///     let data = data.clone();
///     async move { Ok(StateStore::with_config(data, config)) }
/// };
/// # fn is_factory(_: impl state_store_conformance::StoreFactory) {}
/// # is_factory(factory);
/// ```
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// Opens a new handle with `config`.
    async fn open(&self, config: StoreConfig) -> Result<StateStore, Error>;
}

#[async_trait]
impl<F, Fut> StoreFactory for F
where
    F: Fn(StoreConfig) -> Fut + Send + Sync,
    Fut: Future<Output = Result<StateStore, Error>> + Send,
{
    async fn open(&self, config: StoreConfig) -> Result<StateStore, Error> {
        self(config).await
    }
}

/// What a case works with: the factory and a random prefix of its own, so cases (and
/// concurrent runs) can share one server without seeing each other's keys.
#[derive(Clone)]
pub struct Context {
    factory: Arc<dyn StoreFactory>,
    id: String,
    prefix: String,
    opened: Arc<Mutex<Vec<StateStore>>>,
}

impl Context {
    /// A context with a fresh random prefix.
    pub fn new(factory: impl StoreFactory + 'static) -> Self {
        let id = Alphanumeric.sample_string(&mut rand::rng(), 12);
        Context {
            factory: Arc::new(factory),
            prefix: format!("conformance:{id}"),
            id,
            opened: Arc::default(),
        }
    }

    /// The prefix every handle of this case uses (`conformance:<id>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This case's random id: put it in every name written through
    /// [`Context::store_without_prefix`], so runs sharing a server stay apart.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A new handle with no key prefix at all: names are stored as they are, as PURISTA
    /// stores them. Cases use it to test unprefixed keys, with [`Context::id`] in every name.
    ///
    /// # Panics
    ///
    /// When the factory fails: the case cannot run.
    pub async fn store_without_prefix(&self) -> StateStore {
        self.open(StoreConfig::default()).await
    }

    /// A new handle with the default config (under the case prefix).
    ///
    /// # Panics
    ///
    /// When the factory fails: the case cannot run.
    pub async fn store(&self) -> StateStore {
        self.store_with(StoreConfig::default()).await
    }

    /// A new handle with `config`; the case prefix goes before `config.key_prefix`.
    ///
    /// # Panics
    ///
    /// When the factory fails: the case cannot run.
    pub async fn store_with(&self, mut config: StoreConfig) -> StateStore {
        config.key_prefix = format!("{}:{}", self.prefix, config.key_prefix);
        self.open(config).await
    }

    async fn open(&self, config: StoreConfig) -> StateStore {
        let store = match self.factory.open(config).await {
            Ok(store) => store,
            Err(err) => panic!("the store factory failed: {}", crate::report(&err)),
        };
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(store.clone());
        store
    }

    /// Destroys every handle this context opened.
    pub async fn close(&self) {
        let opened =
            std::mem::take(&mut *self.opened.lock().unwrap_or_else(PoisonError::into_inner));
        for store in opened {
            let _ = store.destroy().await;
        }
    }
}

/// Runs one case on a fresh multi-threaded runtime. Used by [`conformance_suite!`]; call it
/// yourself to run a case outside the macro.
///
/// `factory` resolves to `None` when the backend is unavailable and the harness has already
/// said so (and failed the test if backends are required): the case is then skipped.
///
/// # Panics
///
/// When the case fails, or the runtime cannot start.
///
/// [`conformance_suite!`]: crate::conformance_suite
pub fn run_case<M, F, C, Fut>(factory: M, case: C)
where
    M: Future<Output = Option<F>>,
    F: StoreFactory + 'static,
    C: FnOnce(Context) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => panic!("cannot start a Tokio runtime: {err}"),
    };
    runtime.block_on(async {
        let Some(factory) = factory.await else {
            return;
        };
        let ctx = Context::new(factory);
        case(ctx.clone()).await;
        ctx.close().await;
    });
}
