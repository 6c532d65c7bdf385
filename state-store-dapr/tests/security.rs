//! What goes over the wire to the sidecar.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use state_store_core::{report, Error};
use state_store_dapr::{DaprConfig, DaprStateStore};
use state_store_testkit::harness::dapr::{Component, Daprd, COMPONENT};
use state_store_testkit::harness::unavailable;

/// An `https://` endpoint is refused with `Config`, never used in plaintext: a real, plaintext
/// daprd behind it would otherwise answer, and see the API token in the clear.
#[tokio::test]
async fn an_https_endpoint_is_refused_not_downgraded() {
    let Some(sidecar) =
        Daprd::spawn(Component::InMemory).map_or_else(|why| unavailable("daprd", &why), Some)
    else {
        return;
    };
    let plain = sidecar.endpoint();
    let https = plain.replacen("http://", "https://", 1);
    assert_ne!(plain, https, "the harness gives an http:// endpoint");
    let config = DaprConfig::new(https, COMPONENT).with_api_token("s3cret-token");
    let err = DaprStateStore::connect(config)
        .await
        .expect_err("a plaintext sidecar behind https://");
    assert!(matches!(err, Error::Config { .. }), "{}", report(&err));
    let shown = format!("{err:?} {}", report(&err));
    assert!(!shown.contains("s3cret-token"), "{shown}");
    // The same sidecar over http:// works: the refusal is the scheme's, not the server's.
    let store = DaprStateStore::connect(DaprConfig::new(plain, COMPONENT))
        .await
        .expect("http://");
    drop(store);
}
