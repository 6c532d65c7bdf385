//! The container tier: servers from container images, started with testcontainers.
//!
//! A test gets its server from, in order: an env var with a URL; a local server binary; a
//! container, when a Docker engine answers; else a loud skip (a failure under
//! `STATE_STORE_REQUIRE_BACKENDS=1`). [`TIER_VAR`] forces one tier: `containers` (what
//! `./scripts/test --containers` sets: no local server binary is used, and a missing Docker
//! engine is a failure) or `local`.
//!
//! Images are the official ones, pinned ([`REDIS_IMAGE`], [`NATS_IMAGE`], [`DAPRD_IMAGE`],
//! [`POSTGRES_IMAGE`]);
//! `scripts/build-images` makes same-named images from this machine's binaries where no
//! registry is reachable. Every container is removed when its owner is dropped, and — through a
//! small guard process holding a pipe from the test process — when the test process dies in
//! any way, panics and aborts included.

use std::io::Write as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use testcontainers::core::{IntoContainerPort, Mount};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// Env var forcing a tier: `containers` or `local`.
pub const TIER_VAR: &str = "STATE_STORE_TEST_TIER";
/// Redis: the official image, pinned.
pub const REDIS_IMAGE: (&str, &str) = ("redis", "7.2");
/// NATS: the official image, pinned (2.11 is the first with per-message TTL; the modules'
/// default 2.10 lacks it).
pub const NATS_IMAGE: (&str, &str) = ("nats", "2.11");
/// daprd: the official image of the version this repository builds.
pub const DAPRD_IMAGE: (&str, &str) = ("daprio/daprd", "1.18.1");
/// PostgreSQL: the official image, pinned to the major version Debian 12 ships (what the local
/// tier runs); its entrypoint creates the cluster from `POSTGRES_USER` and `POSTGRES_PASSWORD`.
pub const POSTGRES_IMAGE: (&str, &str) = ("postgres", "15");

/// Where a server comes from.
#[derive(Debug)]
pub enum Tier<T> {
    /// A local binary (found by the caller's lookup).
    Local(T),
    /// A container.
    Container,
}

/// Chooses the tier for `backend`: forced by [`TIER_VAR`], else the local binary `local`
/// finds, else a container when Docker answers.
///
/// # Errors
///
/// Why neither tier can serve (both reasons), or why a forced local tier cannot.
///
/// # Panics
///
/// When containers are forced and no Docker engine answers.
pub fn choose<T>(
    backend: &str,
    local: impl FnOnce() -> Result<T, String>,
) -> Result<Tier<T>, String> {
    match std::env::var(TIER_VAR).as_deref() {
        Ok("containers") => match docker_reachable() {
            Ok(()) => Ok(Tier::Container),
            // Forced: a missing engine is a failure, never a skip.
            Err(why) => panic!("{backend}: {TIER_VAR}=containers, but {why}"),
        },
        Ok("local") => local().map(Tier::Local),
        _ => match local() {
            Ok(found) => Ok(Tier::Local(found)),
            Err(no_binary) => docker_reachable()
                .map(|()| Tier::Container)
                .map_err(|why| format!("{no_binary}; and {why}")),
        },
    }
}

/// `Ok` when a Docker engine answers.
///
/// # Errors
///
/// Why not.
pub fn docker_reachable() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let out = Command::new("docker")
                .args(["info", "--format", "{{.ServerVersion}}"])
                .output()
                .map_err(|e| format!("no docker command ({e})"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(
                    "the Docker engine does not answer (./scripts/test --containers starts it)"
                        .to_owned(),
                )
            }
        })
        .clone()
}

/// What to run in a container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// The backend, for messages (`"redis"`).
    pub backend: &'static str,
    /// Image name and tag.
    pub image: (&'static str, &'static str),
    /// The command (arguments after the image's entrypoint).
    pub cmd: Vec<String>,
    /// `(host port, container port)` pairs, published on the host.
    pub ports: Vec<(u16, u16)>,
    /// A user-defined network to join (created when missing).
    pub network: Option<String>,
    /// The container's name, its host name on the network.
    pub name: Option<String>,
    /// `(host path, container path)` bind mounts.
    pub mounts: Vec<(String, String)>,
    /// Environment variables of the container's process.
    pub env: Vec<(String, String)>,
}

