//! A real `daprd` on loopback with a `state.in-memory`, `state.redis`, `state.postgresql` (v2)
//! or `state.sqlite` component.
//!
//! The binary comes from `STATE_STORE_DAPRD_BIN`, else `daprd` on `PATH`; this repository's
//! `scripts/build-daprd` builds one from Go modules (see `state-store-dapr/daprd`).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use state_store_conformance::faults::TestServer;

use super::container::{choose, ContainerSpec, Tier, DAPRD_IMAGE, REDIS_IMAGE};
use super::postgres::PostgresServer;
use super::redis::RedisServer;
use super::{
    find_binary, free_port, http_status, temp_dir, unavailable, with_port_retries, Supervised,
    TempDir,
};

/// Env var with the gRPC endpoint of a running sidecar to use instead of spawning one (its
/// state store component must be named [`COMPONENT`]).
pub const DAPR_ENDPOINT_VAR: &str = "STATE_STORE_TEST_DAPR_GRPC_ENDPOINT";
/// The name of the state store component the harness configures.
pub const COMPONENT: &str = "statestore";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which state store component the sidecar runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// `state.in-memory`.
    InMemory,
    /// `state.redis`, backed by a `redis-server` the harness starts first.
    Redis,
    /// `state.postgresql` v2, backed by a PostgreSQL the harness starts first (local binaries
    /// only).
    Postgres,
    /// `state.sqlite`, on a file in the sidecar's directory (local binaries only).
    Sqlite,
}

fn daprd() -> Result<PathBuf, String> {
    find_binary("daprd", "STATE_STORE_DAPRD_BIN", &[]).ok_or_else(|| {
        "daprd not found (set STATE_STORE_DAPRD_BIN; scripts/build-daprd builds one)".to_owned()
    })
}

/// A `daprd` this test owns, with its component files and (for Redis) its own `redis-server`.
#[derive(Debug)]
pub struct Daprd {
    // Dropped first: the sidecar's container is the last on its network, and takes the
    // network with it.
    _backing: Option<Backing>,
    server: Supervised,
    grpc_port: u16,
    http_port: u16,
    // Removed when the sidecar is dropped.
    _dir: TempDir,
}

/// The server a sidecar's component uses: a local Redis or PostgreSQL, or a Redis container on
/// the sidecar's network.
#[derive(Debug)]
#[allow(dead_code)] // held for its Drop, which stops the server
enum Backing {
    Redis(RedisServer),
    Postgres(PostgresServer),
    Container(Supervised),
}

impl Daprd {
    /// Starts `daprd` standalone on loopback with `component`, and waits for `/v1.0/healthz`.
    ///
    /// # Errors
    ///
    /// When a binary is missing or the sidecar does not become healthy.
    pub fn spawn(component: Component) -> Result<Self, String> {
        match choose("daprd", daprd)? {
            Tier::Local(binary) => {
                with_port_retries(|| Self::spawn_local(binary.clone(), component))
            }
            Tier::Container => with_port_retries(|| Self::spawn_container(component)),
        }
    }

