//! A PostgreSQL server on loopback: `initdb` into a temporary directory, then `postgres`;
//! shared per test binary, or owned for fault tests. From local binaries (Debian's
//! `postgresql` package puts them under `/usr/lib/postgresql/<version>/bin`), or in the
//! container tier from the official image (TLS servers: local binaries only).
//!
//! PostgreSQL refuses to run as root: as root, the harness gives the directory to the
//! `postgres` user and starts `initdb` and `postgres` as that user (`setpriv`, which execs, so
//! the process the harness kills is the server itself).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use state_store_conformance::faults::TestServer;

use super::container::{choose, ContainerSpec, Tier, POSTGRES_IMAGE};
use super::{free_port, temp_dir, unavailable, wait_for, with_port_retries, Supervised, TempDir};

/// Env var with the URL of a PostgreSQL to use instead of spawning one.
pub const POSTGRES_URL_VAR: &str = "STATE_STORE_TEST_POSTGRES_URL";
/// Env var naming the directory with `initdb` and `postgres`.
pub const POSTGRES_BIN_DIR_VAR: &str = "STATE_STORE_POSTGRES_BIN_DIR";

/// The role the harness creates, and its password.
const USER: &str = "state_store";
const PASSWORD: &str = "state-store-test";

/// A container creates its cluster first, on a slow copy-on-write file system.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory with PostgreSQL's server binaries: [`POSTGRES_BIN_DIR_VAR`], else where
/// `initdb` on `PATH` really is, else the newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(POSTGRES_BIN_DIR_VAR) {
        return Ok(PathBuf::from(dir));
    }
    // `initdb` on PATH is often a link (Debian's wrapper, or a link into /usr/lib): follow it
    // to the directory that has the other binaries too.
    if let Some(dir) = which::which("initdb")
        .ok()
        .and_then(|path| std::fs::canonicalize(path).ok())
        .and_then(|path| path.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("postgres").is_file())
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL not found (apt-get install postgresql)".to_owned())?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "PostgreSQL not found (apt-get install postgresql)".to_owned())
}

/// Whether this process runs as root (PostgreSQL will not).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The numeric id `id <flag> postgres` prints.
fn postgres_id(flag: &str) -> Result<u32, String> {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            "running as root, and there is no postgres user to run PostgreSQL as".to_owned()
        })
}

/// `program args…` as the user PostgreSQL runs as: `setpriv` to `postgres` when root.
fn as_server_user(program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    if is_root() {
        let mut wrapped = vec![
            "--reuid=postgres".to_owned(),
            "--regid=postgres".to_owned(),
            "--clear-groups".to_owned(),
            "--".to_owned(),
            program.display().to_string(),
        ];
        wrapped.extend(args.iter().cloned());
        (PathBuf::from("setpriv"), wrapped)
    } else {
        (program.to_owned(), args.to_vec())
    }
}

/// Gives `path` to the `postgres` user when running as root (PostgreSQL will not run as root).
fn give_to_server_user(path: &Path) -> Result<(), String> {
    if is_root() {
        let (uid, gid) = (postgres_id("-u")?, postgres_id("-g")?);
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to postgres: {e}", path.display()))?;
    }
    Ok(())
}

/// Writes a file only the server's user may read.
fn write_for_server(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    give_to_server_user(path)
}

/// A PostgreSQL server this test owns, on a free loopback port, with its own data directory.
#[derive(Debug)]
pub struct PostgresServer {
    server: Supervised,
    port: u16,
    // Removed when the server is dropped.
    _dir: TempDir,
}

impl PostgresServer {
    /// Creates a cluster (`initdb`, user `state_store` with a password, scram-sha-256) and
    /// starts it.
    ///
    /// # Errors
    ///
    /// When the binaries are missing, or the cluster cannot be created or does not come up.
    pub fn spawn() -> Result<Self, String> {
        Self::spawn_with(None, false)
    }

    /// A server that also accepts TLS with `certificates`' server certificate (it still
    /// accepts plaintext: clients choose with `sslmode`). The URL is the same as without.
    ///
    /// # Errors
    ///
    /// As [`PostgresServer::spawn`].
    pub fn spawn_tls(certificates: &super::tls::Certificates) -> Result<Self, String> {
        Self::spawn_with(Some(certificates), false)
    }

