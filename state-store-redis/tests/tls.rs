//! TLS that is what it says: `rediss://` gets verified TLS or a `Config` error, never a
//! connection in the clear; private CAs and client certificates (mutual TLS) work. Servers
//! are real `redis-server`s started here with certificates the test makes. Needs the
//! `rustls` feature (`./scripts/test` runs it so); local tier only.

#![cfg(feature = "rustls")]
#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use state_store_core::{Error, StateStore};
use state_store_redis::{RedisConfig, RedisStateStore};
use state_store_testkit::harness::redis::RedisServer;
use state_store_testkit::harness::tls::{self, Certificates};
use state_store_testkit::harness::unavailable;

fn tls_server(certificates: &Certificates, verify: bool) -> Option<(RedisServer, String)> {
    RedisServer::spawn_tls(certificates, verify)
        .map_or_else(|why| unavailable("redis-server with TLS", &why), Some)
}

async fn refused(config: RedisConfig, what: &str) -> Error {
    tls::refused(RedisStateStore::connect(config).await, what)
}

async fn round_trip(config: RedisConfig) {
    tls::round_trip(StateStore::from(
        RedisStateStore::connect(config).await.expect("connect"),
    ))
    .await;
}

#[tokio::test]
async fn tls_with_a_private_ca_works_and_an_untrusted_certificate_is_config() {
    let certificates = Certificates::generate();
    let Some((_server, url)) = tls_server(&certificates, false) else {
        return;
    };
    let config = RedisConfig::from_url(&url).expect("url");
    round_trip(config.clone().with_root_certificates(certificates.ca())).await;
    let with_param = format!("{url}?tls_ca={}", certificates.ca().display());
    round_trip(RedisConfig::from_url(&with_param).expect("url")).await;
    let err = refused(config, "an untrusted certificate").await;
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn tls_urls_never_fall_back_to_plaintext() {
    let certificates = Certificates::generate();
    let Some((server, _)) = tls_server(&certificates, false) else {
        return;
    };
    // The plaintext port, asked for with TLS: refused, never used in the clear. A plaintext
    // Redis reads the handshake as the start of a command and waits for its end, so the
    // handshake runs out of time: `Unavailable`, as for a server that does not answer.
    let plain = server.url().replacen("redis://", "rediss://", 1);
    let config = RedisConfig::from_url(&plain)
        .expect("url")
        .with_root_certificates(certificates.ca())
        .with_connect_timeout(std::time::Duration::from_secs(1));
    let err = refused(config, "rediss:// to a plaintext port").await;
    assert!(
        matches!(err, Error::Config { .. } | Error::Unavailable { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls_client_certificates_for_servers_that_verify_clients() {
    let certificates = Certificates::generate();
    let Some((_server, url)) = tls_server(&certificates, true) else {
        return;
    };
    let (cert, key) = certificates.client();
    let config = RedisConfig::from_url(&url)
        .expect("url")
        .with_root_certificates(certificates.ca());
    round_trip(config.clone().with_client_certificate(cert, key)).await;
    refused(config, "no client certificate").await;
}
