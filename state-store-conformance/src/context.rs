//! How a case gets its stores: a factory, a fresh prefix, and a runner.

// A test suite reports a failure (here: a worker process that cannot run) by panicking.
#![allow(clippy::expect_used)]

use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rand::distr::{Alphanumeric, SampleString};
use state_store_core::{Error, StateStore, StoreConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

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

    /// What a copy of this test binary needs in its environment so that the same factory,
    /// built there, opens the same data: the multi-process cases start such copies. `None`
    /// (the default, and what closures give) when other processes cannot share the data; those
    /// cases then run their in-process part only. Wrap a factory with [`across_processes`] to
    /// give one.
    fn process_env(&self) -> Option<Vec<(String, String)>> {
        None
    }
}

/// A factory whose data other processes can open: [`across_processes`].
pub struct ProcessFactory<F> {
    factory: F,
    env: Vec<(String, String)>,
}

/// Declares that a copy of this test binary, started with `env` added to its environment,
/// builds a factory over the same data as `factory` (say, `env` names the server's URL in the
/// variable your factory reads first). Enables the suite's multi-process cases.
///
/// ```
/// use state_store_core::{StateStore, StoreConfig};
/// use state_store_conformance::{across_processes, StoreFactory};
///
/// fn factory(url: String) -> impl StoreFactory {
///     let env = vec![("MY_STORE_TEST_URL".to_owned(), url.clone())];
///     across_processes(
///         move |config: StoreConfig| {
///             let _url = url.clone();
///             async move { Ok(StateStore::with_config(state_store_core::DefaultStateStore::new(), config)) }
///         },
///         env,
///     )
/// }
/// # let _ = factory("mystore://127.0.0.1".into());
/// ```
pub fn across_processes<F: StoreFactory>(
    factory: F,
    env: Vec<(String, String)>,
) -> ProcessFactory<F> {
    ProcessFactory { factory, env }
}

#[async_trait]
impl<F: StoreFactory> StoreFactory for ProcessFactory<F> {
    async fn open(&self, config: StoreConfig) -> Result<StateStore, Error> {
        self.factory.open(config).await
    }

    fn process_env(&self) -> Option<Vec<(String, String)>> {
        Some(self.env.clone())
    }
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
    test: Option<String>,
    role: Option<String>,
}

impl Context {
    /// A context with a fresh random prefix.
    pub fn new(factory: impl StoreFactory + 'static) -> Self {
        let id = Alphanumeric.sample_string(&mut rand::rng(), 12);
        Self::with_id(Arc::new(factory), id)
    }

