//! Test servers: an env var, else a binary spawned on a free loopback port, else a container,
//! else a loud skip (or a failure under `STATE_STORE_REQUIRE_BACKENDS=1`).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The env var that turns a missing backend from a skip into a failure.
pub const REQUIRE_BACKENDS: &str = "STATE_STORE_REQUIRE_BACKENDS";

/// True when `STATE_STORE_REQUIRE_BACKENDS=1`: a test without its server must fail.
pub fn backends_required() -> bool {
    std::env::var(REQUIRE_BACKENDS).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Reports a backend that cannot be reached: panics when backends are required, otherwise
/// prints a loud notice to stderr and returns `None` so the caller skips.
///
/// # Panics
///
/// When [`backends_required`].
pub fn unavailable<T>(backend: &str, why: &str) -> Option<T> {
    if backends_required() {
        panic!("{backend} is required ({REQUIRE_BACKENDS}=1) but unavailable: {why}");
    }
    eprintln!(
        "\n*** SKIPPED: {backend} unavailable: {why}\n*** set {REQUIRE_BACKENDS}=1 to make this a failure\n"
    );
    None
}

/// A free TCP port on 127.0.0.1 (bound and released; a race with other processes is possible
/// but rare).
///
/// # Panics
///
/// When no port can be bound on loopback.
pub fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(err) => panic!("cannot bind a loopback port: {err}"),
    }
}

/// Runs `start` up to three times: a port picked by [`free_port`] can be taken by another
/// process before the server binds it (more likely with many test processes at once), and the
/// next attempt picks new ports. The last error when every attempt failed.
///
/// # Errors
///
/// The third attempt's error.
pub fn with_port_retries<T>(mut start: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let mut last = String::new();
    for attempt in 1..=3 {
        match start() {
            Ok(server) => return Ok(server),
            Err(why) => last = format!("attempt {attempt}: {why}"),
        }
    }
    Err(last)
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while started.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `ready` every 100 ms until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The status code of `GET http://127.0.0.1:<port><path>`, or `None` when nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(status, _)| status)
}

/// `GET http://127.0.0.1:<port><path>`: status code and body, or `None` when nothing answers.
/// Written by hand on purpose: the health checks of servers on loopback need one HTTP/1.0
/// request from synchronous code (often inside a runtime, where blocking on an async client
/// would panic), which is not worth an HTTP client dependency.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

/// The host of a server URL (`redis://user:pw@127.0.0.1:6379/0` → `127.0.0.1`), as a
/// store reports it in `server.address`.
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.rsplit_once(':').map(|(host, _)| host)
}