    /// As [`PostgresServer::spawn_tls`], and every TCP connection must also present a client
    /// certificate the test CA signed (`hostssl … clientcert=verify-ca`, the password still
    /// asked): mutual TLS.
    ///
    /// # Errors
    ///
    /// As [`PostgresServer::spawn`].
    pub fn spawn_mutual_tls(certificates: &super::tls::Certificates) -> Result<Self, String> {
        Self::spawn_with(Some(certificates), true)
    }

    fn spawn_with(tls: Option<&super::tls::Certificates>, mutual: bool) -> Result<Self, String> {
        let dir = temp_dir("postgres");
        let (server, port) = match choose("postgres", bin_dir)? {
            Tier::Local(bin) => spawn_local(&bin, dir.path(), tls, mutual)?,
            Tier::Container if tls.is_some() => {
                return Err("TLS servers run from local binaries only".to_owned());
            }
            Tier::Container => with_port_retries(|| {
                let port = free_port();
                // What the official image's entrypoint reads to create the cluster; the
                // command after `postgres` goes to the server.
                let spec = ContainerSpec::new(
                    "postgres",
                    POSTGRES_IMAGE,
                    ["postgres", "-c", "max_connections=300", "-c", "fsync=off"],
                    &[(port, 5432)],
                )
                .with_env("POSTGRES_USER", USER)
                .with_env("POSTGRES_PASSWORD", PASSWORD)
                .with_env("POSTGRES_INITDB_ARGS", "-E UTF8 --no-locale");
                let mut server = Supervised::container(spec);
                server.start(START_TIMEOUT, || postgres_answers(port))?;
                Ok((server, port))
            })?,
        };
        Ok(PostgresServer {
            server,
            port,
            _dir: dir,
        })
    }

    fn start(&mut self) -> Result<(), String> {
        let port = self.port;
        self.server.start(START_TIMEOUT, || postgres_answers(port))
    }

    /// `postgres://state_store:…@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Creates a cluster in `dir` with the local binaries in `bin` and starts it on a free port.
fn spawn_local(
    bin: &Path,
    dir: &Path,
    tls: Option<&super::tls::Certificates>,
    mutual: bool,
) -> Result<(Supervised, u16), String> {
    give_to_server_user(dir)?;
    let password_file = dir.join("password");
    write_for_server(&password_file, PASSWORD.as_bytes())?;
    let mut extra = Vec::new();
    if let Some(certificates) = tls {
        let (cert, key) = certificates.server();
        // The server reads its key only when its user owns it and nobody else may read it.
        for (from, to) in [(cert, "server.pem"), (key, "server-key.pem")] {
            let pem = std::fs::read(&from).map_err(|e| format!("cannot read {to}: {e}"))?;
            write_for_server(&dir.join(to), &pem)?;
        }
        if mutual {
            let pem =
                std::fs::read(certificates.ca()).map_err(|e| format!("cannot read the CA: {e}"))?;
            write_for_server(&dir.join("ca.pem"), &pem)?;
            extra.extend([
                "-c".to_owned(),
                format!("ssl_ca_file={}", dir.join("ca.pem").display()),
            ]);
        }
        extra.extend(
            [
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", dir.join("server.pem").display()),
                format!("ssl_key_file={}", dir.join("server-key.pem").display()),
            ]
            .into_iter()
            .flat_map(|setting| ["-c".to_owned(), setting]),
        );
    }
    let data = dir.join("data");
    let args = [
        "-D".to_owned(),
        data.display().to_string(),
        "-U".to_owned(),
        USER.to_owned(),
        format!("--pwfile={}", password_file.display()),
        "--auth=scram-sha-256".to_owned(),
        "-E".to_owned(),
        "UTF8".to_owned(),
        "--no-locale".to_owned(),
        "--no-sync".to_owned(),
    ];
    let (program, args) = as_server_user(&bin.join("initdb"), &args);
    let created = Command::new(&program)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !created.status.success() {
        return Err(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        ));
    }
    if mutual {
        // TCP only over TLS with a verified client certificate; the socket for the
        // harness's own checks.
        write_for_server(
            &data.join("pg_hba.conf"),
            b"local all all scram-sha-256\n\
              hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n",
        )?;
    }
    with_port_retries(|| {
        let port = free_port();
        let args = [
            "-D".to_owned(),
            data.display().to_string(),
            "-p".to_owned(),
            port.to_string(),
            "-c".to_owned(),
            "listen_addresses=127.0.0.1".to_owned(),
            "-c".to_owned(),
            format!("unix_socket_directories={}", dir.display()),
            // The conformance suite runs many cases at once, each with its own pools.
            "-c".to_owned(),
            "max_connections=300".to_owned(),
        ];
        let args: Vec<String> = args.iter().chain(&extra).cloned().collect();
        let (program, args) = as_server_user(&bin.join("postgres"), &args);
        let mut server = Supervised::new(program, args, dir.join("postgres.log"));
        server.start(START_TIMEOUT, || postgres_answers(port))?;
        Ok((server, port))
    })
}

