//! `redis-server` on loopback: shared per test binary, owned for fault tests, or a 3-master
//! cluster.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use state_store_conformance::faults::TestServer;

use super::container::{choose, ContainerSpec, Tier, REDIS_IMAGE};
use super::{
    find_binary, free_port, temp_dir, unavailable, with_port_retries, Supervised, TempDir,
};

/// Env var with the URL of a Redis to use instead of spawning one.
pub const REDIS_URL_VAR: &str = "STATE_STORE_TEST_REDIS_URL";
/// Env var with the URL of a Redis Cluster to use instead of spawning one.
pub const REDIS_CLUSTER_URL_VAR: &str = "STATE_STORE_TEST_REDIS_CLUSTER_URL";

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn redis_server() -> Result<PathBuf, String> {
    find_binary("redis-server", "STATE_STORE_REDIS_SERVER_BIN", &[])
        .ok_or_else(|| "redis-server not found on PATH (apt-get install redis-server)".to_owned())
}

/// A `redis-server` this test owns, on a free loopback port, with its own directory.
#[derive(Debug)]
pub struct RedisServer {
    server: Supervised,
    port: u16,
    // Removed when the server is dropped.
    _dir: TempDir,
}

impl RedisServer {
    /// Starts a server; `extra` are more `redis-server` arguments (`["--requirepass", "x"]`).
    ///
    /// # Errors
    ///
    /// When the binary is missing or the server does not come up.
    pub fn spawn(extra: &[&str]) -> Result<Self, String> {
        with_port_retries(|| Self::spawn_on(free_port(), extra))
    }

    fn spawn_on(port: u16, extra: &[&str]) -> Result<Self, String> {
        let dir = temp_dir("redis");
        // Keyspace notifications for writes, removals and expiry: what a watch follows.
        let common = [
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--notify-keyspace-events",
            "K$gx",
        ];
        let server = match choose("redis", redis_server)? {
            Tier::Local(binary) => {
                let (port, path) = (port.to_string(), dir.path().display().to_string());
                let args = ["--port", &port, "--bind", "127.0.0.1", "--dir", &path]
                    .iter()
                    .chain(&common)
                    .chain(extra)
                    .map(ToString::to_string)
                    .collect();
                Supervised::new(binary, args, dir.path().join("redis.log"))
            }
            Tier::Container => {
                let cmd = ["redis-server", "--port", "6379"]
                    .iter()
                    .chain(&common)
                    .chain(extra)
                    .copied();
                Supervised::container(ContainerSpec::new(
                    "redis",
                    REDIS_IMAGE,
                    cmd,
                    &[(port, 6379)],
                ))
            }
        };
        let mut server = RedisServer {
            server,
            port,
            _dir: dir,
        };
        server.start()?;
        Ok(server)
    }

    fn start(&mut self) -> Result<(), String> {
        let port = self.port;
        self.server.start(START_TIMEOUT, || redis_answers(port))
    }

    /// A server that also serves TLS with `certificates`' server certificate on a second
    /// port; `verify_clients`: TLS clients must present a certificate their CA signed. The
    /// plaintext port stays (the health check uses it). Returns the server and the TLS URL,
    /// `rediss://127.0.0.1:<tls port>`. Local binaries only: the server reads the files.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::spawn`]; in the container tier always.
    pub fn spawn_tls(
        certificates: &super::tls::Certificates,
        verify_clients: bool,
    ) -> Result<(Self, String), String> {
        if let Tier::Container = choose("redis", redis_server)? {
            return Err("TLS servers run from local binaries only".to_owned());
        }
        let (cert, key) = certificates.server();
        let (cert, key, ca) = (
            cert.display().to_string(),
            key.display().to_string(),
            certificates.ca().display().to_string(),
        );
        with_port_retries(|| {
            let tls_port = free_port().to_string();
            let verify = if verify_clients { "yes" } else { "no" };
            let extra = [
                "--tls-port",
                &tls_port,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                verify,
            ];
            let server = Self::spawn_on(free_port(), &extra)?;
            Ok((server, format!("rediss://127.0.0.1:{tls_port}")))
        })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl TestServer for RedisServer {
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

/// True when a Redis on `127.0.0.1:port` answers a `PING` (`+PONG`, or `-NOAUTH` when it wants
/// a password). An open port is not enough: a container's published port accepts connections
/// (docker-proxy) before the server inside listens, and resets them.
pub fn redis_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 1];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && matches!(reply[0], b'+' | b'-')
}

/// The URL of a Redis for this test binary: [`REDIS_URL_VAR`], else one `redis-server`
/// spawned once and shared by every test in the binary. `None` (after a loud notice) when
/// neither works; a panic instead under `STATE_STORE_REQUIRE_BACKENDS=1`.
pub fn redis_url() -> Option<String> {
    if let Ok(url) = std::env::var(REDIS_URL_VAR) {
        return Some(url);
    }
    static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();
    match SHARED.get_or_init(|| RedisServer::spawn(&[])) {
        Ok(server) => Some(server.url()),
        Err(why) => unavailable("redis", why),
    }
}

/// Three `redis-server --cluster-enabled yes` masters (each with a replica if asked) joined
/// with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    cli: PathBuf,
}

fn redis_cli() -> Result<PathBuf, String> {
    find_binary("redis-cli", "STATE_STORE_REDIS_CLI_BIN", &[])
        .ok_or_else(|| "redis-cli not found on PATH (apt-get install redis-tools)".to_owned())
}

/// A node as a line of `CLUSTER NODES` describes it.
struct ClusterNode {
    id: String,
    port: u16,
    master: bool,
    /// The master it replicates, for a replica.
    master_id: Option<String>,
    /// Slot ranges, inclusive.
    slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(low, high)| (low..=high).contains(&slot))
    }
}

