//! The fault proxy does to traffic what each fault says, between a client and an echo server.

#![allow(clippy::expect_used)] // a test fails by panicking

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use state_store_conformance::faults::{Link, LinkFault};
use state_store_testkit::harness::proxy::FaultProxy;

/// An echo server on loopback counting the bytes it received.
fn echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                        return;
                    }
                    counter.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

fn client(proxy: &FaultProxy, patience: Duration) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    stream.set_read_timeout(Some(patience)).expect("timeout");
    stream
}

/// Sends `ping` and reads the answer: `Ok(true)` when it came back whole, `Ok(false)` when
/// nothing came within the read timeout, `Err` when the connection ended.
fn ping(stream: &mut TcpStream) -> std::io::Result<bool> {
    stream.write_all(b"ping")?;
    let mut answer = [0u8; 4];
    match stream.read_exact(&mut answer) {
        Ok(()) => Ok(&answer == b"ping"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
        Err(e) => Err(e),
    }
}

const ANSWERS: Duration = Duration::from_secs(10);
const SILENCE: Duration = Duration::from_millis(300);

#[test]
fn healthy_and_slow_links_carry_every_byte() {
    let (server, _) = echo();
    let proxy = FaultProxy::start(server).expect("proxy");
    let mut stream = client(&proxy, ANSWERS);
    assert!(ping(&mut stream).expect("healthy"));
    proxy.set(LinkFault::Latency {
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(5),
    });
    assert!(ping(&mut stream).expect("slow"));
    proxy.set(LinkFault::Bandwidth {
        bytes_per_second: 1000,
    });
    assert!(ping(&mut stream).expect("capped"));
}

#[test]
fn a_black_hole_swallows_both_ways_and_heals() {
    let (server, received) = echo();
    let proxy = FaultProxy::start(server).expect("proxy");
    let mut stream = client(&proxy, ANSWERS);
    assert!(ping(&mut stream).expect("healthy"));
    proxy.set(LinkFault::BlackHole);
    stream.set_read_timeout(Some(SILENCE)).expect("timeout");
    assert!(!ping(&mut stream).expect("the connection stays open"));
    assert_eq!(
        received.load(Ordering::SeqCst),
        4,
        "a request crossed the partition"
    );
    proxy.set(LinkFault::Healthy);
    stream.set_read_timeout(Some(ANSWERS)).expect("timeout");
    assert!(ping(&mut stream).expect("healed"));
}

#[test]
fn a_half_open_link_delivers_requests_and_drops_answers() {
    let (server, received) = echo();
    let proxy = FaultProxy::start(server).expect("proxy");
    let mut stream = client(&proxy, SILENCE);
    proxy.set(LinkFault::HalfOpen);
    assert!(!ping(&mut stream).expect("the connection stays open"));
    // The request arrived (the echo server counts what it received once it answered).
    let arrived =
        state_store_testkit::harness::wait_for(ANSWERS, || received.load(Ordering::SeqCst) == 4);
    assert!(arrived, "the request never reached the server");
}

#[test]
fn resets_end_open_connections_and_refusals_end_new_ones() {
    let (server, _) = echo();
    let proxy = FaultProxy::start(server).expect("proxy");
    let mut open = client(&proxy, ANSWERS);
    assert!(ping(&mut open).expect("healthy"));
    proxy.set(LinkFault::ResetAll);
    assert!(
        ping(&mut open).is_err() || ping(&mut open).is_err(),
        "the connection survived a reset"
    );
    proxy.set(LinkFault::Refuse);
    let mut refused = client(&proxy, ANSWERS);
    assert!(
        ping(&mut refused).is_err() || ping(&mut refused).is_err(),
        "a new connection was served"
    );
    proxy.set(LinkFault::Healthy);
    let mut again = client(&proxy, ANSWERS);
    assert!(ping(&mut again).expect("healthy again"));
}