/// A fast shutdown (SIGINT) first: on SIGTERM, which the process guard sends, PostgreSQL waits
/// for every client to disconnect, and a pool the test left open would hold it forever.
impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(pid) = self.server.pid() {
            signal("-CONT", &[pid]);
            signal("-CONT", &children_of(pid));
            signal("-INT", &[pid]);
        }
    }
}

/// PostgreSQL is a process per connection under the postmaster: a fault must reach them all.
/// Each one first freezes the postmaster and waits until it has stopped, so that it forks no
/// new backend while the backends are listed.
impl TestServer for PostgresServer {
    fn crash(&mut self) {
        let Some(pid) = self.server.pid() else {
            // A container: Docker kills every process in it.
            return self.server.crash();
        };
        let _ = self.server.pause();
        let backends = children_of(pid);
        signal("-KILL", &backends);
        self.server.crash();
        // A backend still attached to shared memory would keep the next postmaster from
        // starting: wait until they are all gone (or zombies).
        wait_for(Duration::from_secs(10), || {
            backends.iter().all(|&pid| !alive(pid))
        });
    }

    fn restart(&mut self) -> Result<(), String> {
        self.crash();
        self.start()
    }

    fn pause(&mut self) -> Result<(), String> {
        let Some(pid) = self.server.pid() else {
            // A container: Docker freezes every process in it.
            return self.server.pause();
        };
        self.server.pause()?;
        signal("-STOP", &children_of(pid));
        Ok(())
    }

    fn resume(&mut self) -> Result<(), String> {
        if let Some(pid) = self.server.pid() {
            signal("-CONT", &children_of(pid));
        }
        self.server.resume()
    }
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            != Some("Z")
    })
}

/// Sends `signal` to `pids` (none: nothing to do).
fn signal(signal: &str, pids: &[u32]) {
    if !pids.is_empty() {
        // A backend may have exited meanwhile: nothing to say about it.
        let _ = Command::new("kill")
            .arg(signal)
            .args(pids.iter().map(u32::to_string))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The processes whose parent is `parent` (from `/proc`).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: the parent follows the state, after the last `)`.
            let ppid: u32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// True when the server on `127.0.0.1:port` accepts connections, as `pg_isready` judges
/// (without needing its binary): it answers a startup message with an authentication request,
/// or with an error other than "cannot connect now" (SQLSTATE 57P03: starting up, shutting
/// down, in recovery) — a refusal by `pg_hba.conf` comes from a running server. A reset is no
/// answer: a container's published port accepts connections before the server inside listens.
fn postgres_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1000)));
    let mut body = 196_608_u32.to_be_bytes().to_vec(); // protocol 3.0
    body.extend_from_slice(format!("user\0{USER}\0database\0postgres\0\0").as_bytes());
    let mut message = u32::try_from(body.len() + 4)
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    message.extend(body);
    let mut header = [0u8; 5];
    if stream.write_all(&message).is_err() || stream.read_exact(&mut header).is_err() {
        return false;
    }
    match header[0] {
        b'R' => true,
        b'E' => {
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let mut fields = vec![
                0u8;
                usize::try_from(len.saturating_sub(4))
                    .unwrap_or(0)
                    .min(4096)
            ];
            // Fields are a type byte and a NUL-terminated text each: `C` is the SQLSTATE.
            stream.read_exact(&mut fields).is_ok()
                && !fields.split(|&b| b == 0).any(|field| field == b"C57P03")
        }
        _ => false,
    }
}

/// The URL of a PostgreSQL for this test binary: [`POSTGRES_URL_VAR`], else a spawned server
/// shared by the binary's tests; `None` (or a panic when backends are required) when neither
/// is available.
pub fn postgres_url() -> Option<String> {
    if let Ok(url) = std::env::var(POSTGRES_URL_VAR) {
        return Some(url);
    }
    static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
    match SHARED.get_or_init(PostgresServer::spawn) {
        Ok(server) => Some(server.url()),
        Err(why) => unavailable("postgres", why),
    }
}