impl ContainerSpec {
    /// `image` running `cmd`, publishing `ports`.
    pub fn new(
        backend: &'static str,
        image: (&'static str, &'static str),
        cmd: impl IntoIterator<Item = impl Into<String>>,
        ports: &[(u16, u16)],
    ) -> Self {
        ContainerSpec {
            backend,
            image,
            cmd: cmd.into_iter().map(Into::into).collect(),
            ports: ports.to_vec(),
            network: None,
            name: None,
            mounts: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The same, with the variable `name` set to `value` in the container.
    #[must_use]
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A running (or crashed) container this test owns; removed on drop.
pub struct Container {
    id: String,
    // testcontainers' handle: dropping it removes the container too (see `Drop`).
    handle: Option<ContainerAsync<GenericImage>>,
    _cleanup: Cleanup,
}

impl Drop for Container {
    fn drop(&mut self) {
        // testcontainers removes a container from its handle's `Drop`, which needs a Tokio
        // runtime: hand it to ours, wherever this drop happens. The cleanup guard (dropped
        // next) removes the container synchronously either way.
        if let (Some(handle), Ok(runtime)) = (self.handle.take(), runtime()) {
            runtime.spawn(async move { drop(handle) });
        }
    }
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("id", &self.id).finish()
    }
}

/// testcontainers is async; the harness is called from synchronous code, often inside a test's
/// runtime (where blocking on another would panic): containers start on this runtime, from a
/// thread of their own. It lives as long as the process, so container handles stay usable.
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the container runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Container {
    /// Starts `spec` and prints which image serves which backend.
    ///
    /// # Errors
    ///
    /// When the image is missing and cannot be pulled, or the container does not start.
    pub fn start(spec: &ContainerSpec) -> Result<Self, String> {
        let (name, tag) = spec.image;
        // The guard starts first and removes by label, so a test process dying while the
        // container starts leaves nothing behind either.
        let label = format!(
            "{}-{}-{}",
            std::process::id(),
            spec.backend.replace(' ', "-"),
            rand::random::<u64>()
        );
        let cleanup = Cleanup::watch(&label, spec.network.as_deref())?;
        let mut request = GenericImage::new(name, tag)
            .with_cmd(spec.cmd.clone())
            .with_label(CLEANUP_LABEL, label)
            .with_startup_timeout(Duration::from_secs(120));
        for &(host, container) in &spec.ports {
            request = request.with_mapped_port(host, container.tcp());
        }
        // Published on loopback only, like the local tier's servers.
        request = request.with_host_config_modifier(|config| {
            for bindings in config.port_bindings.iter_mut().flat_map(|m| m.values_mut()) {
                for binding in bindings.iter_mut().flatten() {
                    binding.host_ip = Some("127.0.0.1".to_owned());
                }
            }
        });
        if let Some(network) = &spec.network {
            request = request.with_network(network.clone());
        }
        if let Some(container_name) = &spec.name {
            request = request.with_container_name(container_name.clone());
        }
        for (host, container) in &spec.mounts {
            request = request.with_mount(Mount::bind_mount(host.clone(), container.clone()));
        }
        for (name, value) in &spec.env {
            request = request.with_env_var(name.clone(), value.clone());
        }
        let runtime = runtime()?;
        let handle = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(request.start()))
                .join()
                .map_err(|_| "the container start panicked".to_owned())
        })?
        .map_err(|e| format!("{}: cannot start {name}:{tag}: {e}", spec.backend))?;
        let id = handle.id().to_owned();
        eprintln!(
            "container tier: {} from image {name}:{tag} (container {})",
            spec.backend,
            &id[..id.len().min(12)]
        );
        Ok(Container {
            id,
            handle: Some(handle),
            _cleanup: cleanup,
        })
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Kills the container's process (SIGKILL); the container and its files stay.
    pub fn kill(&self) {
        let _ = docker(&["kill", &self.id]);
    }

    /// Freezes the container's processes (`docker pause`).
    ///
    /// # Errors
    ///
    /// What `docker pause` reports.
    pub fn pause(&self) -> Result<(), String> {
        docker(&["pause", &self.id]).map(drop)
    }

    /// Lets a paused container run again (`docker unpause`).
    ///
    /// # Errors
    ///
    /// What `docker unpause` reports.
    pub fn resume(&self) -> Result<(), String> {
        docker(&["unpause", &self.id]).map(drop)
    }

    /// Stops the container gracefully (SIGTERM); the container and its files stay.
    pub fn stop(&self) {
        let _ = docker(&["stop", "--time", "10", &self.id]);
    }

    /// Starts the stopped container again (same ports, same files).
    ///
    /// # Errors
    ///
    /// What `docker start` reports.
    pub fn restart(&self) -> Result<(), String> {
        docker(&["start", &self.id]).map(drop)
    }

    /// The container's output so far (for failure messages).
    pub fn logs(&self) -> String {
        docker(&["logs", "--tail", "50", &self.id]).unwrap_or_default()
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Removes the container labelled for it (and then its network, when no other container uses
/// it) once this process closes the guard's stdin: on drop, or because the process died.
struct Cleanup {
    guard: Child,
    stdin: Option<ChildStdin>,
}

/// The label that ties a container to its cleanup guard.
const CLEANUP_LABEL: &str = "state-store-test";

// Signals from the terminal or a CI runner stopping the test run must not stop the guard
// before it has cleaned up: it ignores them, and runs in a process group of its own.
const CLEANUP_SCRIPT: &str = r#"trap '' INT TERM HUP
read _ignored
ids=$(docker ps -aq --filter "label=state-store-test=$1")
[ -n "$ids" ] && docker rm -f -v $ids >/dev/null 2>&1
# The last container of a network takes the network with it; a removal racing another
# container's is retried.
if [ -n "$2" ]; then
    for _ in 1 2 3 4 5; do
        docker network rm "$2" >/dev/null 2>&1 && break
        docker network inspect "$2" >/dev/null 2>&1 || break
        sleep 1
    done
fi
exit 0
"#;

impl Cleanup {
    fn watch(label: &str, network: Option<&str>) -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        let mut guard = Command::new("sh")
            .args(["-c", CLEANUP_SCRIPT, "state-store-container-guard", label])
            .arg(network.unwrap_or_default())
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the container guard: {e}"))?;
        let stdin = guard.stdin.take();
        Ok(Cleanup { guard, stdin })
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.guard.wait();
    }
}
