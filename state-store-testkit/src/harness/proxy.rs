//! A TCP fault proxy on loopback: clients connect to it, it forwards to a server, and a test
//! decides what the network does in between — added latency with jitter, a bandwidth cap, new
//! connections refused, a black hole (a partition: bytes go nowhere, connections stay open),
//! half-open links (requests arrive, answers never do), or every connection reset at once.
//!
//! Written here rather than taken from toxiproxy: it is ~200 lines on tokio, runs inside the
//! test process with nothing to build or start, and implements
//! [`state_store_conformance::faults::Link`], so the conformance scenarios drive it directly.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use rand::Rng;
use state_store_conformance::faults::{Link, LinkFault};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic now, and how many times every connection was reset.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Network {
    fault: LinkFault,
    resets: u64,
    /// Where new connections go.
    upstream: SocketAddr,
}

/// A running proxy; stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    network: watch::Sender<Network>,
    /// Ends the proxy's thread when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`, with a healthy network.
    ///
    /// # Errors
    ///
    /// When it cannot listen.
    pub fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = StdListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (network, watcher) = watch::channel(Network {
            fault: LinkFault::Healthy,
            resets: 0,
            upstream,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Its own thread and runtime: a test that blocks its own runtime (killing a server,
        // waiting for a port) does not stop the network.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        () = accept(listener, watcher) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(FaultProxy {
            port,
            network,
            _stop: stop,
        })
    }

    /// A proxy in front of the server of `url` (`scheme://[user@]127.0.0.1:port[/…]`), and the same
    /// URL pointing at the proxy.
    ///
    /// # Errors
    ///
    /// When the URL names no loopback address and port, or the proxy cannot listen.
    pub fn in_front_of(url: &str) -> io::Result<(Self, String)> {
        let invalid = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no host:port in {url}"),
            )
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        // Credentials stay in the URL; the address after them is what the proxy stands for.
        let (user, address) = match authority.rsplit_once('@') {
            Some((user, address)) => (format!("{user}@"), address),
            None => (String::new(), authority),
        };
        let upstream: SocketAddr = address.parse().map_err(|_| invalid())?;
        let proxy = FaultProxy::start(upstream)?;
        let proxied = format!("{scheme}://{user}127.0.0.1:{}{tail}", proxy.port);
        Ok((proxy, proxied))
    }

    /// Sends new connections to `upstream` from now on (a failover behind a fixed address);
    /// open ones stay where they are until they end or are reset.
    pub fn redirect(&self, upstream: SocketAddr) {
        self.network
            .send_modify(|network| network.upstream = upstream);
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Link for FaultProxy {
    fn set(&self, fault: LinkFault) {
        self.network.send_modify(|network| {
            if fault == LinkFault::ResetAll {
                network.resets += 1;
                network.fault = LinkFault::Healthy;
            } else {
                network.fault = fault;
            }
        });
    }
}

async fn accept(listener: TcpListener, network: watch::Receiver<Network>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if network.borrow().fault == LinkFault::Refuse {
            // Reset at once: what a client sees from a port nothing listens on.
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        // Ends with the runtime, when the proxy is dropped.
        let upstream = network.borrow().upstream;
        tokio::spawn(connection(client, upstream, network.clone()));
    }
}

/// One client connection: dials the server and pipes both ways until either side closes or
/// every connection is reset.
async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    network: watch::Receiver<Network>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let resets = network.borrow().resets;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let reset = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pipe(client_read, server_write, &network, Direction::Request);
        let down = pipe(server_read, client_write, &network, Direction::Answer);
        let mut watcher = network.clone();
        let reset = async {
            while watcher.changed().await.is_ok() {
                if watcher.borrow().resets != resets {
                    return;
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = up => false,
            _ = down => false,
            () = reset => true,
        }
    };
    if reset {
        // Closed hard: both peers see a reset, not an orderly end.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server.
    Request,
    /// Server to client.
    Answer,
}

async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    network: &watch::Receiver<Network>,
    direction: Direction,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        let fault = network.borrow().fault;
        match fault {
            LinkFault::BlackHole => continue,
            LinkFault::HalfOpen if direction == Direction::Answer => continue,
            LinkFault::Latency { delay, jitter } => {
                let extra = if jitter.is_zero() {
                    Duration::ZERO
                } else {
                    rand::rng().random_range(Duration::ZERO..=jitter)
                };
                tokio::time::sleep(delay + extra).await;
            }
            LinkFault::Bandwidth { bytes_per_second } => {
                let seconds = n as f64 / bytes_per_second.max(1) as f64;
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            }
            LinkFault::Healthy | LinkFault::HalfOpen | LinkFault::Refuse | LinkFault::ResetAll => {}
        }
        to.write_all(&buffer[..n]).await?;
    }
}