/// Finds a server binary: the path in env var `override_var`, else `name` on `PATH`, else in
/// the extra directories given.
pub fn find_binary(name: &str, override_var: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(override_var) {
        return Some(PathBuf::from(path));
    }
    which::which(name).ok().or_else(|| {
        extra_dirs
            .iter()
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A temporary directory removed on drop.
pub type TempDir = tempfile::TempDir;

/// Creates `$TMPDIR/state-store-<label>-<random>`, removed when the result is dropped.
///
/// # Panics
///
/// When the directory cannot be created.
pub fn temp_dir(label: &str) -> TempDir {
    match tempfile::Builder::new()
        .prefix(&format!("state-store-{label}-"))
        .tempdir()
    {
        Ok(dir) => dir,
        Err(err) => panic!("cannot create a temporary directory: {err}"),
    }
}

/// A store URL for `backend` on the harness's shared servers, for benchmarks and reports:
/// `memory`, `sqlite` (a file in `dir`), `redis`, `nats`, `postgres`, or `dapr` (a sidecar
/// with `component`).
///
/// # Errors
///
/// An unknown backend, or one whose server is unavailable.
pub fn backend_url(
    backend: &str,
    dir: &Path,
    component: dapr::Component,
) -> Result<String, String> {
    let missing = |what: &str| format!("no {what} available");
    Ok(match backend {
        "memory" => "memory://".to_owned(),
        "sqlite" => format!("sqlite://{}", dir.join("state.db").display()),
        "redis" => redis::redis_url().ok_or_else(|| missing("redis-server"))?,
        "nats" => nats::nats_url().ok_or_else(|| missing("nats-server"))?,
        "postgres" => postgres::postgres_url().ok_or_else(|| missing("PostgreSQL"))?,
        "dapr" => {
            let endpoint = dapr::dapr_endpoint(component).ok_or_else(|| missing("daprd"))?;
            let address = endpoint.trim_start_matches("http://");
            format!("dapr://{address}/{}", dapr::COMPONENT)
        }
        other => return Err(format!("unknown backend {other}")),
    })
}

/// A server process that dies with the test process, panics and aborts included.
///
/// The server runs under a small `sh` guard that holds a pipe from this process: when this
/// process exits for any reason the pipe closes, and the guard terminates the server. Without
/// it, a server spawned for a `static` (never dropped) would outlive every test run.
#[derive(Debug)]
pub struct ServerProcess {
    guard: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    log: PathBuf,
    /// Stopped with SIGSTOP: it must be continued before it can act on a SIGTERM.
    paused: bool,
}

const GUARD_SCRIPT: &str = r#"log="$1"; shift
"$@" >"$log" 2>&1 </dev/null &
pid=$!
echo "$pid"
read _ignored
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
"#;

impl ServerProcess {
    /// Starts `program args…` with its output in `log`.
    ///
    /// # Errors
    ///
    /// When the guard shell cannot start, or the server's pid cannot be read.
    pub fn spawn<I, S>(program: &Path, args: I, log: &Path) -> std::io::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .arg("state-store-guard")
            .arg(log)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = guard.stdin.take();
        let mut line = String::new();
        if let Some(stdout) = guard.stdout.take() {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        let pid = line.trim().parse().map_err(|_| {
            std::io::Error::other(format!("the server guard printed no pid: {line:?}"))
        })?;
        Ok(ServerProcess {
            guard,
            stdin,
            pid,
            log: log.to_owned(),
            paused: false,
        })
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the server runs.
    pub fn is_running(&self) -> bool {
        Command::new("kill")
            .args(["-0", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills the server with SIGKILL (a crash: no shutdown, no save) and waits for it.
    pub fn crash(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        self.stop();
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if self.paused {
            let _ = self.resume();
        }
        drop(self.stdin.take());
        let _ = self.guard.wait();
    }

    /// Freezes the server with SIGSTOP: its connections stay open and nothing answers (a hung
    /// server, as a long GC pause or a stuck disk makes one).
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent, or the server's threads do not all stop within 10 s.
    pub fn pause(&mut self) -> Result<(), String> {
        self.signal("-STOP")?;
        self.paused = true;
        // `kill` returns once the signal is queued; the threads stop when they next run, and
        // on a busy machine one may still answer a request first. Wait until all have stopped.
        if wait_for(Duration::from_secs(10), || self.all_threads_stopped()) {
            Ok(())
        } else {
            Err(format!("pid {} did not stop within 10 s", self.pid))
        }
    }

    /// True when every thread of the server is stopped (state `T` in `/proc/<pid>/task`);
    /// also true where there is no `/proc` to ask.
    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return true;
        };
        tasks.flatten().all(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // `pid (comm) state …`: the state follows the last `)`.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.trim_start().chars().next());
            matches!(state, Some('T' | 't') | None)
        })
    }

    /// Lets a paused server run again (SIGCONT).
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn resume(&mut self) -> Result<(), String> {
        self.signal("-CONT")?;
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .map_err(|e| format!("kill {signal}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill {signal} {} failed: {status}", self.pid))
        }
    }
}

/// A server that can be crashed and started again the same way: a local process, or a
/// container (which keeps its files across a crash and restart, as a process keeps its
/// directory).
#[derive(Debug)]
pub struct Supervised {
    launch: Launch,
    process: Option<ServerProcess>,
    container: Option<Container>,
}

#[derive(Debug)]
enum Launch {
    Process {
        program: PathBuf,
        args: Vec<String>,
        log: PathBuf,
    },
    Container(ContainerSpec),
}

impl Supervised {
    /// A server run as `program args…`, logging to `log`; not started yet.
    pub fn new(program: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        Self::with(Launch::Process { program, args, log })
    }

    /// A server run in a container; not started yet.
    pub fn container(spec: ContainerSpec) -> Self {
        Self::with(Launch::Container(spec))
    }

    fn with(launch: Launch) -> Self {
        Supervised {
            launch,
            process: None,
            container: None,
        }
    }

    /// Starts (or restarts) the server and waits up to `timeout` for `ready`.
    ///
    /// # Errors
    ///
    /// When it cannot start or is not ready in time (with its log).
    pub fn start(&mut self, timeout: Duration, ready: impl FnMut() -> bool) -> Result<(), String> {
        match &self.launch {
            Launch::Process { program, args, log } => {
                let name = program
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                let process = ServerProcess::spawn(program, args, log)
                    .map_err(|e| format!("cannot start {name}: {e}"))?;
                if !wait_for(timeout, ready) {
                    return Err(format!("{name} did not become ready: {}", process.log()));
                }
                self.process = Some(process);
            }
            Launch::Container(spec) => {
                match &self.container {
                    Some(container) => container.restart()?,
                    None => self.container = Some(Container::start(spec)?),
                }
                if !wait_for(timeout, ready) {
                    let logs = self.container.as_ref().map(Container::logs);
                    return Err(format!(
                        "the {} container did not become ready: {}",
                        spec.backend,
                        logs.unwrap_or_default()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The pid of the server process, when it runs as a local process.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// Kills the server with SIGKILL.
    pub fn crash(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.crash();
        }
        if let Some(container) = &self.container {
            container.kill();
        }
    }

    /// Freezes the server (SIGSTOP, `docker pause`): it keeps its connections and answers
    /// nothing until [`Supervised::resume`].
    ///
    /// # Errors
    ///
    /// When it is not running, or cannot be paused.
    pub fn pause(&mut self) -> Result<(), String> {
        match (&mut self.process, &self.container) {
            (Some(process), _) => process.pause(),
            (None, Some(container)) => container.pause(),
            (None, None) => Err("the server is not running".to_owned()),
        }
    }

    /// Lets a paused server run again.
    ///
    /// # Errors
    ///
    /// When it is not running, or cannot be resumed.
    pub fn resume(&mut self) -> Result<(), String> {
        match (&mut self.process, &self.container) {
            (Some(process), _) => process.resume(),
            (None, Some(container)) => container.resume(),
            (None, None) => Err("the server is not running".to_owned()),
        }
    }

    /// Stops the server with SIGTERM.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
        if let Some(container) = &self.container {
            container.stop();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

pub mod container;
pub mod dapr;
pub mod nats;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod tls;

use container::{Container, ContainerSpec};
