//! TLS that is what it says: a `tls://` server gets verified TLS or a `Config` error, never a
//! connection in the clear; private CAs and client certificates (mutual TLS) work. Servers are
//! real `nats-server`s started here with certificates the test makes. Local tier only (the
//! certificate files live on this machine).

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use state_store_core::{Error, StateStore};
use state_store_nats::{NatsConfig, NatsStateStore};
use state_store_testkit::harness::nats::NatsServer;
use state_store_testkit::harness::tls::{self, Certificates};
use state_store_testkit::harness::unavailable;

fn server(extra: &[&str]) -> Option<NatsServer> {
    NatsServer::spawn(extra).map_or_else(|why| unavailable("nats-server", &why), Some)
}

/// A server that speaks TLS only, with the certificates' server certificate; `verify`: it
/// also demands a client certificate signed by their CA.
fn tls_server(certificates: &Certificates, verify: bool) -> Option<NatsServer> {
    let (cert, key) = certificates.server();
    let (cert, key, ca) = (
        cert.display().to_string(),
        key.display().to_string(),
        certificates.ca().display().to_string(),
    );
    let mut args = vec!["--tls", "--tlscert", &cert, "--tlskey", &key];
    if verify {
        args.extend(["--tlsverify", "--tlscacert", &ca]);
    }
    server(&args)
}

fn tls_url(server: &NatsServer) -> String {
    server.url().replacen("nats://", "tls://", 1)
}

async fn refused(config: NatsConfig, what: &str) -> Error {
    tls::refused(NatsStateStore::connect(config).await, what)
}

async fn round_trip(config: NatsConfig) {
    tls::round_trip(StateStore::from(
        NatsStateStore::connect(config).await.expect("connect"),
    ))
    .await;
}

#[tokio::test]
async fn tls_with_a_private_ca_works_and_an_untrusted_certificate_is_config() {
    let certificates = Certificates::generate();
    let Some(server) = tls_server(&certificates, false) else {
        return;
    };
    round_trip(NatsConfig::new(tls_url(&server)).with_root_certificates(certificates.ca())).await;
    // The same server without its CA: the certificate is not trusted.
    let err = refused(
        NatsConfig::new(tls_url(&server)),
        "an untrusted certificate",
    )
    .await;
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn tls_urls_never_fall_back_to_plaintext() {
    let certificates = Certificates::generate();
    let Some(plain) = server(&[]) else {
        return;
    };
    for (config, what) in [
        (
            NatsConfig::new(tls_url(&plain)).with_root_certificates(certificates.ca()),
            "tls:// to a plaintext server",
        ),
        (
            NatsConfig::from_url(&format!("{},{}", plain.url(), tls_url(&plain))).expect("url"),
            "a plaintext server listed beside a tls:// one",
        ),
        (
            NatsConfig::new(plain.url()).with_require_tls(true),
            "require_tls to a plaintext server",
        ),
    ] {
        let err = refused(config, what).await;
        assert!(matches!(err, Error::Config { .. }), "{what}: {err:?}");
    }
}

#[tokio::test]
async fn tls_client_certificates_for_servers_that_verify_clients() {
    let certificates = Certificates::generate();
    let Some(server) = tls_server(&certificates, true) else {
        return;
    };
    let (cert, key) = certificates.client();
    round_trip(
        NatsConfig::new(tls_url(&server))
            .with_root_certificates(certificates.ca())
            .with_client_certificate(cert.clone(), key.clone()),
    )
    .await;
    let url = format!(
        "{}?tls_ca={}&tls_cert={}&tls_key={}",
        tls_url(&server),
        certificates.ca().display(),
        cert.display(),
        key.display()
    );
    round_trip(NatsConfig::from_url(&url).expect("url")).await;
    // Without a client certificate the server hangs up: never connected.
    refused(
        NatsConfig::new(tls_url(&server)).with_root_certificates(certificates.ca()),
        "no client certificate",
    )
    .await;
}