    fn with_id(factory: Arc<dyn StoreFactory>, id: String) -> Self {
        Context {
            factory,
            prefix: format!("conformance:{id}"),
            id,
            opened: Arc::default(),
            test: None,
            role: None,
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

    /// The test running this case (`module::case` inside a module), when the harness names
    /// its thread after the test.
    pub(crate) fn test_name(&self) -> Option<&str> {
        self.test.as_deref()
    }

    /// In a worker process started by [`Context::spawn_worker`]: the role it was given. Cases
    /// with workers check this first, do the role's work and return.
    pub fn worker_role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Starts a copy of this test binary running only the current case as a worker doing
    /// `role`, on the same data and under the same prefix. `None` when the factory gives no
    /// [`StoreFactory::process_env`] (the data cannot be shared with another process).
    ///
    /// # Panics
    ///
    /// When the process cannot start, or the case does not run under a test harness that
    /// names its thread after the test (libtest does).
    pub fn spawn_worker(&self, role: &str) -> Option<Worker> {
        let env = self.factory.process_env()?;
        let test = self
            .test
            .as_deref()
            .expect("multi-process cases need the test name: run them with conformance_suite!");
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = tokio::process::Command::new(exe);
        command
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .envs(env)
            .env(WORKER_VAR, format!("{}\t{role}", self.id))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start a worker process");
        let stdout = child.stdout.take().expect("the worker's piped stdout");
        Some(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
            role: role.to_owned(),
        })
    }

    /// In a worker: sends `line` to the parent case, which reads it with [`Worker::next`].
    pub fn tell_parent(&self, line: &str) {
        println!("{WORKER_LINE}{line}");
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
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(str::to_owned);
    runtime.block_on(async {
        let Some(factory) = factory.await else {
            return;
        };
        let worker = std::env::var(WORKER_VAR).ok();
        let mut ctx = match worker.as_deref().and_then(|w| w.split_once('\t')) {
            Some((id, role)) => {
                let mut ctx = Context::with_id(Arc::new(factory), id.to_owned());
                ctx.role = Some(role.to_owned());
                ctx
            }
            None => Context::new(factory),
        };
        ctx.test = test;
        SKIPPED.with_borrow_mut(Vec::clear);
        case(ctx.clone()).await;
        report_case(&ctx);
        ctx.close().await;
    });
}

thread_local! {
    /// Features the running case found undeclared, so it checked the refusal and stopped
    /// there (the case runs on the test's thread: `block_on`).
    static SKIPPED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Notes that the running case stopped early because the store does not declare `feature`.
pub(crate) fn skipped(feature: &str) {
    SKIPPED.with_borrow_mut(|skipped| skipped.push(feature.to_owned()));
}

/// Env var naming a directory: each case run appends `<backend>\t<test>\t<ran | skipped: …>`
/// to `<dir>/cases.tsv`, for `scripts/test`'s summary of what ran where.
const REPORT_VAR: &str = "STATE_STORE_CONFORMANCE_REPORT";

fn report_case(ctx: &Context) {
    let (Ok(dir), Some(test)) = (std::env::var(REPORT_VAR), ctx.test.as_deref()) else {
        return;
    };
    if ctx.role.is_some() {
        return;
    }
    let backend = ctx
        .opened
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .first()
        .map_or_else(|| "?".to_owned(), |store| store.name().to_owned());
    let skipped = SKIPPED.with_borrow_mut(std::mem::take);
    let outcome = if skipped.is_empty() {
        "ran".to_owned()
    } else {
        format!("skipped: {} not declared", skipped.join(", "))
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .map(|stem| {
            stem.rsplit_once('-')
                .map_or(stem.clone(), |(name, _)| name.to_owned())
        })
        .unwrap_or_default();
    let line = format!("{backend}\t{binary}::{test}\t{outcome}\n");
    let path = std::path::Path::new(&dir).join("cases.tsv");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()));
    if let Err(err) = written {
        panic!("cannot write the case report {}: {err}", path.display());
    }
}

/// Tells a copy of the test binary that it is a worker: `<case id>\t<role>`.
const WORKER_VAR: &str = "STATE_STORE_CONFORMANCE_WORKER";

/// Marks each line a worker sends to its parent (the rest of its stdout is libtest's).
const WORKER_LINE: &str = "@state-store-worker ";

/// A worker process started by [`Context::spawn_worker`]; killed when dropped.
pub struct Worker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    role: String,
}

impl Worker {
    /// The next line the worker sent with [`Context::tell_parent`]; `None` once it has exited.
    ///
    /// # Panics
    ///
    /// When its output cannot be read.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let line = self
                .lines
                .next_line()
                .await
                .unwrap_or_else(|e| panic!("reading worker {:?}: {e}", self.role))?;
            // libtest may have written `test <name> ... ` on the same line first.
            if let Some((_, sent)) = line.split_once(WORKER_LINE) {
                return Some(sent.to_owned());
            }
        }
    }

    /// Kills the worker with SIGKILL (no chance to clean up) and waits for it to end.
    ///
    /// # Panics
    ///
    /// When it cannot be killed.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill the worker");
    }

    /// Reads the rest of the worker's lines and waits for it to exit; panics unless it
    /// succeeded.
    ///
    /// # Panics
    ///
    /// When the worker failed.
    pub async fn finish(mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.next().await {
            lines.push(line);
        }
        let status = self.child.wait().await.expect("wait for the worker");
        assert!(
            status.success(),
            "worker {:?} failed ({status}); its panic is printed above",
            self.role
        );
        lines
    }
}