/// `<id> <ip:port@bus> <flags> <master id or -> <ping> <pong> <epoch> <link> <slots…>`, a
/// line per node; lines that do not parse are left out.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [id, address, flags, master, _, _, _, _, slots @ ..] = &fields[..] else {
                return None;
            };
            let port = address
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let slots = slots
                .iter()
                .filter_map(|range| match range.split_once('-') {
                    Some((low, high)) => Some((low.parse().ok()?, high.parse().ok()?)),
                    None => range.parse().ok().map(|slot| (slot, slot)),
                })
                .collect();
            Some(ClusterNode {
                id: (*id).to_owned(),
                port,
                // `fail` or `fail?` (not `nofailover`): a master others think is down.
                master: flags.split(',').any(|flag| flag == "master")
                    && !flags
                        .split(',')
                        .any(|flag| flag == "fail" || flag == "fail?"),
                master_id: (*master != "-").then(|| (*master).to_owned()),
                slots,
            })
        })
        .collect()
}

impl RedisCluster {
    /// Starts and joins the cluster, waiting for `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// When a binary is missing or the cluster does not form.
    pub fn spawn() -> Result<Self, String> {
        Self::spawn_nodes(0, "5000", &[])
    }

    /// A cluster of three masters each with a replica, for failovers: a master unreachable for
    /// a second is replaced by its replica. `extra` are more arguments for every node.
    ///
    /// # Errors
    ///
    /// As [`RedisCluster::spawn`].
    pub fn spawn_with_replicas(extra: &[&str]) -> Result<Self, String> {
        Self::spawn_nodes(1, "1000", extra)
    }

    fn spawn_nodes(replicas: usize, node_timeout: &str, extra: &[&str]) -> Result<Self, String> {
        // Cluster nodes tell clients each other's addresses (MOVED, CLUSTER SLOTS): from
        // containers those are container addresses, not the host ports the tests reach.
        if let Tier::Container = choose("redis cluster", redis_server)? {
            return Err(
                "a Redis Cluster runs from local binaries only: in containers its \
                 nodes announce addresses the tests cannot reach through published ports"
                    .to_owned(),
            );
        }
        let cli = redis_cli()?;
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let port = cluster_port();
            let conf = format!("nodes-{port}.conf");
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                node_timeout,
            ];
            let args: Vec<&str> = args.iter().chain(extra).copied().collect();
            nodes.push(RedisServer::spawn_on(port, &args)?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !created.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            ));
        }
        let cluster = RedisCluster { nodes, cli };
        let started = Instant::now();
        // Every node serves, and every replica has synced with its master.
        while !cluster.nodes.iter().all(|node| {
            let info = cluster.ask(node.port, &["cluster", "info"]);
            let replication = cluster.ask(node.port, &["info", "replication"]);
            info.contains("cluster_state:ok")
                && (replication.contains("role:master")
                    || replication.contains("master_link_status:up"))
        }) {
            if started.elapsed() > START_TIMEOUT {
                return Err("the Redis cluster did not reach cluster_state:ok".to_owned());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// What `redis-cli -p <port> <args…>` printed (empty when it could not run).
    fn ask(&self, port: u16, args: &[&str]) -> String {
        Command::new(&self.cli)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The port of the master serving `key`'s slot, and of its replica if it has one, as the
    /// first node that answers sees them.
    ///
    /// # Errors
    ///
    /// When no node answers.
    pub fn master_of(&self, key: &str) -> Result<(u16, Option<u16>), String> {
        for node in &self.nodes {
            let Ok(slot) = self
                .ask(node.port, &["cluster", "keyslot", key])
                .trim()
                .parse()
            else {
                continue;
            };
            let view = parse_cluster_nodes(&self.ask(node.port, &["cluster", "nodes"]));
            let Some(master) = view.iter().find(|n| n.master && n.serves(slot)) else {
                continue;
            };
            let replica = view
                .iter()
                .find(|n| n.master_id.as_deref() == Some(master.id.as_str()))
                .map(|n| n.port);
            return Ok((master.port, replica));
        }
        Err(format!("no cluster node says who serves {key:?}"))
    }

    /// Whether the node on `port` is a master, and the cluster it sees is whole.
    pub fn serves_as_master(&self, port: u16) -> bool {
        self.ask(port, &["info", "replication"])
            .contains("role:master")
            && self
                .ask(port, &["cluster", "info"])
                .contains("cluster_state:ok")
    }

    /// Whether the node on `port` is a replica in sync with its master.
    pub fn replica_in_sync(&self, port: u16) -> bool {
        self.ask(port, &["info", "replication"])
            .contains("master_link_status:up")
    }

    /// The node on `port`, to crash or freeze.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|node| node.port == port)
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&node=…`.
    pub fn url(&self) -> String {
        let mut ports = self.nodes.iter().map(|n| n.port);
        let first = ports.next().unwrap_or_default();
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", rest.join("&"))
    }
}

/// A free port whose cluster bus port (port + 10000) is valid and free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// The URL of a Redis Cluster for this test binary: [`REDIS_CLUSTER_URL_VAR`], else a spawned
/// 3-master cluster shared by the binary's tests; `None` or a panic as [`redis_url`].
pub fn redis_cluster_url() -> Option<String> {
    if let Ok(url) = std::env::var(REDIS_CLUSTER_URL_VAR) {
        return Some(url);
    }
    static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();
    match SHARED.get_or_init(RedisCluster::spawn) {
        Ok(cluster) => Some(cluster.url()),
        Err(why) => unavailable("redis cluster", why),
    }
}