    fn spawn_local(binary: PathBuf, component: Component) -> Result<Self, String> {
        let (dir, resources) = resources_dir()?;
        let (backing, yaml) = match component {
            Component::InMemory => (None, component_yaml("state.in-memory", "v1", "")),
            Component::Redis => {
                let redis = RedisServer::spawn(&[])?;
                let yaml = redis_yaml(&format!("127.0.0.1:{}", redis.port()));
                (Some(Backing::Redis(redis)), yaml)
            }
            Component::Postgres => {
                let postgres = PostgresServer::spawn()?;
                let metadata = metadata(&[
                    ("connectionString", &postgres.url()),
                    ("cleanupInterval", "10s"),
                ]);
                let yaml = component_yaml("state.postgresql", "v2", &metadata);
                (Some(Backing::Postgres(postgres)), yaml)
            }
            Component::Sqlite => {
                let file = dir.path().join("state.db").display().to_string();
                let metadata = metadata(&[("connectionString", &file), ("cleanupInterval", "10s")]);
                (None, component_yaml("state.sqlite", "v1", &metadata))
            }
        };
        std::fs::write(resources.join("statestore.yaml"), yaml).map_err(|e| e.to_string())?;
        let (grpc_port, http_port) = (free_port(), free_port());
        let args: Vec<String> = [
            "--app-id",
            "state-store-test",
            "--resources-path",
            &resources.display().to_string(),
            "--dapr-listen-addresses",
            "127.0.0.1",
            "--dapr-grpc-port",
            &grpc_port.to_string(),
            "--dapr-http-port",
            &http_port.to_string(),
            "--dapr-internal-grpc-port",
            &free_port().to_string(),
            "--dapr-internal-grpc-listen-address",
            "127.0.0.1",
            "--dapr-public-port",
            &free_port().to_string(),
            "--dapr-public-listen-address",
            "127.0.0.1",
            "--profile-port",
            &free_port().to_string(),
            "--enable-metrics=false",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let log = dir.path().join("daprd.log");
        Self::launch(
            Supervised::new(binary, args, log),
            (grpc_port, http_port),
            dir,
            backing,
        )
    }

    /// The sidecar in a container; for `state.redis`, a Redis container beside it on a
    /// user-defined network of their own, reached by its container name.
    fn spawn_container(component: Component) -> Result<Self, String> {
        let (dir, resources) = resources_dir()?;
        let id = dir.path().file_name().map_or_else(String::new, |n| {
            n.to_string_lossy()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase()
        });
        let network = format!("state-store-{id}");
        let (backing, yaml) = match component {
            Component::InMemory => (None, component_yaml("state.in-memory", "v1", "")),
            Component::Postgres | Component::Sqlite => {
                return Err(
                    "state.postgresql and state.sqlite sidecars run from local binaries only"
                        .to_owned(),
                )
            }
            Component::Redis => {
                let name = format!("redis-{id}");
                let port = free_port();
                let mut spec = ContainerSpec::new(
                    "redis (for daprd)",
                    REDIS_IMAGE,
                    [
                        "redis-server",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "no",
                    ],
                    &[(port, 6379)],
                );
                spec.network = Some(network.clone());
                spec.name = Some(name.clone());
                let mut redis = Supervised::container(spec);
                redis.start(START_TIMEOUT, || super::redis::redis_answers(port))?;
                (
                    Some(Backing::Container(redis)),
                    redis_yaml(&format!("{name}:6379")),
                )
            }
        };
        std::fs::write(resources.join("statestore.yaml"), yaml).map_err(|e| e.to_string())?;
        // The official image runs daprd as a non-root user: let it read the mounted files.
        for path in [dir.path(), resources.as_path()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut spec = ContainerSpec::new(
            "daprd",
            DAPRD_IMAGE,
            [
                "./daprd",
                "--app-id",
                "state-store-test",
                "--resources-path",
                "/components",
                "--dapr-grpc-port",
                "50001",
                "--dapr-http-port",
                "3500",
                "--enable-metrics=false",
                "--log-level",
                "warn",
            ],
            &[(grpc_port, 50001), (http_port, 3500)],
        );
        spec.network = Some(network);
        spec.mounts = vec![(resources.display().to_string(), "/components".to_owned())];
        Self::launch(
            Supervised::container(spec),
            (grpc_port, http_port),
            dir,
            backing,
        )
    }

    /// Starts `server` (a process or a container serving gRPC and HTTP on `ports`) and waits
    /// until it is healthy.
    fn launch(
        server: Supervised,
        (grpc_port, http_port): (u16, u16),
        dir: TempDir,
        backing: Option<Backing>,
    ) -> Result<Self, String> {
        let mut daprd = Daprd {
            _backing: backing,
            server,
            grpc_port,
            http_port,
            _dir: dir,
        };
        daprd.start()?;
        Ok(daprd)
    }

    fn start(&mut self) -> Result<(), String> {
        let port = self.http_port;
        self.server.start(START_TIMEOUT, || {
            http_status(port, "/v1.0/healthz") == Some(204)
        })
    }

    /// `http://127.0.0.1:<grpc port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }
}

impl TestServer for Daprd {
    fn crash(&mut self) {
        self.server.crash();
    }

    fn restart(&mut self) -> Result<(), String> {
        self.crash();
        self.start()
    }

    fn pause(&mut self) -> Result<(), String> {
        self.server.pause()
    }

    fn resume(&mut self) -> Result<(), String> {
        self.server.resume()
    }
}

/// A temporary directory with an empty `resources/` for the component file.
fn resources_dir() -> Result<(TempDir, PathBuf), String> {
    let dir = temp_dir("daprd");
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources).map_err(|e| e.to_string())?;
    Ok((dir, resources))
}

fn redis_yaml(host: &str) -> String {
    component_yaml("state.redis", "v1", &metadata(&[("redisHost", host)]))
}

/// A component's metadata entries, as YAML (values JSON-quoted, which YAML reads as is).
fn metadata(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, value)| {
            let value = serde_json::Value::from(*value);
            format!("    - name: {name}\n      value: {value}\n")
        })
        .collect()
}

fn component_yaml(kind: &str, version: &str, metadata: &str) -> String {
    let metadata = if metadata.is_empty() {
        "  metadata: []\n".to_owned()
    } else {
        format!("  metadata:\n{metadata}")
    };
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {COMPONENT}\nspec:\n  type: {kind}\n  version: {version}\n{metadata}"
    )
}

/// The gRPC endpoint of a sidecar with `component` for this test binary: [`DAPR_ENDPOINT_VAR`],
/// else a `daprd` spawned once per component and shared by the binary's tests; `None` after a
/// loud notice, or a panic under `STATE_STORE_REQUIRE_BACKENDS=1`.
pub fn dapr_endpoint(component: Component) -> Option<String> {
    if let Ok(endpoint) = std::env::var(DAPR_ENDPOINT_VAR) {
        return Some(endpoint);
    }
    static IN_MEMORY: OnceLock<Result<Daprd, String>> = OnceLock::new();
    static REDIS: OnceLock<Result<Daprd, String>> = OnceLock::new();
    static POSTGRES: OnceLock<Result<Daprd, String>> = OnceLock::new();
    static SQLITE: OnceLock<Result<Daprd, String>> = OnceLock::new();
    let cell = match component {
        Component::InMemory => &IN_MEMORY,
        Component::Redis => &REDIS,
        Component::Postgres => &POSTGRES,
        Component::Sqlite => &SQLITE,
    };
    match cell.get_or_init(|| Daprd::spawn(component)) {
        Ok(daprd) => Some(daprd.endpoint()),
        Err(why) => unavailable("daprd", why),
    }
}
