//! TLS that is what it says: `sslmode=require` gets verified TLS or a `Config` error, never a
//! connection in the clear; a private CA works. The server is a real PostgreSQL started here
//! with certificates the test makes. Needs the `rustls` feature (`./scripts/test` runs it
//! so).

#![cfg(feature = "rustls")]
#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use state_store_core::{Error, StateStore};
use state_store_postgres::{PostgresConfig, PostgresStateStore};
use state_store_testkit::harness::postgres::PostgresServer;
use state_store_testkit::harness::tls::{self, Certificates};
use state_store_testkit::harness::unavailable;

async fn round_trip(config: PostgresConfig) {
    tls::round_trip(StateStore::from(
        PostgresStateStore::connect(config).await.expect("connect"),
    ))
    .await;
}

#[tokio::test]
async fn tls_with_a_private_ca_works_and_an_untrusted_certificate_is_config() {
    let certificates = Certificates::generate();
    let Some(server) = PostgresServer::spawn_tls(&certificates)
        .map_or_else(|why| unavailable("postgres with TLS", &why), Some)
    else {
        return;
    };
    let ca = certificates.ca();
    let with_param = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        server.url(),
        ca.display()
    );
    round_trip(PostgresConfig::from_url(&with_param).expect("url")).await;
    let config = PostgresConfig::from_url(&server.url()).expect("url");
    round_trip(config.clone().with_root_certificates(&ca)).await;
    // The system's roots do not know the test's CA.
    let required = format!("{}?sslmode=require", server.url());
    let err = tls::refused(
        PostgresStateStore::connect(PostgresConfig::from_url(&required).expect("url")).await,
        "an untrusted certificate",
    );
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[tokio::test]
async fn required_tls_never_falls_back_to_plaintext() {
    let Some(server) =
        PostgresServer::spawn().map_or_else(|why| unavailable("postgres", &why), Some)
    else {
        return;
    };
    let required = format!("{}?sslmode=require", server.url());
    let err = tls::refused(
        PostgresStateStore::connect(PostgresConfig::from_url(&required).expect("url")).await,
        "sslmode=require to a server without TLS",
    );
    assert!(
        matches!(&err, Error::Config { message, .. } if message.contains("TLS")),
        "{err:?}"
    );
}

/// Mutual TLS: a server that wants a client certificate gets the configured one (in code or
/// as libpq's `sslcert`/`sslkey` in the URL); without one it refuses, and that is `Config`.
#[tokio::test]
async fn a_client_certificate_is_presented_and_required_ones_are_refused_without() {
    let certificates = Certificates::generate();
    let Some(server) = PostgresServer::spawn_mutual_tls(&certificates)
        .map_or_else(|why| unavailable("postgres with mutual TLS", &why), Some)
    else {
        return;
    };
    let (cert, key) = certificates.client();
    let trusted = PostgresConfig::from_url(&server.url())
        .expect("url")
        .with_root_certificates(certificates.ca());
    round_trip(trusted.clone().with_client_certificate(&cert, &key)).await;
    let url = format!(
        "{}?sslmode=require&sslrootcert={}&sslcert={}&sslkey={}",
        server.url(),
        certificates.ca().display(),
        cert.display(),
        key.display()
    );
    round_trip(PostgresConfig::from_url(&url).expect("url")).await;
    let err = tls::refused(
        PostgresStateStore::connect(trusted).await,
        "no client certificate where the server requires one",
    );
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}
